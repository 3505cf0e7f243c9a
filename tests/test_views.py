"""The views of a pretraining batch: windows only from a record's valid samples, one fused call per batch that
equals the reference chain (decode, crop, transform, noise, mask) for the same parameters, and the row ids."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ecgfast.data.windows import pair_starts, segment_starts, usable
from ecgfast.ops.backends import available_backends
from ecgfast.ops.configs import VCGAugmentConfig
from ecgfast.pretrain.views import make_views, row_ids, view_windows
from ecgfast.reference.vcg_augment import philox_randn, vcg_augment_reference

BACKENDS = available_backends("vcg_augment", "cpu")  # cpp (if built), triton (interpreter), torch
SEGMENT = 250
T = 500


# ----------------------------------------------------------------------------------------------------- windows
def test_segments_come_from_the_valid_part_only():
    valid = np.array([500, 400, 250, 251, 499])
    starts = segment_starts(valid, 2, SEGMENT)
    assert starts.tolist() == [[0, 250], [0, 150], [0, 0], [0, 1], [0, 249]]
    assert (starts + SEGMENT <= valid[:, None]).all()
    # a longer store: three adjacent segments where the record holds them, evenly spread where not
    assert segment_starts(np.array([750, 600]), 3, SEGMENT).tolist() == [[0, 250, 500], [0, 175, 350]]
    assert usable(np.array([249, 250, 5000]), SEGMENT).tolist() == [False, True, True]
    with pytest.raises(ValueError, match="fewer than 250 valid samples"):
        segment_starts(np.array([249]), 2, SEGMENT)


def test_pairs_are_adjacent_halves_overlapping_segments_or_one_shared_crop():
    rng = np.random.default_rng(0)
    valid = np.array([500] * 50 + [400] * 50 + [1200] * 50)
    a, b = pair_starts(valid, SEGMENT, "intersegment", rng)
    assert (a[:50] == 0).all() and (b[:50] == 250).all()  # 10 s of 5 s segments: the paper's two halves
    assert (a[50:100] == 0).all() and (b[50:100] == 150).all()  # shorter: first and last segment, overlapping
    assert (b[100:] - a[100:] == 250).all() and (b[100:] + SEGMENT <= 1200).all()  # longer: adjacent, anywhere
    assert len(np.unique(a[100:])) > 20
    a, b = pair_starts(valid, SEGMENT, "augment", rng)
    assert (a == b).all() and (a + SEGMENT <= valid).all() and (a >= 0).all()
    assert set(np.unique(a[:50])) <= set(range(251)) and len(np.unique(a[:50])) > 20  # crops reach every start
    with pytest.raises(ValueError, match="unknown view mode"):
        pair_starts(valid, SEGMENT, "both", rng)
    with pytest.raises(ValueError, match="fewer than"):
        pair_starts(np.array([100]), SEGMENT, "augment", rng)


def test_windows_are_a_function_of_seed_and_offset():
    valid = np.full(16, 1000)
    w = view_windows(valid, SEGMENT, "intersegment", seed=1, offset=5)
    assert torch.equal(w, view_windows(valid, SEGMENT, "intersegment", seed=1, offset=5))
    assert not torch.equal(w, view_windows(valid, SEGMENT, "intersegment", seed=1, offset=6))
    assert view_windows(valid, SEGMENT, "augment", seed=1, offset=5).shape == (16,)


# ------------------------------------------------------------------------------- the step's views = reference
def _batch(batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-3000, 3000, (batch, 8, T), generator=g, dtype=torch.int16)
    gain, baseline = 100 + 200 * torch.rand(batch, generator=g), 20 * torch.randn(batch, generator=g)
    valid = np.array([T, 400, 300, T, 251, 499, T][:batch])
    return q, gain, baseline, valid


def _reference_chain(q, gain, baseline, windows, params, noise_std):
    """Decode to mV, crop each view's window, then the reference op per view with the op's Philox noise."""
    x = (q.double() - baseline.double()[:, None, None]) / gain.double()[:, None, None]
    w = windows.expand(2, -1) if windows.ndim == 1 else windows
    batch = q.shape[0]
    out = []
    for v in range(2):
        crop = torch.stack([x[b, :, w[v, b]:w[v, b] + SEGMENT] for b in range(batch)])
        noise = None
        if noise_std > 0:
            first = v * batch * 8 * SEGMENT
            counters = torch.arange(first, first + batch * 8 * SEGMENT).view(batch, 8, SEGMENT)
            noise = noise_std * philox_randn(params.noise_seed, counters).double()
        out.append(vcg_augment_reference(crop, params.matrices[v].double(), params.mask_starts[v], params.mask_length,
                                         noise, out_dtype=torch.float64))
    return torch.stack(out)


@pytest.mark.parametrize("noise_std", [0.0, 0.05])
@pytest.mark.parametrize("mode", ["intersegment", "augment"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_training_views_equal_the_reference_chain(backend, mode, noise_std):
    q, gain, baseline, valid = _batch(7, seed=len(mode))
    cfg = VCGAugmentConfig(noise_std=noise_std)
    views, windows, params = make_views(q, gain, baseline, valid, SEGMENT, mode, cfg, seed=4, offset=9,
                                        backend=backend, return_params=True)
    assert views.shape == (2, 7, 8, SEGMENT) and not views.requires_grad
    assert (windows.expand(2, -1) + SEGMENT <= torch.from_numpy(valid)).all()  # never reaches into padding
    ref = _reference_chain(q, gain, baseline, windows, params, noise_std)
    assert torch.equal(views == 0, ref == 0)  # the ZeroMask pattern exactly
    assert torch.allclose(views.double(), ref, atol=2e-5, rtol=1e-5)
    # bf16 for a bf16 encoder: the float32 views rounded once
    bf16 = make_views(q, gain, baseline, valid, SEGMENT, mode, cfg, seed=4, offset=9, backend=backend,
                      out_dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16
    assert ((bf16.double() - ref).abs() <= ref.abs() * 2.0**-8 + 1e-5).all()


def test_views_differ_between_offsets_and_views():
    q, gain, baseline, valid = _batch(4)
    a = make_views(q, gain, baseline, valid, SEGMENT, "augment", VCGAugmentConfig(), seed=1, offset=0)
    b = make_views(q, gain, baseline, valid, SEGMENT, "augment", VCGAugmentConfig(), seed=1, offset=1)
    assert not torch.allclose(a, b) and not torch.allclose(a[0], a[1])
    assert torch.equal(a, make_views(q, gain, baseline, valid, SEGMENT, "augment", VCGAugmentConfig(), seed=1,
                                     offset=0))


def test_row_ids_follow_view_ecg_stream_order():
    ids = torch.tensor([7, 8, 9])
    assert row_ids(ids, 2, 2).tolist() == [7, 7, 8, 8, 9, 9, 7, 7, 8, 8, 9, 9]
