"""The multi-positive contrastive loss of ecgfast pretraining (SupCon, Khosla et al. 2020; METHOD.md "Loss").

One op, two layers: the functional :func:`multi_positive_contrastive_loss` and the module
:class:`MultiPositiveContrastiveLoss`, which only holds hyperparameters. The arithmetic is the fused op of
:mod:`ecgfast.ops.contrastive_loss` (O(N d) memory; Triton on CUDA, blockwise C++ on CPU), whose exact definition
is the plain-PyTorch reference (:mod:`ecgfast.reference.contrastive_loss`); ``backend="torch"`` (or
``$ECGFAST_LOSS_BACKEND=torch``) runs the reference itself.

Under ``torch.distributed`` (world size > 1, ``gather=True``) each rank scores its local rows against the rows of
every rank: embeddings are gathered with ``torch.distributed.nn.functional.all_gather``, whose backward sums the
gradients of every rank's copy back to the owner, and the group and view ids with a plain ``all_gather``.
Positives and negatives are defined over the gathered batch and a row's own column is excluded by global index.
Every rank must call the loss at the same step (it runs collectives).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .ops.contrastive_loss import multi_positive_contrastive_loss as fused_multi_positive_contrastive_loss
from .reference.contrastive_loss import (
    as_group_id_matrix,
    as_view_ids,
    check_hyperparameters,
    check_weights,
    multi_positive_contrastive_loss_reference,
    positive_weight_sums,
)


def _scored(z_all: torch.Tensor, ids: torch.Tensor, temperature: float, weights, views: torch.Tensor | None,
            normalize: bool, reduction: str, rows: slice | None, backend: str | None) -> torch.Tensor:
    """The loss of the anchors ``rows`` of ``z_all`` (all rows when None) against all its rows, by the fused op."""
    if z_all.shape[0] < 2:  # one row has no pair: the reference's convention (loss 0, a warning); the op refuses N < 2
        return multi_positive_contrastive_loss_reference(z_all, ids, temperature, weights, views, normalize,
                                                         reduction, rows=rows)
    return fused_multi_positive_contrastive_loss(z_all, ids, temperature, weights, views, normalize, reduction,
                                                 rows=rows, backend=backend)


def _world_size() -> int:
    """World size of the default process group, 1 when torch.distributed is absent or not initialised."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_gather_rows(
    z: torch.Tensor, meta: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Gather rows from every rank, in rank order: z (n, d) with autograd, meta (M, n) int64 ids without.

    Ranks may hold different numbers of rows: sizes are exchanged first, rows padded to the largest and the
    padding dropped after the gather.

    Returns:
        z_all (N, d), meta_all (M, N), and the global index of this rank's first row.
    """
    from torch.distributed.nn.functional import all_gather as all_gather_with_grad  # only where distributed runs

    world, rank = dist.get_world_size(), dist.get_rank()
    n = z.shape[0]
    sizes_out = [torch.zeros(1, dtype=torch.long, device=z.device) for _ in range(world)]
    dist.all_gather(sizes_out, torch.tensor([n], dtype=torch.long, device=z.device))
    sizes = [int(t.item()) for t in sizes_out]
    width = max(sizes)

    z_padded = F.pad(z, (0, 0, 0, width - n))  # (width, d); the padding rows get no gradient
    with warnings.catch_warnings():
        # torch >= 2.10 marks it deprecated in favour of a private module; it is the public autograd-aware gather.
        warnings.filterwarnings("ignore", message=r".*all_gather is deprecated", category=FutureWarning)
        z_parts = all_gather_with_grad(z_padded)  # world x (width, d)
    z_all = torch.cat([part[:size] for part, size in zip(z_parts, sizes, strict=True)])

    meta_padded = F.pad(meta, (0, width - n)).contiguous()  # (M, width)
    meta_parts = [torch.empty_like(meta_padded) for _ in range(world)]
    dist.all_gather(meta_parts, meta_padded)
    meta_all = torch.cat([part[:, :size] for part, size in zip(meta_parts, sizes, strict=True)], dim=1)
    return z_all, meta_all, sum(sizes[:rank])


def multi_positive_contrastive_loss(
    z: torch.Tensor,
    group_ids: Sequence[torch.Tensor] | torch.Tensor,
    temperature: float = 0.1,
    weights: Sequence[float] | torch.Tensor | None = None,
    view_ids: torch.Tensor | None = None,
    normalize: bool = True,
    reduction: str = "mean",
    gather: bool = True,
    backend: str | None = None,
) -> torch.Tensor:
    """Multi-positive contrastive loss; gathered across ranks under torch.distributed (module docstring).

    Args:
        z: (n, d) embeddings of this rank (all N rows without torch.distributed), any float dtype.
        group_ids: K integer id vectors (n,) (or a (K, n) tensor); equal ids of kind k make positives.
        temperature: tau > 0.
        weights: K per-kind weights >= 0 (default 1), additive: nested ECG-within-patient ids give a same-ECG
            pair ``lambda_ecg + lambda_patient``.
        view_ids: optional (n,) integer view index; negatives and positives then come only from other views.
        normalize: L2-normalise ``z`` first (``False`` when the caller already did).
        reduction: ``"mean"`` over rows with positives, ``"sum"``, or ``"none"`` (this rank's rows, 0 for rows
            without positives).
        gather: score against every rank's rows when torch.distributed runs with world size > 1.
        backend: ``"triton"``, ``"cpp"`` or ``"torch"`` for the fused op (:mod:`ecgfast.ops.contrastive_loss`);
            None: ``$ECGFAST_LOSS_BACKEND`` or the best available for the device.

    Returns:
        A float32 scalar (float64 for float64 ``z``), or (n,) for ``"none"``. Under torch.distributed, the
        per-rank value is scaled so that its average over ranks is the full-batch loss and DDP's averaged
        gradient is the full-batch gradient (see the comment in the code).

    Raises:
        ValueError: invalid hyperparameters, shapes or dtypes (see the reference).

    Example:
        >>> z = torch.randn(8, 16, requires_grad=True)
        >>> ecg, patient = torch.tensor([0, 1, 2, 3] * 2), torch.tensor([0, 0, 1, 2] * 2)
        >>> loss = multi_positive_contrastive_loss(z, [ecg, patient], weights=(1.0, 0.5))
        >>> loss.backward()
    """
    check_hyperparameters(temperature, reduction)
    if z.ndim != 2:
        raise ValueError(f"z must be (N, d), got shape {tuple(z.shape)}")
    world = _world_size() if gather else 1
    if world == 1:
        return _scored(z, as_group_id_matrix(group_ids, z.shape[0]), temperature, weights, view_ids, normalize,
                       reduction, None, backend)

    n = z.shape[0]
    ids = as_group_id_matrix(group_ids, n).to(z.device)  # (K, n)
    check_weights(weights, ids.shape[0])
    views = as_view_ids(view_ids, n)
    meta = ids if views is None else torch.cat([ids, views.to(z.device)[None]])  # (K [+1], n)
    z_all, meta_all, offset = _all_gather_rows(z, meta)
    ids_all, views_all = (meta_all, None) if views is None else (meta_all[:-1], meta_all[-1])
    per_row = _scored(  # (n,): this rank's rows (queries) against all N gathered rows (keys)
        z_all, ids_all, temperature, weights, views_all, normalize, "none", slice(offset, offset + n), backend)
    if reduction == "none":
        return per_row

    # Gradient scaling. L = full-batch loss = sum_i loss_i / n_valid (n_valid: rows with positives, all ranks).
    # all_gather's backward sums every rank's gradient w.r.t. the gathered copy back to its owner, so the
    # gradient reaching rank r's z is d(sum_r' loss_r')/dz_r, and DDP then averages parameter gradients over the
    # W ranks. Returning loss_r = W / n_valid * sum_{i local} loss_i makes sum_r' loss_r' = W L, hence rank r's z
    # gets W dL/dz_r and the DDP average is (1/W) sum_r J_r^T W dL/dz_r = dL/dtheta: the full-batch gradient,
    # even with unequal rows per rank. With the same number of rows with positives on every rank (the usual
    # case) loss_r is exactly the mean over the local rows, and in all cases mean_r loss_r = L. "sum" likewise
    # returns W * local sum (mean over ranks = full-batch sum).
    if reduction == "sum":
        return per_row.sum() * world
    n_valid = int((positive_weight_sums(ids_all, weights, views_all) > 0).sum())
    if n_valid == 0:
        warnings.warn("multi-positive contrastive loss: no row of the gathered batch has a positive; the loss is 0",
                      RuntimeWarning, stacklevel=2)
        return per_row.sum()
    return per_row.sum() * (world / n_valid)


class MultiPositiveContrastiveLoss(nn.Module):
    """Multi-positive contrastive (SupCon) loss with positives from one or more group-id vectors.

    Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020, in the form METHOD.md "Loss" gives for ECG
    pretraining (views of one ECG and ECGs of one patient as positives, CLOCS / PCLR). For N embeddings,
    ``s_ij = cos(z_i, z_j) / tau``, ``w_ij = sum_k lambda_k [g_k[i] == g_k[j]]`` (j != i) and
    ``loss_i = logsumexp_{a != i} s_ia - sum_j w_ij s_ij / sum_j w_ij``; averaged over rows that have a positive.
    Weights add up over kinds: with nested ids (ECG within patient) a same-ECG pair weighs
    ``lambda_ecg + lambda_patient``; pass only the patient ids for the plain union. Rows without positives
    contribute 0 and are not counted in the mean. ``view_ids`` restricts negatives and positives to other views
    (with two views this is CLOCS' symmetric per-view-pair loss). Under torch.distributed the local rows are
    scored against all ranks' rows (:func:`multi_positive_contrastive_loss`).

    Shapes: ``z`` (N, d) any float dtype; each group-id vector (N,) integer; ``view_ids`` (N,) integer; output a
    float32 scalar (float64 for float64 ``z``), or (N,) with ``reduction="none"``.

    Args:
        temperature: tau > 0 (METHOD.md: 0.1).
        weights: per-kind weights lambda_k >= 0, one per id vector passed to ``forward``; None: all 1.
        normalize: L2-normalise the embeddings first; ``False`` when the model already did.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        gather: gather across ranks when torch.distributed is initialised with world size > 1.
        backend: the fused op's backend, ``"triton"``, ``"cpp"``, ``"torch"`` or None (see the functional).

    Raises:
        ValueError: temperature <= 0 or not finite, unknown reduction, a negative or non-finite weight (here);
            a weight count that differs from the number of id vectors, bad shapes or dtypes (in ``forward``).

    Example:
        >>> loss_fn = MultiPositiveContrastiveLoss(temperature=0.1, weights=(1.0, 1.0))
        >>> z = torch.randn(8, 128)  # rows: (view, ECG): 2 views of 4 ECGs of 3 patients
        >>> ecg_ids = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
        >>> patient_ids = torch.tensor([7, 7, 8, 9, 7, 7, 8, 9])
        >>> loss = loss_fn(z, ecg_ids, patient_ids)
        >>> loss.shape
        torch.Size([])
    """

    def __init__(
        self,
        temperature: float = 0.1,
        weights: Sequence[float] | None = None,
        normalize: bool = True,
        reduction: str = "mean",
        gather: bool = True,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        check_hyperparameters(temperature, reduction)
        self.temperature = float(temperature)
        self.weights = check_weights(weights)
        self.normalize = normalize
        self.reduction = reduction
        self.gather = gather
        self.backend = backend

    def forward(self, z: torch.Tensor, *group_ids: torch.Tensor, view_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Loss of embeddings ``z`` (N, d) with positives from the id vectors ``group_ids`` (each (N,))."""
        ids: Sequence[torch.Tensor] | torch.Tensor = group_ids[0] if len(group_ids) == 1 else group_ids
        return multi_positive_contrastive_loss(z, ids, self.temperature, self.weights, view_ids, self.normalize,
                                               self.reduction, self.gather, self.backend)

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, weights={self.weights}, normalize={self.normalize}, "
                f"reduction={self.reduction!r}, gather={self.gather}")
