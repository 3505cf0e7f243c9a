"""Triton kernels of the fused multi-positive contrastive loss, FlashAttention-2 style: the whole loss per row in
one pass over key tiles, the whole gradient in one symmetric pass, never the N x N matrix.

Notation (``ecgfast.ops.contrastive_loss`` launches these): ``x`` (N, D) holds the normalised rows in the product
dtype (bf16 / fp16 / fp32), contiguous; the queries are its rows ``[offset, offset + n_rows)``; ``s_ia = x_i . x_a /
tau``; ``allowed(i, a) = a != i`` (global index) and, with view ids, ``view[a] != view[i]``; the positive weight of
an allowed pair is ``w_ia = sum_k lambda_k [id_k[i] == id_k[a]]`` (K id vectors, IDS (K, N) as int32 labels:
equal ids, equal labels; view ids too). Per query::

    lse_i = log sum_{a allowed} exp(s_ia),  P_i = sum_a w_ia s_ia,  W_i = sum_a w_ia,
    loss_i = lse_i - P_i / W_i  (0 when W_i = 0)

- ``_mp_contrastive_normalize_kernel``: the prologue, z (N, D) any float dtype and strides -> x = z / max(|z|,
  1e-12) (F.normalize) rounded once to the product dtype.
- ``_mp_contrastive_fwd_kernel``: one program per BLOCK_M queries and key split. Up to d = 128 (padded) the query
  tile is loaded once and the key loop streams whole-d (BLOCK_N, D) tiles (D a constexpr, so the key loop is the
  innermost loop and Triton pipelines its loads over num_stages), one ``tl.dot`` per tile; past 128 the similarity
  tile accumulates over d chunks of BLOCK_D = 64 columns in an inner loop (pipelined over its chunks; query and
  key chunks loaded per chunk), so that registers and shared memory hold one chunk per stage whatever d, up to
  1024. fp32 accumulation, tensor cores for 16-bit rows and tf32, CUDA-core FMA for float32 rows. The log-sum-exp
  in base 2 with a fixed shift by the largest possible logit (unit rows: log2(e) / tau) where the logits span at most
  FIXED_SHIFT_MAX_RANGE binades, else an online max (replaced by 0 while a row has seen nothing allowed: no
  inf - inf); P_i, W_i from the same tile. The key loop runs in four stretches (``_tile_bounds``): only the tiles
  that meet the block's diagonal and the last partial tile are masked (bounds and self); view ids are checked on
  every tile. Disallowed entries are -inf through ``tl.where``.
  With one split it writes loss, lse and W; with several (fewer query blocks than SMs) each split writes its
  partial (lse, P, W) and ``_mp_contrastive_merge_kernel`` merges them (log-sum-exp of the lse, sums of P and W).
- ``_mp_contrastive_bwd_kernel``: the symmetric backward. ``d loss / d s_ij = g_i (P_ij - w_ij / W_i)`` and s, w
  and ``allowed`` are symmetric, so for every row a (query or not)::

      dx_a = sum_j [g_a (P_aj - w_aj / W_a) + g_j (P_ja - w_ja / W_j)] x_j / tau

  (g, 1/W of a non-query row are 0). ``_mp_contrastive_row_terms_kernel`` first makes the per-row terms once (with
  the fixed shift u = g exp2(M - lse), so that g_a P_aj + g_j P_ja = exp2(l_aj - M) (u_a + u_j): one exponential an
  element; and c = g / W). One program owns BLOCK_M rows a and loops over key tiles j (the same four stretches): one
  similarity tile, both softmax terms from it, the positive part subtracted before ds is rounded to the row dtype,
  one ``tl.dot`` into the (BLOCK_M, BLOCK_DX) fp32 accumulator. Up to d = 128, BLOCK_DX = D: FLOPs 4 N^2 D (6 N^2 D
  with the forward; the two-kernel backward it replaces did 8). Past 128 the similarity is chunked over d as in the
  forward and a third grid axis splits dx into D / 128 column chunks, each recomputing the similarity tile: FLOPs 2
  N^2 D (1 + D / 128) (the kernel's docstring says why not a whole-d accumulator). Each program owns its output
  rows: no atomics, deterministic. The normalisation's backward (``(dx - x (x . dx)) / |z|``) runs in the epilogue,
  from z, so the kernel writes dz in z's dtype. With fewer row blocks than SMs the keys are split, each split writes
  its (N, D) fp32 partial (its columns of it when dx is chunked) and ``_mp_contrastive_bwd_reduce_kernel`` sums them
  in a fixed order (deterministic) before the same epilogue; with dx in column chunks the reduction runs even with
  one split, since the epilogue needs whole rows. A block without queries (under DDP) only visits the query keys.

Tile sizes come from ``triton.autotune`` over a few configs, pruned ahead of time (:func:`launch_configs`) to those
whose tiles fit in registers and shared memory for that D (tensor-core tiles by an estimate, FMA tiles by a measured
list; every config of every dtype compiles for sm_90 without spilling: the AOT test), and to one config for small N
(below :data:`TUNE_MIN_N_BUCKET` keys a launch is latency-bound: no config pays for its compile). The autotune key
is every argument that changes the compiled kernel or its work besides the tiles (:data:`FWD_KEY`, :data:`BWD_KEY`):
N and query-row buckets, D, the number of id kinds, whether view ids are given, the shift (fixed or online), the
split path (one key split or partials), the product precision (and the normalisation's backward), with the dtypes of
the tensor arguments that Triton adds itself; so one variant's choice is never reused for another. Where one config
is left the host launcher calls the kernel directly, never the autotuner (Triton 3.6's would still benchmark it).
Under the Triton interpreter (CPU tests) one config per N bucket, never benchmarked.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

LOG2E = 1.4426950408889634  # log2(e): the kernels work in base 2; the host passes log2(e) / tau
LN2 = 0.6931471805599453
NORM_EPS = 1e-12  # F.normalize's eps: rows are divided by max(|z|, eps)
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # the Triton interpreter (CPU tests): one small config
EMULATE_BF16_ROUNDING = tl.constexpr(INTERPRET)  # _round_to: the interpreter truncates where the GPU rounds
# The fixed shift (_fwd_tile): used when the rows are unit vectors and the logits span at most this many binades
# (2 log2(e) / tau <= 100, i.e. tau >= 0.029), so that exp2(logit - shift) >= 2^-100 never underflows fp32.
FIXED_SHIFT_MAX_RANGE = 100.0
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


# Tensor-core tiles (bf16, fp16, tf32 products), pruned per D by the register and shared-memory estimate below; d
# chunks past 128 columns: the 128-row and 64-row tiles fit up to D = 1024 (the AOT test)
TENSOR_CORE_CONFIGS = {
    "fwd": [(128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 4), (64, 32, 4, 3), (32, 32, 4, 3), (16, 32, 4, 2)],
    "bwd": [(64, 64, 4, 3), (128, 64, 8, 2), (64, 128, 8, 2), (32, 64, 4, 2), (16, 32, 4, 3)],
}
# tf32 backward (float32 rows, precision "tf32"): the estimate is off for 4-byte tiles (it prunes 128 x 64, which
# fits; tiles it keeps spilled under Triton 3.6, the GPU machine's): the measured tile, zero spills under 3.6 and 3.9
TF32_BWD_CONFIGS = [(128, 64, 8, 2)]
# CUDA-core FMA products (float32 rows, precision "fp32"): Triton's FMA dot keeps whole operand rows of its tile in
# registers, so only small tiles fit. Measured with ptxas for sm_90 under Triton 3.6 and 3.9 (tests/
# test_contrastive_loss_op.py compiles each and asserts zero spills): every one below at d <= 128; past 128 (dx in
# column chunks) only the 16 x 16 backward.
FMA_CONFIGS = {
    "fwd": [(32, 32, 8, 2), (16, 64, 4, 2), (16, 32, 4, 2), (32, 16, 4, 2), (16, 16, 4, 2)],
    "bwd": [(16, 64, 4, 2), (16, 32, 8, 2), (32, 16, 8, 2), (16, 16, 4, 2)],
}
FMA_BWD_CHUNKED_MAX_TILE = 16 * 16  # BLOCK_M x BLOCK_N of the FMA backward past d = 128


def _as_config(m: int, n: int, w: int, s: int) -> triton.Config:
    return triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)


def _tiles(c: triton.Config) -> tuple[int, int, int, int]:
    return c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages


def _configs(which: str) -> list[triton.Config]:
    """Every config the autotuner of kernel ``which`` holds (the pruner picks the tensor-core or the FMA ones)."""
    if INTERPRET:  # one per N bucket, chosen by the pruner: the interpreter never benchmarks
        return [_interpreter_config(1), _interpreter_config(INTERPRET_BIG_BUCKET)]
    tiles = list(TENSOR_CORE_CONFIGS[which])
    for extra in FMA_CONFIGS[which] + (TF32_BWD_CONFIGS if which == "bwd" else []):
        if extra not in tiles:
            tiles.append(extra)
    return [_as_config(*t) for t in tiles]


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
FWD_KEY = ["N_BUCKET", "ROWS_BUCKET", "D", "NUM_KINDS", "HAS_VIEWS", "FIXED_SHIFT", "SINGLE", "DOT"]
BWD_KEY = ["N_BUCKET", "ROWS_BUCKET", "D", "NUM_KINDS", "HAS_VIEWS", "FIXED_SHIFT", "NORMALIZE", "SINGLE", "DOT"]


def _fitting(configs: list[triton.Config], which: str, d_pad: int, elem_bytes: int, n_bucket: int,
             fma: bool = False) -> list[triton.Config]:
    if fma:  # the measured FMA tiles
        small = FMA_BWD_CHUNKED_MAX_TILE if which == "bwd" and d_pad > WHOLE_D_MAX else None
        fit = [c for c in configs if _tiles(c) in FMA_CONFIGS[which]
               and (small is None or c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= small)]
    elif elem_bytes == 4 and which == "bwd":  # tf32 backward: the measured tile (the estimate is off for 4-byte tiles)
        fit = [c for c in configs if _tiles(c) in TF32_BWD_CONFIGS]
    else:
        tensor_core = [c for c in configs if _tiles(c) in TENSOR_CORE_CONFIGS[which]]
        fit = [c for c in tensor_core if tile_fits(which, c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps,
                                                   c.num_stages, d_pad, elem_bytes)]
        fit = fit or tensor_core[-1:]  # the smallest tiles, whatever the estimate says
    if n_bucket < TUNE_MIN_N_BUCKET:
        return [min(fit, key=lambda c: (c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"], c.num_warps))]
    return fit


def _pruner(which: str):
    """The autotuner's early_config_prune: the configs of :func:`launch_configs` for this launch."""
    def prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
        if INTERPRET:
            return [_interpreter_config(named_args["N_BUCKET"])]
        elem = named_args["X"].element_size()
        return _fitting(configs, which, kwargs["D_PAD"], elem, named_args["N_BUCKET"],
                        fma=uses_fma(kwargs["DOT"], elem))
    return prune


def uses_fma(dot: str, elem_bytes: int) -> bool:
    """Whether the products run on CUDA cores (FMA): float32 rows without tf32."""
    return dot == "ieee" and elem_bytes == 4


def launch_configs(which: str, d_pad: int, elem_bytes: int, n: int, fma: bool = False) -> list[triton.Config]:
    """The configs kernel ``which`` ("fwd" / "bwd") chooses from for N keys, this D and row dtype, pruned ahead of
    time: the tensor-core tiles that fit (:func:`tile_fits`), or with ``fma`` (:func:`uses_fma`) the measured FMA
    tiles; one config below :data:`TUNE_MIN_N_BUCKET`, one per N bucket in the interpreter. The launcher calls the
    kernel with the config directly when one is left."""
    if INTERPRET:
        return [_interpreter_config(triton.next_power_of_2(n))]
    return _fitting(_configs(which), which, d_pad, elem_bytes, triton.next_power_of_2(n), fma=fma)


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
    """fp32 x rounded to nearest (ties to even) in ``dtype``. On a GPU the conversion itself rounds to nearest
    (cvt.rn). The Triton interpreter truncates fp32 -> bf16, and the CPU tests must test the GPU's rounding (a
    truncated row is biased toward 0, and its loss moved 5x more at N = 65, d = 128): there, and only there, bf16
    goes through integer arithmetic on the bits (5 ALU operations an element). NaN stays NaN."""
    if EMULATE_BF16_ROUNDING and dtype == tl.bfloat16:
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
    chunks loaded per chunk: a whole-d query tile and key tiles pipelined over
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
def _column_values(PTR, cols, cols_ok, other, MASKED: tl.constexpr):
    """PTR[cols] (BLOCK_N,): masked (``other`` past the end) only in MASKED tiles, since every column of the other
    tiles exists: a bounds check an element fewer in the key loop."""
    if MASKED:
        values = tl.load(PTR + cols, mask=cols_ok, other=other)
    else:
        values = tl.load(PTR + cols)
    return values


@triton.jit
def _allowed(v_rows, VIEWS, rows, cols, cols_ok, HAS_VIEWS: tl.constexpr, MASKED: tl.constexpr):
    """(len rows, len cols) bool: key ``cols`` may appear in the denominator of ``rows`` (global indices). Called
    only where some pair of the tile may be excluded: MASKED tiles (those that meet the diagonal or the end of the
    keys) exclude a row's own key and keys past the end (no other tile holds either); with view ids, keys of the
    row's own view (v_rows: the rows' view ids)."""
    if MASKED:
        allowed = cols_ok[None, :] & (rows[:, None] != cols[None, :])
        if HAS_VIEWS:
            allowed = allowed & (v_rows[:, None] != tl.load(VIEWS + cols, mask=cols_ok, other=0)[None, :])
    else:
        allowed = v_rows[:, None] != tl.load(VIEWS + cols)[None, :]
    return allowed


@triton.jit
def _tile_bounds(lo, hi, diag_lo, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The key tiles [lo + k BLOCK_N, + BLOCK_N) of the range [lo, hi) in four runs: [lo, band_lo) unmasked,
    [band_lo, band_hi) masked (the tiles that meet the block's own rows [diag_lo, diag_lo + BLOCK_M), where the
    diagonal is), [band_hi, full_hi) unmasked, [full_hi, hi) masked (the last, partial tile). Returns (band_lo,
    band_hi, full_hi)."""
    full_hi = lo + (tl.maximum(hi - lo, 0) // BLOCK_N) * BLOCK_N
    band_lo = tl.minimum(lo + (tl.maximum(diag_lo - lo, 0) // BLOCK_N) * BLOCK_N, full_hi)
    band_hi = lo + tl.cdiv(tl.maximum(diag_lo + BLOCK_M - lo, 0), BLOCK_N) * BLOCK_N
    band_hi = tl.minimum(tl.maximum(band_hi, band_lo), full_hi)
    return band_lo, band_hi, full_hi


@triton.jit
def _fwd_tile(X, IDS, WEIGHTS, VIEWS, N, x_q, v_q, q, q_ok, start, hi, m_i, l_i, pos_i, w_i, scale_log2,
              D: tl.constexpr, D_PAD: tl.constexpr, BLOCK_D: tl.constexpr, NUM_KINDS: tl.constexpr,
              HAS_VIEWS: tl.constexpr, FIXED_SHIFT: tl.constexpr, MASKED: tl.constexpr, DOT: tl.constexpr,
              BLOCK_N: tl.constexpr):
    """One key tile of the forward: (m_i, l_i) updated with the tile's exp2(logit - shift) sums, pos_i and w_i with
    its sum_a w_ia x_q . x_a and sum_a w_ia.

    FIXED_SHIFT: the rows are unit vectors, so every logit is at most scale_log2 (log2(e) / tau): a fixed shift by
    it (one FFMA an element, no running max, no rescaling) keeps every term <= 1, and (the host checks
    2 scale_log2 <= FIXED_SHIFT_MAX_RANGE) >= 2^-100, far from fp32's underflow; m_i stays 0. Else the online max.
    The positive term takes one 32-bit compare, one select and one add an element and kind (ids are int32 dense
    labels), and one FFMA for pos_i."""
    cols = start + tl.arange(0, BLOCK_N)
    cols_ok = cols < hi
    dots = _similarity(X, x_q, q, q_ok, cols, cols_ok, D, D_PAD, BLOCK_D, DOT)  # (BLOCK_M, BLOCK_N) fp32
    w = dots * 0.0  # a 0 tile in the dot's register layout (one copy of the tile; dots are finite)
    for k in tl.static_range(NUM_KINDS):
        id_row = tl.load(IDS + k * N + q, mask=q_ok, other=-1)
        id_col = _column_values(IDS + k * N, cols, cols_ok, -2, MASKED)
        w = tl.where(id_row[:, None] == id_col[None, :], w + tl.load(WEIGHTS + k), w)
    if FIXED_SHIFT:
        logits = dots * scale_log2 - scale_log2  # base-2 logit minus the largest possible one
    else:
        logits = dots * scale_log2
    if MASKED or HAS_VIEWS:
        allowed = _allowed(v_q, VIEWS, q, cols, cols_ok, HAS_VIEWS, MASKED)
        logits = tl.where(allowed, logits, float("-inf"))
        w = tl.where(allowed, w, 0.0)
    pos_i += tl.sum(w * dots, axis=1)
    w_i += tl.sum(w, axis=1)
    if FIXED_SHIFT:
        l_i += tl.sum(tl.exp2(logits), axis=1)
    else:
        m_new = tl.maximum(m_i, tl.max(logits, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # nothing allowed yet: shift by 0, not -inf
        l_i = l_i * tl.exp2(m_i - m_safe) + tl.sum(tl.exp2(logits - m_safe[:, None]), axis=1)
        m_i = m_new
    return m_i, l_i, pos_i, w_i


@triton.jit
def _row_loss(lse, pos, w_sum):
    """loss_i = lse_i - P_i / W_i where row i has a positive (W_i > 0), else 0."""
    has = w_sum > 0
    return tl.where(has, lse - pos / tl.where(has, w_sum, 1.0), 0.0)


@triton.jit
def _minus_positive_part(ds, IDS, WEIGHTS, N, rows, rows_ok, cols, cols_ok, cc, NUM_KINDS: tl.constexpr,
                         MASKED: tl.constexpr):
    """ds - cc w with w_aj = sum_k lambda_k [id_k[a] == id_k[j]] (not masked by ``allowed``), kind by kind (one
    32-bit compare, one FFMA and one select an element and kind; no w tile held in registers). IDS (K, N) int32
    dense labels; cc (BLOCK_M, BLOCK_N) = c_a + c_j."""
    for k in tl.static_range(NUM_KINDS):
        id_row = tl.load(IDS + k * N + rows, mask=rows_ok, other=-1)
        id_col = _column_values(IDS + k * N, cols, cols_ok, -2, MASKED)
        ds = tl.where(id_row[:, None] == id_col[None, :], ds - tl.load(WEIGHTS + k) * cc, ds)
    return ds


@triton.jit
def _bwd_tile(X, VIEWS, IDS, WEIGHTS, TERMS, N, x_a, v_a, t_a, lse_a, c_a, rows, rows_ok, start, hi, col0,
              acc, scale_log2, D: tl.constexpr, D_PAD: tl.constexpr, BLOCK_D: tl.constexpr,
              BLOCK_DX: tl.constexpr, NUM_KINDS: tl.constexpr, HAS_VIEWS: tl.constexpr, FIXED_SHIFT: tl.constexpr,
              MASKED: tl.constexpr, DOT: tl.constexpr, BLOCK_N: tl.constexpr):
    """One key tile j of the backward: acc (BLOCK_M, BLOCK_DX) += ds_aj x_j with
    ds_aj = g_a P_aj + g_j P_ja - (c_a + c_j) w_aj, c = g / W (the per-row terms of TERMS).

    FIXED_SHIFT: P_aj = exp2(l_aj - M) exp2(M - lse_a) (l the base-2 logit, M = scale_log2 the fixed shift), so
    the softmax part is exp2(l_aj - M) (u_a + u_j) with the per-row u = g exp2(M - lse): one exponential an
    element. Else two, from g and lse in base 2. The positive part stays inside ds, before ds is rounded to the row
    dtype for the second product: near a fit (P_aj close to w_aj / W_a) the two cancel, and rounding g P alone
    would leave a gradient error of u g P instead of u g |P - w / W| (the same reason FlashAttention subtracts its
    row term before rounding dS). t_a: the rows' u (FIXED_SHIFT) or g, with lse_a; c_a the rows' c."""
    cols = start + tl.arange(0, BLOCK_N)
    cols_ok = cols < hi
    # (BLOCK_N, BLOCK_DX) the operand of the second product, loaded before the similarity's chunk loop so that its
    # latency hides behind it (whole d when d <= BLOCK_D, the similarity then reading the same tile)
    x_k = _load_rows(X, cols, cols_ok, col0, D, BLOCK_DX)
    if D_PAD == BLOCK_D:
        dots = _mma(x_a, tl.trans(x_k), None, DOT)
    else:
        dots = _similarity(X, x_a, rows, rows_ok, cols, cols_ok, D, D_PAD, BLOCK_D, DOT)
    n_terms = 2 if FIXED_SHIFT else 3
    c_k = _column_values(TERMS + (n_terms - 1) * N, cols, cols_ok, 0.0, MASKED)
    if FIXED_SHIFT:
        u_k = _column_values(TERMS, cols, cols_ok, 0.0, MASKED)
        ds = tl.exp2(dots * scale_log2 - scale_log2) * (t_a[:, None] + u_k[None, :])
    else:
        g_k = _column_values(TERMS, cols, cols_ok, 0.0, MASKED)
        lse_k = _column_values(TERMS + N, cols, cols_ok, float("inf"), MASKED)
        logits = dots * scale_log2
        ds = t_a[:, None] * tl.exp2(logits - lse_a[:, None]) + g_k[None, :] * tl.exp2(logits - lse_k[None, :])
    ds = _minus_positive_part(ds, IDS, WEIGHTS, N, rows, rows_ok, cols, cols_ok, c_a[:, None] + c_k[None, :],
                              NUM_KINDS, MASKED)
    if MASKED or HAS_VIEWS:
        ds = tl.where(_allowed(v_a, VIEWS, rows, cols, cols_ok, HAS_VIEWS, MASKED), ds, 0.0)
    return _mma(_round_to(ds, x_k.dtype), x_k, acc, DOT)  # ds rounded to the row dtype, as FlashAttention rounds dS


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
                               FIXED_SHIFT: tl.constexpr, SINGLE: tl.constexpr, DOT: tl.constexpr,
                               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Rows r of the queries [offset, offset + n_rows) against keys [split * keys_per_split, + keys_per_split).

    IDS (K, N) and VIEWS (N,): int32 dense labels. SINGLE (one split): LOSS, LSE, WSUM (n_rows,) fp32. Else PART
    (3, splits, n_rows): this split's lse, P, W. scale_log2 = log2(e) / tau, inv_tau = 1 / tau; N_BUCKET and
    ROWS_BUCKET (powers of 2 >= N, >= n_rows) only key the autotuner. The key loop runs in four stretches
    (:func:`_tile_bounds`): only the tiles that meet the diagonal, and the last partial one, are masked.
    """
    split = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # local query rows
    rows_ok = rows < n_rows  # rows past the queries compute garbage that is never stored: no mask in the loop
    q = rows + offset  # global index of the queries
    x_q = _query_tile(X, q, rows_ok, D, D_PAD, BLOCK_D)  # (BLOCK_M, D_PAD) loaded once, when d <= BLOCK_D
    v_q = tl.load(VIEWS + q, mask=rows_ok, other=0) if HAS_VIEWS else q
    m_i = tl.full([BLOCK_M], 0.0 if FIXED_SHIFT else float("-inf"), dtype=tl.float32)  # running max (base 2)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running sum of exp2(logit - m_i)
    pos_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # sum_a w_ia x_q . x_a
    w_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # sum_a w_ia
    lo = split * keys_per_split
    hi = tl.minimum(lo + keys_per_split, N)
    band_lo, band_hi, full_hi = _tile_bounds(lo, hi, tl.program_id(0) * BLOCK_M + offset, BLOCK_M, BLOCK_N)
    for start in range(lo, band_lo, BLOCK_N):
        m_i, l_i, pos_i, w_i = _fwd_tile(X, IDS, WEIGHTS, VIEWS, N, x_q, v_q, q, rows_ok, start, hi, m_i, l_i, pos_i,
                                         w_i, scale_log2, D, D_PAD, BLOCK_D, NUM_KINDS, HAS_VIEWS, FIXED_SHIFT,
                                         False, DOT, BLOCK_N)
    for start in range(band_lo, band_hi, BLOCK_N):
        m_i, l_i, pos_i, w_i = _fwd_tile(X, IDS, WEIGHTS, VIEWS, N, x_q, v_q, q, rows_ok, start, hi, m_i, l_i, pos_i,
                                         w_i, scale_log2, D, D_PAD, BLOCK_D, NUM_KINDS, HAS_VIEWS, FIXED_SHIFT,
                                         True, DOT, BLOCK_N)
    for start in range(band_hi, full_hi, BLOCK_N):
        m_i, l_i, pos_i, w_i = _fwd_tile(X, IDS, WEIGHTS, VIEWS, N, x_q, v_q, q, rows_ok, start, hi, m_i, l_i, pos_i,
                                         w_i, scale_log2, D, D_PAD, BLOCK_D, NUM_KINDS, HAS_VIEWS, FIXED_SHIFT,
                                         False, DOT, BLOCK_N)
    for start in range(full_hi, hi, BLOCK_N):
        m_i, l_i, pos_i, w_i = _fwd_tile(X, IDS, WEIGHTS, VIEWS, N, x_q, v_q, q, rows_ok, start, hi, m_i, l_i, pos_i,
                                         w_i, scale_log2, D, D_PAD, BLOCK_D, NUM_KINDS, HAS_VIEWS, FIXED_SHIFT,
                                         True, DOT, BLOCK_N)
    if FIXED_SHIFT:
        m_i = tl.full([BLOCK_M], 1.0, dtype=tl.float32) * scale_log2
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


@triton.jit
def _mp_contrastive_row_terms_kernel(LSE, WSUM, G, TERMS, N, n_rows, offset, scale_log2, FIXED_SHIFT: tl.constexpr,
                                     BLOCK: tl.constexpr):
    """The backward's per-row terms of all N rows, once (not per tile): g, lse in base 2 and c = g / W for a query
    with a positive; (0, +inf, 0) for any other row (its loss is 0 whatever x is, so every term of it is 0).
    FIXED_SHIFT: TERMS (2, N) = (u, c) with u = g exp2(M - lse), M = scale_log2; else TERMS (3, N) = (g, lse, c)."""
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = rows < N
    local = rows - offset
    is_q = ok & (local >= 0) & (local < n_rows)
    w = tl.load(WSUM + local, mask=is_q, other=0.0)
    has = w > 0
    g = tl.where(has, tl.load(G + local, mask=is_q, other=0.0), 0.0)
    lse2 = tl.where(has, tl.load(LSE + local, mask=is_q, other=0.0) * 1.4426950408889634, float("inf"))
    if FIXED_SHIFT:
        tl.store(TERMS + rows, g * tl.exp2(scale_log2 - lse2), mask=ok)  # exp2(-inf) = 0 where no query
    else:
        tl.store(TERMS + rows, g, mask=ok)
        tl.store(TERMS + N + rows, lse2, mask=ok)
    tl.store(TERMS + (1 if FIXED_SHIFT else 2) * N + rows, g / tl.where(has, w, 1.0), mask=ok)


@triton.autotune(configs=_configs("bwd"), key=BWD_KEY, prune_configs_by={"early_config_prune": _pruner("bwd")})
@triton.jit
def _mp_contrastive_bwd_kernel(X, Z, IDS, WEIGHTS, VIEWS, TERMS, DZ, PART, N, n_rows, offset, stride_z0, stride_z1,
                               scale_log2, inv_tau, N_BUCKET, ROWS_BUCKET, D: tl.constexpr, D_PAD: tl.constexpr,
                               BLOCK_D: tl.constexpr, BLOCK_DX: tl.constexpr, NUM_KINDS: tl.constexpr,
                               HAS_VIEWS: tl.constexpr,
                               FIXED_SHIFT: tl.constexpr, NORMALIZE: tl.constexpr, SINGLE: tl.constexpr,
                               DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dz of rows [pid(0) * BLOCK_M, + BLOCK_M) of all N rows from TERMS (the row terms kernel's), IDS (K, N) int32
    dense labels with their WEIGHTS (K,), VIEWS (N,) int32 dense labels.

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
    rows_ok = rows < N  # rows past N compute garbage that is never stored: no mask in the loop
    x_a = _query_tile(X, rows, rows_ok, D, D_PAD, BLOCK_D)  # (BLOCK_M, D_PAD) loaded once, when d <= BLOCK_D
    v_a = tl.load(VIEWS + rows, mask=rows_ok, other=0) if HAS_VIEWS else rows
    t_a = tl.load(TERMS + rows, mask=rows_ok, other=0.0)  # u, or g (FIXED_SHIFT or not)
    lse_a = t_a if FIXED_SHIFT else tl.load(TERMS + N + rows, mask=rows_ok, other=float("inf"))
    c_a = tl.load(TERMS + (1 if FIXED_SHIFT else 2) * N + rows, mask=rows_ok, other=0.0)
    # a block without queries only has the second term, which needs query keys j: visit only those
    has_queries = (row0 < offset + n_rows) & (row0 + BLOCK_M > offset)
    lo = tl.where(has_queries, 0, offset)
    hi = tl.where(has_queries, N, offset + n_rows)
    chunk = tl.cdiv(tl.cdiv(hi - lo, n_splits), BLOCK_N) * BLOCK_N
    lo = lo + split * chunk
    hi = tl.minimum(lo + chunk, hi)
    band_lo, band_hi, full_hi = _tile_bounds(lo, hi, row0, BLOCK_M, BLOCK_N)
    acc = tl.zeros([BLOCK_M, BLOCK_DX], dtype=tl.float32)  # sum_j ds_aj x_j, columns [col0, col0 + BLOCK_DX)
    for start in range(lo, band_lo, BLOCK_N):
        acc = _bwd_tile(X, VIEWS, IDS, WEIGHTS, TERMS, N, x_a, v_a, t_a, lse_a, c_a, rows, rows_ok, start, hi, col0,
                        acc, scale_log2, D, D_PAD, BLOCK_D, BLOCK_DX, NUM_KINDS, HAS_VIEWS, FIXED_SHIFT, False, DOT,
                        BLOCK_N)
    for start in range(band_lo, band_hi, BLOCK_N):
        acc = _bwd_tile(X, VIEWS, IDS, WEIGHTS, TERMS, N, x_a, v_a, t_a, lse_a, c_a, rows, rows_ok, start, hi, col0,
                        acc, scale_log2, D, D_PAD, BLOCK_D, BLOCK_DX, NUM_KINDS, HAS_VIEWS, FIXED_SHIFT, True, DOT,
                        BLOCK_N)
    for start in range(band_hi, full_hi, BLOCK_N):
        acc = _bwd_tile(X, VIEWS, IDS, WEIGHTS, TERMS, N, x_a, v_a, t_a, lse_a, c_a, rows, rows_ok, start, hi, col0,
                        acc, scale_log2, D, D_PAD, BLOCK_D, BLOCK_DX, NUM_KINDS, HAS_VIEWS, FIXED_SHIFT, False, DOT,
                        BLOCK_N)
    for start in range(full_hi, hi, BLOCK_N):
        acc = _bwd_tile(X, VIEWS, IDS, WEIGHTS, TERMS, N, x_a, v_a, t_a, lse_a, c_a, rows, rows_ok, start, hi, col0,
                        acc, scale_log2, D, D_PAD, BLOCK_D, BLOCK_DX, NUM_KINDS, HAS_VIEWS, FIXED_SHIFT, True, DOT,
                        BLOCK_N)
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
    """dx = the sum of the backward's key splits (a fixed order: deterministic), then the normalisation's backward."""
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
