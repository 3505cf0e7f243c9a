"""Build script for the optional C++/CUDA extension ``ecgfast._C`` (sources in csrc/).

Everything declarative lives in pyproject.toml. This file only decides whether to build the extension:

- ``ECGFAST_SKIP_EXT=1`` skips it; the ops then fall back to their pure-torch (or Triton) paths.
- The extension needs torch at build time, so install with ``pip install --no-build-isolation``;
  under build isolation (no torch) it is skipped with a message instead of pulling a CUDA wheel.
- The CUDA sources (``csrc/**/*.cu``) are compiled where nvcc and a CUDA build of torch exist,
  or always with ``ECGFAST_FORCE_CUDA=1`` (compile-only checks on GPU-less machines).
- With no GPU visible (an HPC login node, a Docker build) and ``TORCH_CUDA_ARCH_LIST`` unset, torch cannot infer
  the architectures: they default to :data:`DEFAULT_CUDA_ARCHS` (A100, H100, and PTX for newer GPUs).
- A CUDA toolkit without the CUDA runtime library (nvcc alone) cannot link the CUDA op: the CPU op is built
  alone, with a one-line message.
"""

from __future__ import annotations

import glob
import os
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"  # built when no GPU is visible to infer the list from


def cuda_arch_list(environ: dict, visible_gpus: int) -> str | None:
    """The TORCH_CUDA_ARCH_LIST to build with: the user's; None (torch infers it) when a GPU is visible; else
    :data:`DEFAULT_CUDA_ARCHS`."""
    if environ.get("TORCH_CUDA_ARCH_LIST"):
        return environ["TORCH_CUDA_ARCH_LIST"]
    return None if visible_gpus > 0 else DEFAULT_CUDA_ARCHS


def has_cudart(cuda_home: str | None) -> bool:
    """Whether the CUDA toolkit at ``cuda_home`` carries the runtime library the CUDA op links against."""
    if not cuda_home:
        return False
    found = [glob.glob(os.path.join(cuda_home, sub, "libcudart*")) for sub in ("lib64", "lib", "lib/x64",
                                                                                "targets/*/lib")]
    return any(found)


def _extensions() -> tuple[list, dict]:
    if os.environ.get("ECGFAST_SKIP_EXT", "0") == "1":
        print("ecgfast: ECGFAST_SKIP_EXT=1, not building ecgfast._C", file=sys.stderr)
        return [], {}
    cpp = sorted(glob.glob(os.path.join("csrc", "**", "*.cpp"), recursive=True))
    cu = sorted(glob.glob(os.path.join("csrc", "**", "*.cu"), recursive=True))
    if not cpp:
        return [], {}
    try:
        from torch.utils import cpp_extension
    except ImportError:
        print("ecgfast: torch not importable at build time (use --no-build-isolation); "
              "not building ecgfast._C", file=sys.stderr)
        return [], {}
    with_cuda = bool(cu) and (os.environ.get("ECGFAST_FORCE_CUDA") == "1"
                              or (cpp_extension.CUDA_HOME is not None and _torch_has_cuda()))
    if with_cuda and not has_cudart(cpp_extension.CUDA_HOME):
        print(f"ecgfast: the CUDA toolkit at {cpp_extension.CUDA_HOME} has no CUDA runtime library (libcudart): "
              "building the CPU op only", file=sys.stderr)
        with_cuda = False
    if with_cuda:
        import torch

        archs = cuda_arch_list(dict(os.environ), torch.cuda.device_count())
        if archs and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            print(f"ecgfast: no GPU visible and TORCH_CUDA_ARCH_LIST unset: building for {archs}", file=sys.stderr)
            os.environ["TORCH_CUDA_ARCH_LIST"] = archs
    sources = [os.path.relpath(p, HERE) for p in cpp + (cu if with_cuda else [])]
    cxx = ["-O3", "-fopenmp"]
    kwargs = dict(
        name="ecgfast._C",
        sources=sources,
        depends=sorted(glob.glob(os.path.join("csrc", "**", "*.h"), recursive=True)),  # rebuild when a header changes
        extra_compile_args={"cxx": cxx + (["-DECGFAST_WITH_CUDA"] if with_cuda else []),
                            "nvcc": ["-O3", "--use_fast_math"]},
        extra_link_args=["-fopenmp"],
    )
    ext = cpp_extension.CUDAExtension(**kwargs) if with_cuda else cpp_extension.CppExtension(**kwargs)
    return [ext], {"build_ext": cpp_extension.BuildExtension}


def _torch_has_cuda() -> bool:
    import torch

    return torch.version.cuda is not None


if __name__ == "__main__":  # setuptools runs this file as __main__; tests import it for the helpers above
    ext_modules, cmdclass = _extensions()
    setup(ext_modules=ext_modules, cmdclass=cmdclass)
