"""The previous Triton contrastive loss (commit 8f57bcd), kept only as a benchmark baseline.

What it is: the kernels of ``kernels/contrastive_loss.py`` before issue 12 (a row log-sum-exp of x x^T / tau
tile by tile, d in chunks of up to 128 with a run-time d loop inside the key loop, 64 x 64 tiles of 4 warps, no
autotuning; a backward in two kernels, key side and query side, each recomputing the similarity tiles once per
128-column output chunk: 10 N^2 d FLOPs forward + backward) and a minimal launcher in the shape of that commit's
``ecgfast/ops/contrastive_loss.py``: ``F.normalize`` in float32, the rows cast to z's dtype for 16-bit z, the
log-sum-exp through the kernels, the positive term from group sums in plain torch (autograd), tf32 products only
when ``torch.backends.cuda.matmul.allow_tf32`` is set. Kept for one kind of ids and no view ids, the benchmark's
case.

Why it is kept: issue 12 asks bench/ to measure the FlashAttention-2-style kernel against the previous one on a
GPU (bench/test_bench_contrastive_loss.py, provider "v1"). It is not part of the package and nothing else uses
it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

# Kernels, verbatim from commit 8f57bcd (kernels/contrastive_loss.py)

LOG2E = 1.4426950408889634  # log2(e): the kernels work with exp2 / log2; the host passes log2(e) / tau


@triton.jit
def _mma(a, b, acc, DOT_PRECISION: tl.constexpr):
    """acc + a @ b with fp32 accumulation. DOT_PRECISION "upcast": operands converted to fp32 first (the Triton
    interpreter's tl.dot mishandles bfloat16; a bf16 x bf16 product is exact in fp32, so results are unchanged)."""
    if DOT_PRECISION == "upcast":
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc, input_precision=DOT_PRECISION)


@triton.jit
def _dot_tile(X, rows_a, ok_a, rows_b, ok_b, D, stride_x,
              BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """(BLOCK_A, BLOCK_B) fp32 tile of x[rows_a] . x[rows_b]^T, accumulated over d in BLOCK_D chunks."""
    acc = tl.zeros([BLOCK_A, BLOCK_B], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        d_ok = offs_d < D
        a = tl.load(X + rows_a[:, None] * stride_x + offs_d[None, :], mask=ok_a[:, None] & d_ok[None, :], other=0.0)
        b = tl.load(X + rows_b[:, None] * stride_x + offs_d[None, :], mask=ok_b[:, None] & d_ok[None, :], other=0.0)
        acc = _mma(a, tl.trans(b), acc, DOT_PRECISION)
    return acc


@triton.jit
def _allowed_tile(VIEWS, q_glob, q_ok, k_glob, k_ok, HAS_VIEWS: tl.constexpr):
    """(len q, len k) bool: key k_glob may appear in the denominator of query q_glob."""
    allowed = q_ok[:, None] & k_ok[None, :] & (q_glob[:, None] != k_glob[None, :])
    if HAS_VIEWS:
        vq = tl.load(VIEWS + q_glob, mask=q_ok, other=0)
        vk = tl.load(VIEWS + k_glob, mask=k_ok, other=0)
        allowed = allowed & (vq[:, None] != vk[None, :])
    return allowed


@triton.jit
def _mp_contrastive_fwd_kernel(X, VIEWS, LSE, N, D, n_rows, offset, stride_x, scale_log2,
                               HAS_VIEWS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                               BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """LSE[r] = log sum_{a allowed} exp(x_q . x_a / tau), q = offset + r; scale_log2 = log2(e) / tau."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)  # local query rows
    row_ok = rows < n_rows
    q_glob = rows + offset
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max (base-2 logits)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running sum of exp2(s - m_i)
    for n0 in range(0, N, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        s = _dot_tile(X, q_glob, row_ok, cols, col_ok, D, stride_x, BLOCK_M, BLOCK_N, BLOCK_D, DOT_PRECISION)
        allowed = _allowed_tile(VIEWS, q_glob, row_ok, cols, col_ok, HAS_VIEWS)
        s = tl.where(allowed, s * scale_log2, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # nothing allowed yet: shift by 0, not -inf
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        m_i = m_new
    has_key = l_i > 0
    lse = tl.where(has_key, (m_i + tl.log2(tl.where(has_key, l_i, 1.0))) * 0.6931471805599453, float("-inf"))
    tl.store(LSE + rows, lse, mask=row_ok)


@triton.jit
def _softmax_grad_tile(s, allowed, lse, g, scale_log2, AXIS: tl.constexpr):
    """g * exp(s / tau - lse) where allowed, else 0; lse / g broadcast along AXIS (0: per column, 1: per row)."""
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)  # no allowed key: P = 0
    if AXIS == 1:
        p = tl.exp2(s * scale_log2 - lse2[:, None]) * g[:, None]
    else:
        p = tl.exp2(s * scale_log2 - lse2[None, :]) * g[None, :]
    return tl.where(allowed, p, 0.0)


@triton.jit
def _mp_contrastive_bwd_dq_kernel(X, VIEWS, LSE, G, DQ, N, D, n_rows, offset, stride_x, stride_dq, scale_log2,
                                  inv_tau, HAS_VIEWS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                                  BLOCK_D: tl.constexpr, BLOCK_DO: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """DQ[r, chunk] = sum_a G[r] P_ra x_a[chunk] / tau; grid (query blocks, d chunks of BLOCK_DO)."""
    pid, pid_d = tl.program_id(0), tl.program_id(1)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_rows
    q_glob = rows + offset
    lse = tl.load(LSE + rows, mask=row_ok, other=0.0)
    g = tl.load(G + rows, mask=row_ok, other=0.0)
    offs_o = pid_d * BLOCK_DO + tl.arange(0, BLOCK_DO)
    o_ok = offs_o < D
    acc = tl.zeros([BLOCK_M, BLOCK_DO], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        s = _dot_tile(X, q_glob, row_ok, cols, col_ok, D, stride_x, BLOCK_M, BLOCK_N, BLOCK_D, DOT_PRECISION)
        allowed = _allowed_tile(VIEWS, q_glob, row_ok, cols, col_ok, HAS_VIEWS)
        ds = _softmax_grad_tile(s, allowed, lse, g, scale_log2, 1)
        k = tl.load(X + cols[:, None] * stride_x + offs_o[None, :], mask=col_ok[:, None] & o_ok[None, :], other=0.0)
        acc = _mma(ds.to(k.dtype), k, acc, DOT_PRECISION)
    tl.store(DQ + rows[:, None] * stride_dq + offs_o[None, :], acc * inv_tau, mask=row_ok[:, None] & o_ok[None, :])


@triton.jit
def _mp_contrastive_bwd_kernel(X, VIEWS, LSE, G, DK, N, D, n_rows, offset, stride_x, stride_dk, scale_log2,
                               inv_tau, HAS_VIEWS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                               BLOCK_D: tl.constexpr, BLOCK_DO: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """DK[a, chunk] = sum_r G[r] P_ra x_q(r)[chunk] / tau; grid (key blocks of BLOCK_N, d chunks of BLOCK_DO)."""
    pid, pid_d = tl.program_id(0), tl.program_id(1)
    cols = pid * BLOCK_N + tl.arange(0, BLOCK_N)  # key rows owned by this program
    col_ok = cols < N
    offs_o = pid_d * BLOCK_DO + tl.arange(0, BLOCK_DO)
    o_ok = offs_o < D
    acc = tl.zeros([BLOCK_N, BLOCK_DO], dtype=tl.float32)
    for m0 in range(0, n_rows, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        row_ok = rows < n_rows
        q_glob = rows + offset
        lse = tl.load(LSE + rows, mask=row_ok, other=0.0)
        g = tl.load(G + rows, mask=row_ok, other=0.0)
        s_t = _dot_tile(X, cols, col_ok, q_glob, row_ok, D, stride_x, BLOCK_N, BLOCK_M, BLOCK_D, DOT_PRECISION)
        allowed_t = tl.trans(_allowed_tile(VIEWS, q_glob, row_ok, cols, col_ok, HAS_VIEWS))
        ds_t = _softmax_grad_tile(s_t, allowed_t, lse, g, scale_log2, 0)  # (BLOCK_N, BLOCK_M)
        q = tl.load(X + q_glob[:, None] * stride_x + offs_o[None, :], mask=row_ok[:, None] & o_ok[None, :],
                    other=0.0)
        acc = _mma(ds_t.to(q.dtype), q, acc, DOT_PRECISION)
    tl.store(DK + cols[:, None] * stride_dk + offs_o[None, :], acc * inv_tau, mask=col_ok[:, None] & o_ok[None, :])


def mp_contrastive_block_sizes(d: int, on_gpu: bool) -> dict[str, int]:
    """Tile sizes for feature size ``d``: BLOCK_D is the d chunk of the similarity dot, BLOCK_DO the output chunk.

    ``tl.dot`` needs every tile side >= 16. On a GPU, 64 x 64 tiles with d in chunks of up to 128 keep the fp32
    accumulators in registers for d up to 1024; the interpreter (CPU tests) prefers few, larger tiles.
    """
    block_d = max(16, min(128, triton.next_power_of_2(d)))
    block_do = max(16, min(128 if on_gpu else 256, triton.next_power_of_2(d)))
    if on_gpu:
        return {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_D": block_d, "BLOCK_DO": block_do, "num_warps": 4,
                "num_stages": 2}
    return {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_D": block_d, "BLOCK_DO": block_do}


# ---------------------------------------------------------------------------------------------------------------
# Launcher, in the shape of 8f57bcd's ecgfast/ops/contrastive_loss.py (all rows queries, no view ids)


def _dot_precision(x: torch.Tensor) -> str:
    if not x.is_cuda and x.dtype == torch.bfloat16:
        return "upcast"  # Triton interpreter: its tl.dot mishandles bf16 (_mma)
    if x.dtype == torch.float32 and x.is_cuda and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


class _LSE(torch.autograd.Function):
    """lse (N,) fp32 of every row of x (N, d) against the others; backward by the two kernels, key side then query
    side, and ``dx += dq`` (8f57bcd's ``_triton_lse_fwd`` / ``_triton_lse_bwd`` with offset 0, n_rows N)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, temperature: float) -> torch.Tensor:
        n, d = x.shape
        cfg = mp_contrastive_block_sizes(d, x.is_cuda)
        lse = torch.empty(n, dtype=torch.float32, device=x.device)
        _mp_contrastive_fwd_kernel[(triton.cdiv(n, cfg["BLOCK_M"]),)](
            x, x, lse, n, d, n, 0, x.stride(0), LOG2E / temperature, HAS_VIEWS=False, BLOCK_M=cfg["BLOCK_M"],
            BLOCK_N=cfg["BLOCK_N"], BLOCK_D=cfg["BLOCK_D"], DOT_PRECISION=_dot_precision(x),
            **{k: v for k, v in cfg.items() if k in ("num_warps", "num_stages")})
        ctx.save_for_backward(x, lse)
        ctx.temperature = temperature
        return lse

    @staticmethod
    def backward(ctx, grad_lse: torch.Tensor):
        x, lse = ctx.saved_tensors
        n, d = x.shape
        tau = ctx.temperature
        cfg = mp_contrastive_block_sizes(d, x.is_cuda)
        g = grad_lse.to(torch.float32).contiguous()
        launch = {k: v for k, v in cfg.items() if k in ("num_warps", "num_stages")}
        blocks = {k: cfg[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_D", "BLOCK_DO")}
        common = dict(HAS_VIEWS=False, DOT_PRECISION=_dot_precision(x), **blocks, **launch)
        d_chunks = triton.cdiv(d, cfg["BLOCK_DO"])
        dx = torch.empty(n, d, dtype=torch.float32, device=x.device)
        _mp_contrastive_bwd_kernel[(triton.cdiv(n, cfg["BLOCK_N"]), d_chunks)](
            x, x, lse, g, dx, n, d, n, 0, x.stride(0), dx.stride(0), LOG2E / tau, 1.0 / tau, **common)
        dq = torch.empty(n, d, dtype=torch.float32, device=x.device)
        _mp_contrastive_bwd_dq_kernel[(triton.cdiv(n, cfg["BLOCK_M"]), d_chunks)](
            x, x, lse, g, dq, n, d, n, 0, x.stride(0), dq.stride(0), LOG2E / tau, 1.0 / tau, **common)
        dx += dq
        return dx.to(x.dtype), None


def _dense_labels(ids: torch.Tensor) -> torch.Tensor:
    """Map any int64 ids (N,) to labels in [0, N) (equal ids, equal labels), without a host synchronisation."""
    sorted_ids, order = torch.sort(ids)
    starts = torch.cat([torch.ones_like(sorted_ids[:1], dtype=torch.bool), sorted_ids[1:] != sorted_ids[:-1]])
    return torch.empty_like(ids).scatter_(0, order, torch.cumsum(starts.long(), 0) - 1)


def contrastive_loss_v1(z: torch.Tensor, ids: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Mean multi-positive contrastive loss of z (N, d) with one kind of ids (N,), as commit 8f57bcd computed it."""
    x = F.normalize(z.to(torch.float32), dim=1)
    x_kernel = x.to(z.dtype) if z.dtype in (torch.float16, torch.bfloat16) else x
    lse = _LSE.apply(x_kernel.contiguous(), float(temperature))  # (N,)
    x_pos = x_kernel.to(torch.float32)
    labels = _dense_labels(ids)
    group_sums = torch.zeros_like(x_pos).index_add(0, labels, x_pos)  # (N, d): row g sums group g
    counts = torch.zeros(len(ids), device=z.device).index_add(0, labels, torch.ones_like(x_pos[:, 0]))
    pos_sum = (x_pos * (group_sums[labels] - x_pos)).sum(dim=1)  # sum_{j != i, same id} x_i . x_j
    w_sum = counts[labels] - 1
    has_pos = w_sum > 0
    per_row = torch.where(has_pos, lse - pos_sum / (temperature * w_sum.clamp(min=1)), 0.0)
    return per_row.sum() / has_pos.sum().clamp(min=1)
