"""Fused multi-positive contrastive (SupCon) loss: forward and backward without the N x N matrix, DDP included.

The loss is the one of :mod:`ecgfast.reference.contrastive_loss` (exact definition there: additive per-kind
weights, ``view_ids``, rows without positives). With ``x`` the L2-normalised embeddings (normalised here unless
``normalize=False``; the normalisation's backward is plain torch autograd) and the anchors (queries) a slice
``[start, stop)`` of the N rows (all of them, or a rank's local rows in the gathered batch under DDP)::

    loss_i = lse_i - sum_j w_ij s_ij / W_i,    lse_i = log sum_{a allowed(i, a)} exp(x_i . x_a / tau)

Layers (Liger style): the Triton kernels (``ecgfast.kernels.contrastive_loss``) and the blockwise C++ CPU op
(csrc/contrastive_loss.cpp) -> the host launcher, the ``torch.library`` custom ops
``ecgfast::multi_positive_contrastive_lse`` (+ ``_backward``) and their ``autograd.Function`` -> the one functional
:func:`multi_positive_contrastive_loss` (with the DDP gather as an option) -> the module
:class:`ecgfast.nn.MultiPositiveContrastiveLoss`. Hyperparameters: :class:`ContrastiveLossConfig`.

Design:

- Positive term, O(N d), plain torch (so autograd and torch.compile handle it): with dense group labels ``g_k``
  (from a sort, static shapes) and per-group sums ``G_k = sum_{j in group} x_j`` (``index_add``),
  ``sum_j w_ij s_ij = x_i . sum_k lambda_k (G_k[g_k(i)] - x_i) / tau`` and ``W_i = sum_k lambda_k (c_k(i) - 1)``;
  with view ids the own (group, view) cell's sum and size replace ``x_i`` and 1.
- Denominator, O(N^2 d) time and O(N d) memory: the custom op computes ``lse`` (n,) with an online max-shifted
  log-sum-exp over key tiles (FlashAttention's forward), and its backward op recomputes the tiles from the saved
  ``lse``: a query pass (``dq = sum_a g_i P_ia x_a / tau``) and a key pass that iterates over query tiles
  (``dk = sum_i g_i P_ia x_i / tau``), fp32 accumulation, no atomics. Recomputation (instead of Liger's
  gradient-in-forward) keeps ``reduction="none"`` and any upstream gradient.
- Backends (:mod:`ecgfast.ops.backends`): ``triton`` (CUDA, or the interpreter with ``TRITON_INTERPRET=1``),
  ``cpp`` (blockwise CPU with at::parallel_for), ``torch`` (the reference itself, which materialises N x N).
  Choose with ``backend`` or ``$ECGFAST_LOSS_BACKEND``. float64 input never goes to Triton (cpp on CPU, else torch).
- Precision: statistics, lse and gradients in float32 (float64 for float64 input). On Triton, bf16/fp16 inputs
  are normalised in float32 and rounded back to the input dtype for the tile products (tensor cores, fp32
  accumulation); float32 inputs use tf32 products only when ``torch.backends.cuda.matmul.allow_tf32`` is set.
- Masking: disallowed pairs are ``-inf`` through ``where`` (never -1e9); a row with no allowed key has
  ``lse = -inf`` and no positive, and the final ``where`` gives it loss 0 and gradient 0 (reference convention).
- Distributed (``gather=True`` under ``torch.distributed`` with world size > 1): each rank scores its local rows
  against the rows of every rank, gathered with ``torch.distributed.nn.functional.all_gather`` (whose backward
  sums every rank's gradient back to the owner), ids with a plain ``all_gather``. Every rank must call the loss
  at the same step (it runs collectives).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..reference.contrastive_loss import (
    as_group_id_matrix,
    as_view_ids,
    multi_positive_contrastive_loss_reference,
    positive_weight_sums,
)
from .backends import available_backends, resolve_backend
from .configs import ContrastiveLossConfig

OP = "contrastive_loss"
MAX_DIM = 1024  # largest feature size the kernels are tuned and tested for


# ---------------------------------------------------------------------------------------------------------------
# Host launcher of the Triton kernels


def _dot_precision(x: torch.Tensor) -> str:
    if not x.is_cuda and x.dtype == torch.bfloat16:
        return "upcast"  # Triton interpreter: its tl.dot mishandles bf16 (kernels/contrastive_loss.py, _mma)
    if x.dtype == torch.float32 and x.is_cuda and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _triton_lse_fwd(x: torch.Tensor, view_ids: torch.Tensor | None, offset: int, n_rows: int,
                    temperature: float) -> torch.Tensor:
    """lse (n_rows,) fp32 of the query rows [offset, offset + n_rows) of x (N, d) against all N rows."""
    import triton

    from ecgfast.kernels.contrastive_loss import LOG2E, _mp_contrastive_fwd_kernel, mp_contrastive_block_sizes

    n, d = x.shape
    x = x.contiguous()
    cfg = mp_contrastive_block_sizes(d, x.is_cuda)
    lse = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    # the kernels index the view ids by row (pointer + i): a strided view (e.g. ids[::2]) must be made contiguous
    views = view_ids.contiguous() if view_ids is not None else x  # x: a dummy pointer when HAS_VIEWS is False
    grid = (triton.cdiv(n_rows, cfg["BLOCK_M"]),)
    _mp_contrastive_fwd_kernel[grid](
        x, views, lse, n, d, n_rows, offset, x.stride(0), LOG2E / temperature, HAS_VIEWS=view_ids is not None,
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_D=cfg["BLOCK_D"], DOT_PRECISION=_dot_precision(x),
        **{k: v for k, v in cfg.items() if k in ("num_warps", "num_stages")})
    return lse


def _triton_lse_bwd(grad_lse: torch.Tensor, x: torch.Tensor, view_ids: torch.Tensor | None, lse: torch.Tensor,
                    offset: int, n_rows: int, temperature: float) -> torch.Tensor:
    """d(sum_r grad_lse_r lse_r)/dx: (N, d) fp32, key-side pass then query-side pass."""
    import triton

    from ecgfast.kernels.contrastive_loss import (
        LOG2E,
        _mp_contrastive_bwd_dq_kernel,
        _mp_contrastive_bwd_kernel,
        mp_contrastive_block_sizes,
    )

    n, d = x.shape
    x = x.contiguous()
    g = grad_lse.to(torch.float32).contiguous()
    cfg = mp_contrastive_block_sizes(d, x.is_cuda)
    launch = {k: v for k, v in cfg.items() if k in ("num_warps", "num_stages")}
    blocks = {k: cfg[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_D", "BLOCK_DO")}
    views = view_ids.contiguous() if view_ids is not None else x  # indexed by row, as in the forward
    common = dict(HAS_VIEWS=view_ids is not None, DOT_PRECISION=_dot_precision(x), **blocks, **launch)
    dx = torch.empty(n, d, dtype=torch.float32, device=x.device)
    d_chunks = triton.cdiv(d, cfg["BLOCK_DO"])
    _mp_contrastive_bwd_kernel[(triton.cdiv(n, cfg["BLOCK_N"]), d_chunks)](
        x, views, lse, g, dx, n, d, n_rows, offset, x.stride(0), dx.stride(0), LOG2E / temperature,
        1.0 / temperature, **common)
    dq = torch.empty(n_rows, d, dtype=torch.float32, device=x.device)
    _mp_contrastive_bwd_dq_kernel[(triton.cdiv(n_rows, cfg["BLOCK_M"]), d_chunks)](
        x, views, lse, g, dq, n, d, n_rows, offset, x.stride(0), dq.stride(0), LOG2E / temperature,
        1.0 / temperature, **common)
    dx[offset:offset + n_rows] += dq
    return dx


# ---------------------------------------------------------------------------------------------------------------
# torch.library registration: forward and backward are custom ops, so torch.compile traces through them


@torch.library.custom_op("ecgfast::multi_positive_contrastive_lse", mutates_args=())
def _lse_op(x: torch.Tensor, view_ids: torch.Tensor | None, offset: int, n_rows: int, temperature: float,
            backend: str) -> torch.Tensor:
    """Row log-sum-exp of the query rows [offset, offset + n_rows) of x against all rows, diagonal excluded."""
    if backend == "triton":
        return _triton_lse_fwd(x, view_ids, offset, n_rows, temperature)
    if backend == "cpp":
        return torch.ops.ecgfast.mp_contrastive_lse_fwd(x, view_ids, offset, n_rows, temperature)
    raise ValueError(f"multi_positive_contrastive_lse has no {backend!r} kernel (triton or cpp)")


@_lse_op.register_fake
def _lse_fake(x, view_ids, offset, n_rows, temperature, backend):
    return x.new_empty((n_rows,), dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)


@torch.library.custom_op("ecgfast::multi_positive_contrastive_lse_backward", mutates_args=())
def _lse_backward_op(grad_lse: torch.Tensor, x: torch.Tensor, view_ids: torch.Tensor | None, lse: torch.Tensor,
                     offset: int, n_rows: int, temperature: float, backend: str) -> torch.Tensor:
    """Gradient (N, d) of sum_r grad_lse_r lse_r w.r.t. x, fp32 (fp64 for fp64 x), from the saved lse."""
    if backend == "triton":
        return _triton_lse_bwd(grad_lse, x, view_ids, lse, offset, n_rows, temperature)
    if backend == "cpp":
        return torch.ops.ecgfast.mp_contrastive_lse_bwd(grad_lse, x, view_ids, lse, offset, n_rows, temperature)
    raise ValueError(f"multi_positive_contrastive_lse_backward has no {backend!r} kernel (triton or cpp)")


@_lse_backward_op.register_fake
def _lse_backward_fake(grad_lse, x, view_ids, lse, offset, n_rows, temperature, backend):
    return x.new_empty(x.shape, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)


class MultiPositiveContrastiveLSE(torch.autograd.Function):
    """Autograd wrapper of the two custom ops: ``lse`` (n,) forward, tile recomputation backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, view_ids: torch.Tensor | None, offset: int, n_rows: int, temperature: float,
                backend: str) -> torch.Tensor:
        lse = torch.ops.ecgfast.multi_positive_contrastive_lse(x, view_ids, offset, n_rows, temperature, backend)
        ctx.save_for_backward(x, view_ids, lse)
        ctx.args = (offset, n_rows, temperature, backend)
        return lse

    @staticmethod
    def backward(ctx, grad_lse: torch.Tensor):
        x, view_ids, lse = ctx.saved_tensors
        dx = torch.ops.ecgfast.multi_positive_contrastive_lse_backward(grad_lse.contiguous(), x, view_ids, lse,
                                                                       *ctx.args)
        return dx.to(x.dtype), None, None, None, None, None


# ---------------------------------------------------------------------------------------------------------------
# Positive term from group sums, O(N d)


def _dense_labels(ids: torch.Tensor) -> torch.Tensor:
    """Map any int64 ids (N,) to labels in [0, N) (equal ids, equal labels), with static shapes (compile-friendly)."""
    sorted_ids, order = torch.sort(ids)
    starts = torch.cat([torch.ones_like(sorted_ids[:1], dtype=torch.bool), sorted_ids[1:] != sorted_ids[:-1]])
    return torch.empty_like(ids).scatter_(0, order, torch.cumsum(starts.long(), 0) - 1)


def _positive_terms(x: torch.Tensor, ids: torch.Tensor, lam: Sequence[float], views: torch.Tensor | None,
                    start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For anchors start..stop-1: (sum_j w_ij x_i . x_j, W_i), both (n,) in x's dtype; x (N, d), ids (K, N)."""
    n_all = x.shape[0]
    ones = torch.ones(n_all, dtype=x.dtype, device=x.device)
    xq = x[start:stop]
    target = torch.zeros_like(xq)  # sum_k lambda_k (group sum - own cell sum): (n, d)
    w_sum = torch.zeros(stop - start, dtype=x.dtype, device=x.device)
    view_labels = None if views is None else _dense_labels(views)
    for k, weight in enumerate(lam):
        if weight == 0:
            continue
        labels = _dense_labels(ids[k])  # (N,) in [0, N)
        sums = torch.zeros_like(x).index_add(0, labels, x)  # (N, d) per-group sums G_k
        counts = torch.zeros_like(ones).index_add(0, labels, ones)
        own, own_count = x, ones  # what of its group a row may not pair with: itself, or its (group, view) cell
        if view_labels is not None:
            cells = _dense_labels(labels * n_all + view_labels)
            own = torch.zeros_like(x).index_add(0, cells, x)[cells]
            own_count = torch.zeros_like(ones).index_add(0, cells, ones)[cells]
        lq = labels[start:stop]
        target = target + weight * (sums[lq] - own[start:stop])
        w_sum = w_sum + weight * (counts[lq] - own_count[start:stop])
    return (xq * target).sum(dim=1), w_sum


# ---------------------------------------------------------------------------------------------------------------
# Distributed: gather the rows of every rank


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


# ---------------------------------------------------------------------------------------------------------------
# The functional


def _check_z(z: torch.Tensor) -> None:
    if not isinstance(z, torch.Tensor) or z.ndim != 2:
        raise ValueError(f"z must be (N, d), got shape {tuple(z.shape) if isinstance(z, torch.Tensor) else z!r}")
    if not z.dtype.is_floating_point:
        raise ValueError(f"z must be float32, bfloat16, float16 or float64, got {z.dtype}")
    if not 1 <= z.shape[1] <= MAX_DIM:
        raise ValueError(f"z must have 1 <= d <= {MAX_DIM} features, got d = {z.shape[1]}")


def _fused_rows(z: torch.Tensor, ids: torch.Tensor, lam: tuple[float, ...], views: torch.Tensor | None,
                temperature: float, normalize: bool, start: int, stop: int,
                chosen: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-anchor losses, has a positive), both (stop - start,), of rows [start, stop) of z (N, d) against all N
    rows, by a fused backend."""
    work = torch.float64 if z.dtype == torch.float64 else torch.float32
    x = z.to(work)
    if normalize:
        x = F.normalize(x, dim=1)
    x_kernel = x.to(z.dtype) if chosen == "triton" and z.dtype in (torch.float16, torch.bfloat16) else x
    lse = MultiPositiveContrastiveLSE.apply(x_kernel.contiguous(), views, start, stop - start, float(temperature),
                                            chosen)  # (n,)
    # the positive term from the same (possibly rounded) embeddings as the tiles, so that loss_i is the exact loss
    # of one set of embeddings (e.g. 0 for N = 2 with one pair, as in torch's own low-precision arithmetic)
    x_pos = x_kernel.to(work) if x_kernel.dtype != work else x
    pos_sum, w_sum = _positive_terms(x_pos, ids, lam, views, start, stop)
    has_pos = w_sum > 0
    safe_w = torch.where(has_pos, w_sum, torch.ones_like(w_sum))
    return torch.where(has_pos, lse.to(work) - pos_sum / (temperature * safe_w), torch.zeros_like(w_sum)), has_pos


def _scored_rows(z: torch.Tensor, ids: torch.Tensor, lam: tuple[float, ...], views: torch.Tensor | None,
                 cfg: ContrastiveLossConfig, start: int, stop: int,
                 backend: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-anchor losses, has a positive) of rows [start, stop) on the chosen backend; N < 2 goes to the
    reference (loss 0)."""
    chosen = resolve_backend(OP, z.device, backend)
    if chosen == "triton" and z.dtype == torch.float64:
        chosen = "cpp" if "cpp" in available_backends(OP, z.device) else "torch"
    if chosen == "torch" or z.shape[0] < 2:  # one row has no pair: the reference's convention applies
        per_row = multi_positive_contrastive_loss_reference(z, ids, cfg.temperature, lam, views, cfg.normalize, "none",
                                                            rows=slice(start, stop))
        return per_row, positive_weight_sums(ids, lam, views)[start:stop].to(per_row.device) > 0
    return _fused_rows(z, ids, lam, views, cfg.temperature, cfg.normalize, start, stop, chosen)


def _warn_no_positive() -> None:
    warnings.warn("multi-positive contrastive loss: no row has a positive (every group is a singleton, every "
                  "weight is 0, or view_ids leave no pair); the loss is 0", RuntimeWarning, stacklevel=3)


def multi_positive_contrastive_loss(
    z: torch.Tensor,
    group_ids: Sequence[torch.Tensor] | torch.Tensor,
    temperature: float = 0.1,
    weights: Sequence[float] | torch.Tensor | None = None,
    view_ids: torch.Tensor | None = None,
    normalize: bool = True,
    reduction: str = "mean",
    *,
    gather: bool = True,
    rows: slice | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Multi-positive contrastive loss of N embeddings, O(N d) memory; gathered across ranks under DDP.

    Same definition and result as :func:`ecgfast.reference.contrastive_loss.multi_positive_contrastive_loss_reference`
    (the module docstring of this file says how it is computed).

    Args:
        z: (n, d) embeddings of this rank (all N rows without torch.distributed), float32 / bfloat16 / float16 /
            float64, d <= 1024.
        group_ids: K integer id vectors (n,) (a sequence, one (n,) tensor or a (K, n) tensor); equal ids of kind
            k make positives.
        temperature: tau > 0.
        weights: K per-kind weights >= 0 (default 1), additive over kinds: nested ECG-within-patient ids give a
            same-ECG pair ``lambda_ecg + lambda_patient``.
        view_ids: optional (n,) integer view index: negatives and positives only from other views.
        normalize: L2-normalise ``z`` first (in float32); ``False`` when the caller already did.
        reduction: ``"mean"`` over anchors with positives, ``"sum"`` or ``"none"`` ((n,), 0 without positives).
        gather: under torch.distributed with world size > 1, score this rank's rows against every rank's rows.
        rows: anchors as a slice ``start:stop`` of the N rows (default all), scored against all N rows; not with
            a distributed gather.
        backend: ``"triton"``, ``"cpp"`` or ``"torch"``; default ``$ECGFAST_LOSS_BACKEND`` or the best available.

    Returns:
        A scalar, or (n,) for ``"none"``; float32 (float64 for float64 ``z``). Under torch.distributed, the
        per-rank value is scaled so that its average over ranks is the full-batch loss and DDP's averaged gradient
        is the full-batch gradient (see the comment in the code). With N < 2 (no pair at all) the loss is 0.

    Raises:
        ValueError: ``z`` not 2-D or not floating point, d outside 1..1024, ids of the wrong length or dtype, a bad
            temperature, reduction, weight or weight count, a bad ``rows`` slice or an unusable backend.

    Example:
        >>> z = torch.randn(8, 128, requires_grad=True)
        >>> ecg, patient = torch.tensor([0, 1, 2, 3] * 2), torch.tensor([0, 0, 1, 2] * 2)
        >>> loss = multi_positive_contrastive_loss(z, [ecg, patient], weights=(1.0, 0.5))
        >>> loss.backward()
    """
    cfg = ContrastiveLossConfig(temperature, weights, normalize, reduction, gather)  # validates them all
    _check_z(z)
    n = z.shape[0]
    ids = as_group_id_matrix(group_ids, n).to(z.device)  # (K, n)
    lam = cfg.weights_for(ids.shape[0])
    views = as_view_ids(view_ids, n)
    views = None if views is None else views.to(z.device)
    world = _world_size() if gather else 1
    if world == 1:
        start, stop, step = (rows or slice(None)).indices(n)
        if step != 1 or (stop <= start and n > 0):  # an empty batch scores nothing: the reference's loss 0
            raise ValueError(f"rows must be a non-empty slice with step 1 of the {n} rows, got {rows}")
        per_row, has_pos = _scored_rows(z, ids, lam, views, cfg, start, stop, backend)
        if reduction == "none":
            return per_row
        if not torch.compiler.is_compiling() and not bool(has_pos.any()):
            _warn_no_positive()
        if reduction == "sum":
            return per_row.sum()
        return per_row.sum() / has_pos.sum().clamp(min=1)
    if rows is not None:
        raise ValueError("rows selects anchors of one process's batch: pass gather=False with it")

    meta = ids if views is None else torch.cat([ids, views[None]])  # (K [+1], n)
    z_all, meta_all, offset = _all_gather_rows(z, meta)
    ids_all, views_all = (meta_all, None) if views is None else (meta_all[:-1], meta_all[-1])
    per_row, _ = _scored_rows(  # (n,): this rank's rows (queries) against all N gathered rows (keys)
        z_all, ids_all, lam, views_all, cfg, offset, offset + n, backend)
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
    n_valid = int((positive_weight_sums(ids_all, lam, views_all) > 0).sum())
    if n_valid == 0:
        warnings.warn("multi-positive contrastive loss: no row of the gathered batch has a positive; the loss is 0",
                      RuntimeWarning, stacklevel=2)
        return per_row.sum()
    return per_row.sum() * (world / n_valid)



__all__ = ["ContrastiveLossConfig", "MAX_DIM", "MultiPositiveContrastiveLSE", "multi_positive_contrastive_loss"]
