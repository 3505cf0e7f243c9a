"""Packages whose public names load on first use, so that a command line can answer ``--help`` before torch loads.

A package's ``__init__`` says which submodule holds each name; :func:`lazy_exports` gives it the module-level
``__getattr__`` (PEP 562) and ``__all__`` that import the submodule when a name is first asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], object], list[str]]:
    """(``__getattr__``, ``__all__``) for ``package``: name -> the submodule (relative to it) that defines it."""

    def __getattr__(name: str) -> object:
        if name in exports:
            return getattr(import_module(f".{exports[name]}", package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__, sorted(exports)
