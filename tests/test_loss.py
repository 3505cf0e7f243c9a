"""Tests of the multi-positive contrastive loss: reference, config, functional and module against independent oracles.

Oracles: a pure-Python loop port of the formula (float64), closed forms on degenerate inputs, a row permutation,
float64 gradcheck, independent ports of CLOCS' symmetric per-view-pair loss and SimCLR's NT-Xent, and a
2-process gloo run with different inputs on each rank checked against the single-process full batch
(tests/ddp_harness.py, on the reference backend here; every kernel backend in tests/test_contrastive_loss_op.py).
The fused backends against the reference: tests/test_contrastive_loss_op.py.
"""

from __future__ import annotations

import dataclasses
import doctest
import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from ddp_harness import GLOO, assert_ranks_match_the_full_batch, run_ranks

import ecgfast.nn
import ecgfast.reference.contrastive_loss
from ecgfast.nn import MultiPositiveContrastiveLoss
from ecgfast.ops.configs import REDUCTIONS, ContrastiveLossConfig
from ecgfast.ops.contrastive_loss import multi_positive_contrastive_loss
from ecgfast.reference.contrastive_loss import (
    multi_positive_contrastive_loss_reference,
    positive_weight_matrix,
    positive_weight_sums,
)

# The grid, declared once: odd and prime sizes included.
NS = (2, 3, 7, 31)
DS = (1, 5, 16)
ID_CASES = ("one", "nested", "crossing", "singletons", "one_group")
TAU = 0.1


def make_ids(case: str, n: int, gen: torch.Generator) -> list[torch.Tensor]:
    """Group-id vectors for ``n`` rows: one, nested (ECG within patient), crossing, mostly singletons, one group."""
    if case == "one":
        return [torch.randint(0, max(1, n // 2), (n,), generator=gen)]
    if case == "nested":  # ECG ids, then patient = ECG // 2: same ECG implies same patient
        ecg = torch.randint(0, max(1, n // 2), (n,), generator=gen)
        return [ecg, ecg // 2]
    if case == "crossing":  # two unrelated partitions, int32 and int64
        return [torch.randint(0, 3, (n,), generator=gen, dtype=torch.int32), torch.randint(0, 2, (n,), generator=gen)]
    if case == "singletons":  # every row alone except rows 0 and 1: most rows have no positive
        ids = torch.arange(n)
        ids[min(1, n - 1)] = 0
        return [ids]
    if case == "one_group":
        return [torch.zeros(n, dtype=torch.long)]
    raise ValueError(case)


def loop_loss(
    z: torch.Tensor,
    group_ids: list[torch.Tensor],
    temperature: float = TAU,
    weights: list[float] | None = None,
    view_ids: torch.Tensor | None = None,
    normalize: bool = True,
) -> list[float | None]:
    """Per-row loss by the formula, in Python floats: loss_i = -sum_j w_ij log(exp s_ij / sum_a exp s_ia) / sum_j w_ij.

    None for a row without positives.
    """
    rows = z.double().tolist()
    if normalize:
        rows = [[v / max(math.sqrt(sum(u * u for u in r)), 1e-12) for v in r] for r in rows]
    ids = [g.tolist() for g in group_ids]
    lam = list(weights) if weights is not None else [1.0] * len(ids)
    views = view_ids.tolist() if view_ids is not None else None
    n = len(rows)
    out: list[float | None] = []
    for i in range(n):
        others = [a for a in range(n) if a != i and (views is None or views[a] != views[i])]
        s = {a: sum(x * y for x, y in zip(rows[i], rows[a], strict=True)) / temperature for a in others}
        w = {j: sum(lk for lk, g in zip(lam, ids, strict=True) if g[i] == g[j]) for j in others}
        total = sum(w.values())
        if total == 0:
            out.append(None)
            continue
        denominator = sum(math.exp(s[a]) for a in others)
        out.append(-sum(w[j] * math.log(math.exp(s[j]) / denominator) for j in others) / total)
    return out


def reduce_loop(per_row: list[float | None], reduction: str) -> float | list[float]:
    valid = [v for v in per_row if v is not None]
    if reduction == "none":
        return [0.0 if v is None else v for v in per_row]
    if reduction == "sum":
        return sum(valid)
    return sum(valid) / len(valid) if valid else 0.0


# ---------------------------------------------------------------------------------------------------------------
# The loop oracle over the grid


@pytest.mark.parametrize("case", ID_CASES)
@pytest.mark.parametrize("d", DS)
@pytest.mark.parametrize("n", NS)
def test_reference_matches_loop_oracle(n: int, d: int, case: str) -> None:
    gen = torch.Generator().manual_seed(1000 * n + 10 * d + ID_CASES.index(case))
    z = torch.randn(n, d, generator=gen, dtype=torch.float64)
    ids = make_ids(case, n, gen)
    weight_options = [None, (torch.rand(len(ids), generator=gen, dtype=torch.float64) * 2).tolist()]
    view_options = [None, torch.randint(0, 2, (n,), generator=gen)]
    for weights in weight_options:
        for views in view_options:
            per_row = loop_loss(z, ids, TAU, weights, views)
            for reduction in ("mean", "sum", "none"):
                expected = torch.tensor(reduce_loop(per_row, reduction), dtype=torch.float64)
                with pytest.warns(RuntimeWarning) if reduction != "none" and all(v is None for v in per_row) else \
                        _no_warning():
                    got = multi_positive_contrastive_loss_reference(z, ids, TAU, weights, views, reduction=reduction)
                assert got.dtype == torch.float64
                torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12,
                                           msg=f"weights={weights} views={views} reduction={reduction}")
            # the group-count form of W_i agrees with the matrix
            w = positive_weight_matrix(ids, weights, views)
            torch.testing.assert_close(positive_weight_sums(ids, weights, views), w.sum(1), rtol=1e-12, atol=1e-12)
            assert w.diagonal().eq(0).all()


class _no_warning:
    """Context manager: fails on a RuntimeWarning inside."""

    def __enter__(self) -> None:
        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("error", RuntimeWarning)

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)


@pytest.mark.parametrize("n", (3, 8))
def test_prenormalised_input_and_normalize_false(n: int) -> None:
    gen = torch.Generator().manual_seed(n)
    z = F.normalize(torch.randn(n, 4, generator=gen, dtype=torch.float64), dim=1)
    ids = [torch.tensor([0, 1] * (n // 2) + [0] * (n % 2))]
    expected = reduce_loop(loop_loss(z, ids, 0.5, normalize=False), "mean")
    got = multi_positive_contrastive_loss_reference(z, ids, 0.5, normalize=False)
    assert got.item() == pytest.approx(expected, rel=1e-12)
    raw = torch.randn(n, 4, generator=gen, dtype=torch.float64) * 0.3  # not normalised: the raw dot products count
    expected = reduce_loop(loop_loss(raw, ids, 0.5, normalize=False), "mean")
    assert multi_positive_contrastive_loss_reference(raw, ids, 0.5, normalize=False).item() == pytest.approx(
        expected, rel=1e-12)


def test_rows_selects_anchor_block() -> None:
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(10, 6, generator=gen, dtype=torch.float64)
    ids = [torch.tensor([0, 0, 1, 1, 2, 2, 3, 4, 4, 5])]  # rows 6 and 9 have no positive
    full = multi_positive_contrastive_loss_reference(z, ids, reduction="none")
    block = multi_positive_contrastive_loss_reference(z, ids, reduction="none", rows=slice(4, 10))
    torch.testing.assert_close(block, full[4:10], rtol=0, atol=0)
    mean = multi_positive_contrastive_loss_reference(z, ids, rows=slice(4, 10))
    torch.testing.assert_close(mean, full[[4, 5, 7, 8]].mean())


# ---------------------------------------------------------------------------------------------------------------
# Closed forms


@pytest.mark.parametrize("n", (2, 5, 12))
def test_identical_embeddings_give_log_of_the_denominator_size(n: int) -> None:
    """Every s_ij = 1/tau, so loss_i = log sum_a e^(1/tau) - (sum_j w_ij / tau) / sum_j w_ij = log |allowed(i)|."""
    z = torch.randn(1, 7, dtype=torch.float64).expand(n, 7)
    rows = torch.arange(n)
    groupings = [[torch.zeros(n, dtype=torch.long)], [rows // 2], [rows % 2, rows // 3]]
    for ids in groupings:
        per_row = multi_positive_contrastive_loss_reference(z, ids, TAU, reduction="none")
        has_pos = positive_weight_sums(ids) > 0
        expected = torch.where(has_pos, torch.tensor(math.log(n - 1), dtype=torch.float64), 0.0)
        torch.testing.assert_close(per_row, expected)
        if has_pos.any():
            assert multi_positive_contrastive_loss_reference(z, ids, TAU).item() == pytest.approx(math.log(n - 1))
    # two views of n ECGs, view-restricted: the denominator holds the n rows of the other view
    z2 = torch.ones(2 * n, 3, dtype=torch.float64)
    views = torch.arange(2 * n) // n
    loss = multi_positive_contrastive_loss_reference(z2, [torch.arange(n).repeat(2)], TAU, view_ids=views)
    assert loss.item() == pytest.approx(math.log(n))


@pytest.mark.parametrize("b", (2, 3, 8))
def test_two_views_of_orthogonal_one_hots(b: int) -> None:
    """Row i has s = 1/tau with its other view and 0 with the 2b - 2 others: loss = log(1 + (2b - 2) e^(-1/tau))."""
    z = torch.eye(b, dtype=torch.float64).repeat(2, 1)
    ecg = torch.arange(b).repeat(2)
    loss = multi_positive_contrastive_loss_reference(z, [ecg], TAU)
    assert loss.item() == pytest.approx(math.log1p((2 * b - 2) * math.exp(-1 / TAU)), rel=1e-12)
    views = torch.arange(2 * b) // b  # only the other view's b rows in the denominator
    loss = multi_positive_contrastive_loss_reference(z, [ecg], TAU, view_ids=views)
    assert loss.item() == pytest.approx(math.log1p((b - 1) * math.exp(-1 / TAU)), rel=1e-12)


@pytest.mark.filterwarnings("ignore:Anomaly Detection has been enabled")
def test_no_positives_returns_a_connected_zero_and_warns() -> None:
    z = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    for ids, kwargs in [
        ([torch.arange(5)], {}),  # all singletons
        ([torch.zeros(5, dtype=torch.long)], {"weights": [0.0]}),  # weight 0
        ([torch.zeros(5, dtype=torch.long)], {"view_ids": torch.zeros(5, dtype=torch.long)}),  # nothing allowed at all
    ]:
        for reduction in ("mean", "sum"):
            with pytest.warns(RuntimeWarning, match="no row has a positive"):
                loss = multi_positive_contrastive_loss_reference(z, ids, reduction=reduction, **kwargs)
            assert loss.item() == 0 and loss.grad_fn is not None
            with torch.autograd.detect_anomaly():  # no NaN even in intermediate gradients
                (grad,) = torch.autograd.grad(loss, z)
            assert torch.equal(grad, torch.zeros_like(grad))  # zeros, not NaN
    one = torch.randn(1, 3, requires_grad=True)  # N = 1: no other row at all, through the module (default backend)
    with pytest.warns(RuntimeWarning, match="no row has a positive"):
        loss = MultiPositiveContrastiveLoss()(one, torch.zeros(1, dtype=torch.long))
    assert loss.item() == 0
    loss.backward()
    assert torch.equal(one.grad, torch.zeros_like(one))


def test_rows_without_positives_leave_the_mean_and_get_no_nan_gradient() -> None:
    gen = torch.Generator().manual_seed(5)
    z = torch.randn(6, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    ids = [torch.tensor([0, 0, 1, 2, 3, 3])]
    views = torch.tensor([0, 1, 0, 1, 0, 0])  # rows 4, 5: same group but same view -> no positive
    per_row = multi_positive_contrastive_loss_reference(z, ids, view_ids=views, reduction="none")
    assert per_row[2:].eq(0).all() and (per_row[:2] > 0).all()
    loss = multi_positive_contrastive_loss_reference(z, ids, view_ids=views)
    torch.testing.assert_close(loss, per_row[:2].mean())
    loss.backward()
    assert torch.isfinite(z.grad).all()


# ---------------------------------------------------------------------------------------------------------------
# Symmetry, semantics of weights


def test_permuting_rows_and_ids_leaves_the_loss_unchanged() -> None:
    gen = torch.Generator().manual_seed(11)
    n = 23
    z = torch.randn(n, 8, generator=gen, dtype=torch.float64)
    ids = make_ids("nested", n, gen)
    views = torch.randint(0, 3, (n,), generator=gen)
    perm = torch.randperm(n, generator=gen)
    for kwargs in ({}, {"view_ids": views}):
        a = multi_positive_contrastive_loss_reference(z, ids, weights=[1.0, 0.3], reduction="none", **kwargs)
        pk = {k: v[perm] for k, v in kwargs.items()}
        b = multi_positive_contrastive_loss_reference(z[perm], [g[perm] for g in ids], weights=[1.0, 0.3],
                                                      reduction="none", **pk)
        torch.testing.assert_close(b, a[perm], rtol=1e-12, atol=1e-12)
        # relabelling the groups changes nothing either
        relabelled = [g * 7 + 100 for g in ids]
        c = multi_positive_contrastive_loss_reference(z, relabelled, weights=[1.0, 0.3], reduction="none", **kwargs)
        torch.testing.assert_close(c, a, rtol=0, atol=0)


def test_nested_weights_add_and_the_coarse_vector_alone_is_the_union() -> None:
    ecg = torch.tensor([0, 1, 2, 0, 1, 2])
    patient = torch.tensor([5, 5, 6, 5, 5, 6])
    w = positive_weight_matrix([ecg, patient], [2.0, 0.5])
    assert w[0, 3] == 2.5 and w[0, 1] == 0.5 and w[0, 2] == 0 and w[2, 5] == 2.5
    z = torch.randn(6, 5, dtype=torch.float64)
    union = multi_positive_contrastive_loss_reference(z, [patient])
    torch.testing.assert_close(multi_positive_contrastive_loss_reference(z, [ecg, patient], weights=[0.0, 1.0]), union)
    # scaling all weights by a constant changes nothing (the weights are normalised per row)
    torch.testing.assert_close(multi_positive_contrastive_loss_reference(z, [ecg, patient], weights=[2.0, 1.0]),
                               multi_positive_contrastive_loss_reference(z, [ecg, patient], weights=[6.0, 3.0]))


# ---------------------------------------------------------------------------------------------------------------
# Gradients


@pytest.mark.parametrize("reduction", ("mean", "none"))
def test_gradcheck_float64(reduction: str) -> None:
    gen = torch.Generator().manual_seed(7)
    z = torch.randn(5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    ids = [torch.tensor([0, 0, 1, 1, 2]), torch.tensor([0, 0, 0, 1, 1])]  # row 4 has only a patient positive
    views = torch.tensor([0, 1, 0, 1, 0])
    for kwargs in ({}, {"weights": [1.0, 0.5]}, {"view_ids": views}, {"weights": [0.7, 0.0], "view_ids": views}):
        assert torch.autograd.gradcheck(
            lambda x, kw=kwargs: multi_positive_contrastive_loss_reference(x, ids, TAU, reduction=reduction, **kw),
            (z,), eps=1e-6, atol=1e-5)
    # without normalisation too (small inputs: s = z.z / tau stays moderate)
    assert torch.autograd.gradcheck(
        lambda x: multi_positive_contrastive_loss_reference(x * 0.3, ids, 0.5, normalize=False, reduction=reduction),
        (z,), eps=1e-6, atol=1e-5)


def test_grad_output_not_one_scales_the_gradient() -> None:
    gen = torch.Generator().manual_seed(9)
    z = torch.randn(12, 6, generator=gen, requires_grad=True)
    ids = make_ids("nested", 12, gen)
    loss_fn = MultiPositiveContrastiveLoss(weights=(1.0, 0.5))
    (g1,) = torch.autograd.grad(loss_fn(z, *ids), z)
    (g37,) = torch.autograd.grad(loss_fn(z, *ids) * 3.7, z)
    torch.testing.assert_close(g37, 3.7 * g1)
    per_row = MultiPositiveContrastiveLoss(reduction="none")(z, *ids)  # a non-uniform upstream gradient
    up = torch.rand(12, generator=gen)
    (g_rows,) = torch.autograd.grad(per_row, z, up)
    (g_sum,) = torch.autograd.grad((MultiPositiveContrastiveLoss(reduction="none")(z, *ids) * up).sum(), z)
    torch.testing.assert_close(g_rows, g_sum)


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16))
def test_half_inputs_give_a_float32_loss_close_to_the_float32_inputs_loss(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(13)
    n, d = 64, 32
    z32 = torch.randn(n, d, generator=gen)
    ids = [torch.arange(n) % 16, torch.arange(n) % 8]
    views = torch.arange(n) // 16 % 2
    z_low = z32.to(dtype).requires_grad_()
    for kwargs in ({}, {"view_ids": views}):
        truth = multi_positive_contrastive_loss_reference(z32.double(), ids, **kwargs)
        got = multi_positive_contrastive_loss_reference(z_low, ids, **kwargs)
        assert got.dtype == torch.float32
        low = multi_positive_contrastive_loss_reference(z_low, ids, upcast=False, **kwargs)  # torch in low precision
        assert low.dtype == dtype
        err, err_low = (got.double() - truth).abs().item(), (low.double() - truth).abs().item()
        assert err <= 2 * err_low + 1e-5, (err, err_low)
        # analytic bound: each loss_i is 2-Lipschitz in max |s_ij|, and s moves only by the input rounding
        unit = F.normalize(z32.double(), dim=1)
        unit_low = F.normalize(z_low.detach().double(), dim=1)
        ds = ((unit_low @ unit_low.T - unit @ unit.T) / TAU).abs().max().item()
        assert err <= 2 * ds + 1e-5, (err, ds)
        (grad,) = torch.autograd.grad(got, z_low)
        assert grad.dtype == dtype
        z64 = z32.double().requires_grad_()
        (grad64,) = torch.autograd.grad(multi_positive_contrastive_loss_reference(z64, ids, **kwargs), z64)
        rel = ((grad.double() - grad64).norm() / grad64.norm()).item()
        assert rel < 0.05, rel


# ---------------------------------------------------------------------------------------------------------------
# Special cases: CLOCS and SimCLR


def clocs_multi_positive_port(za: torch.Tensor, zb: torch.Tensor, patient: torch.Tensor, tau: float) -> torch.Tensor:
    """CLOCS-style loss for one view pair (a, b), positives in the multi-positive sense.

    S = Z_a Z_b^T / tau (B, B); row i (anchor in view a) takes as positives the diagonal (its own ECG) and every
    same-patient column; the column loss does the same on S^T; the two means are averaged.
    """
    s = F.normalize(za.double(), dim=1) @ F.normalize(zb.double(), dim=1).T / tau
    pos = (patient[:, None] == patient[None, :]).double()  # diagonal included
    row = -(pos * F.log_softmax(s, dim=1)).sum(1) / pos.sum(1)
    col = -(pos.T * F.log_softmax(s.T, dim=1)).sum(1) / pos.T.sum(1)
    return (row.mean() + col.mean()) / 2


def clocs_authors_code_port(za: torch.Tensor, zb: torch.Tensor, patient: torch.Tensor, tau: float) -> torch.Tensor:
    """CLOCS' published ``obtain_contrastive_loss`` (trial CMSC/CMLC) for two views, transcribed.

    Diagonal row and column InfoNCE, plus the mean over upper-triangle same-patient pairs (row softmax) and the
    mean over lower-triangle ones (column softmax), divided by the number of terms present.
    """
    s = torch.exp(F.normalize(za.double(), dim=1) @ F.normalize(zb.double(), dim=1).T / tau)
    same = (patient[:, None] == patient[None, :]).double()
    rows1, cols1 = torch.nonzero(torch.triu(same, 1), as_tuple=True)
    rows2, cols2 = torch.nonzero(torch.tril(same, -1), as_tuple=True)
    row_sum, col_sum, diag = s.sum(1), s.sum(0), torch.diag(s)
    loss = -torch.mean(torch.log(diag / row_sum)) - torch.mean(torch.log(diag / col_sum))
    terms = 2
    if len(rows1) > 0:
        loss = loss - torch.mean(torch.log(s[rows1, cols1] / row_sum[rows1]))
        terms += 1
    if len(rows2) > 0:
        loss = loss - torch.mean(torch.log(s[rows2, cols2] / col_sum[cols2]))
        terms += 1
    return loss / terms


def nt_xent_port(za: torch.Tensor, zb: torch.Tensor, tau: float) -> torch.Tensor:
    """SimCLR's NT-Xent: 2B rows, self-similarity dropped, cross-entropy towards the other view of the same item."""
    z = F.normalize(torch.cat([za, zb]).double(), dim=1)
    n, b = z.shape[0], z.shape[0] // 2
    s = (z @ z.T / tau)[~torch.eye(n, dtype=torch.bool)].view(n, n - 1)  # row i without column i
    partner = torch.cat([torch.arange(b, n), torch.arange(b)])
    target = torch.where(partner > torch.arange(n), partner - 1, partner)  # column index once the diagonal is gone
    return F.cross_entropy(s, target)


@pytest.mark.parametrize("b", (2, 5, 16))
def test_clocs_style_loss_is_the_view_restricted_multi_positive_loss(b: int) -> None:
    gen = torch.Generator().manual_seed(b)
    za, zb = torch.randn(b, 12, generator=gen, dtype=torch.float64), torch.randn(b, 12, generator=gen,
                                                                                dtype=torch.float64)
    z = torch.cat([za, zb])  # rows (view, ECG)
    views = torch.arange(2 * b) // b
    patient = torch.randint(0, max(1, b // 2), (b,), generator=gen)  # patients repeat
    ours = multi_positive_contrastive_loss_reference(z, [patient.repeat(2)], TAU, view_ids=views)
    torch.testing.assert_close(ours, clocs_multi_positive_port(za, zb, patient, TAU), rtol=1e-12, atol=1e-12)
    # no patient repeats: ECG ids; then the authors' published code is the same loss as well
    ecg = torch.arange(b)
    ours = multi_positive_contrastive_loss_reference(z, [ecg.repeat(2)], TAU, view_ids=views)
    torch.testing.assert_close(ours, clocs_multi_positive_port(za, zb, ecg, TAU), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours, clocs_authors_code_port(za, zb, ecg, TAU), rtol=1e-12, atol=1e-12)
    # gradients agree too
    z_req = z.clone().requires_grad_()
    (g_ours,) = torch.autograd.grad(
        multi_positive_contrastive_loss_reference(z_req, [patient.repeat(2)], TAU, view_ids=views), z_req)
    (g_clocs,) = torch.autograd.grad(clocs_multi_positive_port(z_req[:b], z_req[b:], patient, TAU), z_req)
    torch.testing.assert_close(g_ours, g_clocs, rtol=1e-10, atol=1e-12)


def test_clocs_authors_code_differs_once_patients_repeat() -> None:
    """Documented limit: the published code averages same-patient terms over pairs, upper triangle with the row
    softmax and lower triangle with the column softmax only; that weighting is not a multi-positive loss."""
    gen = torch.Generator().manual_seed(0)
    za, zb = torch.randn(6, 8, generator=gen, dtype=torch.float64), torch.randn(6, 8, generator=gen,
                                                                              dtype=torch.float64)
    patient = torch.tensor([0, 0, 0, 1, 2, 2])
    ours = multi_positive_contrastive_loss_reference(torch.cat([za, zb]), [patient.repeat(2)], TAU,
                                                     view_ids=torch.arange(12) // 6)
    assert not torch.allclose(ours, clocs_authors_code_port(za, zb, patient, TAU), rtol=1e-3)


@pytest.mark.parametrize("b", (2, 7, 16))
def test_nt_xent_is_the_loss_with_ecg_ids(b: int) -> None:
    gen = torch.Generator().manual_seed(100 + b)
    za, zb = torch.randn(b, 9, generator=gen, dtype=torch.float64), torch.randn(b, 9, generator=gen,
                                                                               dtype=torch.float64)
    ours = multi_positive_contrastive_loss_reference(torch.cat([za, zb]), torch.arange(b).repeat(2), 0.2)
    torch.testing.assert_close(ours, nt_xent_port(za, zb, 0.2), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# The config, the module and the functional


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"temperature": 0.0}, "temperature"), ({"temperature": -0.1}, "temperature"),
    ({"temperature": float("inf")}, "temperature"), ({"temperature": float("nan")}, "temperature"),
    ({"temperature": True}, "temperature"), ({"temperature": "0.1"}, "temperature"),
    ({"reduction": "avg"}, "reduction"), ({"weights": (1.0, -0.5)}, ">= 0"), ({"weights": (float("nan"),)}, "finite"),
    ({"weights": [[1.0]]}, "weights"), ({"weights": ()}, "non-empty"), ({"weights": "ab"}, "weights"),
    ({"weights": (True,)}, "numbers"), ({"normalize": 1}, "normalize"), ({"gather": "yes"}, "gather"),
])
def test_config_and_module_reject_bad_hyperparameters(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ContrastiveLossConfig(**kwargs)
    with pytest.raises(ValueError, match=match):
        MultiPositiveContrastiveLoss(**kwargs)
    z, ids = torch.randn(4, 3), torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match=match):  # the functional validates through the same config
        multi_positive_contrastive_loss(z, ids, **kwargs)


def test_config_defaults_weights_and_frozen() -> None:
    c = ContrastiveLossConfig()
    assert (c.temperature, c.weights, c.normalize, c.reduction, c.gather) == (0.1, None, True, "mean", True)
    assert c.weights_for(3) == (1.0, 1.0, 1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.temperature = 0.2
    w = ContrastiveLossConfig(weights=torch.tensor([1.0, 0.5]))  # a tensor or a list is stored as a float tuple
    assert w.weights == (1.0, 0.5) and ContrastiveLossConfig(weights=[2, 0]).weights == (2.0, 0.0)
    assert w.weights_for(2) == (1.0, 0.5)
    with pytest.raises(ValueError, match="2 weights for 3"):
        w.weights_for(3)
    assert ContrastiveLossConfig(temperature=1).temperature == 1  # an int is a number
    # the config's reductions are the reference's (configs.py imports no torch, so it keeps its own copy)
    assert REDUCTIONS == ecgfast.reference.contrastive_loss.REDUCTIONS


def test_module_validates_inputs_and_holds_its_config() -> None:
    loss_fn = MultiPositiveContrastiveLoss(weights=(1.0, 1.0))
    z, ids = torch.randn(4, 3), torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match="2 weights for 1"):
        loss_fn(z, ids)
    with pytest.raises(ValueError, match="integer"):
        loss_fn(z, ids, ids.float())
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        loss_fn(z, ids, ids[:3])
    with pytest.raises(ValueError, match="at least one"):
        MultiPositiveContrastiveLoss()(z)
    with pytest.raises(ValueError, match="view_ids"):
        MultiPositiveContrastiveLoss()(z, ids, view_ids=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(N, d\)"):
        MultiPositiveContrastiveLoss()(torch.randn(4), ids)
    with pytest.raises(ValueError, match="must be one of"):
        MultiPositiveContrastiveLoss(backend="cuda-magic")(z, ids)
    assert "temperature=0.1" in repr(loss_fn) and "backend=None" in repr(loss_fn)
    cfg = ContrastiveLossConfig(temperature=0.3, weights=(1.0, 0.2), reduction="sum", gather=False)
    from_config = MultiPositiveContrastiveLoss(config=cfg, backend="torch")
    assert from_config.config is cfg
    expected = multi_positive_contrastive_loss_reference(z, [ids, ids // 2], 0.3, (1.0, 0.2), reduction="sum")
    torch.testing.assert_close(from_config(z, ids, ids // 2), expected, rtol=0, atol=0)


def test_module_and_functional_match_the_reference() -> None:
    gen = torch.Generator().manual_seed(21)
    z = torch.randn(10, 7, generator=gen)
    ecg, patient = torch.arange(10) % 5, torch.arange(10) % 5 // 2
    views = torch.arange(10) // 5
    expected = multi_positive_contrastive_loss_reference(z, [ecg, patient], 0.2, [1.0, 0.25], views)
    module = MultiPositiveContrastiveLoss(temperature=0.2, weights=[1.0, 0.25])
    # the module and the functional run the fused op: the reference's value up to float32 summation order
    torch.testing.assert_close(module(z, ecg, patient, view_ids=views), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(module(z, torch.stack([ecg, patient]), view_ids=views), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(multi_positive_contrastive_loss(z, [ecg, patient], 0.2, [1.0, 0.25], views),
                               expected, rtol=1e-5, atol=1e-6)
    # without torch.distributed, gather=True is a no-op: the same loss
    torch.testing.assert_close(multi_positive_contrastive_loss(z, [ecg, patient], 0.2, [1.0, 0.25], views,
                                                               gather=False), expected, rtol=1e-5, atol=1e-6)
    # normalize=False and reduction="none" reach the op too
    unit = F.normalize(z, dim=1)
    per_row = MultiPositiveContrastiveLoss(normalize=False, reduction="none")(unit, ecg)
    torch.testing.assert_close(per_row, multi_positive_contrastive_loss_reference(unit, [ecg], normalize=False,
                                                                                 reduction="none"),
                               rtol=1e-5, atol=1e-6)


def test_docstring_examples_run() -> None:
    result = doctest.testmod(ecgfast.reference.contrastive_loss, extraglobs={"torch": torch})
    assert result.failed == 0 and result.attempted > 0
    runner = doctest.DocTestRunner()
    for example in doctest.DocTestFinder().find(MultiPositiveContrastiveLoss, globs=vars(ecgfast.nn)):
        runner.run(example)
    assert runner.failures == 0 and runner.tries > 0


# ---------------------------------------------------------------------------------------------------------------
# Distributed: 2 gloo processes with different inputs on each rank (tests/ddp_harness.py)


@pytest.mark.skipif(not GLOO, reason="needs torch.distributed + gloo")
def test_two_ranks_match_the_single_process_full_batch(tmp_path: Path) -> None:
    """The gather and the gradient scaling of the functional on the reference backend, in float64."""
    ranks = run_ranks(tmp_path, "torch", torch.float64)
    assert_ranks_match_the_full_batch(ranks, torch.float64, rtol=1e-10, atol=1e-12)
    assert all(r["kernel_calls"] == 0 for r in ranks)  # the reference ran, no fused kernel
