"""Triton kernels of the fused multi-positive contrastive loss, FlashAttention-2 style: the whole loss per row in
one pass over key tiles, the whole gradient in one symmetric pass, never the N x N matrix.

Notation (``ecgfast.ops.contrastive_loss`` launches these): ``x`` (N, D) holds the normalised rows in the product
dtype (bf16 / fp16 / fp32), contiguous; the queries are its rows ``[offset, offset + n_rows)``; ``s_ia = x_i . x_a /
tau``; ``allowed(i, a) = a != i`` (global index) and, with view ids, ``view[a] != view[i]``; the positive weight of
an allowed pair is ``w_ia = sum_k lambda_k [id_k[i] == id_k[a]]`` (K id vectors, IDS (K, N) int64). Per query::

    lse_i = log sum_{a allowed} exp(s_ia),  P_i = sum_a w_ia s_ia,  W_i = sum_a w_ia,
    loss_i = lse_i - P_i / W_i  (0 when W_i = 0)

- ``_mp_contrastive_normalize_kernel``: the prologue, z (N, D) any float dtype and strides -> x = z / max(|z|,
  1e-12) (F.normalize) rounded once to the product dtype.
- ``_mp_contrastive_fwd_kernel``: one program per BLOCK_M queries and key split. Up to d = 128 (padded) the query
  tile is loaded once and the key loop streams whole-d (BLOCK_N, D) tiles (D a constexpr, so the key loop is the
  innermost loop and Triton pipelines its loads over num_stages), one ``tl.dot`` per tile; past 128 the similarity
  tile accumulates over d chunks of BLOCK_D = 64 columns in an inner loop (pipelined over its chunks; query and
  key chunks loaded per chunk), so that registers and shared memory hold one chunk per stage whatever d, up to
  1024. fp32 accumulation, tensor cores for 16-bit rows; an online max-shifted log-sum-exp in base 2, and P_i, W_i
  from the same tile. Disallowed entries are -inf
  through ``tl.where``; the running max is replaced by 0 while a row has seen nothing allowed (no inf - inf).
  With one split it writes loss, lse and W; with several (fewer query blocks than SMs) each split writes its
  partial (lse, P, W) and ``_mp_contrastive_merge_kernel`` merges them (log-sum-exp of the lse, sums of P and W).
- ``_mp_contrastive_bwd_kernel``: the symmetric backward. ``d loss / d s_ij = g_i (P_ij - w_ij / W_i)`` and s, w
  and ``allowed`` are symmetric, so for every row a (query or not)::

      dx_a = sum_j [g_a (P_aj - w_aj / W_a) + g_j (P_ja - w_ja / W_j)] x_j / tau

  (g, 1/W of a non-query row are 0). One program owns BLOCK_M rows a and loops over key tiles j: one similarity
  tile, both softmax terms from it (P_ja = exp(s_aj - lse_j)), one ``tl.dot`` into the (BLOCK_M, BLOCK_DX) fp32
  accumulator. Up to d = 128, BLOCK_DX = D: FLOPs 4 N^2 D (6 N^2 D with the forward; the two-kernel backward it
  replaces did 8). Past 128 the similarity is chunked over d as in the forward and a third grid axis splits dx
  into D / 128 column chunks, each recomputing the similarity tile: FLOPs 2 N^2 D (1 + D / 128) (the kernel's
  docstring says why not a whole-d accumulator). Each program owns its output rows: no atomics, deterministic.
  The normalisation's backward (``(dx - x (x . dx)) / |z|``) runs in the epilogue, from z, so the kernel writes dz
  in z's dtype. With fewer row blocks than SMs the keys are split, each split writes its (N, D) fp32 partial (its
  columns of it when dx is chunked) and ``_mp_contrastive_bwd_reduce_kernel`` sums them in a fixed order
  (deterministic) before the same epilogue; with dx in column chunks the reduction runs even with one split,
  since the epilogue needs whole rows. A block without queries (under DDP) only visits the query keys.

Tile sizes come from ``triton.autotune`` over a few configs, pruned ahead of time (:func:`launch_configs`) to those
whose tiles fit in registers and shared memory for that D, and to one config for small N (below
:data:`TUNE_MIN_N_BUCKET` keys a launch is latency-bound: no config pays for its compile). The autotune key is every
argument that changes the compiled kernel or its work besides the tiles (:data:`FWD_KEY`, :data:`BWD_KEY`): N and
query-row buckets, D, the number of id kinds, whether view ids are given, the split path (one key split or
partials), the product precision (and the normalisation's backward), with the dtypes of the tensor arguments that
Triton adds itself; so one variant's choice is never reused for another. Where one config is left the host launcher
calls the kernel directly, never the autotuner (Triton 3.6's would still benchmark it). Under the Triton interpreter
(CPU tests) one config per N bucket, never benchmarked.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

LOG2E = 1.4426950408889634  # log2(e): the kernels work in base 2; the host passes log2(e) / tau
LN2 = 0.6931471805599453
NORM_EPS = 1e-12  # F.normalize's eps: rows are divided by max(|z|, eps)
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # the Triton interpreter (CPU tests): one small config
SPLIT_MIN_SM_SHARE = 2  # split the keys only when the row blocks fill at most half of the SMs


# ---------------------------------------------------------------------------------------------------------------
# Configs: (BLOCK_M, BLOCK_N, num_warps, num_stages), pruned per D by a register and shared-memory estimate


INTERPRET_BIG_BUCKET = 2048  # from this N bucket on, the interpreter takes 512-row tiles (below, 64)


def _interpreter_config(n_bucket: int) -> triton.Config:
    """The one config of the interpreter for keys N in ``n_bucket`` (next power of 2): 64-row tiles, so that small
    test sizes cross block and split borders (N = 65), and 512-row tiles from 2048 rows, since the interpreter's
    cost is per tile step (N = 4097, d = 16 forward + backward: about 26 s instead of 160 s with 64-row tiles)."""
    block = 512 if n_bucket >= INTERPRET_BIG_BUCKET else 64
    return triton.Config({"BLOCK_M": block, "BLOCK_N": block})


def _configs(which: str) -> list[triton.Config]:
    if INTERPRET:  # one per N bucket, chosen by the pruner: the interpreter never benchmarks
        return [_interpreter_config(1), _interpreter_config(INTERPRET_BIG_BUCKET)]
    table = {  # d chunks past 128 columns: the 128-row and 64-row tiles fit up to D = 1024 (the AOT test)
        "fwd": [(128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 4), (64, 32, 4, 3), (32, 32, 4, 3), (16, 32, 4, 2)],
        "bwd": [(64, 64, 4, 3), (128, 64, 8, 2), (64, 128, 8, 2), (32, 64, 4, 2), (16, 32, 4, 2)],
    }[which]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in table]


# estimated 32-bit registers a thread for the live tiles (tile_registers), past which ptxas (sm_90, 255 at most)
# spilled in the calibration; blocks of fewer than 64 rows use mma.sync, which keeps more operands in registers
REGISTER_BUDGET = {"fwd": 192, "bwd": 224}
REGISTER_BUDGET_MMA_SYNC = 160
SMEM_BUDGET = 220 * 1024  # bytes of pipelined key tiles an H100 SM holds


WHOLE_D_MAX = 128  # up to this padded d, whole-d tiles (one product per key tile, the query tile loaded once)
D_CHUNK = 64  # past it, the similarity's d chunk: the dot accumulates over D_PAD / 64 chunks
DX_CHUNK = 128  # past it, the columns of dx one backward program owns (a grid axis over D_PAD / 128 chunks)


def dot_chunk(d_pad: int) -> int:
    """BLOCK_D: the columns of one similarity product, whole d up to WHOLE_D_MAX, else D_CHUNK."""
    return d_pad if d_pad <= WHOLE_D_MAX else D_CHUNK


def dx_chunk(d_pad: int) -> int:
    """BLOCK_DX: the columns of dx one backward program accumulates, whole d up to WHOLE_D_MAX, else DX_CHUNK."""
    return d_pad if d_pad <= WHOLE_D_MAX else DX_CHUNK


def tile_registers(which: str, block_m: int, block_n: int, num_warps: int, d_pad: int, elem_bytes: int) -> float:
    """Estimated 32-bit registers a thread for a config's live tiles: the query tile (whole d, or one d chunk), the
    fp32 similarity-sized tiles (3 of them: s, p, w), and in the backward the (BLOCK_M, BLOCK_DX) fp32 accumulator
    and the key tile of the second product. Calibrated against ptxas for sm_90 (tests/test_contrastive_loss_op.py
    compiles the bf16 configs and asserts zero spills): under the budget, no config spilled; over it, most did."""
    threads = 32 * num_warps
    live = block_m * dot_chunk(d_pad) * elem_bytes + block_m * block_n * 4 * 3
    if which == "bwd":
        live += block_m * dx_chunk(d_pad) * 4 + block_n * dx_chunk(d_pad) * elem_bytes
    return live / (4 * threads)


def tile_fits(which: str, block_m: int, block_n: int, num_warps: int, num_stages: int, d_pad: int,
              elem_bytes: int) -> bool:
    """Whether a config's tiles fit an H100 SM without spilling: the register estimate under its budget (the
    smaller one for blocks of fewer than 64 rows, which use mma.sync rather than wgmma) and num_stages pipelined
    tiles in shared memory (key tiles of whole d; past WHOLE_D_MAX query and key chunks)."""
    budget = REGISTER_BUDGET[which] if block_m >= 64 else REGISTER_BUDGET_MMA_SYNC
    registers = tile_registers(which, block_m, block_n, num_warps, d_pad, elem_bytes)
    staged_rows = block_n if d_pad <= WHOLE_D_MAX else block_m + block_n
    return registers <= budget and num_stages * staged_rows * dot_chunk(d_pad) * elem_bytes <= SMEM_BUDGET


# Below this N bucket a launch is latency-bound (at N = 512, d = 128 the whole forward + backward is 0.2 GFLOP, a
# few microseconds of tensor-core time): one config (the smallest fitting tiles, which waste least on a few rows),
# since tuning would cost a compile per config (about a second each) to win nothing measurable.
TUNE_MIN_N_BUCKET = 1024
# The autotune keys: every argument besides the tiles that changes the compiled kernel or its work. Triton adds the
# dtypes of the tensor arguments (rows, z) itself. N_BUCKET and ROWS_BUCKET are powers of 2 >= N and the query rows.
FWD_KEY = ["N_BUCKET", "ROWS_BUCKET", "D", "NUM_KINDS", "HAS_VIEWS", "SINGLE", "DOT"]
BWD_KEY = ["N_BUCKET", "ROWS_BUCKET", "D", "NUM_KINDS", "HAS_VIEWS", "NORMALIZE", "SINGLE", "DOT"]


def _fitting(configs: list[triton.Config], which: str, d_pad: int, elem_bytes: int,
             n_bucket: int) -> list[triton.Config]:
    fit = [c for c in configs if tile_fits(which, c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps,
                                           c.num_stages, d_pad, elem_bytes)]
    fit = fit or configs[-1:]  # the smallest tiles, whatever the estimate says
    if n_bucket < TUNE_MIN_N_BUCKET:
        return [min(fit, key=lambda c: (c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"], c.num_warps))]
    return fit


def _pruner(which: str):
    """The autotuner's early_config_prune: the configs of :func:`launch_configs` for this launch."""
    def prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
        if INTERPRET:
            return [_interpreter_config(named_args["N_BUCKET"])]
        return _fitting(configs, which, kwargs["D_PAD"], named_args["X"].element_size(), named_args["N_BUCKET"])
    return prune


def launch_configs(which: str, d_pad: int, elem_bytes: int, n: int) -> list[triton.Config]:
    """The configs kernel ``which`` ("fwd" / "bwd") chooses from for N keys, this D and row dtype, pruned ahead of
    time: the tiles that fit (:func:`tile_fits`), one config below :data:`TUNE_MIN_N_BUCKET`, one per N bucket in
    the interpreter. The launcher calls the kernel with the config directly when one is left."""
    if INTERPRET:
        return [_interpreter_config(triton.next_power_of_2(n))]
    return _fitting(_configs(which), which, d_pad, elem_bytes, triton.next_power_of_2(n))


def key_splits(rows: int, keys: int, configs: list[triton.Config], sm_count: int,
               row_block_copies: int = 1) -> tuple[int, int]:
    """(splits, keys per split) of the key loop: split only when the row blocks fill at most half the SMs.

    Decided with the largest BLOCK_M of the configs (the fewest row blocks autotuning can choose), in key chunks
    that are a multiple of every config's BLOCK_N, so that the choice does not depend on the config picked.
    ``row_block_copies``: programs per row block besides the splits (the backward's column chunks of dx).
    """
    block_m = max(c.kwargs["BLOCK_M"] for c in configs)
    granule = max(c.kwargs["BLOCK_N"] for c in configs)
    row_blocks = triton.cdiv(rows, block_m) * row_block_copies
    key_tiles = triton.cdiv(keys, granule)
    if row_blocks * SPLIT_MIN_SM_SHARE > sm_count or key_tiles < 2:
        return 1, triton.cdiv(keys, granule) * granule
    splits = min(sm_count // row_blocks, key_tiles)
    per_split = triton.cdiv(key_tiles, splits) * granule
    return triton.cdiv(keys, per_split), per_split


# ---------------------------------------------------------------------------------------------------------------
# Tile helpers


@triton.jit
def _mma(a, b, acc, DOT: tl.constexpr):
    """acc + a @ b with fp32 accumulation. DOT "upcast": operands converted to fp32 first (the Triton interpreter's
    tl.dot mishandles 16-bit floats; a product of two 16-bit floats is exact in fp32, so results are unchanged)."""
    if DOT == "upcast":
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc, input_precision=DOT)


@triton.jit
def _round_to(x, dtype: tl.constexpr):
    """fp32 x rounded to nearest (ties to even) in ``dtype``. bf16 goes through integer arithmetic on the bits: the
    Triton interpreter truncates fp32 -> bf16 where the GPU rounds to nearest, and the CPU tests must test the GPU's
    rounding (a truncated row is biased toward 0, and its loss moved 5x more at N = 65, d = 128). NaN stays NaN."""
    if dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & 0xFFFF0000
        x = tl.where(x == x, bits.to(tl.float32, bitcast=True), x)
    return x.to(dtype)


@triton.jit
def _load_rows(X, rows, ok, col0, D: tl.constexpr, WIDTH: tl.constexpr):
    """(len rows, WIDTH) tile of columns [col0, col0 + WIDTH) of the contiguous (N, D) rows x, zero outside
    (padding columns add nothing). col0 is a multiple of WIDTH; without padding (D a multiple of WIDTH) only the
    rows are masked, so that the loads vectorise."""
    offs = col0 + tl.arange(0, WIDTH)
    if D % WIDTH == 0:
        mask = ok[:, None]
    else:
        mask = ok[:, None] & (offs[None, :] < D)
    return tl.load(X + rows[:, None] * D + offs[None, :], mask=mask, other=0.0)


@triton.jit
def _similarity(X, x_q, q, q_ok, cols, cols_ok, D: tl.constexpr, D_PAD: tl.constexpr, BLOCK_D: tl.constexpr,
                DOT: tl.constexpr):
    """(len q, len cols) fp32 x_q . x_k of query rows q against key rows cols.

    D_PAD == BLOCK_D (d <= 128): one product of the whole-d query tile x_q (loaded once by the caller) and the key
    tile; the caller's key loop is then the innermost loop, which Triton pipelines. Else the dot accumulates over d
    chunks of BLOCK_D columns in a run-time loop (the innermost loop, pipelined over its chunks), query and key
    chunks loaded per chunk (the query chunk from L1 / L2): a whole-d query tile and key tiles pipelined over
    num_stages would not fit in registers and shared memory at d = 512 or 1024. x_q is unused then."""
    if D_PAD == BLOCK_D:
        dots = _mma(x_q, tl.trans(_load_rows(X, cols, cols_ok, 0, D, D_PAD)), None, DOT)
    else:
        dots = tl.zeros([q.shape[0], cols.shape[0]], dtype=tl.float32)
        for c in range(0, D_PAD, BLOCK_D):
            x_qc = _load_rows(X, q, q_ok, c, D, BLOCK_D)
            x_kc = _load_rows(X, cols, cols_ok, c, D, BLOCK_D)
            dots = _mma(x_qc, tl.trans(x_kc), dots, DOT)
    return dots


@triton.jit
def _query_tile(X, q, q_ok, D: tl.constexpr, D_PAD: tl.constexpr, BLOCK_D: tl.constexpr):
    """The whole-d query tile (len q, D_PAD), loaded once, when the similarity takes one product (d <= 128); else
    a placeholder (the chunks are loaded inside the key loop)."""
    if D_PAD == BLOCK_D:
        x_q = _load_rows(X, q, q_ok, 0, D, D_PAD)
    else:
        x_q = tl.zeros([1, 1], dtype=X.dtype.element_ty)
    return x_q


@triton.jit
def _allowed(VIEWS, rows, rows_ok, cols, cols_ok, HAS_VIEWS: tl.constexpr):
    """(len rows, len cols) bool: key ``cols`` may appear in the denominator of ``rows`` (global indices)."""
    allowed = rows_ok[:, None] & cols_ok[None, :] & (rows[:, None] != cols[None, :])
    if HAS_VIEWS:
        v_row = tl.load(VIEWS + rows, mask=rows_ok, other=0)
        v_col = tl.load(VIEWS + cols, mask=cols_ok, other=0)
        allowed = allowed & (v_row[:, None] != v_col[None, :])
    return allowed


@triton.jit
def _positive_weights(IDS, WEIGHTS, N, rows, rows_ok, cols, cols_ok, NUM_KINDS: tl.constexpr):
    """(len rows, len cols) fp32 w = sum_k lambda_k [id_k[row] == id_k[col]] (not yet masked by ``allowed``)."""
    w = tl.zeros([rows.shape[0], cols.shape[0]], dtype=tl.float32)
    for k in tl.static_range(NUM_KINDS):
        id_row = tl.load(IDS + k * N + rows, mask=rows_ok, other=0)
        id_col = tl.load(IDS + k * N + cols, mask=cols_ok, other=0)
        w += tl.where(id_row[:, None] == id_col[None, :], tl.load(WEIGHTS + k), 0.0)
    return w


@triton.jit
def _row_loss(lse, pos, w_sum):
    """loss_i = lse_i - P_i / W_i where row i has a positive (W_i > 0), else 0."""
    has = w_sum > 0
    return tl.where(has, lse - pos / tl.where(has, w_sum, 1.0), 0.0)


@triton.jit
def _query_terms(LSE, WSUM, G, rows, ok, offset, n_rows):
    """For rows (global): (g, lse in base 2, g / W) as query rows; (0, +inf, 0) for a row that is no query or has
    no positive (its loss is 0 whatever x is), so that every P term of it is exactly 0."""
    local = rows - offset
    is_q = ok & (local >= 0) & (local < n_rows)
    w = tl.load(WSUM + local, mask=is_q, other=0.0)
    has = w > 0
    g = tl.where(has, tl.load(G + local, mask=is_q, other=0.0), 0.0)
    lse2 = tl.where(has, tl.load(LSE + local, mask=is_q, other=0.0) * 1.4426950408889634, float("inf"))
    return g, lse2, g / tl.where(has, w, 1.0)


@triton.jit
def _store_input_grad(Z, DZ, rows, ok, dx, stride_z0, stride_z1, D: tl.constexpr, D_PAD: tl.constexpr,
                      NORMALIZE: tl.constexpr):
    """dz = d loss / d z from dx = d loss / d x, through x = z / max(|z|, eps) when NORMALIZE; stored in z's dtype
    into the contiguous (N, D) DZ. The rounding of x to the product dtype is passed straight through."""
    offs = tl.arange(0, D_PAD)
    mask = ok[:, None] & (offs[None, :] < D)
    if NORMALIZE:
        z = tl.load(Z + rows[:, None] * stride_z0 + offs[None, :] * stride_z1, mask=mask, other=0.0).to(tl.float32)
        norm = tl.sqrt(tl.sum(z * z, axis=1))
        denom = tl.maximum(norm, 1e-12)[:, None]
        x = z / denom  # a division, as F.normalize: x = +-1 exactly for d = 1, where the gradient is exactly 0
        proj = tl.where(norm > 1e-12, tl.sum(x * dx, axis=1), 0.0)  # below eps x = z / eps: no projection
        dx = (dx - proj[:, None] * x) / denom
    tl.store(DZ + rows[:, None] * D + offs[None, :], _round_to(dx, DZ.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------------------------
# Kernels


@triton.jit
def _mp_contrastive_normalize_kernel(Z, X, N, stride_z0, stride_z1, D: tl.constexpr, D_PAD: tl.constexpr,
                                     NORMALIZE: tl.constexpr, BLOCK_M: tl.constexpr):
    """X[r] = z_r / max(|z_r|, eps) (or z_r), rounded once to X's dtype; z (N, D) any float dtype and strides."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs = tl.arange(0, D_PAD)
    mask = (rows < N)[:, None] & (offs[None, :] < D)
    z = tl.load(Z + rows[:, None] * stride_z0 + offs[None, :] * stride_z1, mask=mask, other=0.0).to(tl.float32)
    if NORMALIZE:
        z = z / tl.maximum(tl.sqrt(tl.sum(z * z, axis=1)), 1e-12)[:, None]
    tl.store(X + rows[:, None] * D + offs[None, :], _round_to(z, X.dtype.element_ty), mask=mask)


@triton.autotune(configs=_configs("fwd"), key=FWD_KEY, prune_configs_by={"early_config_prune": _pruner("fwd")})
@triton.jit
def _mp_contrastive_fwd_kernel(X, IDS, WEIGHTS, VIEWS, LOSS, LSE, WSUM, PART, N, n_rows, offset, keys_per_split,
                               scale_log2, inv_tau, N_BUCKET, ROWS_BUCKET, D: tl.constexpr, D_PAD: tl.constexpr,
                               BLOCK_D: tl.constexpr, NUM_KINDS: tl.constexpr, HAS_VIEWS: tl.constexpr,
                               SINGLE: tl.constexpr, DOT: tl.constexpr, BLOCK_M: tl.constexpr,
                               BLOCK_N: tl.constexpr):
    """Rows r of the queries [offset, offset + n_rows) against keys [split * keys_per_split, + keys_per_split).

    SINGLE (one split): LOSS, LSE, WSUM (n_rows,) fp32. Else PART (3, splits, n_rows): this split's lse, P, W.
    scale_log2 = log2(e) / tau, inv_tau = 1 / tau; N_BUCKET and ROWS_BUCKET (powers of 2 >= N, >= n_rows) only
    key the autotuner.
    """
    split = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # local query rows
    rows_ok = rows < n_rows
    q = rows + offset  # global index of the queries
    x_q = _query_tile(X, q, rows_ok, D, D_PAD, BLOCK_D)  # (BLOCK_M, D_PAD) loaded once, when d <= BLOCK_D
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max of the base-2 logits
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running sum of exp2(logit - m_i)
    pos_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # sum_a w_ia x_q . x_a
    w_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # sum_a w_ia
    lo = split * keys_per_split
    hi = tl.minimum(lo + keys_per_split, N)
    for start in range(lo, hi, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        cols_ok = cols < hi
        dots = _similarity(X, x_q, q, rows_ok, cols, cols_ok, D, D_PAD, BLOCK_D, DOT)  # (BLOCK_M, BLOCK_N) fp32
        allowed = _allowed(VIEWS, q, rows_ok, cols, cols_ok, HAS_VIEWS)
        logits = tl.where(allowed, dots * scale_log2, float("-inf"))
        # masked through the logits, so that w lives in the dot's register layout (one copy of the tile)
        w = _positive_weights(IDS, WEIGHTS, N, q, rows_ok, cols, cols_ok, NUM_KINDS)
        w = tl.where(logits > float("-inf"), w, 0.0)
        pos_i += tl.sum(w * dots, axis=1)
        w_i += tl.sum(w, axis=1)
        m_new = tl.maximum(m_i, tl.max(logits, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # nothing allowed yet: shift by 0, not -inf
        l_i = l_i * tl.exp2(m_i - m_safe) + tl.sum(tl.exp2(logits - m_safe[:, None]), axis=1)
        m_i = m_new
    has_key = l_i > 0
    lse = tl.where(has_key, (m_i + tl.log2(tl.where(has_key, l_i, 1.0))) * 0.6931471805599453, float("-inf"))
    pos = pos_i * inv_tau  # sum_a w_ia s_ia
    if SINGLE:
        tl.store(LOSS + rows, _row_loss(lse, pos, w_i), mask=rows_ok)
        tl.store(LSE + rows, lse, mask=rows_ok)
        tl.store(WSUM + rows, w_i, mask=rows_ok)
    else:
        part = PART + split * n_rows + rows
        stride = tl.num_programs(1) * n_rows
        tl.store(part, lse, mask=rows_ok)
        tl.store(part + stride, pos, mask=rows_ok)
        tl.store(part + 2 * stride, w_i, mask=rows_ok)


@triton.jit
def _mp_contrastive_merge_kernel(PART, LOSS, LSE, WSUM, n_rows, n_splits, BLOCK: tl.constexpr):
    """Merge the forward's key splits: lse = log sum_s exp(lse_s), P = sum_s P_s, W = sum_s W_s; then the loss."""
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = rows < n_rows
    stride = n_splits * n_rows
    m = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
    for s in range(n_splits):
        m = tl.maximum(m, tl.load(PART + s * n_rows + rows, mask=ok, other=float("-inf")))
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    total = tl.zeros([BLOCK], dtype=tl.float32)
    pos = tl.zeros([BLOCK], dtype=tl.float32)
    w_sum = tl.zeros([BLOCK], dtype=tl.float32)
    for s in range(n_splits):  # a fixed order: deterministic
        total += tl.exp(tl.load(PART + s * n_rows + rows, mask=ok, other=float("-inf")) - m_safe)
        pos += tl.load(PART + stride + s * n_rows + rows, mask=ok, other=0.0)
        w_sum += tl.load(PART + 2 * stride + s * n_rows + rows, mask=ok, other=0.0)
    lse = tl.where(total > 0, m_safe + tl.log(tl.where(total > 0, total, 1.0)), float("-inf"))
    tl.store(LOSS + rows, _row_loss(lse, pos, w_sum), mask=ok)
    tl.store(LSE + rows, lse, mask=ok)
    tl.store(WSUM + rows, w_sum, mask=ok)


@triton.autotune(configs=_configs("bwd"), key=BWD_KEY, prune_configs_by={"early_config_prune": _pruner("bwd")})
@triton.jit
def _mp_contrastive_bwd_kernel(X, Z, IDS, WEIGHTS, VIEWS, LSE, WSUM, G, DZ, PART, N, n_rows, offset, stride_z0,
                               stride_z1, scale_log2, inv_tau, N_BUCKET, ROWS_BUCKET, D: tl.constexpr,
                               D_PAD: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DX: tl.constexpr,
                               NUM_KINDS: tl.constexpr, HAS_VIEWS: tl.constexpr, NORMALIZE: tl.constexpr,
                               SINGLE: tl.constexpr, DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dz of rows [pid(0) * BLOCK_M, + BLOCK_M) of all N rows from G = d loss / d loss_rows (n_rows,) fp32.

    Grid (row blocks, key splits, D_PAD // BLOCK_DX): program (r, s, c) owns columns [c * BLOCK_DX, + BLOCK_DX)
    of dx. SINGLE (one split, one column chunk): DZ (N, D) in z's dtype. Else PART (splits, N, D) fp32 gets this
    program's part of dx, reduced by ``_mp_contrastive_bwd_reduce_kernel`` (which applies the normalisation's
    backward, which needs whole rows).

    Why a grid axis over d chunks of dx: the similarity tile needs the whole of d, so whichever way dx is chunked
    the tile is recomputed once per chunk; the (BLOCK_M, D) fp32 accumulator does not fit in registers past
    d = 256 (at d = 1024 it is 512 KiB for 128 rows), so it cannot be kept whole while looping over chunks with
    one probability tile (the alternative, a read-modify-write of a global fp32 accumulator per key tile, moves
    8 BLOCK_M / BLOCK_N times the bytes of the key tiles through L2: slower than the recomputation). A grid axis
    and a loop over chunks inside the block do the same FLOPs; the grid axis runs the chunks in parallel (more
    blocks for the SMs at small N) and carries no state across them.
    """
    tl.static_assert(D_PAD != BLOCK_D or BLOCK_DX == D_PAD)  # whole-d tiles: one key tile for both products
    tl.static_assert(not SINGLE or BLOCK_DX == D_PAD)  # the epilogue (normalisation backward) needs whole rows
    split, n_splits = tl.program_id(1), tl.num_programs(1)
    col0 = tl.program_id(2) * BLOCK_DX  # first column of dx this program owns
    row0 = tl.program_id(0) * BLOCK_M
    rows = row0 + tl.arange(0, BLOCK_M)
    rows_ok = rows < N
    x_a = _query_tile(X, rows, rows_ok, D, D_PAD, BLOCK_D)  # (BLOCK_M, D_PAD) loaded once, when d <= BLOCK_D
    g_a, lse_a, c_a = _query_terms(LSE, WSUM, G, rows, rows_ok, offset, n_rows)
    # a block without queries only has the second term, which needs query keys j: visit only those
    has_queries = (row0 < offset + n_rows) & (row0 + BLOCK_M > offset)
    lo = tl.where(has_queries, 0, offset)
    hi = tl.where(has_queries, N, offset + n_rows)
    chunk = tl.cdiv(tl.cdiv(hi - lo, n_splits), BLOCK_N) * BLOCK_N
    lo = lo + split * chunk
    hi = tl.minimum(lo + chunk, hi)
    acc = tl.zeros([BLOCK_M, BLOCK_DX], dtype=tl.float32)  # sum_j ds_aj x_j, columns [col0, col0 + BLOCK_DX)
    for start in range(lo, hi, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        cols_ok = cols < hi
        # (BLOCK_N, BLOCK_DX) the operand of the second product, loaded before the similarity's chunk loop so that
        # its latency hides behind it (whole d when d <= BLOCK_D, the similarity then reading the same tile)
        x_k = _load_rows(X, cols, cols_ok, col0, D, BLOCK_DX)
        if D_PAD == BLOCK_D:
            dots = _mma(x_a, tl.trans(x_k), None, DOT)
        else:
            dots = _similarity(X, x_a, rows, rows_ok, cols, cols_ok, D, D_PAD, BLOCK_D, DOT)
        logits = dots * scale_log2  # (BLOCK_M, BLOCK_N) s_aj in base 2
        allowed = _allowed(VIEWS, rows, rows_ok, cols, cols_ok, HAS_VIEWS)
        w = _positive_weights(IDS, WEIGHTS, N, rows, rows_ok, cols, cols_ok, NUM_KINDS)
        g_k, lse_k, c_k = _query_terms(LSE, WSUM, G, cols, cols_ok, offset, n_rows)
        ds = (g_a[:, None] * tl.exp2(logits - lse_a[:, None]) + g_k[None, :] * tl.exp2(logits - lse_k[None, :])
              - (c_a[:, None] + c_k[None, :]) * w)
        ds = tl.where(allowed, ds, 0.0)
        acc = _mma(_round_to(ds, x_k.dtype), x_k, acc, DOT)  # ds rounded to the row dtype, as FlashAttention rounds P
    dx = acc * inv_tau
    if SINGLE:
        _store_input_grad(Z, DZ, rows, rows_ok, dx, stride_z0, stride_z1, D, D_PAD, NORMALIZE)
    else:
        offs = col0 + tl.arange(0, BLOCK_DX)
        tl.store(PART + (split * N + rows[:, None]) * D + offs[None, :], dx,
                 mask=rows_ok[:, None] & (offs[None, :] < D))


@triton.jit
def _mp_contrastive_bwd_reduce_kernel(PART, Z, DZ, N, n_splits, stride_z0, stride_z1, D: tl.constexpr,
                                      D_PAD: tl.constexpr, NORMALIZE: tl.constexpr, BLOCK_M: tl.constexpr):
    """dx = sum of the backward's key splits (a fixed order: deterministic), then the normalisation's backward."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    ok = rows < N
    offs = tl.arange(0, D_PAD)
    mask = ok[:, None] & (offs[None, :] < D)
    dx = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
    for s in range(n_splits):
        dx += tl.load(PART + (s * N + rows[:, None]) * D + offs[None, :], mask=mask, other=0.0)
    _store_input_grad(Z, DZ, rows, ok, dx, stride_z0, stride_z1, D, D_PAD, NORMALIZE)


def rows_per_program(d_pad: int) -> int:
    """Rows per program of the row-wise kernels (prologue, merge, reduce): about 16 KiB of fp32 per program."""
    return max(1, min(128, 4096 // d_pad))
