"""Fetch the wheels the GPU machine lacks for ecgfast and its GPU check, into a git-ignored folder that travels with
the call (``carry``), and print the command to run there.

    python bench/gpu_wheels.py              # download into .whl/ (repo root), check the closure and the size
    python bench/gpu_wheels.py --check      # only check what .whl/ holds
    python bench/gpu_wheels.py --command    # print the device command

The GPU machine (docs: the device's KINDS.md) runs Python 3.12 with torch 2.11 (CUDA 13) and Triton 3.6 and has no
package registry. ecgfast installs there with ``pip install --no-deps --no-build-isolation -e .`` against its torch;
of ecgfast's dependencies it lacks wfdb and tomli-w, and of theirs soundfile, cffi and pycparser. setuptools travels
too, so that the editable build never depends on the image's version (ecgfast needs >= 77 for its SPDX license
field). Versions are pinned to those the compatibility run used (bench/results/compat-torch2.11-*.md); torch and
Triton never travel. Every wheel is for CPython 3.12 on manylinux x86_64 (or pure Python); their requirements are
checked against :data:`DEVICE_HAS` (the image's packages, as KINDS.md lists them) and the folder's own wheels, and the
whole folder must stay under :data:`LIMIT_MIB` (what may travel with a call, the repository included).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import zipfile
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

ROOT = Path(__file__).resolve().parents[1]
DEST = ROOT / ".whl"  # git-ignored (.gitignore: /.whl/)
LIMIT_MIB = 16  # of the 64 MiB a call may carry: the repository and shared/ travel too
WHEELS = {"wfdb": "4.3.1", "tomli-w": "1.2.0", "soundfile": "0.14.0", "cffi": "2.1.1", "pycparser": "3.12",
          "setuptools": "84.2.1"}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
# the 'cuda' image's Python packages (KINDS.md, read on a machine running it 2026-11-17), canonical names
DEVICE_HAS = frozenset(canonicalize_name(n) for n in """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl
zipp""".split())
DEVICE_ENV = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.3",
              "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
              "implementation_name": "cpython", "platform_python_implementation": "CPython", "os_name": "posix"}

DEVICE_COMMAND = (
    "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "
    ".whl/*.whl && export PYTHONPATH=/tmp/site && T0=$(date +%s) && "
    "{ python3 -m pip install --no-deps --no-build-isolation -e . > $OUT/install.log 2>&1 || "
    "ECGFAST_SKIP_EXT=1 python3 -m pip install --no-deps --no-build-isolation -e . >> $OUT/install.log 2>&1; } && "
    "PYTHONUNBUFFERED=1 timeout -k 10 $((570 - $(date +%s) + T0)) "
    "python3 bench/gpu_check.py --out $OUT --budget-s $((530 - $(date +%s) + T0)) 2>&1 | tee $OUT/gpu_check.log")
HOW = f"""On the device (the tool's run, carry [".whl"], timeout_s 600; the check's budget is what the editable build
leaves of 530 s, and a shell timeout stops it 40 s later; a build of the C++/CUDA ops that fails is retried without
them, which the check's facts then show; everything lands in $OUT as it goes):

  {DEVICE_COMMAND}
"""


def download(dest: Path) -> None:
    """``pip download`` each pinned wheel for CPython 3.12 on manylinux x86_64, without dependencies."""
    dest.mkdir(exist_ok=True)
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    for name, version in WHEELS.items():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
               "3.12", "--implementation", "cp", *platforms, "-d", str(dest), "-q", f"{name}=={version}"]
        subprocess.run(cmd, check=True)


def requirements(wheel: Path) -> list[Requirement]:
    """The wheel's Requires-Dist entries that apply on the device (markers evaluated there, extras left out)."""
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode("utf-8").splitlines()
    reqs = [Requirement(line.split(":", 1)[1].strip()) for line in lines if line.startswith("Requires-Dist:")]
    return [r for r in reqs if r.marker is None or r.marker.evaluate({**DEVICE_ENV, "extra": ""})]


def check(dest: Path) -> list[str]:
    """Problems with the folder: a wheel that cannot run on the device, two versions of one package, a requirement
    neither the image nor the folder has, a pinned package missing, or too many bytes. Empty: ready."""
    problems, names = [], {}
    wheels = sorted(dest.glob("*.whl"))
    for wheel in wheels:
        name, version, _, tags = parse_wheel_filename(wheel.name)
        if name in names:
            problems.append(f"two versions of {name}: {names[name]} and {version} (pip would stop)")
        names[name] = version
        if not any(t.interpreter in ("py3", "cp312") and (t.platform == "any" or re.fullmatch(
                r"manylinux(_2_\d+|2014|1)_x86_64", t.platform)) for t in tags):
            problems.append(f"{wheel.name} is not for CPython 3.12 on manylinux x86_64")
    for pinned in WHEELS:
        if canonicalize_name(pinned) not in names:
            problems.append(f"{pinned}=={WHEELS[pinned]} is missing (run without --check)")
    for wheel in wheels:
        for req in requirements(wheel):
            if canonicalize_name(req.name) not in names and canonicalize_name(req.name) not in DEVICE_HAS:
                problems.append(f"{wheel.name} needs {req}, which neither the device nor {dest.name}/ has")
    total = sum(w.stat().st_size for w in wheels) / 2**20
    if total > LIMIT_MIB:
        problems.append(f"{total:.1f} MiB of wheels, more than {LIMIT_MIB} MiB")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=HOW,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dest", type=Path, default=DEST, help=f"folder for the wheels (default {DEST})")
    p.add_argument("--check", action="store_true", help="only check the folder")
    p.add_argument("--command", action="store_true", help="print the device command and exit")
    args = p.parse_args(argv)
    if args.command:
        print(DEVICE_COMMAND)
        return 0
    if not args.check:
        download(args.dest)
    problems = check(args.dest)
    for line in problems:
        print(f"gpu_wheels: {line}", file=sys.stderr)
    if problems:
        return 1
    wheels = sorted(args.dest.glob("*.whl"))
    total = sum(w.stat().st_size for w in wheels) / 2**20
    print(f"{len(wheels)} wheels, {total:.1f} MiB in {args.dest}: " + ", ".join(w.name for w in wheels))
    print(HOW)
    return 0


if __name__ == "__main__":
    sys.exit(main())
