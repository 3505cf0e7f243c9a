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
- How the extension was built (CUDA or not, flags, architectures, torch) is written to
  ``ecgfast/_build_info.<python tag>.json`` (git-ignored; one per interpreter, as the library is), which
  ``bench/gpu_check.py`` reports.
"""

from __future__ import annotations

import datetime
import glob
import json
import os
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"  # built when no GPU is visible to infer the list from
BUILD_INFO = os.path.join(HERE, "ecgfast", f"_build_info.{sys.implementation.cache_tag}.json")


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


def write_build_info(with_cuda: bool, extra_compile_args: dict, path: str = BUILD_INFO) -> dict:
    """Record how ``ecgfast._C`` is being built: CUDA or not, our compile flags, the nvcc architecture flags torch
    derives (from TORCH_CUDA_ARCH_LIST or the visible GPU), torch's version and CUDA. Returns what it wrote."""
    import torch
    from torch.utils import cpp_extension

    arch_flags = None
    if with_cuda:
        try:  # torch's private helper, the flags it will pass to nvcc
            arch_flags = cpp_extension._get_cuda_arch_flags()
        except Exception as exc:  # noqa: BLE001 (a record, never a build failure)
            arch_flags = f"unknown ({type(exc).__name__}: {exc})"
    info = {"with_cuda": with_cuda, "extra_compile_args": extra_compile_args, "nvcc_arch_flags": arch_flags,
            "TORCH_CUDA_ARCH_LIST": os.environ.get("TORCH_CUDA_ARCH_LIST"), "cuda_home": cpp_extension.CUDA_HOME,
            "torch": torch.__version__, "torch_cuda": torch.version.cuda, "python": sys.version.split()[0],
            "built_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    try:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(info, f, indent=1)
    except OSError as exc:
        print(f"ecgfast: could not write {path}: {exc}", file=sys.stderr)
    return info


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
    write_build_info(with_cuda, kwargs["extra_compile_args"])
    return [ext], {"build_ext": cpp_extension.BuildExtension}


def _torch_has_cuda() -> bool:
    import torch

    return torch.version.cuda is not None


if __name__ == "__main__":  # setuptools runs this file as __main__; tests import it for the helpers above
    ext_modules, cmdclass = _extensions()
    setup(ext_modules=ext_modules, cmdclass=cmdclass)
