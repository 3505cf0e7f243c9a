"""The random side of the 3KG augmentation (ecgfast.ops.vcg_params) and its hyperparameters (VCGAugmentConfig).

Oracles: distribution tests with fixed seeds (KS, chi-square) that are shown to reject a wrong range or
probability; matrices rebuilt by hand from the returned angles and scales (Rz @ Ry @ Rx, and a check that the
other order would fail); counter-based determinism checked call against call: a draw is a pure function of
(seed, offset), independent of the global RNG, and nearby (seed, offset) pairs give independent draws.
"""

from __future__ import annotations

import dataclasses
import doctest
import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.spatial.transform import Rotation

import ecgfast.ops.vcg_params
import ecgfast.reference.vcg_augment
from ecgfast.ops.configs import TRANSFORMS, VCGAugmentConfig
from ecgfast.ops.vcg_params import (
    VCGAugmentParams,
    counter_generator,
    counter_seeds,
    mask_length_for,
    sample_vcg_params,
)
from ecgfast.reference.vcg_augment import DOWER, INV_DOWER, KORS

DEG = math.pi / 180
N_DRAWS = 100_000  # ECGs per view in the distribution tests: 200,000 draws per axis over the two views
N_STARTS = 2503  # a prime number of samples for the mask starts


def _angle_pvalue(angles: torch.Tensor, max_deg: float = 45.0) -> float:
    return stats.kstest(angles.flatten().double().numpy() / DEG, "uniform", args=(-max_deg, 2 * max_deg)).pvalue


def _scale_checks(scales: torch.Tensor) -> tuple[float, float, float]:
    """(share inverted, KS p of the plain ones ~ U(1, 1.5), KS p of the inverted ones' inverses ~ U(1, 1.5))."""
    s = scales.flatten().double().numpy()
    inverted = s < 1
    p_plain = stats.kstest(s[~inverted], "uniform", args=(1.0, 0.5)).pvalue
    p_inverted = stats.kstest(1 / s[inverted], "uniform", args=(1.0, 0.5)).pvalue
    return float(inverted.mean()), p_plain, p_inverted


@pytest.fixture(scope="module")
def many() -> VCGAugmentParams:
    return sample_vcg_params(N_DRAWS, N_STARTS, seed=42, offset=7)


# ---------------------------------------------------------------------------------------- distributions
def test_angles_are_uniform_within_45_degrees(many):
    a = many.angles
    assert a.shape == (2, N_DRAWS, 3) and a.dtype == torch.float32
    assert -45 * DEG <= a.min() and a.max() <= 45 * DEG
    assert a.min() < -44.9 * DEG and a.max() > 44.9 * DEG
    for v in range(2):
        for axis in range(3):
            assert _angle_pvalue(a[v, :, axis]) > 1e-3, (v, axis)
        assert np.abs(np.corrcoef(a[v].T.numpy()) - np.eye(3)).max() < 0.01  # axes independent
    assert abs(np.corrcoef(a[0, :, 0].numpy(), a[1, :, 0].numpy())[0, 1]) < 0.01  # views independent
    # the test has power: 44 degrees or 46 degrees is rejected
    for wrong in (44.0, 46.0):
        drawn = sample_vcg_params(N_DRAWS, 10, VCGAugmentConfig(max_angle_deg=wrong), seed=1)
        assert _angle_pvalue(drawn.angles) < 1e-6, wrong


def test_scales_half_inverted_and_uniform(many):
    s = many.scales
    assert s.shape == (2, N_DRAWS, 3)
    assert 1 / 1.5 - 1e-6 <= s.min() and s.max() <= 1.5
    frac, p_plain, p_inverted = _scale_checks(s)
    assert 0.495 <= frac <= 0.505, frac
    assert p_plain > 1e-3 and p_inverted > 1e-3, (p_plain, p_inverted)
    # power: a wrong inversion probability or range fails
    frac, _, _ = _scale_checks(sample_vcg_params(N_DRAWS, 10, VCGAugmentConfig(invert_prob=0.48), seed=2).scales)
    assert not 0.495 <= frac <= 0.505, frac
    narrow = sample_vcg_params(N_DRAWS, 10, VCGAugmentConfig(scale_range=(1.0, 1.45)), seed=2).scales
    _, p_plain, p_inverted = _scale_checks(narrow)
    assert p_plain < 1e-6 and p_inverted < 1e-6
    # the configured probability and range are the ones drawn
    frac, p_plain, p_inverted = _scale_checks(
        sample_vcg_params(N_DRAWS, 10, VCGAugmentConfig(invert_prob=0.2), seed=3).scales)
    assert 0.195 <= frac <= 0.205 and p_plain > 1e-3 and p_inverted > 1e-3
    never = sample_vcg_params(1000, 10, VCGAugmentConfig(invert_prob=0.0, scale_range=(1.2, 1.2)), seed=3).scales
    assert torch.equal(never, torch.full_like(never, 1.2))


def test_mask_starts_uniform_over_all_positions(many):
    starts = many.mask_starts
    assert starts.shape == (2, N_DRAWS, 8) and starts.dtype == torch.long
    assert many.mask_length == mask_length_for(N_STARTS, 0.5) == 1252
    counts = torch.bincount(starts.flatten(), minlength=N_STARTS)
    assert len(counts) == N_STARTS and (counts > 0).all()
    assert stats.chisquare(counts.numpy()).pvalue > 1e-3
    # power: starts that never reach the last 10 positions are rejected
    short = torch.randint(0, N_STARTS - 10, (2 * N_DRAWS * 8,), generator=torch.Generator().manual_seed(3))
    assert stats.chisquare(torch.bincount(short, minlength=N_STARTS).numpy()).pvalue < 1e-6
    # leads are independent
    assert np.abs(np.corrcoef(starts[0].T.double().numpy()) - np.eye(8)).max() < 0.01


def test_mask_length_rounding():
    assert mask_length_for(2500, 0.5) == 1250
    assert mask_length_for(2501, 0.5) == 1250  # Python's round: half to even
    assert mask_length_for(7, 0.5) == 4
    assert mask_length_for(10, 0.0) == 0
    assert mask_length_for(10, 0.99) == 9  # at most T - 1
    assert mask_length_for(1, 0.5) == 0 and mask_length_for(0, 0.5) == 0
    assert sample_vcg_params(2, 10, VCGAugmentConfig(mask_fraction=0.0)).mask_length == 0
    assert sample_vcg_params(2, 97, VCGAugmentConfig(mask_fraction=0.3)).mask_length == 29


# ----------------------------------------------------------------------------------------- the matrices
def _hand_rotation(angles: np.ndarray, order: str) -> np.ndarray:
    (cx, cy, cz), (sx, sy, sz) = np.cos(angles), np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx if order == "zyx" else rx @ ry @ rz


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_returned_matrices_are_d_s_rz_ry_rx_d_inv(transform):
    p = sample_vcg_params(64, 100, VCGAugmentConfig(transform=transform), seed=3)
    assert p.matrices.shape == (2, 64, 8, 8) and p.matrices.dtype == torch.float32
    to_vcg = np.array(INV_DOWER if transform == "dower" else KORS)
    to_leads = np.array(DOWER) if transform == "dower" else np.linalg.pinv(np.array(KORS))
    wrong_order = 0
    for v in range(2):
        for b in range(64):
            a, s = p.angles[v, b].double().numpy(), p.scales[v, b].double().numpy()
            expected = to_leads @ np.diag(s) @ _hand_rotation(a, "zyx") @ to_vcg
            np.testing.assert_allclose(p.matrices[v, b].numpy(), expected, atol=2e-6)
            wrong = to_leads @ np.diag(s) @ _hand_rotation(a, "xyz") @ to_vcg
            wrong_order += not np.allclose(p.matrices[v, b].numpy(), wrong, atol=2e-6)
            # recover R from M alone: pinv(D) M pinv(D_inv) = S R; then R is a proper rotation
            sr = np.linalg.pinv(to_leads) @ p.matrices[v, b].double().numpy() @ np.linalg.pinv(to_vcg)
            r = np.diag(1 / s) @ sr
            np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-5)
            assert abs(np.linalg.det(r) - 1) < 1e-5
            np.testing.assert_allclose(r, Rotation.from_euler("xyz", a).as_matrix(), atol=1e-5)
    assert wrong_order == 128  # the test tells the orders apart
    # residual mode: I + D (S R - I) D_inv from the same draws
    res = sample_vcg_params(64, 100, VCGAugmentConfig(transform=transform, residual=True), seed=3)
    assert torch.equal(res.angles, p.angles) and torch.equal(res.scales, p.scales)
    a, s = p.angles[1, 5].double().numpy(), p.scales[1, 5].double().numpy()
    expected = np.eye(8) + to_leads @ (np.diag(s) @ _hand_rotation(a, "zyx") - np.eye(3)) @ to_vcg
    np.testing.assert_allclose(res.matrices[1, 5].numpy(), expected, atol=2e-6)


def test_zero_angles_unit_scales_give_the_rank3_projection_and_spatial_off_the_identity():
    still = VCGAugmentConfig(max_angle_deg=0.0, scale_range=(1.0, 1.0))
    p = sample_vcg_params(3, 50, still, seed=0)
    d, d_inv = torch.tensor(DOWER), torch.tensor(INV_DOWER)
    assert torch.allclose(p.matrices, (d @ d_inv).expand(2, 3, 8, 8), atol=1e-6)
    assert int(torch.linalg.matrix_rank(p.matrices[0, 0].double(), atol=1e-6)) == 3
    res = sample_vcg_params(3, 50, still.with_overrides(residual=True), seed=0)
    assert torch.allclose(res.matrices, torch.eye(8).expand(2, 3, 8, 8), atol=1e-6)
    # spatial=False: identity matrices, and the other draws are left alone (an ablation changes one thing)
    on = sample_vcg_params(5, 50, seed=9, offset=2)
    off = sample_vcg_params(5, 50, VCGAugmentConfig(spatial=False), seed=9, offset=2)
    assert torch.equal(off.matrices, torch.eye(8).expand(2, 5, 8, 8))
    assert torch.equal(on.mask_starts, off.mask_starts) and torch.equal(on.angles, off.angles)
    assert torch.equal(on.scales, off.scales) and on.noise_seed == off.noise_seed


# ------------------------------------------------------------------------------------------- the config
@pytest.mark.parametrize(("kwargs", "field"), [
    ({"max_angle_deg": -1}, "max_angle_deg"), ({"max_angle_deg": 181}, "max_angle_deg"),
    ({"max_angle_deg": True}, "max_angle_deg"), ({"max_angle_deg": "45"}, "max_angle_deg"),
    ({"scale_range": (0.9, 1.5)}, "scale_range"), ({"scale_range": (1.5, 1.2)}, "scale_range"),
    ({"scale_range": (1.0,)}, "scale_range"), ({"scale_range": (1.0, math.inf)}, "scale_range"),
    ({"scale_range": (1.0, math.nan)}, "scale_range"), ({"scale_range": "ab"}, "scale_range"),
    ({"scale_range": 1.5}, "scale_range"),
    ({"invert_prob": -0.1}, "invert_prob"), ({"invert_prob": 1.1}, "invert_prob"),
    ({"invert_prob": math.nan}, "invert_prob"),
    ({"mask_fraction": 1.0}, "mask_fraction"), ({"mask_fraction": -0.1}, "mask_fraction"),
    ({"transform": "frank"}, "transform"), ({"residual": 1}, "residual"), ({"spatial": "yes"}, "spatial"),
    ({"noise_std": -0.1}, "noise_std"), ({"noise_std": math.inf}, "noise_std"), ({"noise_std": math.nan}, "noise_std"),
])
def test_config_rejects_bad_hyperparameters_naming_them(kwargs, field):
    with pytest.raises(ValueError, match=field):
        VCGAugmentConfig(**kwargs)
    with pytest.raises(ValueError, match=field):  # an override is validated again
        VCGAugmentConfig().with_overrides(**kwargs)


def test_config_defaults_are_the_papers_and_the_dataclass_is_frozen():
    c = VCGAugmentConfig()
    assert (c.max_angle_deg, c.scale_range, c.invert_prob, c.mask_fraction) == (45.0, (1.0, 1.5), 0.5, 0.5)
    assert (c.transform, c.residual, c.spatial, c.noise_std) == ("dower", False, True, 0.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.max_angle_deg = 30.0
    assert c.with_overrides() is c
    other = c.with_overrides(max_angle_deg=30, noise_std=0.05)
    assert other.max_angle_deg == 30 and other.noise_std == 0.05 and c.max_angle_deg == 45.0
    assert VCGAugmentConfig(scale_range=[1, 2]).scale_range == (1.0, 2.0)  # a list is stored as a float tuple
    assert VCGAugmentConfig(max_angle_deg=0, mask_fraction=0, invert_prob=1).mask_fraction == 0  # edges allowed
    # the config's transforms are the reference's (configs.py imports no torch, so it keeps its own copy)
    assert TRANSFORMS == ecgfast.reference.vcg_augment.TRANSFORMS


# -------------------------------------------------------------------------------- counter-based draws
def _same(a: VCGAugmentParams, b: VCGAugmentParams) -> bool:
    return all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("matrices", "mask_starts", "angles", "scales")) \
        and a.noise_seed == b.noise_seed and a.mask_length == b.mask_length


def test_a_draw_is_a_pure_function_of_seed_and_offset():
    a = sample_vcg_params(6, 97, seed=11, offset=3)
    torch.manual_seed(0)  # the global RNG plays no part
    torch.rand(10)
    b = sample_vcg_params(6, 97, seed=11, offset=3)
    assert _same(a, b)
    # every other (seed, offset) nearby gives other draws, and not merely shifted ones: (s, o + 1) != (s + 1, o)
    others = [sample_vcg_params(6, 97, seed=s, offset=o) for s, o in ((11, 4), (12, 3), (12, 2), (10, 4), (0, 0))]
    for other in others:
        assert not torch.equal(a.angles, other.angles) and not torch.equal(a.mask_starts, other.mask_starts)
        assert a.noise_seed != other.noise_seed
    assert not torch.equal(sample_vcg_params(6, 97, seed=0, offset=1).angles,
                           sample_vcg_params(6, 97, seed=1, offset=0).angles)
    # one view is the first view of two (view 0 is drawn first), and a larger batch does not change the stream
    # layout of a view: (V, B, ...) from one generator, view by view
    one = sample_vcg_params(6, 97, seed=11, offset=3, n_views=1)
    assert one.matrices.shape == (1, 6, 8, 8)
    assert torch.equal(one.angles[0], a.angles[0]) and torch.equal(one.mask_starts[0], a.mask_starts[0])
    assert one.noise_seed == a.noise_seed
    # the draw does not depend on the device it is sent to
    assert _same(sample_vcg_params(6, 97, seed=11, offset=3, device="cpu"), a)


def test_consecutive_offsets_and_seeds_are_independent_streams():
    n = 20_000
    base = sample_vcg_params(n, 10, seed=5, offset=0, n_views=1).angles[0, :, 0].numpy()
    for seed, offset in ((5, 1), (5, 2), (6, 0), (4, 1)):
        other = sample_vcg_params(n, 10, seed=seed, offset=offset, n_views=1).angles[0, :, 0].numpy()
        assert abs(np.corrcoef(base, other)[0, 1]) < 4 / math.sqrt(n), (seed, offset)
    # the two hashes of one call differ, and are 63-bit non-negative integers (a valid torch seed and Philox key)
    seeds = {counter_seeds(s, o) for s in range(20) for o in range(20)}
    assert len(seeds) == 400 and all(0 <= g < 2**63 and 0 <= k < 2**63 and g != k for g, k in seeds)
    assert len({k for _, k in seeds} | {g for g, _ in seeds}) == 800
    assert counter_seeds(3, 4) == counter_seeds(3, 4)


def test_counter_generator_streams():
    # stream 0 is the augmentation's own generator: its first draws are view 0's angles
    p = sample_vcg_params(4, 50, seed=8, offset=6)
    g = counter_generator(8, 6)
    assert torch.equal((2.0 * torch.rand(4, 3, generator=g) - 1.0) * math.radians(45.0), p.angles[0])
    first = {stream: torch.rand(1000, generator=counter_generator(8, 6, stream)) for stream in (0, 1, 2)}
    assert torch.equal(first[1], torch.rand(1000, generator=counter_generator(8, 6, 1)))  # reproducible
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[1], first[2])
    assert not torch.equal(first[1], torch.rand(1000, generator=counter_generator(8, 7, 1)))  # per call
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert abs(np.corrcoef(first[a].numpy(), first[b].numpy())[0, 1]) < 0.15
    with pytest.raises(ValueError, match="offset"):
        counter_generator(8, -1)


def test_sampler_validates_its_arguments():
    with pytest.raises(ValueError, match="batch"):
        sample_vcg_params(-1, 10)
    with pytest.raises(ValueError, match="n_samples"):
        sample_vcg_params(2, 0)
    with pytest.raises(ValueError, match="n_views"):
        sample_vcg_params(2, 10, n_views=3)
    with pytest.raises(ValueError, match="offset"):
        sample_vcg_params(2, 10, offset=-1)
    with pytest.raises(ValueError, match="offset"):
        counter_seeds(0, -1)
    empty = sample_vcg_params(0, 10)
    assert empty.matrices.shape == (2, 0, 8, 8) and empty.mask_starts.shape == (2, 0, 8)


def test_params_to_moves_every_tensor():
    p = sample_vcg_params(3, 20, seed=1)
    q = p.to(torch.device("meta"))
    assert all(getattr(q, f).device.type == "meta" for f in ("matrices", "mask_starts", "angles", "scales"))
    assert q.mask_length == p.mask_length and q.noise_seed == p.noise_seed and p.matrices.device.type == "cpu"
    bare = VCGAugmentParams(p.matrices, p.mask_starts, p.mask_length, p.noise_seed)  # explicit: no angles
    assert bare.to("cpu").angles is None and bare.to("cpu").scales is None


def test_docstring_examples_run():
    result = doctest.testmod(ecgfast.ops.vcg_params, extraglobs={"torch": torch})
    assert result.failed == 0 and result.attempted > 0
