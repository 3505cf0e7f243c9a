"""Triton kernel of the fused VCG augmentation (METHOD.md "Spatial (VCG) augmentation" and "ZeroMask").

One program per (ECG b, block of BLOCK_T output samples): for each of the 1 or 2 views it reads the 8 x BLOCK_T
input tile at the view's window (int16 decoded with the record's gain and baseline, or float in mV), computes
the 8x8 matvec ``y = M[v, b] @ x`` in float32 registers, adds Gaussian noise (Philox, ``tl.randn``), applies
the circular ZeroMask block of each lead and stores the (8, BLOCK_T) tile in the output dtype. When both views
share a window (``SHARED_WINDOW``) the tile is read once for both.

Layout contract (the host launcher in ``ecgfast.ops.vcg_augment`` checks it):
- ``x``: (B, 8, T) with any strides (in elements), int16 / float16 / bfloat16 / float32;
- ``gain``, ``baseline``: (B,) float32, read only when ``IS_INT``;
- ``m``: (V, B, 8, 8) float32 contiguous; ``starts``: (V, B, 8) int64 contiguous, already in [0, L);
- ``windows``: (V, B) int64 contiguous, view v of ECG b reads x[b, :, windows[v, b] + t] for t in [0, L);
  samples outside [0, T) read as 0, so a bad window can never read out of bounds;
- ``out``: (V, B, 8, L) contiguous, float32, or int16 holding bfloat16 bits (``OUT_BF16``).
Noise counter of output element (v, b, l, t): ``((v * B + b) * 8 + l) * L + t`` (int64), so every backend
that runs the same Philox4x32-10 + Box-Muller draws the same noise.

Only ``@triton.jit`` functions and launch-size helpers live here: no autograd, no ecgfast imports.
"""

from __future__ import annotations

import triton
import triton.language as tl

N_LEADS = 8


@triton.jit
def _round_to_bf16_bits(y):
    """float32 -> bfloat16 bits (int16), round to nearest even, NaN kept NaN: torch's rounding, bit for bit.

    Done with integer ops rather than ``.to(tl.bfloat16)`` because Triton's interpreter truncates instead;
    a handful of integer ops per element cost nothing in a memory-bound kernel.
    """
    u = y.to(tl.uint32, bitcast=True)
    r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    r = tl.where(y != y, 0x7FC0, r)  # NaN: a quiet NaN (the sum above could carry into +-Inf)
    return r.to(tl.uint16).to(tl.int16, bitcast=True)


@triton.jit
def _finish_view(acc, v, b, t, t_ok, leads, B, L, starts_ptr, out_ptr, mask_length, noise_std, noise_seed,
                 HAS_NOISE: tl.constexpr, OUT_BF16: tl.constexpr):
    """Noise, ZeroMask and store of one view's (8, BLOCK_T) float32 tile ``acc`` (``out_ptr`` int16 if OUT_BF16)."""
    row = (v * B + b) * 8 + leads  # (8,) int64: output row of each lead
    idx = row[:, None] * L + t[None, :]  # (8, BLOCK_T) int64: flat output index = noise counter
    if HAS_NOISE:
        acc += noise_std * tl.randn(noise_seed, idx)
    start = tl.load(starts_ptr + row)  # (8,) int64 in [0, L)
    off = t[None, :] - start[:, None]  # samples after the block start, mod L
    off = tl.where(off < 0, off + L, off)
    acc = tl.where(off < mask_length, 0.0, acc)  # exact zeros, even where acc is NaN
    if OUT_BF16:
        tl.store(out_ptr + idx, _round_to_bf16_bits(acc), mask=t_ok[None, :])
    else:
        tl.store(out_ptr + idx, acc, mask=t_ok[None, :])


@triton.jit
def _load_decoded(x_ptr, b, k, w, t, t_ok, T, stride_xb, stride_xl, stride_xt, gain, base, IS_INT: tl.constexpr):
    """Lead k of ECG b at samples w + t -> (BLOCK_T,) float32 mV; outside [0, T) or past the view: 0."""
    pos = w + t
    ok = t_ok & (pos >= 0) & (pos < T)
    xk = tl.load(x_ptr + b * stride_xb + k * stride_xl + pos * stride_xt, mask=ok, other=0).to(tl.float32)
    if IS_INT:
        xk = tl.where(ok, (xk - base) / gain, 0.0)  # adc units -> mV, as ECGStore.read_mv
    return xk


@triton.jit
def _vcg_augment_fwd_kernel(
    x_ptr, gain_ptr, baseline_ptr, m_ptr, starts_ptr, windows_ptr, out_ptr,
    B, T, L, stride_xb, stride_xl, stride_xt,
    mask_length, noise_std, noise_seed,
    N_VIEWS: tl.constexpr, SHARED_WINDOW: tl.constexpr, IS_INT: tl.constexpr, HAS_NOISE: tl.constexpr,
    OUT_BF16: tl.constexpr, BLOCK_T: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)  # (BLOCK_T,) int64, output samples
    t_ok = t < L
    leads = tl.arange(0, 8).to(tl.int64)
    gain = 1.0
    base = 0.0
    if IS_INT:
        gain = tl.load(gain_ptr + b)
        base = tl.load(baseline_ptr + b)
    w0 = tl.load(windows_ptr + b)
    acc0 = tl.zeros((8, BLOCK_T), dtype=tl.float32)
    acc1 = tl.zeros((8, BLOCK_T), dtype=tl.float32)
    m0 = m_ptr + b * 64 + leads * 8  # row starts of M[0, b]
    m1 = m_ptr + (B + b) * 64 + leads * 8  # row starts of M[1, b]
    for k in tl.static_range(8):  # input lead k of view 0's window (and view 1's when they share it)
        xk = _load_decoded(x_ptr, b, k, w0, t, t_ok, T, stride_xb, stride_xl, stride_xt, gain, base, IS_INT)
        acc0 += tl.load(m0 + k)[:, None] * xk[None, :]  # column k of M[0, b] times lead k
        if N_VIEWS == 2 and SHARED_WINDOW:
            acc1 += tl.load(m1 + k)[:, None] * xk[None, :]
    if N_VIEWS == 2 and not SHARED_WINDOW:  # view 1 has its own window (e.g. the other half of the record)
        w1 = tl.load(windows_ptr + B + b)
        for k in tl.static_range(8):
            xk = _load_decoded(x_ptr, b, k, w1, t, t_ok, T, stride_xb, stride_xl, stride_xt, gain, base, IS_INT)
            acc1 += tl.load(m1 + k)[:, None] * xk[None, :]
    _finish_view(acc0, 0, b, t, t_ok, leads, B, L, starts_ptr, out_ptr, mask_length, noise_std, noise_seed,
                 HAS_NOISE, OUT_BF16)
    if N_VIEWS == 2:
        _finish_view(acc1, 1, b, t, t_ok, leads, B, L, starts_ptr, out_ptr, mask_length, noise_std, noise_seed,
                     HAS_NOISE, OUT_BF16)


def vcg_augment_block_t(n_samples: int) -> int:
    """Samples per program: 512 (a 2-byte int16 tile row of 1 KiB, 8 rows), less for short signals."""
    return max(16, min(512, triton.next_power_of_2(n_samples)))


def vcg_augment_num_warps(block_t: int) -> int:
    """Warps per program: 4 for 512-sample tiles (8 x 512 x 2 views float32 accumulators in registers)."""
    return 4 if block_t >= 256 else 2


def vcg_augment_grid(batch: int, n_samples: int, block_t: int) -> tuple[int, int]:
    """Launch grid: (B, cdiv(T, BLOCK_T)); B on axis 0, which allows 2^31 - 1 programs."""
    return batch, triton.cdiv(n_samples, block_t)
