"""Fused multi-positive contrastive (SupCon) loss: forward and backward without the N x N matrix, DDP included.

The loss is the one of :mod:`ecgfast.reference.contrastive_loss` (exact definition there: additive per-kind
weights, ``view_ids``, rows without positives). With ``x`` the L2-normalised embeddings and the anchors (queries) a
slice ``[start, stop)`` of the N rows (all of them, or a rank's local rows in the gathered batch under DDP)::

    loss_i = lse_i - sum_j w_ij s_ij / W_i,    lse_i = log sum_{a allowed(i, a)} exp(s_ia),    s_ia = x_i . x_a / tau

Layers (Liger style): the Triton kernels (``ecgfast.kernels.contrastive_loss``) and the blockwise C++ CPU op
(csrc/contrastive_loss.cpp) -> the host launchers and one ``torch.library`` custom op over every backend,
``ecgfast::multi_positive_contrastive_rows`` (per-row losses) with its backward op and ``register_autograd``, so
``torch.compile(fullgraph=True)`` traces it -> the one functional :func:`multi_positive_contrastive_loss` (with the
DDP gather as an option) -> the module :class:`ecgfast.nn.MultiPositiveContrastiveLoss`. Hyperparameters:
:class:`ContrastiveLossConfig`. Backends (:mod:`ecgfast.ops.backends`, ``backend=`` or ``$ECGFAST_LOSS_BACKEND``):

- ``triton`` (CUDA, or the interpreter with ``TRITON_INTERPRET=1``): the whole op in 2 to 3 launches forward
  (normalisation prologue, the loss kernel, a merge when the keys are split) and 3 to 4 backward (prologue, the
  per-row terms, the symmetric gradient kernel with the normalisation's backward in its epilogue, a reduction when
  split): the positive term (``w_ij`` from int32 labels of the ids, made once a call by one sort and one search,
  tile by tile) and the bookkeeping are inside the kernels. FLOPs 6 N^2 d
  forward + backward; no atomics, deterministic; no host synchronisation.
- ``cpp`` (CPU, where ``ecgfast._C`` is built): the C++ log-sum-exp kernels (forward, and the two-pass
  backward), the positive term and its gradient from group sums (O(N d), plain torch), the normalisation's
  backward by its formula (a custom op's implementation runs below autograd).
- ``torch``: the forward is the reference itself (materialises N x N), run inside the custom op; the backward
  is its gradient by the formula, from the N x N matrices again. Also the path of N < 2 rows on every backend
  (the reference's loss 0). float64 input never goes to Triton (cpp on CPU, else torch).

Masking: disallowed pairs are ``-inf`` through ``where`` (never -1e9); a row with no allowed key has ``lse = -inf``
and no positive, and gets loss 0 and gradient 0 (reference convention). Distributed (``gather=True`` under
``torch.distributed`` with world size > 1): each rank scores its local rows against the rows of every rank,
gathered with ``torch.distributed.nn.functional.all_gather`` (whose backward sums every rank's gradient back to
the owner), ids with a plain ``all_gather``. Every rank must call the loss at the same step (collectives).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..reference.contrastive_loss import (
    as_group_id_matrix,
    as_view_ids,
    multi_positive_contrastive_loss_reference,
    positive_weight_matrix,
    positive_weight_sums,
)
from .backends import available_backends, resolve_backend
from .configs import LOSS_PRECISIONS, ContrastiveLossConfig

OP = "contrastive_loss"
MAX_DIM = 1024  # largest feature size the kernels are tuned and tested for
PRECISIONS: tuple[str, ...] = LOSS_PRECISIONS  # of the similarity products (functional docstring)
_HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}
_DEFAULT_PRECISION = {torch.bfloat16: "bf16", torch.float16: "fp16"}  # of z's dtype; "fp32" (no rounding) else
_SM_COUNT_WITHOUT_GPU = 132  # an H100's: the interpreter takes the split decisions the GPU would take


# ---------------------------------------------------------------------------------------------------------------
# Host launcher of the Triton kernels


@functools.cache
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return _SM_COUNT_WITHOUT_GPU
    return torch.cuda.get_device_properties(device).multi_processor_count


@functools.lru_cache(maxsize=64)
def _weight_tensor(weights: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """The per-kind weights (K,) fp32 on ``device``, made once per distinct tuple: a host-to-device copy on every
    call would synchronise the host with the stream."""
    return torch.tensor(weights, dtype=torch.float32, device=device)


def _triton_setup(z: torch.Tensor, normalize: bool, precision: str) -> tuple[torch.Tensor, dict]:
    """x (N, d) contiguous in the product dtype (the prologue kernel, unless z already is x), and the constexprs
    every kernel shares."""
    import triton

    from ecgfast.kernels import contrastive_loss as k

    n, d = z.shape
    if n * d >= 2**31:
        raise ValueError(f"the Triton kernels index with 32-bit offsets: N * d must be < 2**31, got {n} x {d}")
    d_pad = max(16, triton.next_power_of_2(d))
    dtype = _HALF.get(precision, torch.float32)
    if not normalize and z.dtype == dtype and z.is_contiguous():
        x = z
    else:
        x = torch.empty(n, d, dtype=dtype, device=z.device)
        block = k.rows_per_program(d_pad)
        k._mp_contrastive_normalize_kernel[(triton.cdiv(n, block),)](
            z, x, n, z.stride(0), z.stride(1), D=d, D_PAD=d_pad, NORMALIZE=normalize, BLOCK_M=block)
    if k.INTERPRET and x.dtype != torch.float32:
        dot = "upcast"  # the interpreter's tl.dot mishandles 16-bit floats (kernels/contrastive_loss.py, _mma)
    else:
        dot = "tf32" if precision == "tf32" else "ieee"
    return x, {"D": d, "D_PAD": d_pad, "BLOCK_D": k.dot_chunk(d_pad), "DOT": dot}


def _launch(kernel, configs: list, config, grid, *args, **kwargs) -> None:
    """Launch an autotuned kernel on ``grid`` (meta -> grid tuple): through its autotuner where the configs pruned
    ahead of time leave a choice, else the kernel itself with its one config (Triton 3.6's autotuner, the GPU
    machine's, still benchmarks a single config, for every new key; 3.8's does not). ``config`` forces a config."""
    chosen = config if config is not None else configs[0] if len(configs) == 1 else None
    if chosen is None:
        kernel[grid](*args, **kwargs)
    else:
        kernel.fn[lambda meta: grid({**meta, **chosen.kwargs})](*args, **kwargs, **chosen.all_kwargs())


def _fixed_shift(normalize: bool, temperature: float) -> bool:
    """Whether the kernels take the fixed shift (kernels/contrastive_loss.py, ``_fwd_tile``): unit rows (normalised
    by the op) and logits that span at most FIXED_SHIFT_MAX_RANGE binades. Else the online max."""
    from ecgfast.kernels import contrastive_loss as k

    return normalize and 2 * k.LOG2E / temperature <= k.FIXED_SHIFT_MAX_RANGE


def _int32_labels(ids: torch.Tensor, views: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """ids (K, N) and view ids (N,) as int32 labels for the kernels: equal ids, equal labels (the index of the
    id's first place in its sorted row), so that the key loops compare 32 bits instead of 64. One sort and one
    search for all kinds together; int32 input is used as it is (the functional labels once per call, for the
    forward and the backward)."""
    if ids.dtype == torch.int32 and (views is None or views.dtype == torch.int32):
        return ids.contiguous(), None if views is None else views.contiguous()
    meta = ids if views is None else torch.cat([ids, views[None]])
    labels = torch.searchsorted(torch.sort(meta, dim=1).values, meta, out_int32=True)  # (K [+ 1], N)
    return labels[:ids.shape[0]], None if views is None else labels[-1]


def _triton_forward(z: torch.Tensor, ids: torch.Tensor, weights: Sequence[float], views: torch.Tensor | None,
                    offset: int, n_rows: int, temperature: float, normalize: bool, precision: str, *,
                    splits: int | None = None, config=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, W, lse), each (n_rows,) fp32, of the queries [offset, offset + n_rows) of z (N, d) against all N
    rows. ``splits`` overrides the number of key splits (tests); by default it follows the SM count. ``config`` (a
    ``triton.Config``) launches with those tiles instead of the autotuned ones (tests, bench/gpu_check.py)."""
    import triton

    from ecgfast.kernels import contrastive_loss as k

    x, const = _triton_setup(z, normalize, precision)
    n = x.shape[0]
    configs = [config] if config is not None else k.launch_configs(
        "fwd", const["D_PAD"], x.element_size(), n, fma=k.uses_fma(const["DOT"], x.element_size()))
    n_splits, per_split = k.key_splits(n_rows, n, configs, _sm_count(x.device))
    if splits is not None:
        per_split = triton.cdiv(n, splits)
        n_splits = triton.cdiv(n, per_split)
    loss, w_sum, lse = (torch.empty(n_rows, dtype=torch.float32, device=x.device) for _ in range(3))
    part = torch.empty(3, n_splits, n_rows, dtype=torch.float32, device=x.device) if n_splits > 1 else lse
    labels, view_labels = _int32_labels(ids, views)
    views_ptr = view_labels if views is not None else labels  # a dummy pointer when HAS_VIEWS is False
    _launch(k._mp_contrastive_fwd_kernel, configs, config, lambda m: (triton.cdiv(n_rows, m["BLOCK_M"]), n_splits),
        x, labels, _weight_tensor(tuple(weights), x.device), views_ptr, loss, lse, w_sum, part, n, n_rows, offset,
        per_split, k.LOG2E / temperature, 1.0 / temperature, triton.next_power_of_2(n),
        triton.next_power_of_2(n_rows), NUM_KINDS=ids.shape[0], HAS_VIEWS=views is not None,
        FIXED_SHIFT=_fixed_shift(normalize, temperature), SINGLE=n_splits == 1, **const)
    if n_splits > 1:
        block = 128
        k._mp_contrastive_merge_kernel[(triton.cdiv(n_rows, block),)](part, loss, lse, w_sum, n_rows, n_splits,
                                                                      BLOCK=block)
    return loss, w_sum, lse


def _triton_backward(grad: torch.Tensor, z: torch.Tensor, ids: torch.Tensor, weights: Sequence[float],
                     views: torch.Tensor | None, lse: torch.Tensor, w_sum: torch.Tensor, offset: int, n_rows: int,
                     temperature: float, normalize: bool, precision: str, *,
                     splits: int | None = None, config=None) -> torch.Tensor:
    """d(sum_r grad_r loss_r)/dz: (N, d) in z's dtype: the per-row terms (one launch), then one symmetric pass
    with the normalisation's backward in its epilogue (+ a reduction when the keys are split). The positive term's
    gradient stays in the pass, inside each ds before its rounding (the kernel's ``_bwd_tile`` says why); ids and
    view ids reach it as int32 dense labels. ``config`` as in :func:`_triton_forward`."""
    import triton

    from ecgfast.kernels import contrastive_loss as k

    x, const = _triton_setup(z, normalize, precision)
    n, d = x.shape
    configs = [config] if config is not None else k.launch_configs(
        "bwd", const["D_PAD"], x.element_size(), n, fma=k.uses_fma(const["DOT"], x.element_size()))
    block_dx = k.dx_chunk(const["D_PAD"])
    d_chunks = const["D_PAD"] // block_dx  # a grid axis over column chunks of dx (d > 128)
    n_splits = splits or k.key_splits(n, n, configs, _sm_count(x.device), row_block_copies=d_chunks)[0]
    single = n_splits == 1 and d_chunks == 1  # else partial dx in fp32, then the reduction and its epilogue
    fixed = _fixed_shift(normalize, temperature)
    terms = torch.empty((2 if fixed else 3) * n, dtype=torch.float32, device=z.device)
    k._mp_contrastive_row_terms_kernel[(triton.cdiv(n, 1024),)](
        lse.contiguous(), w_sum.contiguous(), grad.to(torch.float32).contiguous(), terms, n, n_rows, offset,
        k.LOG2E / temperature,
        FIXED_SHIFT=fixed, BLOCK=1024)
    dz = torch.empty(n, d, dtype=z.dtype, device=z.device)
    part = dz if single else torch.empty(n_splits, n, d, dtype=torch.float32, device=z.device)
    labels, view_labels = _int32_labels(ids, views)
    views_ptr = view_labels if views is not None else labels  # a dummy pointer when HAS_VIEWS is False
    _launch(k._mp_contrastive_bwd_kernel, configs, config, lambda m: (triton.cdiv(n, m["BLOCK_M"]), n_splits, d_chunks),
        x, z, labels, _weight_tensor(tuple(weights), x.device), views_ptr, terms, dz, part, n, n_rows, offset,
        z.stride(0), z.stride(1), k.LOG2E / temperature,
        1.0 / temperature, triton.next_power_of_2(n), triton.next_power_of_2(n_rows), NUM_KINDS=ids.shape[0],
        HAS_VIEWS=views is not None, FIXED_SHIFT=fixed, NORMALIZE=normalize, SINGLE=single, BLOCK_DX=block_dx, **const)
    if not single:
        block = k.rows_per_program(const["D_PAD"])
        k._mp_contrastive_bwd_reduce_kernel[(triton.cdiv(n, block),)](
            part, z, dz, n, n_splits, z.stride(0), z.stride(1), D=d, D_PAD=const["D_PAD"], NORMALIZE=normalize,
            BLOCK_M=block)
    return dz


# ---------------------------------------------------------------------------------------------------------------
# The cpp and torch backends: eager torch around the C++ log-sum-exp kernels, or the reference itself


def _round_tf32(x: torch.Tensor) -> torch.Tensor:
    """x rounded to tf32 (10 mantissa bits, to nearest, ties away: cvt.rna.tf32.f32)."""
    bits = x.to(torch.float32).view(torch.int32)
    return ((bits + 0x1000) & -0x2000).view(torch.float32).to(x.dtype)


def _product_rows(z: torch.Tensor, normalize: bool, precision: str) -> torch.Tensor:
    """x (N, d) in float32 (float64 for float64 z): z normalised (F.normalize), rounded to ``precision``; autograd
    passes the rounding straight through, as the Triton kernels do."""
    x = z.to(torch.float64 if z.dtype == torch.float64 else torch.float32)
    if normalize:
        x = F.normalize(x, dim=1)
    if precision == "fp32":
        return x
    rounded = _round_tf32(x) if precision == "tf32" else x.to(_HALF[precision]).to(x.dtype)
    return x + (rounded - x).detach()


def _normalize_backward(z: torch.Tensor, dx: torch.Tensor, normalize: bool) -> torch.Tensor:
    """dz from dx = d loss / d x through x = z / max(|z|, eps) (F.normalize), in z's dtype."""
    if not normalize:
        return dx.to(z.dtype)
    zw = z.to(dx.dtype)
    norm = zw.norm(dim=1, keepdim=True)
    denom = norm.clamp_min(1e-12)
    x = zw / denom  # a division, as F.normalize (x = +-1 exactly for d = 1, where the gradient is exactly 0)
    proj = torch.where(norm > 1e-12, (x * dx).sum(dim=1, keepdim=True), 0.0)  # below eps x = z / eps: none
    return ((dx - proj * x) / denom).to(z.dtype)


def _dense_labels(ids: torch.Tensor) -> torch.Tensor:
    """Map any int64 ids (N,) to labels in [0, N) (equal ids, equal labels), with static shapes."""
    sorted_ids, order = torch.sort(ids)
    starts = torch.cat([torch.ones_like(sorted_ids[:1], dtype=torch.bool), sorted_ids[1:] != sorted_ids[:-1]])
    return torch.empty_like(ids).scatter_(0, order, torch.cumsum(starts.long(), 0) - 1)


def _neighbour_sums(v: torch.Tensor, ids: torch.Tensor, lam: Sequence[float],
                    views: torch.Tensor | None) -> torch.Tensor:
    """sum_j w_aj v_j for every row a, v (N, m), from per-group sums (O(N m), no N x N matrix): per kind, the sum
    over a's group minus a's own part (v_a itself, or the sum over its (group, view) cell)."""
    n = v.shape[0]
    out = torch.zeros_like(v)
    view_labels = None if views is None else _dense_labels(views)
    for k, weight in enumerate(lam):
        if weight == 0:
            continue
        labels = _dense_labels(ids[k])  # (N,) in [0, N)
        own = v
        if view_labels is not None:
            cells = _dense_labels(labels * n + view_labels)
            own = torch.zeros_like(v).index_add(0, cells, v)[cells]
        out = out + weight * (torch.zeros_like(v).index_add(0, labels, v)[labels] - own)
    return out


def _positive_sums(x: torch.Tensor, ids: torch.Tensor, weights: Sequence[float], views: torch.Tensor | None,
                   offset: int, n_rows: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, W) of the queries [offset, offset + n_rows) of the product rows x (N, d): P_i = sum_j w_ij s_ij and
    W_i = sum_j w_ij, from per-group sums of the rows (O(N d), never N x N; one pass over [x, 1]): the cpp backend's
    positive term (the Triton kernels keep it in their key loop). Float32 (float64 for float64 x)."""
    xw = x if x.dtype == torch.float64 else x.to(torch.float32)
    q = slice(offset, offset + n_rows)
    sums = _neighbour_sums(torch.cat([xw, torch.ones_like(xw[:, :1])], dim=1), ids, weights, views)  # (N, d + 1)
    return (xw[q] * sums[q, :-1]).sum(dim=1) / temperature, sums[q, -1].contiguous()


def _positive_grad(x: torch.Tensor, ids: torch.Tensor, weights: Sequence[float], views: torch.Tensor | None,
                   grad: torch.Tensor, w_sum: torch.Tensor, offset: int, n_rows: int,
                   temperature: float) -> torch.Tensor:
    """d(-sum_i g_i P_i / W_i)/dx (N, d): -(c_a T_a + sum_i c_i w_ia x_i) with c_i = g_i / (tau W_i) (0 without a
    positive) and T_a = sum_j w_aj x_j, from group sums of [c x, x] in one pass. Float32 (float64 for float64 x)."""
    xw = x if x.dtype == torch.float64 else x.to(torch.float32)
    q = slice(offset, offset + n_rows)
    has = w_sum > 0
    c = torch.where(has, grad.to(xw.dtype), 0.0) / (temperature * torch.where(has, w_sum, 1.0).to(xw.dtype))
    y = torch.zeros_like(xw)
    y[q] = c[:, None] * xw[q]
    sums = _neighbour_sums(torch.cat([y, xw], dim=1), ids, weights, views)  # (N, 2d)
    d = xw.shape[1]
    dx = -sums[:, :d]
    dx[q] -= c[:, None] * sums[q, d:]
    return dx


def _cpp_forward(z, ids, weights, views, offset, n_rows, temperature, normalize, precision):
    x = _product_rows(z, normalize, precision)
    lse = torch.ops.ecgfast.mp_contrastive_lse_fwd(x, views, offset, n_rows, temperature)
    pos, w_sum = _positive_sums(x, ids, weights, views, offset, n_rows, temperature)
    has = w_sum > 0
    return torch.where(has, lse - pos / torch.where(has, w_sum, 1.0), 0.0), w_sum, lse


def _cpp_backward(grad, z, ids, weights, views, lse, w_sum, offset, n_rows, temperature, normalize, precision):
    """dz of sum_i g_i (lse_i - x_i . T_i / (tau W_i)), T_i = sum_j w_ij x_j: the C++ kernels for the lse, and
    d/dx_a of the positive term = -(c_a T_a + sum_i c_i w_ia x_i), c_i = g_i / (tau W_i), from group sums."""
    x = _product_rows(z, normalize, precision)
    has = w_sum > 0
    g = torch.where(has, grad.to(lse.dtype), 0.0)  # rows without a positive have loss 0 whatever z is
    dx = torch.ops.ecgfast.mp_contrastive_lse_bwd(g.contiguous(), x, views, lse, offset, n_rows, temperature)
    dx = dx + _positive_grad(x, ids, weights, views, g, w_sum, offset, n_rows, temperature)
    return _normalize_backward(z, dx, normalize)


def _torch_loss(z, ids, weights, views, offset, n_rows, temperature, normalize, precision):
    return multi_positive_contrastive_loss_reference(_product_rows(z, normalize, precision), ids, temperature, weights,
                                                     views, normalize=False, reduction="none",
                                                     rows=slice(offset, offset + n_rows))


def _torch_backward(grad, z, ids, weights, views, offset, n_rows, temperature, normalize, precision):
    """The reference's gradient with the N x N matrices: d loss_i / d s_ij = g_i (P_ij - w_ij / W_i)."""
    x = _product_rows(z, normalize, precision)
    q = slice(offset, offset + n_rows)
    anchors, keys = torch.arange(x.shape[0], device=x.device)[q], torch.arange(x.shape[0], device=x.device)
    allowed = anchors[:, None] != keys[None, :]  # (n, N)
    if views is not None:
        allowed = allowed & (views[q][:, None] != views[None, :])
    w = positive_weight_matrix(ids, weights, views, rows=q, dtype=x.dtype)  # (n, N), 0 where not allowed
    w_sum = w.sum(dim=1, keepdim=True)
    has = w_sum > 0
    logits = torch.where(has, (x[q] @ x.T / temperature).masked_fill(~allowed, float("-inf")), 0.0)
    ds = torch.where(has, grad.to(x.dtype)[:, None] * (torch.softmax(logits, dim=1) - w / w_sum.clamp_min(1e-30)),
                     0.0)  # (n, N)
    dx = ds.T @ x[q] / temperature
    dx[q] += ds @ x / temperature
    return _normalize_backward(z, dx, normalize)


# ---------------------------------------------------------------------------------------------------------------
# torch.library: one custom op over every backend, its backward op, and its autograd


@torch.library.custom_op("ecgfast::multi_positive_contrastive_rows", mutates_args=())
def contrastive_rows(z: torch.Tensor, ids: torch.Tensor, weights: list[float], views: torch.Tensor | None,
                     offset: int, n_rows: int, temperature: float, normalize: bool, precision: str,
                     backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row losses of the queries [offset, offset + n_rows) of z (N, d) against all N rows, on ``backend``.

    ids (K, N) int64 and views (N,) int64 on z's device; weights K floats; precision one of :data:`PRECISIONS`.
    Returns (loss, W, lse): (n_rows,) float32 (float64 for float64 z); W_i = sum_j w_ij (a row has a positive
    when W_i > 0); lse the row log-sum-exp the backward needs, empty on the torch backend (whose backward re-runs
    the reference). Call :func:`multi_positive_contrastive_loss` instead: it checks and converts.
    """
    if backend == "triton":
        return _triton_forward(z, ids, weights, views, offset, n_rows, temperature, normalize, precision)
    if backend == "cpp":
        return _cpp_forward(z, ids, weights, views, offset, n_rows, temperature, normalize, precision)
    loss = _torch_loss(z, ids, weights, views, offset, n_rows, temperature, normalize, precision)
    w_sum = positive_weight_sums(ids, weights, views)[offset:offset + n_rows].to(loss.dtype)
    return loss, w_sum, loss.new_empty(0)  # the torch backward recomputes the N x N matrices


@contrastive_rows.register_fake
def _(z, ids, weights, views, offset, n_rows, temperature, normalize, precision, backend):
    dtype = torch.float64 if z.dtype == torch.float64 else torch.float32
    return (z.new_empty(n_rows, dtype=dtype), z.new_empty(n_rows, dtype=dtype),
            z.new_empty(0 if backend == "torch" else n_rows, dtype=dtype))


@torch.library.custom_op("ecgfast::multi_positive_contrastive_rows_backward", mutates_args=())
def contrastive_rows_backward(grad: torch.Tensor, z: torch.Tensor, ids: torch.Tensor, weights: list[float],
                              views: torch.Tensor | None, lse: torch.Tensor, w_sum: torch.Tensor, offset: int,
                              n_rows: int, temperature: float, normalize: bool, precision: str,
                              backend: str) -> torch.Tensor:
    """d(sum_r grad_r loss_r)/dz: (N, d) in z's dtype, from the forward's W and lse."""
    args = (ids, weights, views)
    if backend == "triton":
        return _triton_backward(grad, z, *args, lse, w_sum, offset, n_rows, temperature, normalize, precision)
    if backend == "cpp":
        return _cpp_backward(grad, z, *args, lse, w_sum, offset, n_rows, temperature, normalize, precision)
    return _torch_backward(grad, z, *args, offset, n_rows, temperature, normalize, precision)


@contrastive_rows_backward.register_fake
def _(grad, z, ids, weights, views, lse, w_sum, offset, n_rows, temperature, normalize, precision, backend):
    return torch.empty_like(z, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output) -> None:
    z, ids, weights, views, offset, n_rows, temperature, normalize, precision, backend = inputs
    _, w_sum, lse = output
    ctx.save_for_backward(z, ids, views, lse, w_sum)
    ctx.args = (weights, offset, n_rows, temperature, normalize, precision, backend)
    ctx.mark_non_differentiable(w_sum, lse)
    ctx.set_materialize_grads(False)  # no zero-filled gradients for W and lse: two launches fewer


def _backward(ctx, grad_loss, _grad_w_sum, _grad_lse):
    if grad_loss is None:  # the per-row losses were not used
        return None, None, None, None, None, None, None, None, None, None
    z, ids, views, lse, w_sum = ctx.saved_tensors
    weights, offset, n_rows, temperature, normalize, precision, backend = ctx.args
    dz = contrastive_rows_backward(grad_loss, z, ids, weights, views, lse, w_sum, offset, n_rows, temperature,
                                   normalize, precision, backend)
    return dz, None, None, None, None, None, None, None, None, None


contrastive_rows.register_autograd(_backward, setup_context=_setup_context)


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


def _scored_rows(z: torch.Tensor, ids: torch.Tensor, lam: tuple[float, ...], views: torch.Tensor | None,
                 cfg: ContrastiveLossConfig, start: int, stop: int, backend: str | None,
                 precision: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-anchor losses, W) of rows [start, stop) on the chosen backend, both (stop - start,)."""
    chosen = resolve_backend(OP, z.device, backend)
    if chosen == "triton" and z.dtype == torch.float64:
        chosen = "cpp" if "cpp" in available_backends(OP, z.device) else "torch"
    if z.shape[0] < 2:  # one row has no pair: the reference's convention (loss 0) applies
        chosen = "torch"
    if precision is None:  # the input's own precision: bf16 / fp16 rows for bf16 / fp16 z, no rounding otherwise
        precision = _DEFAULT_PRECISION.get(z.dtype, "fp32")
    if chosen == "triton":  # int32 labels once, for the forward and the backward kernels
        ids, views = _int32_labels(ids, views)
    loss, w_sum, _ = contrastive_rows(z, ids, list(lam), views, start, stop - start, float(cfg.temperature),
                                      cfg.normalize, precision, chosen)
    return loss, w_sum


def _row_bounds(rows: slice | None, n: int) -> tuple[int, int, int]:
    """(start, stop, step) of the anchors ``rows`` among n rows, as ``slice.indices(n)`` gives them for a positive
    step (others are refused by the caller). Written out: torch 2.11's dynamo cannot trace ``slice.indices``, which
    broke ``torch.compile(fullgraph=True)`` of the loss there."""
    if rows is None:
        return 0, n, 1
    step = 1 if rows.step is None else rows.step
    if step <= 0:
        return 0, 0, step

    def clip(bound: int | None, default: int) -> int:
        if bound is None:
            return default
        return min(max(bound + n if bound < 0 else bound, 0), n)

    return clip(rows.start, 0), clip(rows.stop, n), step


def _warn_no_positive(where: str = "row") -> None:
    warnings.warn(f"multi-positive contrastive loss: no {where} has a positive (every group is a singleton, every "
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
    precision: str | None = None,
) -> torch.Tensor:
    """Multi-positive contrastive loss of N embeddings, O(N d) memory; gathered across ranks under DDP.

    Same definition as :func:`ecgfast.reference.contrastive_loss.multi_positive_contrastive_loss_reference` (the
    module docstring of this file says how it is computed).

    Precision contract (every backend; tests/test_contrastive_loss_op.py::test_precision_contract):

    - Rows: ``z`` is normalised in float32 (``F.normalize``; float64 for float64 ``z`` off Triton) and rounded once,
      to nearest, to the product precision: bf16 when ``z`` is bfloat16 or ``precision="bf16"`` (the tensor-core
      path for float32 embeddings: ask for it explicitly), fp16 when ``z`` is float16 or ``precision="fp16"``, tf32
      when asked, none for float32 ``z`` by default. Nothing depends on the global ``allow_tf32`` flag.
    - Accumulation: the dot products accumulate in float32; the log-sum-exp, the positive term and the loss are
      float32 (the loss is float32 whatever ``z``'s dtype, float64 for float64 ``z``).
    - Gradient: accumulated in float32, passed straight through the rounding of the rows, and rounded once to
      ``z``'s dtype (so float32 for float32 ``z`` with bf16 products). On Triton the backward's second product
      also takes its weights ``P_ij - w_ij / W_i`` rounded to the row precision (after the subtraction, as
      FlashAttention rounds dS).
    - Bounds, with ``u`` the unit roundoff of the rows (2^-8 bf16, 2^-11 fp16 and tf32, 0 without rounding): the
      loss is the loss of the rounded rows up to float32 summation (tested within 1e-5); each ``s_ij`` moves by at
      most ``(2 u + u^2) / tau`` from the exact one, so each ``loss_i`` moves by at most twice that (tested against
      the float64 reference); the gradient is within a relative ``2 u`` (Frobenius norm) of the float64 gradient of
      the rounded rows' loss passed straight through the rounding.

    Args:
        z: (n, d) embeddings of this rank (all N rows without torch.distributed), float32 / bfloat16 / float16 /
            float64, any strides, d <= 1024.
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
        precision: of the similarity products, one of ``"bf16"``, ``"fp16"``, ``"tf32"``, ``"fp32"`` (no rounding;
            float64 stays float64). Default: ``z``'s own precision (``"bf16"`` / ``"fp16"`` for bfloat16 / float16,
            ``"fp32"`` otherwise), on every backend; cpp and torch round the rows the same way, so backends agree.

    Returns:
        A scalar, or (n,) for ``"none"``; float32 (float64 for float64 ``z``). Under torch.distributed, the
        per-rank value is scaled so that its average over ranks is the full-batch loss and DDP's averaged gradient
        is the full-batch gradient (see the comment in the code). With N < 2 (no pair at all) the loss is 0.
        When no row has a positive the loss is 0 and, on a CPU and not under torch.compile, a RuntimeWarning
        says so (on a GPU the check would synchronise the host with the device, so it is not made).

    Raises:
        ValueError: ``z`` not 2-D or not floating point, d outside 1..1024, ids of the wrong length or dtype, a bad
            temperature, reduction, weight or weight count, precision, a bad ``rows`` slice or an unusable backend.

    Example:
        >>> z = torch.randn(8, 128, requires_grad=True)
        >>> ecg, patient = torch.tensor([0, 1, 2, 3] * 2), torch.tensor([0, 0, 1, 2] * 2)
        >>> loss = multi_positive_contrastive_loss(z, [ecg, patient], weights=(1.0, 0.5))
        >>> loss.backward()
    """
    cfg = ContrastiveLossConfig(temperature, weights, normalize, reduction, gather)  # validates them all
    _check_z(z)
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"precision must be None or one of {PRECISIONS}, got {precision!r}")
    n = z.shape[0]
    ids = as_group_id_matrix(group_ids, n).to(z.device)  # (K, n) int64
    lam = cfg.weights_for(ids.shape[0])
    views = as_view_ids(view_ids, n)
    views = None if views is None else views.to(z.device)
    check_positives = not torch.compiler.is_compiling() and z.device.type == "cpu"  # no host sync on a GPU
    world = _world_size() if gather else 1
    if world == 1:
        start, stop, step = _row_bounds(rows, n)
        if step != 1 or (stop <= start and n > 0):  # an empty batch scores nothing: the reference's loss 0
            raise ValueError(f"rows must be a non-empty slice with step 1 of the {n} rows, got {rows}")
        per_row, w_sum = _scored_rows(z, ids, lam, views, cfg, start, stop, backend, precision)
        if reduction == "none":
            return per_row
        has_pos = w_sum > 0
        if check_positives and not bool(has_pos.any()):
            _warn_no_positive()
        if reduction == "sum":
            return per_row.sum()
        return per_row.sum() / has_pos.sum().clamp(min=1)
    if rows is not None:
        raise ValueError("rows selects anchors of one process's batch: pass gather=False with it")

    meta = ids if views is None else torch.cat([ids, views[None]])  # (K [+1], n)
    z_all, meta_all, offset = _all_gather_rows(z, meta)
    ids_all, views_all = (meta_all, None) if views is None else (meta_all[:-1], meta_all[-1])
    per_row, w_sum = _scored_rows(  # (n,): this rank's rows (queries) against all N gathered rows (keys)
        z_all, ids_all, lam, views_all, cfg, offset, offset + n, backend, precision)
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
    n_valid = (w_sum > 0).sum()  # this rank's rows with positives; summed over ranks without a host sync
    dist.all_reduce(n_valid)
    if check_positives and int(n_valid) == 0:
        _warn_no_positive("row of the gathered batch")
    return per_row.sum() * world / n_valid.clamp(min=1)


__all__ = ["ContrastiveLossConfig", "MAX_DIM", "PRECISIONS", "contrastive_rows", "multi_positive_contrastive_loss"]
