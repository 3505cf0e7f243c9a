"""setup.py's decisions on machines it cannot be run on here: a CUDA build of torch with no GPU visible (an HPC
login node, a Docker build) and a CUDA toolkit without its runtime library."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setup_module():
    spec = importlib.util.spec_from_file_location("ecgfast_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # not __main__: setup() does not run
    return module


def test_no_visible_gpu_builds_for_a_default_arch_list_unless_the_user_gave_one():
    setup = _setup_module()
    assert setup.cuda_arch_list({}, visible_gpus=0) == "8.0;9.0+PTX"  # torch's own inference would fail here
    assert setup.cuda_arch_list({}, visible_gpus=1) is None  # torch infers it from the GPU
    assert setup.cuda_arch_list({"TORCH_CUDA_ARCH_LIST": "8.6"}, visible_gpus=0) == "8.6"
    assert setup.cuda_arch_list({"TORCH_CUDA_ARCH_LIST": "7.5"}, visible_gpus=2) == "7.5"


def test_a_toolkit_without_the_cuda_runtime_builds_the_cpu_op_only(tmp_path):
    setup = _setup_module()
    assert not setup.has_cudart(None)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "nvcc").write_text("")
    assert not setup.has_cudart(str(tmp_path))  # nvcc alone: cannot link
    (tmp_path / "lib64").mkdir()
    (tmp_path / "lib64" / "libcudart.so.13").write_text("")
    assert setup.has_cudart(str(tmp_path))
