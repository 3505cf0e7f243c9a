"""Phase ``vcg_timing``: the VCG augmentation as training calls it, against a device-to-device copy of its bytes.

The call: B = ``vcg_timing_batches`` int16 records of ``record_samples`` samples with gain and baseline -> two bf16
views of the two halves, parameters drawn in the call from ``(seed, offset)`` (a new offset each call, as each step),
noise off (training's default). Bytes: 2 per input sample read + 2 x 2 per output sample written = 4 per input
sample, the floor of any implementation. Per compiled backend of the device (Triton and the CUDA op on a GPU; the C++
op on a CPU): median time, ECGs/s, GB/s, and the fraction of the copy bandwidth measured in the same run for the same
bytes.
"""

from __future__ import annotations

import itertools

import torch

from ecgfast.ops.backends import available_backends
from ecgfast.ops.vcg_op import vcg_augment

from .record import Context
from .timers import copy_gbps, time_call


def run(ctx: Context) -> dict:
    device, sizes = ctx.device, ctx.sizes
    backends = [b for b in available_backends("vcg_augment", device) if b != "torch"]
    if device.type == "cpu":
        backends = [b for b in backends if b != "triton"]  # the interpreter's speed means nothing
    if not backends:
        return {"status": "skipped", "reason": f"no compiled VCG backend on {device}"}
    t, half = sizes.record_samples, sizes.record_samples // 2
    best = 0.0
    for batch in sizes.vcg_timing_batches:
        gen = torch.Generator().manual_seed(batch)
        q = torch.randint(-3000, 3000, (batch, 8, t), generator=gen, dtype=torch.int16).to(device)
        gain, baseline = (200 + 800 * torch.rand(batch, generator=gen)).to(device), torch.zeros(batch, device=device)
        windows = torch.tensor([[0] * batch, [half] * batch], device=device)
        nbytes = batch * 8 * t * 2 + 2 * batch * 8 * half * 2
        copy = copy_gbps(nbytes, device, sizes.reps)
        ctx.record("device copy", batch=batch, mbytes=nbytes / 1e6, gb_per_s=copy)
        for backend in backends:
            if ctx.out_of_time(2):
                return {"status": "partial", "reason": f"deadline at B = {batch}, {backend}"}
            offsets = itertools.count()
            args = (q, gain, baseline)
            seconds = time_call(lambda backend=backend, offsets=offsets, args=args, windows=windows: vcg_augment(
                *args, seed=0, offset=next(offsets), windows=windows, length=half, out_dtype=torch.bfloat16,
                backend=backend), device, sizes.reps, warmup=2)
            rate = nbytes / seconds / 1e9
            best = max(best, rate / copy)
            ctx.record(backend, batch=batch, ms=seconds * 1e3, ecgs_per_s=batch / seconds, gb_per_s=rate,
                       fraction_of_copy=rate / copy)
    return {"best_fraction_of_copy": best}
