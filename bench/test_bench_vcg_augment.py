"""Fused VCG augmentation throughput: each backend vs the reference chain vs a per-sample NumPy loop.

Run: ``pytest bench/test_bench_vcg_augment.py --benchmark-only`` (or ``python bench/run_all.py``). Two workloads,
int16 ECGs (B, 8, 5000) with per-record gain and baseline in, two augmented bfloat16 views out:
- "whole" (issue 5): both views of the whole record, (2, B, 8, 5000), explicit parameters. Bytes moved: 2 B/sample
  in + 2 x 2 B/sample out = 6 B per input sample, the floor of any implementation.
- "train" (the training step's call): the two 5 s halves of each 10 s record as its two views, ``windows`` (2, B)
  = (0, 2500), ``length`` 2500, parameters drawn from ``(seed, offset)`` in the call (a new offset each round, as
  each step). Bytes: 2 B/sample in + 2 x 2 B per output sample of half the length = 4 B per input sample.
Each benchmark puts ``ecgs_per_s`` and ``gb_per_s`` in ``extra_info``; on CUDA also the copy bandwidth measured
for the same byte count and the fraction of it reached.
- "reference": what ecgfast did before the fused op: decode to float32 mV, crop, then per view
  ``vcg_augment_reference`` (matmul, mask, cast) and a stack; every step a full-size temporary.
- "numpy-per-sample": what peers do in DataLoader workers: per ECG, decode, crop, ``M @ x`` and the mask in
  NumPy float32 (output float32, so it writes twice the bytes of bf16; counted with the same bytes).
- the fused backends: "cpp" (CPU), "triton" and "cuda" (GPU), "torch" (the fallback). Triton's CPU
  interpreter is not benchmarked (meaningless).
CPU sizes are B in {64, 256} (those of bench/results), so that the file runs in seconds; GPU sizes B in {256, 4096}.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from ecgfast.ops.backends import available_backends
from ecgfast.ops.vcg_op import vcg_augment
from ecgfast.ops.vcg_params import sample_vcg_params
from ecgfast.reference.vcg_augment import crop_windows, decode_int16, vcg_augment_reference

N_SAMPLES = 5000
HALF = N_SAMPLES // 2
CPU_BATCHES = [64, 256]
GPU_BATCHES = [256, 4096]
WORKLOADS = ["whole", "train"]
BYTES_PER_SAMPLE = {"whole": 2 + 2 * 2, "train": 2 + 2}  # per input sample: int16 in, two bf16 views out
HAS_CUDA = torch.cuda.is_available()
CASES = [("cpu", b) for b in CPU_BATCHES] + [("cuda", b) for b in GPU_BATCHES]
PROVIDERS = ["reference", "numpy-per-sample", "torch", "cpp", "triton", "cuda"]


def _setup(device: str, batch: int, workload: str):
    """int16 ECGs, gain, baseline, the view windows (None for "whole") and the view length, on ``device``."""
    g = torch.Generator().manual_seed(0)
    q = torch.randint(-3000, 3000, (batch, 8, N_SAMPLES), generator=g, dtype=torch.int16)
    gain, baseline = 200 + 800 * torch.rand(batch, generator=g), torch.randn(batch, generator=g)
    windows, length = None, N_SAMPLES
    if workload == "train":
        windows, length = torch.tensor([[0] * batch, [HALF] * batch]).to(device), HALF
    return q.to(device), gain.to(device), baseline.to(device), windows, length


def _fn(provider: str, device: str, batch: int, workload: str):
    q, gain, baseline, windows, length = _setup(device, batch, workload)
    fixed = sample_vcg_params(batch, length, seed=0, device=device)
    offsets = itertools.count()  # "train" draws new parameters every call, as every training step does

    def params():
        return fixed if workload == "whole" else sample_vcg_params(batch, length, seed=0, offset=next(offsets),
                                                                   device=device)

    win = torch.zeros(2, batch, dtype=torch.long, device=device) if windows is None else windows
    if provider == "reference":
        def fn():
            p = params()
            views = crop_windows(decode_int16(q, gain, baseline), win, length)
            return torch.stack([vcg_augment_reference(views[v], p.matrices[v], p.mask_starts[v], p.mask_length,
                                                      out_dtype=torch.bfloat16) for v in range(2)])
    elif provider == "numpy-per-sample":
        qn, gn, bn, wn = q.numpy(), gain.numpy(), baseline.numpy(), win.numpy()
        block = np.arange(fixed.mask_length)

        def fn():
            p = params()
            mn, sn = p.matrices.numpy(), p.mask_starts.numpy()
            out = np.empty((2, batch, 8, length), np.float32)
            for b in range(batch):  # one DataLoader __getitem__ per ECG
                x = (qn[b].astype(np.float32) - bn[b]) / gn[b]
                for v in range(2):
                    y = mn[v, b] @ x[:, wn[v, b]:wn[v, b] + length]
                    for lead in range(8):
                        y[lead, (sn[v, b, lead] + block) % length] = 0.0
                    out[v, b] = y
            return out
    else:
        if provider not in available_backends("vcg_augment", device):
            pytest.skip(f"backend {provider!r} not available on {device} here")
        if workload == "whole":
            def fn():
                return vcg_augment(q, gain, baseline, matrices=fixed.matrices, mask_starts=fixed.mask_starts,
                                   mask_length=fixed.mask_length, out_dtype=torch.bfloat16, backend=provider)
        else:
            def fn():  # the training step's call: parameters drawn inside, from (seed, offset)
                return vcg_augment(q, gain, baseline, seed=0, offset=next(offsets), windows=windows, length=length,
                                   out_dtype=torch.bfloat16, backend=provider)
    if device != "cuda":
        return fn

    def synced():
        out = fn()
        torch.cuda.synchronize()
        return out
    return synced


def _copy_gbps(nbytes: int) -> float:
    """Measured device copy bandwidth (read + write) for ``nbytes`` moved: a bf16 tensor clone."""
    src = torch.empty(nbytes // 4, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        dst.copy_(src)
    end.record()
    torch.cuda.synchronize()
    return nbytes * 20 / (start.elapsed_time(end) / 1e3) / 1e9


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("workload", WORKLOADS)
@pytest.mark.parametrize(("device", "batch"), CASES, ids=[f"{d}-B{b}" for d, b in CASES])
def test_vcg_augment_throughput(benchmark, device, batch, workload, provider):
    if device == "cuda" and not HAS_CUDA:
        pytest.skip("needs a CUDA device")
    if device == "cuda" and provider == "numpy-per-sample":
        pytest.skip("the NumPy loop runs on the CPU; see the cpu case")
    if device == "cpu" and provider in ("triton", "cuda"):
        pytest.skip(f"{provider} is a GPU backend")
    benchmark.group = f"vcg-augment-{workload}-{device}-B{batch}"
    fn = _fn(provider, device, batch, workload)
    rounds = 3 if provider in ("reference", "numpy-per-sample", "torch") else 10
    benchmark.pedantic(fn, rounds=rounds, warmup_rounds=1)
    mean = benchmark.stats.stats.mean
    nbytes = batch * 8 * N_SAMPLES * BYTES_PER_SAMPLE[workload]
    info = {"ecgs_per_s": batch / mean, "gb_per_s": nbytes / mean / 1e9, "batch": batch, "device": device,
            "workload": workload, "n_samples": N_SAMPLES, "threads": torch.get_num_threads()}
    if device == "cuda":
        info["device_name"] = torch.cuda.get_device_name(0)
        info["copy_gb_per_s"] = _copy_gbps(nbytes)
        info["fraction_of_copy"] = info["gb_per_s"] / info["copy_gb_per_s"]
    benchmark.extra_info.update(info)
