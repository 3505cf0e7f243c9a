"""Fused multi-positive contrastive (SupCon) loss: forward and backward without the N x N matrix (issue 6).

The loss is the one of :mod:`ecgfast.reference.contrastive_loss` (exact definition there: additive per-kind
weights, ``view_ids``, rows without positives). With ``x`` the L2-normalised embeddings (normalised here unless
``normalize=False``; the normalisation's backward is plain torch autograd) and the anchors (queries) a slice
``[start, stop)`` of the N rows (all of them, or a rank's local rows in the gathered batch under DDP)::

    loss_i = lse_i - sum_j w_ij s_ij / W_i,    lse_i = log sum_{a allowed(i, a)} exp(x_i . x_a / tau)

Design:

- Positive term, O(N d), plain torch (so autograd and torch.compile handle it): with dense group labels ``g_k``
  (from a sort, static shapes) and per-group sums ``G_k = sum_{j in group} x_j`` (``index_add``),
  ``sum_j w_ij s_ij = x_i . sum_k lambda_k (G_k[g_k(i)] - x_i) / tau`` and ``W_i = sum_k lambda_k (c_k(i) - 1)``;
  with view ids the own (group, view) cell's sum and size replace ``x_i`` and 1.
- Denominator, O(N^2 d) time and O(N d) memory: the custom op ``ecgfast::multi_positive_contrastive_lse``
  computes ``lse`` (n,) with an online max-shifted log-sum-exp over key tiles (FlashAttention's forward), and its
  backward op recomputes the tiles from the saved ``lse``: a query pass (``dq = sum_a g_i P_ia x_a / tau``) and a
  key pass that iterates over query tiles (``dk = sum_i g_i P_ia x_i / tau``), fp32 accumulation, no atomics.
  Recomputation (instead of Liger's gradient-in-forward) keeps ``reduction="none"`` and any upstream gradient.
- Backends, picked once per (device, request): ``triton`` (kernels/contrastive_loss.py; CUDA, or the interpreter
  with ``TRITON_INTERPRET=1``), ``cpp`` (csrc/contrastive_loss.cpp, blockwise CPU with at::parallel_for), and
  ``torch`` (the reference itself, which materialises N x N). Choose with the ``backend`` argument or the
  environment variable ``ECGFAST_LOSS_BACKEND``; default triton on CUDA, cpp on CPU when ``ecgfast._C`` is
  built, torch otherwise. float64 input never goes to Triton (cpp on CPU, else torch).
- Precision: statistics, lse and gradients in float32 (float64 for float64 input). On Triton, bf16/fp16 inputs
  are normalised in float32 and rounded back to the input dtype for the tile products (tensor cores, fp32
  accumulation); float32 inputs use tf32 products only when ``torch.backends.cuda.matmul.allow_tf32`` is set.
- Masking: disallowed pairs are ``-inf`` through ``where`` (never -1e9); a row with no allowed key has
  ``lse = -inf`` and no positive, and the final ``where`` gives it loss 0 and gradient 0 (reference convention).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..reference.contrastive_loss import (
    as_group_id_matrix,
    as_view_ids,
    check_hyperparameters,
    check_weights,
    multi_positive_contrastive_loss_reference,
)

try:  # the C++ extension registers torch.ops.ecgfast.mp_contrastive_lse_{fwd,bwd}
    import ecgfast._C  # noqa: F401

    _CPP_OK = hasattr(torch.ops.ecgfast, "mp_contrastive_lse_fwd")
except (ImportError, OSError, RuntimeError):
    _CPP_OK = False

BACKENDS: tuple[str, ...] = ("triton", "cpp", "torch")
MAX_DIM = 1024  # largest feature size the kernels are tuned and tested for
ENV_BACKEND = "ECGFAST_LOSS_BACKEND"
_CHOSEN: dict[tuple[str, str], str] = {}  # (device type, requested) -> backend


def _triton_ok(device: torch.device) -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def resolve_backend(device: torch.device | str, backend: str | None = None) -> str:
    """The backend for ``device``: ``backend``, else ``$ECGFAST_LOSS_BACKEND``, else the best available.

    Raises:
        ValueError: an unknown backend name, or one that cannot run on ``device`` (triton without CUDA or
            ``TRITON_INTERPRET=1``; cpp without ``ecgfast._C`` or on a non-CPU device).
    """
    device = torch.device(device)
    requested = backend or os.environ.get(ENV_BACKEND) or "auto"
    key = (device.type, requested)
    if key in _CHOSEN:
        return _CHOSEN[key]
    if requested not in (*BACKENDS, "auto"):
        raise ValueError(f"unknown loss backend {requested!r}: expected one of {BACKENDS} (argument or ${ENV_BACKEND})")
    if requested == "auto":
        if device.type == "cuda":
            chosen = "triton" if _triton_ok(device) else "torch"
        else:
            chosen = "cpp" if _CPP_OK and device.type == "cpu" else "torch"
    else:
        chosen = requested
        if chosen == "triton" and not _triton_ok(device):
            raise ValueError(f"the triton backend needs a CUDA device or TRITON_INTERPRET=1, got {device}")
        if chosen == "cpp" and not (_CPP_OK and device.type == "cpu"):
            raise ValueError(f"the cpp backend needs ecgfast._C (built by setup.py) and a CPU tensor, got {device}")
    _CHOSEN[key] = chosen
    return chosen


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
    views = view_ids if view_ids is not None else x  # a dummy pointer when HAS_VIEWS is False
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
    views = view_ids if view_ids is not None else x
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
# The functional


def _check_weights(weights: Sequence[float] | torch.Tensor | None, kinds: int) -> tuple[float, ...]:
    if weights is None:
        return (1.0,) * kinds
    if isinstance(weights, (list, tuple)) and all(isinstance(w, (int, float)) for w in weights):
        if len(weights) != kinds:
            raise ValueError(f"got {len(weights)} weights for {kinds} group-id vectors: give one weight per id vector")
        if not all(math.isfinite(w) and w >= 0 for w in weights):
            raise ValueError(f"weights must be finite and >= 0, got {list(weights)}")
        return tuple(float(w) for w in weights)
    return check_weights(weights, kinds)


def _check_z(z: torch.Tensor) -> None:
    if not isinstance(z, torch.Tensor) or z.ndim != 2:
        raise ValueError(f"z must be (N, d), got shape {tuple(z.shape) if isinstance(z, torch.Tensor) else z!r}")
    if not z.dtype.is_floating_point:
        raise ValueError(f"z must be float32, bfloat16, float16 or float64, got {z.dtype}")
    n, d = z.shape
    if n < 2:
        raise ValueError(f"z needs N >= 2 rows (a row's only negatives and positives are other rows), got N = {n}")
    if not 1 <= d <= MAX_DIM:
        raise ValueError(f"z must have 1 <= d <= {MAX_DIM} features, got d = {d}")


def multi_positive_contrastive_loss(
    z: torch.Tensor,
    group_ids: Sequence[torch.Tensor] | torch.Tensor,
    temperature: float = 0.1,
    weights: Sequence[float] | torch.Tensor | None = None,
    view_ids: torch.Tensor | None = None,
    normalize: bool = True,
    reduction: str = "mean",
    *,
    rows: slice | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Fused multi-positive contrastive loss of N embeddings, O(N d) memory (module docstring; same arguments and
    result as :func:`ecgfast.reference.contrastive_loss.multi_positive_contrastive_loss_reference`).

    Args:
        z: (N, d) embeddings, float32 / bfloat16 / float16 (float64 runs on cpp or torch), N >= 2, d <= 1024.
        group_ids: K integer id vectors (N,) (a sequence, one (N,) tensor or a (K, N) tensor); equal ids of kind
            k make positives.
        temperature: tau > 0.
        weights: K per-kind weights >= 0 (default 1), additive over kinds.
        view_ids: optional (N,) integer view index: negatives and positives only from other views.
        normalize: L2-normalise ``z`` first (in float32); ``False`` when the caller already did.
        reduction: ``"mean"`` over anchors with positives, ``"sum"`` or ``"none"`` ((n,), 0 without positives).
        rows: anchors as a slice ``start:stop`` of the N rows (default all), scored against all N rows; the
            distributed loss passes its local block of the gathered batch.
        backend: ``"triton"``, ``"cpp"`` or ``"torch"``; default ``$ECGFAST_LOSS_BACKEND`` or the best available.

    Returns:
        A scalar, or (n,) for ``"none"``; float32 (float64 for float64 ``z``).

    Raises:
        ValueError: ``z`` not 2-D or not floating point, N < 2, d outside 1..1024, ids of the wrong length or dtype,
            a bad temperature, reduction, weight or weight count, a bad ``rows`` slice or an unusable backend.

    Example:
        >>> z = torch.randn(8, 128, requires_grad=True)
        >>> ecg, patient = torch.tensor([0, 1, 2, 3] * 2), torch.tensor([0, 0, 1, 2] * 2)
        >>> loss = multi_positive_contrastive_loss(z, [ecg, patient], weights=(1.0, 0.5))
        >>> loss.backward()
    """
    check_hyperparameters(temperature, reduction)
    _check_z(z)
    n_all = z.shape[0]
    ids = as_group_id_matrix(group_ids, n_all).to(z.device)  # (K, N)
    lam = _check_weights(weights, ids.shape[0])
    views = as_view_ids(view_ids, n_all)
    views = None if views is None else views.to(z.device)
    start, stop, step = (rows or slice(None)).indices(n_all)
    if step != 1 or stop <= start:
        raise ValueError(f"rows must be a non-empty slice with step 1 of the {n_all} rows, got {rows}")
    chosen = resolve_backend(z.device, backend)
    if chosen == "triton" and z.dtype == torch.float64:
        chosen = "cpp" if _CPP_OK and z.device.type == "cpu" else "torch"
    if chosen == "torch":
        return multi_positive_contrastive_loss_reference(z, ids, temperature, lam, views, normalize, reduction,
                                                         rows=slice(start, stop))

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
    per_row = torch.where(has_pos, lse.to(work) - pos_sum / (temperature * safe_w), torch.zeros_like(w_sum))
    if reduction == "none":
        return per_row
    if not torch.compiler.is_compiling() and not bool(has_pos.any()):
        warnings.warn("multi-positive contrastive loss: no row has a positive (every group is a singleton, every "
                      "weight is 0, or view_ids leave no pair); the loss is 0", RuntimeWarning, stacklevel=2)
    if reduction == "sum":
        return per_row.sum()
    return per_row.sum() / has_pos.sum().clamp(min=1)
