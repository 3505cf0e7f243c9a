"""Build script for the optional C++/CUDA extension ``ecgfast._C`` (sources in csrc/).

Everything declarative lives in pyproject.toml. This file only decides whether to build the extension:

- ``ECGFAST_SKIP_EXT=1`` skips it; the ops then fall back to their pure-torch (or Triton) paths.
- The extension needs torch at build time, so install with ``pip install --no-build-isolation``;
  under build isolation (no torch) it is skipped with a message instead of pulling a CUDA wheel.
- The CUDA sources (``csrc/**/*.cu``) are compiled where nvcc and a CUDA build of torch exist,
  or always with ``ECGFAST_FORCE_CUDA=1`` (compile-only checks on GPU-less machines).
"""

from __future__ import annotations

import glob
import os
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


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


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
