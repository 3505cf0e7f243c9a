"""Reference multi-positive contrastive loss (SupCon, Khosla et al., NeurIPS 2020), as METHOD.md "Loss" defines it.

Written for clarity, not speed: it materialises the N x N similarity matrix. The fused kernel of ``ecgfast.ops``
computes the same quantity tile by tile and is tested against :func:`multi_positive_contrastive_loss_reference`.

Definition. ``z`` holds N embeddings (N, d), L2-normalised (here, unless ``normalize=False``);
``s_ij = z_i . z_j / tau``. K integer group-id vectors ``g_k`` (N,) define the positives, with per-kind weights
``lambda_k >= 0`` (default 1)::

    allowed(i, a) = a != i  [and view_ids[a] != view_ids[i] when view_ids is given]
    w_ij          = sum_k lambda_k [g_k[i] == g_k[j]]   for allowed (i, j), 0 otherwise
    loss_i        = - sum_j w_ij log( exp(s_ij) / sum_{a allowed(i, a)} exp(s_ia) ) / sum_j w_ij
                  = logsumexp_{a allowed} s_ia  -  sum_j w_ij s_ij / sum_j w_ij

Weights are additive over kinds, so that the positive term comes from per-group sums (O(N d), what the fused
kernel does) and never needs the N x N matrix. For nested ids, e.g. ``g_ecg`` (views of one ECG) within
``g_patient``, a same-ECG pair counts ``lambda_ecg + lambda_patient`` and a same-patient pair of two ECGs
``lambda_patient``; passing only the coarser vector ``g_patient`` gives the plain union (every positive weight 1).
With one id vector and unit weight this is exactly METHOD.md's
``L = mean_i -1/|P(i)| sum_{p in P(i)} log(exp(s_ip) / sum_{a != i} exp(s_ia))``.

``view_ids`` restricts both the negatives and the positives of row i to rows of other views. With two views,
ECG (or patient) ids and view ids it is the symmetric per-view-pair InfoNCE of CLOCS (row and column softmax,
averaged); without view ids and with ECG ids it is SimCLR's NT-Xent (tests/test_loss.py proves both).

Rows without positives (``sum_j w_ij == 0``: a singleton group, every weight 0, or no allowed row at all)
contribute 0 and are left out of the mean. When no row has positives, "mean" and "sum" return a zero that keeps
the autograd graph (gradients are exact zeros) and warn.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F

REDUCTIONS: tuple[str, ...] = ("mean", "sum", "none")


def check_hyperparameters(temperature: float, reduction: str) -> None:
    """Raise ``ValueError`` unless ``temperature`` is a finite number > 0 and ``reduction`` is one of REDUCTIONS."""
    if not (isinstance(temperature, (int, float)) and 0 < temperature < float("inf")):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_weights(weights: Sequence[float] | torch.Tensor | None, kinds: int | None = None) -> tuple[float, ...] | None:
    """Validate the per-kind weights ``lambda_k``: finite, >= 0, and ``kinds`` of them when ``kinds`` is given.

    Returns:
        The weights as a tuple of floats, or None (every kind weight 1).

    Raises:
        ValueError: a negative or non-finite weight, a wrong count, or not a 1-D sequence.
    """
    if weights is None:
        return None
    values = torch.as_tensor(weights, dtype=torch.float64).detach().cpu()
    if values.ndim != 1:
        raise ValueError(f"weights must be a 1-D sequence, one weight per id vector, got shape {tuple(values.shape)}")
    if not bool(torch.isfinite(values).all()) or bool((values < 0).any()):
        raise ValueError(f"weights must be finite and >= 0, got {values.tolist()}")
    if kinds is not None and values.numel() != kinds:
        raise ValueError(f"got {values.numel()} weights for {kinds} group-id vectors: give one weight per id vector")
    return tuple(values.tolist())


def as_group_id_matrix(group_ids: Sequence[torch.Tensor] | torch.Tensor, n: int) -> torch.Tensor:
    """Group ids as one (K, N) int64 tensor: from K vectors of shape (N,), one (N,) vector, or a (K, N) tensor.

    Raises:
        ValueError: no id vector, a length other than ``n``, or a non-integer dtype.
    """
    if isinstance(group_ids, torch.Tensor):
        vectors = [group_ids] if group_ids.ndim == 1 else list(group_ids.unbind(0)) if group_ids.ndim == 2 else None
        if vectors is None:
            raise ValueError(f"group_ids must be (N,) or (K, N), got shape {tuple(group_ids.shape)}")
    else:
        vectors = list(group_ids)
    if not vectors:
        raise ValueError("at least one group-id vector is needed to define positives")
    for k, g in enumerate(vectors):
        if not isinstance(g, torch.Tensor) or g.shape != (n,):
            shape = tuple(g.shape) if isinstance(g, torch.Tensor) else type(g).__name__
            raise ValueError(f"group-id vector {k} must be a tensor of shape ({n},) (one id per row of z), got {shape}")
        if g.dtype.is_floating_point or g.dtype.is_complex or g.dtype == torch.bool:
            raise ValueError(f"group-id vector {k} must have an integer dtype, got {g.dtype}")
    device = vectors[0].device
    return torch.stack([g.to(device=device, dtype=torch.long) for g in vectors])


def as_view_ids(view_ids: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """Validate ``view_ids``: None or an integer (N,) tensor, returned as int64."""
    if view_ids is None:
        return None
    if view_ids.shape != (n,) or view_ids.dtype.is_floating_point or view_ids.dtype.is_complex or (
        view_ids.dtype == torch.bool
    ):
        raise ValueError(f"view_ids must be an integer tensor of shape ({n},), got {view_ids.dtype} "
                         f"{tuple(view_ids.shape)}")
    return view_ids.long()


def positive_weight_matrix(
    group_ids: Sequence[torch.Tensor] | torch.Tensor,
    weights: Sequence[float] | torch.Tensor | None = None,
    view_ids: torch.Tensor | None = None,
    rows: slice | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """The positive weights ``w_ij`` of the anchor rows ``rows`` against all N rows: (R, N) in ``dtype``.

    ``w_ij = sum_k lambda_k [g_k[i] == g_k[j]]`` where j is allowed for i (j != i, and another view when
    ``view_ids`` is given), 0 elsewhere; so the diagonal is always 0.
    """
    n = group_ids.shape[-1] if isinstance(group_ids, torch.Tensor) else len(group_ids[0])
    ids = as_group_id_matrix(group_ids, n)  # (K, N)
    lam = check_weights(weights, ids.shape[0]) or (1.0,) * ids.shape[0]
    views = as_view_ids(view_ids, n)
    idx = torch.arange(n, device=ids.device)[rows if rows is not None else slice(None)]  # (R,) anchor indices
    allowed = _allowed(idx, n, None if views is None else views.to(ids.device))
    w = torch.zeros(allowed.shape, dtype=dtype, device=ids.device)
    for k in range(ids.shape[0]):
        w = w + lam[k] * (ids[k, idx][:, None] == ids[k][None, :]).to(dtype)
    return w * allowed


def positive_weight_sums(
    group_ids: Sequence[torch.Tensor] | torch.Tensor,
    weights: Sequence[float] | torch.Tensor | None = None,
    view_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """``W_i = sum_j w_ij`` for every row, from group counts (O(N log N), no N x N matrix): (N,) float64.

    ``W_i = sum_k lambda_k (c_k(i) - 1)``, with ``c_k(i)`` the size of row i's group of kind k; with view ids,
    ``W_i = sum_k lambda_k (c_k(i) - c_kv(i))``, with ``c_kv(i)`` the size of its (group, view) cell. Equals
    ``positive_weight_matrix(...).sum(1)``; row i has positives exactly when ``W_i > 0``.
    """
    n = group_ids.shape[-1] if isinstance(group_ids, torch.Tensor) else len(group_ids[0])
    ids = as_group_id_matrix(group_ids, n)
    lam = check_weights(weights, ids.shape[0]) or (1.0,) * ids.shape[0]
    views = as_view_ids(view_ids, n)
    total = torch.zeros(n, dtype=torch.float64, device=ids.device)
    for k in range(ids.shape[0]):
        _, inverse, counts = torch.unique(ids[k], return_inverse=True, return_counts=True)
        others = counts[inverse]  # group size, row i included
        if views is not None:
            cells = torch.stack([ids[k], views.to(ids.device)])  # (2, N): (group, view) pairs
            _, cell_inverse, cell_counts = torch.unique(cells, dim=1, return_inverse=True, return_counts=True)
            others = others - cell_counts[cell_inverse]  # same group, other views
        else:
            others = others - 1  # same group, other rows
        total = total + lam[k] * others.to(torch.float64)
    return total


def _allowed(idx: torch.Tensor, n: int, views: torch.Tensor | None) -> torch.Tensor:
    """(R, N) bool: column a may appear in the denominator of anchor row idx[r] (a != i, other view)."""
    cols = torch.arange(n, device=idx.device)
    allowed = idx[:, None] != cols[None, :]
    if views is not None:
        allowed = allowed & (views[idx][:, None] != views[None, :])
    return allowed


def _work_dtype(dtype: torch.dtype, upcast: bool) -> torch.dtype:
    """float64 for float64 input, float32 for any other input when upcasting; the input dtype otherwise."""
    if not upcast:
        return dtype
    return torch.float64 if dtype == torch.float64 else torch.float32


def multi_positive_contrastive_loss_reference(
    z: torch.Tensor,
    group_ids: Sequence[torch.Tensor] | torch.Tensor,
    temperature: float = 0.1,
    weights: Sequence[float] | torch.Tensor | None = None,
    view_ids: torch.Tensor | None = None,
    normalize: bool = True,
    reduction: str = "mean",
    upcast: bool = True,
    *,
    rows: slice | None = None,
) -> torch.Tensor:
    """Multi-positive contrastive (SupCon) loss of N embeddings with positives from group ids (module docstring).

    Args:
        z: (N, d) embeddings, any float dtype.
        group_ids: K integer id vectors of shape (N,) (a sequence, one (N,) tensor, or a (K, N) tensor);
            j != i is a positive of i of kind k when ``g_k[i] == g_k[j]``.
        temperature: tau > 0; similarities are ``cos / tau``.
        weights: K per-kind weights ``lambda_k >= 0`` (default all 1), additive over kinds.
        view_ids: optional (N,) integer view index; restricts negatives and positives to other views.
        normalize: L2-normalise ``z`` first; ``False`` when the caller already did.
        reduction: ``"mean"`` over rows with positives, ``"sum"``, or ``"none"`` (per row, 0 without positives).
        upcast: compute in float32 (float64 for float64 input) whatever the input dtype; ``False`` computes in
            the input dtype (only to measure what low-precision arithmetic would cost).
        rows: score only these anchor rows (a slice of 0..N-1) against all N rows; "mean" is then over the
            selected rows with positives. The distributed loss uses it for the local block of a gathered batch.

    Returns:
        A scalar, or (R,) per-row losses for ``"none"``; float32 (float64 for float64 input; the input dtype
        when ``upcast=False``).

    Raises:
        ValueError: temperature <= 0, an unknown reduction, a negative weight or a wrong number of weights,
            ids of the wrong shape or dtype, ``z`` not 2-D.

    Example:
        >>> z = torch.eye(3).repeat(2, 1)  # two views of three orthogonal embeddings
        >>> ecg = torch.arange(3).repeat(2)
        >>> loss = multi_positive_contrastive_loss_reference(z, [ecg], temperature=1.0)
        >>> round(loss.item(), 4)  # -log(e / (e + 4)) = log(1 + 4 / e) for every row
        0.9048
    """
    check_hyperparameters(temperature, reduction)
    if z.ndim != 2:
        raise ValueError(f"z must be (N, d), got shape {tuple(z.shape)}")
    n = z.shape[0]
    ids = as_group_id_matrix(group_ids, n).to(z.device)  # (K, N)
    lam = check_weights(weights, ids.shape[0]) or (1.0,) * ids.shape[0]
    views = as_view_ids(view_ids, n)
    views = None if views is None else views.to(z.device)
    idx = torch.arange(n, device=z.device)[rows if rows is not None else slice(None)]  # (R,) anchor row indices

    dtype = _work_dtype(z.dtype, upcast)
    x = z.to(dtype)
    if normalize:
        x = F.normalize(x, dim=1)
    s = x[idx] @ x.T / temperature  # (R, N) similarities s_ij

    allowed = _allowed(idx, n, views)  # (R, N): a != i (and another view)
    w = positive_weight_matrix(ids, lam, views, rows, dtype)  # (R, N) positive weights w_ij, 0 where not allowed
    w_sum = w.sum(dim=1)  # (R,) W_i
    has_pos = w_sum > 0  # rows with no positives are excluded

    # log sum_{a allowed} exp(s_ia): disallowed entries are -inf (exp = 0). A row with nothing allowed would be all
    # -inf, and logsumexp's backward exp(-inf - (-inf)) is NaN there (masked_fill's backward would zero it again,
    # but anomaly detection and any later rewrite would trip on it), so rows without positives (which include
    # every such row) get a dummy finite row instead; the where below discards their value, gradient 0.
    logits = s.masked_fill(~allowed, float("-inf"))
    logits = torch.where(has_pos[:, None], logits, torch.zeros_like(s))
    log_denominator = torch.logsumexp(logits, dim=1)  # (R,)
    positive_mean = (w * s).sum(dim=1) / torch.where(has_pos, w_sum, torch.ones_like(w_sum))  # sum w s / W
    per_row = torch.where(has_pos, log_denominator - positive_mean, torch.zeros_like(w_sum))  # (R,)

    if reduction == "none":
        return per_row
    if not bool(has_pos.any()):
        warnings.warn("multi-positive contrastive loss: no row has a positive (every group is a singleton, every "
                      "weight is 0, or view_ids leave no pair); the loss is 0", RuntimeWarning, stacklevel=2)
    if reduction == "sum":
        return per_row.sum()
    return per_row.sum() / has_pos.sum().clamp(min=1)
