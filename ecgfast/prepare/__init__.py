"""Data in: the prepare pipeline (:mod:`.pipeline`: read, check, resample, filter, quantise into the int16 store,
patient-level splits) and its command line ``ecgfast-prepare`` (:mod:`.cli`; ``python -m ecgfast.prepare``).

Names below load on first use, so that the command line answers ``--help`` without importing the data stack.
"""

from importlib import import_module

_EXPORTS = {"SplitConfig": "pipeline", "prepare_store": "pipeline", "SPLIT_METHODS": "pipeline", "main": "cli",
            "build_parser": "cli"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
