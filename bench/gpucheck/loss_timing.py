"""Phases ``warmup`` and ``loss_timing``: what autotuning costs, then the contrastive loss's speed and memory.

``warmup``: the first forward + backward of the Triton loss at each timing size (N = ``timing_ns``, d = ``timing_d``,
bf16 rows on a GPU, one id kind: two views of N / 2 ECGs), wall time of the first call (compile and autotuning) and
of the second, and the configs the autotuner chose (its cache entries, with its benchmarking seconds where Triton
reports them); then the previous kernel's first calls (bench/baselines, no autotuning: compile only). Its total is the
cost the check reports for warming up; the timing phase after it measures warm kernels.

``loss_timing``: per N, forward and forward + backward of the fused loss (Triton on a GPU; the C++ op on a CPU), the
naive loss (the N x N matrix in plain torch) where it fits in memory, and the previous kernel: median time, TFLOP/s of
the 2 N^2 d (forward) or 6 N^2 d (forward + backward) matmul floor, the multiple of that floor priced at the bf16 GEMM
rate measured in the same run (``gemm_n``^3, random data), and peak extra memory of one call. Beside the Triton
loss's forward + backward, the issue-time bound of its key loops on an H100 from their sm_90 SASS
(``ecgfast.ops.kernel_sass``: instructions per score element x N^2 / (128 x SMs x clock), the fewest-instruction
config of each kernel, scaled to this GPU's SM count), so that the measured time reads against the estimate.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from ecgfast.ops.backends import available_backends
from ecgfast.ops.contrastive_loss import multi_positive_contrastive_loss

from .record import Context
from .timers import free_bytes, gemm_tflops, peak_extra_mib, sync, time_call, wall

TAU = 0.1
AUTOTUNED = ("_mp_contrastive_fwd_kernel", "_mp_contrastive_bwd_kernel")
NAIVE_BYTES_PER_PAIR = 40  # the naive loss's N x N temporaries at its peak, forward + backward (about 10 fp32 copies)


def naive_loss(z: torch.Tensor, ids: torch.Tensor, tau: float = TAU) -> torch.Tensor:
    """The usual SupCon code: N x N similarities, self masked out, log-softmax, mean over the positives."""
    x = torch.nn.functional.normalize(z.float(), dim=1)
    s = x @ x.T / tau
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    log_p = s.masked_fill(eye, float("-inf")).log_softmax(dim=1).masked_fill(eye, 0.0)
    pos = (ids[:, None] == ids[None, :]) & ~eye
    return -((log_p * pos).sum(1) / pos.sum(1).clamp(min=1)).mean()


def _v1():
    """The previous kernel's loss (bench/baselines/contrastive_loss_v1.py), or None where it cannot load."""
    bench = str(Path(__file__).resolve().parents[1])
    if bench not in sys.path:
        sys.path.insert(0, bench)
    try:
        from baselines.contrastive_loss_v1 import contrastive_loss_v1
    except ImportError:
        return None
    return contrastive_loss_v1


def make_inputs(n: int, d: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """z (n, d) (bf16 on a GPU, float32 on a CPU) and ids of two views per ECG."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gen = torch.Generator().manual_seed(n)
    return torch.randn(n, d, generator=gen).to(device, dtype), (torch.arange(n) // 2).to(device)


def step_fn(loss, z: torch.Tensor, ids: torch.Tensor, mode: str):
    """A call of ``loss(z, ids)``: forward only, or forward + backward ("full")."""
    z = z.detach().requires_grad_(mode == "full")

    def fn() -> None:
        out = loss(z, ids)
        if mode == "full":
            out.backward()
            z.grad = None
    return fn


def fused_backend(device: torch.device) -> str:
    return "triton" if device.type == "cuda" else "cpp" if "cpp" in available_backends("contrastive_loss") else "torch"


def run_warmup(ctx: Context) -> dict:
    from ecgfast.kernels import contrastive_loss as k

    if "triton" not in available_backends("contrastive_loss", ctx.device):
        return {"status": "skipped", "reason": f"no Triton backend for the loss on {ctx.device}"}
    d, total = ctx.sizes.timing_d, 0.0
    for n in ctx.sizes.timing_ns:
        if ctx.out_of_time(5):
            return {"status": "partial", "reason": f"deadline before N = {n}", "warmup_s": total}
        z, ids = make_inputs(n, d, ctx.device)
        fn = step_fn(lambda x, i: multi_positive_contrastive_loss(x, i, TAU, backend="triton"), z, ids, "full")
        before = {name: dict(getattr(k, name).cache) for name in AUTOTUNED}
        first = wall(fn, ctx.device)
        second = wall(fn, ctx.device)
        chosen, bench_s = {}, 0.0
        for name, old in before.items():
            kernel = getattr(k, name)
            for key, config in kernel.cache.items():
                if key not in old:  # tuned by this call: its choice, and its benchmarking time where Triton keeps it
                    chosen[name.split("_")[3]] = (f"{config.kwargs['BLOCK_M']}x{config.kwargs['BLOCK_N']} "
                                                  f"w{config.num_warps} s{config.num_stages}")
                    bench_s += getattr(kernel, "bench_time", 0.0) or 0.0
        total += first
        ctx.record("fused", n=n, d=d, first_call_s=first, second_call_s=second, tuned=chosen or "one config",
                   autotune_bench_s=bench_s if chosen else None)
    v1 = _v1()
    if v1 is not None:
        for n in ctx.sizes.timing_ns:
            if ctx.out_of_time(3):
                break
            z, ids = make_inputs(n, d, ctx.device)
            first = wall(step_fn(lambda x, i: v1(x, i, TAU), z, ids, "full"), ctx.device)
            total += first
            ctx.record("previous kernel", n=n, d=d, first_call_s=first)
    return {"warmup_s": total}


def issue_estimator(d: int, device: torch.device):
    """n -> the Triton loss's forward + backward issue-time bound in ms on ``device`` (the benchmark case: one id
    kind, no view ids), or None where the SASS cannot be had (no NVIDIA backend, d > 128)."""
    try:
        from ecgfast.ops import kernel_sass as ks

        costs = ks.loss_costs("benchmark", d)
    except Exception as e:  # noqa: BLE001 - an estimate is optional: say why it is missing
        print(f"loss timing: no issue-time estimate ({type(e).__name__}: {e})", file=sys.stderr)
        return lambda n: None
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else ks.H100_SMS

    def estimate(n: int) -> float:
        per_element = sum(min(c.weighted(n) for c in costs[w]) for w in ("fwd", "bwd"))
        return ks.issue_time_us(per_element, n, sms=sms) / 1e3
    return estimate


def run_timing(ctx: Context) -> dict:
    device, sizes = ctx.device, ctx.sizes
    gemm = gemm_tflops(sizes.gemm_n, device, sizes.reps)
    ctx.state["gemm_tflops"] = gemm
    ctx.record("bf16 GEMM", n=sizes.gemm_n, tflops=gemm)
    backend, v1 = fused_backend(device), _v1()
    providers = {f"fused ({backend})": lambda x, i: multi_positive_contrastive_loss(x, i, TAU, backend=backend),
                 "naive": naive_loss}
    if v1 is not None and (device.type == "cuda" or "triton" in available_backends("contrastive_loss", device)):
        providers["previous kernel"] = lambda x, i: v1(x, i, TAU)
    d = sizes.timing_d
    estimate = issue_estimator(d, device) if backend == "triton" else (lambda n: None)
    for n in sizes.timing_ns:
        z, ids = make_inputs(n, d, device)
        for name, loss in providers.items():
            if name == "naive" and NAIVE_BYTES_PER_PAIR * n * n > 0.8 * free_bytes(device):
                ctx.record(name, n=n, d=d, skipped=f"needs about {NAIVE_BYTES_PER_PAIR * n * n / 2**30:.0f} GiB of "
                                                   f"N x N matrices, {free_bytes(device) / 2**30:.0f} GiB free")
                continue
            for mode, flops in (("forward", 2 * n * n * d), ("full", 6 * n * n * d)):
                if ctx.out_of_time(3):
                    return {"status": "partial", "reason": f"deadline at N = {n}, {name} {mode}", "gemm_tflops": gemm}
                fn = step_fn(loss, z, ids, mode)
                seconds = time_call(fn, device, sizes.reps, warmup=1)
                sync(device)
                ctx.record(name, n=n, d=d, mode=mode, ms=seconds * 1e3, tflops=flops / seconds / 1e12,
                           floor_multiple=seconds / (flops / (gemm * 1e12)),
                           peak_extra_mib=peak_extra_mib(fn, device),
                           **({"issue_estimate_ms": estimate(n)} if name.startswith("fused") and mode == "full"
                              else {}))
    return {"gemm_tflops": gemm}
