"""Phase ``facts``: what ran the check. GPU, driver, clocks, torch / Triton / CUDA / cuDNN / Python versions, the
backends each op finds, how ``ecgfast._C`` was built (setup.py's ``ecgfast/_build_info.<python tag>.json``: CUDA or
not, compile flags, architectures) and the machine code it holds (``cuobjdump --list-elf``, where the tool exists)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from .record import Context

PACKAGES = ("torch", "triton", "numpy", "scipy", "pandas", "wfdb", "tomli-w", "nvidia-dali-cuda130", "ecgfast")


def _run(cmd: list[str], timeout: float = 20.0) -> str | None:
    """A command's stdout, stripped; None where it is missing or fails."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def versions() -> dict[str, str]:
    """Installed versions of the packages the check touches (absent ones left out), and Python's."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    out["torch.version.cuda"] = str(torch.version.cuda)
    if torch.backends.cudnn.is_available():
        out["cudnn"] = str(torch.backends.cudnn.version())
    return out


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model with its core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or platform.machine())
    return f"CPU {model} x{torch.get_num_threads()} threads"


def gpu_facts(device: torch.device) -> dict:
    """Properties of the CUDA device, the driver and clocks from nvidia-smi, the Triton target."""
    props = torch.cuda.get_device_properties(device)
    facts = {"name": props.name, "capability": f"{props.major}.{props.minor}", "sms": props.multi_processor_count,
             "memory_gib": round(props.total_memory / 2**30, 2),
             "l2_mib": round(getattr(props, "L2_cache_size", 0) / 2**20, 1) or None,
             "torch_arch_list": torch.cuda.get_arch_list()}
    smi = _run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,clocks.max.mem,power.limit",
                "--format=csv,noheader"])
    if smi:
        driver, sm, mem, power = (part.strip() for part in smi.splitlines()[0].split(","))
        facts.update(driver=driver, max_sm_clock=sm, max_mem_clock=mem, power_limit=power)
    try:
        from triton.runtime import driver as triton_driver

        target = triton_driver.active.get_current_target()
        facts["triton_target"] = f"{target.backend} {target.arch}"
    except Exception as exc:  # noqa: BLE001 (a fact, not a failure)
        facts["triton_target"] = f"unavailable: {type(exc).__name__}: {exc}"
    return facts


def extension_facts() -> dict:
    """Whether ``ecgfast._C`` loaded, which kernels it registered, its build record and embedded GPU code."""
    from ecgfast.ops import backends

    facts: dict = {"loaded": backends.EXTENSION_LOADED}
    for op, qualname in backends.EXTENSION_OPS.items():
        facts[f"{op}_kernels"] = [key for key in ("CPU", "CUDA") if backends.has_extension_kernel(qualname, key)]
    import ecgfast

    root = Path(ecgfast.__file__).parent
    info = root / f"_build_info.{sys.implementation.cache_tag}.json"  # written by setup.py for this interpreter
    facts["build"] = json.loads(info.read_text()) if info.is_file() else f"no {info.name} (built before it existed)"
    so = sorted(root.glob(f"_C.{sys.implementation.cache_tag}*.so"))
    if so:
        facts["library"] = so[0].name
        elf = _run(["cuobjdump", "--list-elf", str(so[0])])
        if elf is not None:
            facts["cubin"] = sorted({part for line in elf.splitlines() for part in line.split(".") if
                                     part.startswith("sm_")}) or "none"
    return facts


def run(ctx: Context) -> dict:
    from ecgfast.ops import backends

    device = ctx.device
    ctx.record("versions", **versions())
    ctx.record("device", device=str(device), name=device_name(device), threads=torch.get_num_threads())
    if device.type == "cuda":
        ctx.record("gpu", **gpu_facts(device))
    ctx.record("extension", **extension_facts())
    if os.environ.get("TRITON_INTERPRET") == "1":
        from ecgfast.kernels import interpreter_incompatibility

        ctx.record("Triton interpreter", problem=interpreter_incompatibility() or "none")
    for op in backends.BACKENDS:
        ctx.record(f"backends {op}", available=list(backends.available_backends(op, device)),
                   default=backends.default_backend(op, device))
    return {"device": device_name(device)}
