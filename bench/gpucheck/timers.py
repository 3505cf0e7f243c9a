"""Timing, rates and memory for the GPU check: synchronised timers, the bf16 GEMM rate and the copy bandwidth measured
in the same run (the floors the kernels are compared with), peak extra memory, and the datasheet peaks.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from ecgfast.pretrain.mfu import gpu_peak


def device_peaks(name: str) -> tuple[float, float] | None:
    """(dense bf16 TFLOP/s, GB/s) of the GPU named ``name`` from ecgfast's datasheet table (the one the training
    loop's MFU uses, :data:`ecgfast.pretrain.mfu.GPU_PEAKS`); None if unknown."""
    peak = gpu_peak(name)
    return None if peak is None else (peak.bf16_tflops, peak.gbps)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, reps: int, warmup: int = 1) -> float:
    """Median seconds of ``fn()`` over ``reps`` calls after ``warmup`` calls: CUDA events around each call on a GPU
    (the device's time, launches included), ``perf_counter`` on a CPU."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(max(1, reps)):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def wall(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of one synchronised call (first calls: compile and autotuning included)."""
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def gemm_tflops(n: int, device: torch.device, reps: int) -> float:
    """Measured bf16 TFLOP/s of an (n, n) @ (n, n) product on random data: the rate the 6 N^2 d floor is priced at."""
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, generator=gen).to(torch.bfloat16)
    b = torch.randn(n, n, device=device, generator=gen).to(torch.bfloat16)
    seconds = time_call(lambda: a @ b, device, reps, warmup=3)
    return 2 * n**3 / seconds / 1e12


def copy_gbps(nbytes: int, device: torch.device, reps: int) -> float:
    """Measured device-to-device copy GB/s for ``nbytes`` moved (half read, half written; both counted), as the VCG
    op's bytes are counted."""
    src = torch.empty(max(1, nbytes // 4), dtype=torch.int16, device=device)
    dst = torch.empty_like(src)
    seconds = time_call(lambda: dst.copy_(src), device, reps, warmup=3)
    return 2 * src.numel() * src.element_size() / seconds / 1e9


def peak_extra_mib(fn: Callable[[], object], device: torch.device) -> float:
    """Peak memory of one ``fn()`` above what was allocated before it, MiB: the CUDA allocator's peak on a GPU, the
    storages' bookkeeping of :func:`ecgfast.pretrain.memory.measure_step_peak` on a CPU."""
    from ecgfast.pretrain.memory import measure_step_peak

    return measure_step_peak(fn, device) / 2**20


def free_bytes(device: torch.device) -> int:
    """Bytes this process can still allocate on ``device`` (the GPU's free memory plus the allocator's cache)."""
    from ecgfast.pretrain.memory import device_capacity

    return device_capacity(device)
