"""Triton kernels of ecgfast (installed as ``ecgfast.kernels``).

Only ``@triton.jit`` functions and their launch-size helpers live here: no autograd, no ecgfast imports.
``vcg_augment``: the fused VCG augmentation; ``contrastive_loss``: the multi-positive contrastive loss
(online log-sum-exp forward, recomputing backward). Their launchers and autograd live in ``ecgfast.ops``.
"""

from __future__ import annotations

from importlib import metadata


def interpreter_incompatibility() -> str | None:
    """Why Triton's CPU interpreter cannot run these kernels in this environment, or None.

    Triton < 3.8's interpreter turns a loop bound computed in the kernel (a 1-element array) into a Python int with
    ``int(array)``, which NumPy >= 2.4 refuses ("only 0-dimensional arrays can be converted to Python scalars"):
    every loss kernel's key loop fails there. Triton 3.8 squeezes the array first. Compiled kernels are unaffected.
    """
    try:
        triton_version = tuple(int(p) for p in metadata.version("triton").split(".")[:2])
        numpy_version = tuple(int(p) for p in metadata.version("numpy").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return None
    if triton_version < (3, 8) and numpy_version >= (2, 4):
        return (f"Triton {metadata.version('triton')}'s interpreter cannot run ecgfast's kernels with NumPy "
                f"{metadata.version('numpy')} (int() of a 1-element array, refused since NumPy 2.4): install "
                "triton>=3.8 or numpy<2.4 for the CPU interpreter")
    return None
