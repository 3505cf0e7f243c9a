"""One pretraining step per ``--memory`` mode: time, measured peak and the engine's prediction, side by side.

Run: ``pytest bench/test_bench_memory.py --benchmark-only`` (``python bench/run_all.py`` runs it with the rest).
CPU sizes by default (small preset, fp32, 16 ECGs of 5 s at 500 Hz); on a GPU the paper preset in bf16 at 64 ECGs,
where the peak is ``torch.cuda.max_memory_allocated`` and the difference to the prediction is the number to read.
``ECGFAST_BENCH_MEMORY_MODEL`` / ``_BATCH`` / ``_PRECISION`` override the sizes. ``bench/memory_modes.py`` prints
the same measurements as a table with the engine's figures for every preset.
"""

from __future__ import annotations

import os

import pytest
import torch
from memory_modes import make_step, measure_mode

from ecgfast.pretrain import memory

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
MODEL = os.environ.get("ECGFAST_BENCH_MEMORY_MODEL", "paper" if CUDA else "small")
BATCH = int(os.environ.get("ECGFAST_BENCH_MEMORY_BATCH", "64" if CUDA else "16"))
PRECISION = os.environ.get("ECGFAST_BENCH_MEMORY_PRECISION", "bf16" if CUDA else "fp32")
SEGMENT = 2500
CHUNK = max(1, BATCH // 4)


@pytest.mark.benchmark(group="memory-modes")
@pytest.mark.parametrize("mode", memory.MODES)
def test_step_per_memory_mode(benchmark, mode):
    measured = measure_mode(MODEL, PRECISION, SEGMENT, BATCH, mode, CHUNK, DEVICE, repeats=1)
    run = make_step(MODEL, PRECISION, SEGMENT, BATCH, mode, CHUNK, DEVICE)

    def step() -> None:
        run()
        if CUDA:
            torch.cuda.synchronize()

    benchmark.pedantic(step, rounds=3, warmup_rounds=1)
    benchmark.extra_info.update(
        ecgs_per_s=BATCH / benchmark.stats.stats.mean, model=MODEL, precision=PRECISION, batch=BATCH,
        chunk=CHUNK if mode == "chunked" else None, device=str(DEVICE),
        peak_mib=measured["peak"] / 2**20, predicted_mib=measured["predicted"] / 2**20,
        prediction_error=(measured["predicted"] - measured["peak"]) / measured["peak"],
        gflop_per_step=measured["flops"] / 1e9, saved_mb_per_ecg=measured["saved_per_ecg"] / 1e6)
