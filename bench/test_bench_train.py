"""One pretraining step at fixed sizes: ECGs/s eager vs compiled, and the share of time outside the encoder.

Run: ``pytest bench/test_bench_train.py --benchmark-only``. CPU sizes by default (tiny model, 16 ECGs of
10 s); set ``ECGFAST_BENCH_MODEL=paper ECGFAST_BENCH_BATCH=512`` on a GPU machine for the paper's step.
"""

from __future__ import annotations

import os

import pytest
import torch

from ecgfast.augment import ECGAugment
from ecgfast.data.loader import decode
from ecgfast.loss import MultiPositiveContrastiveLoss
from ecgfast.models.temporalnet import DualStreamTemporalNet, temporalnet_config
from ecgfast.train import ContrastivePretrainer
from ecgfast.views import make_views, row_ids

MODEL = os.environ.get("ECGFAST_BENCH_MODEL", "tiny")
BATCH = int(os.environ.get("ECGFAST_BENCH_BATCH", "16"))
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _setup():
    """(step function, inputs) for one full pretraining step, plus its parts for the breakdown."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    q = torch.randint(-3000, 3000, (BATCH, 8, 5000), dtype=torch.int16)
    gain, base = torch.full((BATCH,), 1000.0), torch.zeros(BATCH)
    ids = torch.arange(BATCH)
    pids = ids // 4
    model = ContrastivePretrainer(DualStreamTemporalNet(temporalnet_config(MODEL))).to(DEVICE)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, eps=1e-4)
    aug, loss_fn = ECGAugment(backend="auto"), MultiPositiveContrastiveLoss(temperature=0.1, weights=(1.0, 1.0))

    def views_of(q):
        x = decode(q.to(DEVICE), gain.to(DEVICE), base.to(DEVICE))
        return aug(make_views(x, "intersegment", 2500, gen).flatten(0, 1), gen)

    def step(fwd):
        z = fwd(views_of(q)).float().flatten(0, 1)
        loss = loss_fn(z, row_ids(ids.to(DEVICE), 2, 2), row_ids(pids.to(DEVICE), 2, 2))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()

    return model, step, views_of, loss_fn, q


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
    model, _, views_of, _, q = _setup()
    v = views_of(q)

    def encoder():
        model(v).float().sum().backward()

    benchmark.pedantic(encoder, rounds=5, warmup_rounds=1)
    _rate(benchmark)


@pytest.mark.benchmark(group="train-step-parts")
def test_part_decode_views_augment(benchmark):
    """int16 -> mV, intersegment views, VCG + mask augmentation (the fused op where built)."""
    _, _, views_of, _, q = _setup()
    benchmark.pedantic(views_of, args=(q,), rounds=10, warmup_rounds=1)
    _rate(benchmark)


@pytest.mark.benchmark(group="train-step-parts")
def test_part_loss(benchmark):
    """Multi-positive loss forward + backward on 4 * BATCH embeddings of 128."""
    _, _, _, loss_fn, _ = _setup()
    z = torch.randn(4 * BATCH, 128, device=DEVICE, requires_grad=True)
    ids = row_ids(torch.arange(BATCH, device=DEVICE), 2, 2)
    benchmark.pedantic(lambda: loss_fn(z, ids, ids // 4).backward(), rounds=10, warmup_rounds=1)
    _rate(benchmark)
