"""Which implementation runs a fused op: one choice, made the same way for every op of :mod:`ecgfast.ops`.

Backends, fastest first:

- ``"triton"``: the kernels of ``ecgfast.kernels``, on CUDA (on the CPU only under ``TRITON_INTERPRET=1``, the
  Triton interpreter, which is correct and slow and exists for the tests);
- ``"cuda"`` and ``"cpp"``: the C++/CUDA extension ``ecgfast._C`` (csrc/), where setup.py built it;
- ``"torch"``: the plain-torch reference of :mod:`ecgfast.reference`, always there.

What is available is detected once at import (a constant lookup is what ``torch.compile`` can trace, a
dispatcher query is not). The default for a device is the first of the op's preference list that is
available; an environment variable per op (``ECGFAST_VCG_BACKEND``, ``ECGFAST_LOSS_BACKEND``) overrides the
default, and a ``backend`` argument overrides both. The Triton interpreter is never a default.
"""

from __future__ import annotations

import importlib.util
import os

import torch

#: The fused ops, each with its backends in order of preference per device type, and its environment override.
PREFERENCE: dict[str, dict[str, tuple[str, ...]]] = {
    "vcg_augment": {"cuda": ("triton", "cuda", "torch"), "cpu": ("cpp", "torch")},
    "contrastive_loss": {"cuda": ("triton", "torch"), "cpu": ("cpp", "torch")},
}
ENV_VARS: dict[str, str] = {"vcg_augment": "ECGFAST_VCG_BACKEND", "contrastive_loss": "ECGFAST_LOSS_BACKEND"}
#: The extension operator that must be registered for a ``cpp``/``cuda`` backend of each op.
EXTENSION_OPS: dict[str, str] = {"vcg_augment": "ecgfast::vcg_augment",
                                 "contrastive_loss": "ecgfast::mp_contrastive_lse_fwd"}
BACKENDS: dict[str, tuple[str, ...]] = {"vcg_augment": ("triton", "cuda", "cpp", "torch"),
                                        "contrastive_loss": ("triton", "cpp", "torch")}


def _load_extension() -> bool:
    try:
        import ecgfast._C  # noqa: F401  (registers torch.ops.ecgfast.*; torch is imported first, above)
    except (ImportError, OSError):
        return False
    return True


EXTENSION_LOADED: bool = _load_extension()


def has_extension_kernel(qualname: str, dispatch_key: str) -> bool:
    """Whether ``ecgfast._C`` registered a ``dispatch_key`` ("CPU", "CUDA") kernel for operator ``qualname``."""
    if not EXTENSION_LOADED:
        return False
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(qualname, dispatch_key)
    except RuntimeError:  # operator not registered at all
        return False


def has_triton(device_type: str) -> bool:
    """Triton can run on ``device_type``: installed, and CUDA (or the interpreter, ``TRITON_INTERPRET=1``)."""
    if importlib.util.find_spec("triton") is None:
        return False
    return device_type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def _detect(op: str, device_type: str) -> tuple[str, ...]:
    found = []
    for name in BACKENDS[op]:
        if name == "triton" and has_triton(device_type):
            found.append(name)
        elif name == "cpp" and device_type == "cpu" and has_extension_kernel(EXTENSION_OPS[op], "CPU"):
            found.append(name)
        elif name == "cuda" and device_type == "cuda" and has_extension_kernel(EXTENSION_OPS[op], "CUDA"):
            found.append(name)
        elif name == "torch":
            found.append(name)
    return tuple(found)


_AVAILABLE: dict[tuple[str, str], tuple[str, ...]] = {(op, kind): _detect(op, kind) for op in BACKENDS
                                                      for kind in ("cpu", "cuda")}
_DEFAULT: dict[tuple[str, str], str] = {}  # (op, device type) -> backend, filled on first use


def available_backends(op: str, device: torch.device | str = "cpu") -> tuple[str, ...]:
    """The backends of ``op`` that can run on ``device`` here, in the order of :data:`BACKENDS`.

    Example:
        >>> available_backends("vcg_augment", "cpu")[-1]
        'torch'
    """
    return _AVAILABLE.get((op, torch.device(device).type), ("torch",))


def default_backend(op: str, device: torch.device | str = "cpu") -> str:
    """The backend of ``op`` for ``device`` when none is named: the op's environment variable if set, else the
    first available backend of its preference list; decided once per device type."""
    kind = torch.device(device).type
    if (op, kind) not in _DEFAULT:
        env = os.environ.get(ENV_VARS[op])
        if env:
            chosen = check_backend(op, env, kind, f"${ENV_VARS[op]}")
        else:
            have = available_backends(op, kind)
            chosen = next(b for b in (*PREFERENCE[op].get(kind, ()), "torch") if b in have)
        _DEFAULT[op, kind] = chosen
    return _DEFAULT[op, kind]


def check_backend(op: str, backend: str, device_type: str, where: str = "backend") -> str:
    """``backend`` if ``op`` can run there, else a ``ValueError`` that says what is available and why not."""
    if backend not in BACKENDS[op]:
        raise ValueError(f"{where} must be one of {BACKENDS[op]}, got {backend!r}")
    have = available_backends(op, device_type)
    if backend not in have:
        raise ValueError(f"{where}={backend!r} is not available for {op} on {device_type} here; available: {have} "
                         "(cpp/cuda need the built extension ecgfast._C, triton on a CPU needs TRITON_INTERPRET=1)")
    return backend


def resolve_backend(op: str, device: torch.device | str, backend: str | None = None) -> str:
    """``backend`` checked for ``device``, or the default of ``op`` there when ``backend`` is None."""
    kind = torch.device(device).type
    return default_backend(op, kind) if backend is None else check_backend(op, backend, kind)


__all__ = ["BACKENDS", "ENV_VARS", "available_backends", "check_backend", "default_backend", "has_triton",
           "resolve_backend"]
