"""Memory of a pretraining step: the measured bytes, the prediction and the plan, and the two bounded-memory modes
(activation checkpointing, GradCache chunks), which must give the plain step's loss, gradients, BatchNorm
statistics and RNG state, with the small and the paper presets."""

from __future__ import annotations

import copy

import pytest
import torch

from ecgfast.models.temporalnet import DualStreamTemporalNet, temporalnet_config
from ecgfast.nn import MultiPositiveContrastiveLoss
from ecgfast.pretrain import memory
from ecgfast.pretrain.config import PAPER_SAVED_MB_PER_ECG
from ecgfast.pretrain.gradcache import ChunkedContrastiveStep
from ecgfast.pretrain.views import row_ids

GB = 10**9


def _batch(b: int, t: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Views (2, b, 8, t), ECG ids, patient ids (ECGs 2k and 2k+1 share a patient: patient positives exist)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, b, 8, t, generator=g), torch.arange(b), torch.arange(b) // 2


def _plain_step(encoder, loss_fn, views, ecg, patient, chunks, seed) -> torch.Tensor:
    """The reference step: the chunks' forward passes one after the other with a graph, one loss over every row,
    one backward. With one chunk it is the loop's plain step."""
    torch.manual_seed(seed)
    parts = [encoder.embed(views[:, a:b].flatten(0, 1)).float().unflatten(0, (2, b - a)) for a, b in chunks]
    z = torch.cat(parts, dim=1)  # (2, B, streams, proj_dim)
    s = z.shape[2]
    loss = loss_fn(z.flatten(0, 2), row_ids(ecg, 2, s), row_ids(patient, 2, s))
    loss.backward()
    return loss.detach()


def _grads(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in m.named_parameters()}


def _buffers(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: b.clone() for n, b in m.named_buffers()}


def _assert_close_dicts(a: dict, b: dict, rtol: float, atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol, msg=lambda m, k=k: f"{k}: {m}")


def _grad_tolerance(grads: dict[str, torch.Tensor]) -> float:
    """An absolute tolerance relative to the gradient's scale (float32 sums over thousands of terms)."""
    return 1e-5 * max(g.abs().max().item() for g in grads.values())


# (preset, samples per view, ECGs): the paper preset at 1 s of 500 Hz keeps the CPU test to seconds; the layers,
# and so what checkpointing and chunking must preserve, are the same at any length.
PRESETS = [("small", 500, 6), ("paper", 500, 3)]


@pytest.mark.parametrize("preset,t,b", PRESETS)
def test_checkpointed_blocks_give_the_plain_step(preset, t, b):
    torch.manual_seed(0)
    start = DualStreamTemporalNet(temporalnet_config(preset)).train()
    loss_fn = MultiPositiveContrastiveLoss()
    views, ecg, patient = _batch(b, t)
    plain, ckpt = copy.deepcopy(start), copy.deepcopy(start).checkpoint_blocks()
    loss_plain = _plain_step(plain, loss_fn, views, ecg, patient, [(0, b)], seed=7)
    rng_plain = torch.get_rng_state()
    loss_ckpt = _plain_step(ckpt, loss_fn, views, ecg, patient, [(0, b)], seed=7)
    assert torch.equal(torch.get_rng_state(), rng_plain)
    torch.testing.assert_close(loss_ckpt, loss_plain, rtol=1e-6, atol=1e-6)
    grads = _grads(plain)
    _assert_close_dicts(_grads(ckpt), grads, rtol=1e-4, atol=_grad_tolerance(grads))
    # the recomputation in backward does not move BatchNorm a second time: the statistics are the plain step's
    _assert_close_dicts(_buffers(ckpt), _buffers(plain), rtol=1e-6, atol=1e-7)
    counters = [v for k, v in _buffers(ckpt).items() if k.endswith("num_batches_tracked")]
    assert counters and all(int(c) == 1 for c in counters)


# chunk None: one chunk holding the whole batch; chunks of 1 ECG (BatchNorm over 2 views) with the small preset only
@pytest.mark.parametrize("preset,t,b,chunk", [(*PRESETS[0], 1), (*PRESETS[0], 2), (*PRESETS[0], None),
                                              (*PRESETS[1], 2), (*PRESETS[1], None)])
def test_gradcache_chunks_give_the_plain_step(preset, t, b, chunk):
    """Loss, gradients and RNG state of the plain step whose forward runs the same chunks in turn; BatchNorm's
    running statistics move once, by the mean of the chunks' updates; one chunk is exactly the loop's plain step."""
    torch.manual_seed(0)
    start = DualStreamTemporalNet(temporalnet_config(preset)).train()
    loss_fn = MultiPositiveContrastiveLoss()
    views, ecg, patient = _batch(b, t, seed=1)
    plain, cached = copy.deepcopy(start), copy.deepcopy(start)
    step = ChunkedContrastiveStep(cached.embed, cached, loss_fn, chunk=chunk or b)
    bounds = step.bounds(b)
    assert len(bounds) == -(-b // (chunk or b)) and bounds[0][0] == 0 and bounds[-1][1] == b

    loss_plain = _plain_step(plain, loss_fn, views, ecg, patient, bounds, seed=11)
    rng_plain = torch.get_rng_state()
    torch.manual_seed(11)
    loss_cached = step.forward(views, ecg, patient)
    assert not loss_cached.requires_grad
    step.backward()
    assert torch.equal(torch.get_rng_state(), rng_plain)  # dropout drew the same masks, and the stream moved on alike
    torch.testing.assert_close(loss_cached, loss_plain, rtol=1e-6, atol=1e-6)
    grads = _grads(plain)
    _assert_close_dicts(_grads(cached), grads, rtol=1e-4, atol=_grad_tolerance(grads))

    # BatchNorm: each chunk is normalised with its own statistics (as one GPU's share under DDP) and the running
    # statistics become the mean of what each chunk's update from the step's start would give; counters + 1
    torch.manual_seed(11)
    expected = []
    for a, z in bounds:
        one = copy.deepcopy(start)
        with torch.no_grad():
            one.embed(views[:, a:z].flatten(0, 1))
        expected.append(_buffers(one))
    mean = {k: (torch.stack([e[k].double() for e in expected]).mean(0).to(v.dtype) if v.is_floating_point()
                else v) for k, v in expected[0].items()}
    _assert_close_dicts(_buffers(cached), mean, rtol=1e-5, atol=1e-6)
    if len(bounds) == 1:
        _assert_close_dicts(_buffers(cached), _buffers(plain), rtol=1e-6, atol=1e-7)


def test_gradcache_refuses_misuse():
    enc = DualStreamTemporalNet(temporalnet_config("tiny"))
    with pytest.raises(ValueError, match="chunk"):
        ChunkedContrastiveStep(enc.embed, enc, MultiPositiveContrastiveLoss(), chunk=0)
    step = ChunkedContrastiveStep(enc.embed, enc, MultiPositiveContrastiveLoss(), chunk=2)
    with pytest.raises(ValueError, match="forward"):
        step.backward()
    with pytest.raises(ValueError, match="views must be"):
        step.forward(torch.zeros(3, 2, 8, 64), torch.arange(2), torch.arange(2))


def _saved_bytes_on_real_tensors(config, t: int, n_ecgs: int) -> tuple[int, int]:
    """Saved-for-backward bytes (each storage once, weights excluded) and the bookkept peak of a real CPU step."""
    torch.manual_seed(0)
    encoder = DualStreamTemporalNet(config).train()
    weights = {p.untyped_storage()._cdata for p in [*encoder.parameters(), *encoder.buffers()]}
    kept: dict[int, int] = {}

    def keep(x):
        kept[x.untyped_storage()._cdata] = x.untyped_storage().nbytes()
        return x

    views = torch.randn(2 * n_ecgs, 8, t)

    def step():
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda x: x):
            z = encoder.embed(views).float()
        z.sum().backward()

    peak = memory.measure_step_peak(step, torch.device("cpu"))
    return sum(v for k, v in kept.items() if k not in weights), peak


def test_measurement_on_fake_tensors_is_the_real_steps():
    """The fake-tensor measurement (no data, seconds for the paper model) counts what a real step keeps."""
    config = temporalnet_config("tiny")
    saved_real, peak_real = _saved_bytes_on_real_tensors(config, 128, 3)
    saved_fake, peak_fake = memory._measure(config, "fp32", 128, False, 3)
    assert saved_fake == saved_real
    assert peak_fake == peak_real
    # linear in the batch from 2 ECGs on: the per-ECG figure predicts a third batch size exactly
    m = memory.activation_memory(config, "fp32", 128, "full")
    assert m.held(3) == saved_fake and m.peak(3) == peak_fake
    assert m.per_ecg > 0 and m.peak_per_ecg >= m.per_ecg


def test_checkpoint_keeps_less_and_chunked_bounds_the_batch():
    full = memory.activation_memory("paper", "bf16", 2500, "full")
    ckpt = memory.activation_memory("paper", "bf16", 2500, "checkpoint")
    chunked = memory.activation_memory("paper", "bf16", 2500, "chunked")
    assert ckpt.per_ecg < 0.5 * full.per_ecg
    # bf16 keeps about half of fp32
    fp32 = memory.activation_memory("paper", "fp32", 2500, "full")
    assert 0.4 < full.per_ecg / fp32.per_ecg < 0.65
    # the goals, as the engine computes them: the recipe's 512 within 40 GB, 4096 on one 80 GB GPU
    assert memory.predict_step_memory(full, 512).total > 80 * GB  # why the modes exist
    assert memory.predict_step_memory(ckpt, 512).total < 40 * GB
    chunk = memory.largest_chunk(chunked, 4096, 80 * GB)
    assert memory.predict_step_memory(chunked, 4096, chunk).total <= 80 * GB
    assert memory.largest_batch(chunked, 80 * GB, chunk=chunk) >= 4096
    # largest_batch is the boundary of the prediction
    n = memory.largest_batch(full, 80 * GB)
    assert memory.predict_step_memory(full, n).total <= 80 * GB < memory.predict_step_memory(full, n + 1).total
    assert memory.largest_batch(full, 80 * GB, world=8) == 8 * n


def test_the_figures_in_help_are_the_measured_ones():
    for mode, mb in PAPER_SAVED_MB_PER_ECG.items():
        measured = memory.activation_memory("paper", "bf16", 2500, mode).per_ecg / 1e6
        assert abs(measured - mb) < 1.0, (mode, measured, mb)


def test_the_plan_picks_what_fits_and_names_the_flag_when_nothing_requested_fits():
    gpu = torch.device("cuda")  # a device object only: capacity is given, nothing is allocated
    args = ("paper", "bf16", 2500, 64)
    need = {m: memory.predict_step_memory(memory.activation_memory(*args[:3], m), 64, 1).total
            for m in ("full", "checkpoint")}
    plan = memory.plan_memory(*args, "auto", None, gpu, capacity=10**15)
    assert plan.mode == "full" and plan.fits
    plan = memory.plan_memory(*args, "auto", None, gpu, capacity=(need["full"] + need["checkpoint"]) // 2)
    assert plan.mode == "checkpoint" and plan.fits
    plan = memory.plan_memory(*args, "auto", None, gpu, capacity=need["checkpoint"] // 2)
    assert plan.mode == "chunked" and plan.fits and 1 <= plan.chunk < 64
    plan = memory.plan_memory(*args, "full", None, gpu, capacity=need["checkpoint"] // 2)
    assert plan.mode == "full" and not plan.fits
    assert "will not fit" in plan.lines[-1] and "--memory chunked --memory-chunk" in plan.lines[-1]
    plan = memory.plan_memory(*args, "chunked", 8, gpu, capacity=10**15)
    assert plan.mode == "chunked" and plan.chunk == 8 and plan.fits
    plan = memory.plan_memory(*args, "auto", None, gpu, capacity=10**6)
    assert not plan.fits and "nothing at this per-rank batch does" in plan.lines[-1]
    # on a CPU auto is full, and the first line gives the per-ECG figure
    plan = memory.plan_memory("tiny", "fp32", 500, 8, "auto", None, torch.device("cpu"))
    assert plan.mode == "full" and "MB saved for backward per ECG" in plan.lines[0]
    with pytest.raises(ValueError, match="memory mode"):
        memory.plan_memory("tiny", "fp32", 500, 8, "some", None, torch.device("cpu"))


def test_compiled_checkpointed_blocks_give_the_plain_step():
    """Under torch.compile (fullgraph, AOTAutograd) the partitioner recomputes the checkpointed blocks; gradients
    and BatchNorm statistics (updated once, in the forward graph) are the eager plain step's."""
    torch.manual_seed(0)
    start = DualStreamTemporalNet(temporalnet_config("tiny", dropout=0.0)).train()  # no RNG: compile draws its own
    x = torch.randn(4, 8, 128)
    plain, ckpt = copy.deepcopy(start), copy.deepcopy(start).checkpoint_blocks()
    loss_plain = plain.embed(x).square().sum()
    loss_plain.backward()
    loss_ckpt = torch.compile(ckpt.embed, backend="aot_eager", fullgraph=True)(x).square().sum()
    loss_ckpt.backward()
    torch.testing.assert_close(loss_ckpt, loss_plain, rtol=1e-5, atol=1e-5)
    grads = _grads(plain)
    _assert_close_dicts(_grads(ckpt), grads, rtol=1e-4, atol=_grad_tolerance(grads))
    _assert_close_dicts(_buffers(ckpt), _buffers(plain), rtol=1e-5, atol=1e-7)
