"""One pretraining step at fixed sizes: ECGs/s eager vs compiled, and the share of time outside the encoder.

Run: ``pytest bench/test_bench_train.py --benchmark-only``. CPU sizes by default (tiny model, 16 ECGs of
10 s); set ``ECGFAST_BENCH_MODEL=paper ECGFAST_BENCH_BATCH=512`` on a GPU machine for the paper's step.
"""

from __future__ import annotations

import os

import pytest
import torch
from pretrain_step import make_pretrain_step

from ecgfast.pretrain.views import row_ids

MODEL = os.environ.get("ECGFAST_BENCH_MODEL", "tiny")
BATCH = int(os.environ.get("ECGFAST_BENCH_BATCH", "16"))
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _setup():
    """(model, step on a fixed batch, views_of, loss_fn, batch): one full pretraining step and its parts."""
    q = torch.randint(-3000, 3000, (BATCH, 8, 5000), dtype=torch.int16, generator=torch.Generator().manual_seed(0))
    gain, base = torch.full((BATCH,), 1000.0), torch.zeros(BATCH)
    ids = torch.arange(BATCH)
    batch = (q, gain, base, ids, ids // 4)
    model, views_of, loss_fn, step = make_pretrain_step(MODEL, DEVICE)
    return model, (lambda fwd: step(batch, model_fwd=fwd)), views_of, loss_fn, batch


def _rate(benchmark) -> None:
    benchmark.extra_info.update(ecgs_per_s=BATCH / benchmark.stats.stats.mean, model=MODEL, batch=BATCH,
                                device=str(DEVICE))


@pytest.mark.benchmark(group="train-step")
def test_step_eager(benchmark):
    model, step, *_ = _setup()
    benchmark.pedantic(step, args=(model,), rounds=5, warmup_rounds=1)
    _rate(benchmark)


@pytest.mark.benchmark(group="train-step")
def test_step_compiled(benchmark):
    model, step, *_ = _setup()
    compiled = torch.compile(model)
    benchmark.pedantic(step, args=(compiled,), rounds=5, warmup_rounds=2)
    _rate(benchmark)


@pytest.mark.benchmark(group="train-step-parts")
def test_part_encoder_only(benchmark):
    """Encoder forward + backward on ready views: the step's floor."""
    model, _, views_of, _, batch = _setup()
    v = views_of(*batch[:3]).flatten(0, 1)

    def encoder():
        model(v).float().sum().backward()

    benchmark.pedantic(encoder, rounds=5, warmup_rounds=1)
    _rate(benchmark)


@pytest.mark.benchmark(group="train-step-parts")
def test_part_decode_views_augment(benchmark):
    """One fused call: int16 -> both 5 s windows, decoded, VCG + mask augmented (the op's fastest backend here)."""
    _, _, views_of, _, batch = _setup()
    benchmark.pedantic(views_of, args=batch[:3], rounds=10, warmup_rounds=1)
    _rate(benchmark)


@pytest.mark.benchmark(group="train-step-parts")
def test_part_loss(benchmark):
    """Multi-positive loss forward + backward on 4 * BATCH embeddings of 128."""
    _, _, _, loss_fn, _ = _setup()
    z = torch.randn(4 * BATCH, 128, device=DEVICE, requires_grad=True)
    ids = row_ids(torch.arange(BATCH, device=DEVICE), 2, 2)
    benchmark.pedantic(lambda: loss_fn(z, ids, ids // 4).backward(), rounds=10, warmup_rounds=1)
    _rate(benchmark)
