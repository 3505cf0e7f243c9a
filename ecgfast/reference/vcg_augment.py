"""Reference 3KG augmentation, given its parameters: VCG rotation and scaling, then ZeroMask (METHOD.md).

Written for clarity; the fused kernels of ``ecgfast.ops`` must match it. The op splits in three, and the
kernels take over only the last part:

1. parameter sampling (random; :mod:`ecgfast.ops.vcg_params`): rotation angles, axis scales, mask starts;
2. the per-view 8x8 lead transform built from them (:func:`lead_transform_matrices`):
   ``M = D S R D_inv`` (or ``I + D (S R - I) D_inv`` in residual mode), tiny and done in torch;
3. applying it (:func:`vcg_augment_reference`): ``out = zero_mask(M @ x + noise)``, memory-bound.

Conventions: leads in ecgfast order I, II, V1..V6 (``ecgfast.LEADS``); VCG axes X, Y, Z in the Frank
orientation that the Dower and Kors matrices assume (X to the patient's left, Y down, Z back);
amplitudes in mV. Every function works on any device; arithmetic is float32, or float64 when an input
is float64. Everything is differentiable (it is a linear map of ``x``), so autograd flows through.
"""

from __future__ import annotations

import torch

# Dower matrix D (8 x 3): VCG (X, Y, Z) -> leads I, II, V1..V6 (METHOD.md, "Spatial (VCG) augmentation").
DOWER: tuple[tuple[float, float, float], ...] = (
    (0.632, -0.235, 0.059),  # I
    (0.235, 1.066, -0.132),  # II
    (-0.515, 0.157, -0.917),  # V1
    (0.044, 0.164, -1.387),  # V2
    (0.882, 0.098, -1.277),  # V3
    (1.213, 0.127, -0.601),  # V4
    (1.125, 0.127, -0.086),  # V5
    (0.831, 0.076, 0.230),  # V6
)

# Inverse Dower matrix D_inv (3 x 8): leads I, II, V1..V6 -> VCG (X, Y, Z). Equals pinv(DOWER) to 3 decimals.
INV_DOWER: tuple[tuple[float, ...], ...] = (
    (0.156, -0.010, -0.172, -0.074, 0.122, 0.231, 0.239, 0.194),  # X
    (-0.227, 0.887, 0.057, -0.019, -0.106, -0.022, 0.041, 0.048),  # Y
    (0.022, 0.102, -0.229, -0.310, -0.246, -0.063, 0.055, 0.108),  # Z
)

# Kors regression matrix (3 x 8): leads I, II, V1..V6 -> VCG (X, Y, Z). It has no published inverse.
KORS: tuple[tuple[float, ...], ...] = (
    (0.38, -0.07, -0.13, 0.05, -0.01, 0.14, 0.06, 0.54),  # X
    (-0.07, 0.93, 0.06, -0.02, -0.05, 0.06, -0.17, 0.13),  # Y
    (0.11, -0.23, -0.43, -0.06, -0.14, -0.20, -0.11, 0.31),  # Z
)

TRANSFORMS: tuple[str, ...] = ("dower", "kors")
N_LEADS = 8


def _work_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """float64 when any input is float64, float32 otherwise (half inputs are upcast: sums of 8 terms)."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def transform_matrices(
    name: str = "dower", device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """The leads -> VCG matrix and the VCG -> leads matrix of a standard transform.

    ``"dower"``: (INV_DOWER, DOWER), both as published. ``"kors"``: (KORS, pinv(KORS)); Kors is a
    regression for one direction only, and the Moore-Penrose pseudo-inverse (computed in float64) is the
    least-squares way back, so that ``pinv(KORS) @ KORS`` is the orthogonal projection onto the row space
    of KORS. Caveat: that row space is not where the ECG lives (KORS holds regression weights, not lead
    vectors): on PTB s0010_re ``pinv(KORS) @ KORS`` keeps 39 % of the signal energy, ``DOWER @ INV_DOWER``
    83 %. With Kors, prefer ``residual=True`` in :func:`lead_transform_matrices`.

    Returns:
        to_vcg (3, 8) and to_leads (8, 3), on ``device`` in ``dtype``.

    Raises:
        ValueError: unknown ``name``.
    """
    if name == "dower":
        to_vcg, to_leads = torch.tensor(INV_DOWER, dtype=torch.float64), torch.tensor(DOWER, dtype=torch.float64)
    elif name == "kors":
        to_vcg = torch.tensor(KORS, dtype=torch.float64)
        to_leads = torch.linalg.pinv(to_vcg)
    else:
        raise ValueError(f"transform must be one of {TRANSFORMS}, got {name!r}")
    return to_vcg.to(device=device, dtype=dtype), to_leads.to(device=device, dtype=dtype)


def rotation_matrices(angles: torch.Tensor) -> torch.Tensor:
    """Rotations ``R = Rz @ Ry @ Rx`` from angles in radians: (B, 3) -> (B, 3, 3).

    ``angles[:, 0]``, ``[:, 1]``, ``[:, 2]`` rotate about x, y and z; each factor is the standard
    right-handed (counter-clockwise seen from the axis tip) rotation, e.g.
    ``Rz(g) = [[cos g, -sin g, 0], [sin g, cos g, 0], [0, 0, 1]]``. Applied to a vector, ``R v`` rotates
    about the fixed x axis first, then y, then z. Any leading shape works: (..., 3) -> (..., 3, 3).
    """
    if angles.shape[-1] != 3:
        raise ValueError(f"angles must have shape (B, 3), got {tuple(angles.shape)}")
    a = angles.to(_work_dtype(angles.dtype))
    cx, cy, cz = torch.cos(a).unbind(-1)
    sx, sy, sz = torch.sin(a).unbind(-1)
    one, zero = torch.ones_like(cx), torch.zeros_like(cx)

    def matrix(*entries: torch.Tensor) -> torch.Tensor:  # 9 entries row by row -> (..., 3, 3)
        return torch.stack(entries, dim=-1).reshape(*a.shape[:-1], 3, 3)

    rx = matrix(one, zero, zero, zero, cx, -sx, zero, sx, cx)
    ry = matrix(cy, zero, sy, zero, one, zero, -sy, zero, cy)
    rz = matrix(cz, -sz, zero, sz, cz, zero, zero, zero, one)
    return rz @ ry @ rx


def scale_matrices(scales: torch.Tensor) -> torch.Tensor:
    """Diagonal axis scalings: (B, 3) factors for X, Y, Z -> (B, 3, 3)."""
    if scales.shape[-1] != 3:
        raise ValueError(f"scales must have shape (B, 3), got {tuple(scales.shape)}")
    return torch.diag_embed(scales.to(_work_dtype(scales.dtype)))


def lead_transform_matrices(
    angles: torch.Tensor, scales: torch.Tensor, transform: str = "dower", residual: bool = False
) -> torch.Tensor:
    """The per-view 8x8 lead transform of the 3KG augmentation: (B, 3), (B, 3) -> (B, 8, 8).

    ``M = D S R D_inv``: leads -> VCG, rotate (:func:`rotation_matrices`), scale, VCG -> leads. D @ D_inv
    has rank 3, so even at zero rotation and unit scales this keeps only the dipolar part of the ECG
    (as 3KG does). ``residual=True`` gives ``M = I + D (S R - I) D_inv`` instead: the same change of the
    dipolar part, but what D_inv does not see passes through, and M is the identity at zero rotation and
    unit scales (our option, not the paper's).

    Args:
        angles: (B, 3) radians about x, y, z.
        scales: (B, 3) factors for X, Y, Z.
        transform: ``"dower"`` or ``"kors"`` (:func:`transform_matrices`).
        residual: keep the non-dipolar content.

    Returns:
        (B, 8, 8) float32, or float64 when ``angles`` or ``scales`` is float64; on ``angles.device``.
    """
    if angles.ndim != 2 or angles.shape != scales.shape:
        raise ValueError(f"angles and scales must both be (B, 3), got {tuple(angles.shape)} and {tuple(scales.shape)}")
    dtype = _work_dtype(angles.dtype, scales.dtype)
    to_vcg, to_leads = transform_matrices(transform, angles.device, dtype)
    sr = scale_matrices(scales.to(dtype)) @ rotation_matrices(angles.to(dtype))  # (B, 3, 3): rotate, then scale
    if not residual:
        return to_leads @ sr @ to_vcg
    eye3 = torch.eye(3, device=angles.device, dtype=dtype)
    eye8 = torch.eye(N_LEADS, device=angles.device, dtype=dtype)
    return eye8 + to_leads @ (sr - eye3) @ to_vcg


def apply_lead_transform(x: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Each ECG times its lead transform: (B, 8, T), (B, 8, 8) -> (B, 8, T), ``out[b] = M[b] @ x[b]``.

    One (8, 8) matrix is broadcast over the batch. Float32 arithmetic, float64 if either input is.
    """
    if x.ndim != 3 or x.shape[1] != N_LEADS:
        raise ValueError(f"x must be (B, {N_LEADS}, T), got {tuple(x.shape)}")
    if matrices.shape[-2:] != (N_LEADS, N_LEADS) or matrices.ndim not in (2, 3) or (
        matrices.ndim == 3 and matrices.shape[0] != x.shape[0]
    ):
        raise ValueError(f"matrices must be ({x.shape[0]}, 8, 8) or (8, 8) for x of shape {tuple(x.shape)}, "
                         f"got {tuple(matrices.shape)}")
    dtype = _work_dtype(x.dtype, matrices.dtype)
    return torch.matmul(matrices.to(dtype), x.to(dtype))


def zero_mask(x: torch.Tensor, starts: torch.Tensor, length: int) -> torch.Tensor:
    """ZeroMask: zero one circular block of ``length`` samples per lead: (B, L, T), (B, L) -> (B, L, T).

    Lead ``l`` of ECG ``b`` gets samples ``(starts[b, l] + k) mod T`` for ``0 <= k < length`` set to exactly
    0 (``torch.where``, so even a NaN there becomes 0); the block wraps around the end. Leads are masked
    independently. Starts outside [0, T) are taken mod T. ``length == 0`` changes nothing.

    Raises:
        ValueError: ``length`` outside [0, T], or ``starts`` not an integer (B, L) tensor.
    """
    n = x.shape[-1]
    if not 0 <= length <= n:
        raise ValueError(f"mask length must be in [0, T={n}], got {length}")
    if starts.shape != x.shape[:-1] or starts.dtype.is_floating_point or starts.dtype == torch.bool:
        raise ValueError(f"starts must be an integer tensor of shape {tuple(x.shape[:-1])}, "
                         f"got {starts.dtype} {tuple(starts.shape)}")
    if length == 0:
        return x.clone()
    t = torch.arange(n, device=x.device)
    offset = (t - starts.to(x.device, torch.long)[..., None]) % n  # (B, L, T): samples after the block start
    return torch.where(offset < length, torch.zeros((), dtype=x.dtype, device=x.device), x)


def vcg_augment_reference(
    x: torch.Tensor,
    matrices: torch.Tensor,
    mask_starts: torch.Tensor | None = None,
    mask_length: int = 0,
    noise: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The composed op the fused kernels implement: ``zero_mask(M @ x + noise)``, cast to ``out_dtype``.

    Per output sample, with ``y = sum_k M[b, l, k] x[b, k, t] + noise[b, l, t]`` (float32, or float64 if an
    input is): ``out[b, l, t] = 0`` if ``(t - mask_starts[b, l]) mod T < mask_length``, else ``y``.
    Noise (Gaussian noise, baseline wander: one additive tensor) is added before masking, so masked
    samples are exactly zero, as in 3KG, and the encoder sees an unambiguous "no signal" block.

    Args:
        x: (B, 8, T) ECGs in mV, leads I, II, V1..V6; any float dtype.
        matrices: (B, 8, 8) lead transforms (:func:`lead_transform_matrices`), or one (8, 8).
        mask_starts: (B, 8) integer block starts; None for no mask.
        mask_length: samples zeroed per lead (0: no mask).
        noise: (B, 8, T) mV added to the transformed signal, or None.
        out_dtype: dtype of the result (float32; bfloat16 for a bf16 encoder).

    Returns:
        (B, 8, T) in ``out_dtype``.

    Example:
        >>> x = torch.randn(4, 8, 100)
        >>> m = lead_transform_matrices(torch.zeros(4, 3), torch.ones(4, 3), residual=True)
        >>> out = vcg_augment_reference(x, m, torch.zeros(4, 8, dtype=torch.long), 50)
        >>> bool((out[..., :50] == 0).all() and torch.allclose(out[..., 50:], x[..., 50:], atol=1e-5))
        True
    """
    y = apply_lead_transform(x, matrices)
    if noise is not None:
        if noise.shape != y.shape:
            raise ValueError(f"noise must have the shape of x {tuple(y.shape)}, got {tuple(noise.shape)}")
        y = y + noise.to(y.dtype)
    if mask_length > 0:
        if mask_starts is None:
            raise ValueError(f"mask_length={mask_length} needs mask_starts")
        y = zero_mask(y, mask_starts, mask_length)
    return y.to(out_dtype)


# ---- the whole fused op, composed from the parts above: decode, view windows, transform, noise, mask ----------

def _mulhilo32(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32 bits of ``a * b`` for a 32-bit constant ``a`` and int64 ``b`` in [0, 2^32), in int64."""
    b_hi, b_lo = b >> 16, b & 0xFFFF
    lo_part, hi_part = a * b_lo, a * b_hi  # each < 2^48
    hi = (hi_part + (lo_part >> 16)) >> 16
    lo = (lo_part + ((hi_part & 0xFFFF) << 16)) & 0xFFFFFFFF
    return hi, lo


def philox_randn(seed: int, counters: torch.Tensor) -> torch.Tensor:
    """Triton's ``tl.randn(seed, counters)`` in torch: Philox4x32-10 then Box-Muller, float32, ``counters``' shape.

    The noise stream of the fused op: every backend draws the Gaussian of output element i from counter i, so
    that they agree up to the float rounding of log/cos/sqrt. ``counters`` is an int64 tensor (>= 0).
    """
    c0, c1 = counters & 0xFFFFFFFF, (counters >> 32) & 0xFFFFFFFF
    c2 = c3 = torch.zeros_like(counters)
    k0, k1 = seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF
    for _ in range(10):
        hi_b, lo_b = _mulhilo32(0xCD9E8D57, c2)
        hi_a, lo_a = _mulhilo32(0xD2511F53, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + 0x9E3779B9) & 0xFFFFFFFF, (k1 + 0xBB67AE85) & 0xFFFFFFFF

    def uniform(u: torch.Tensor) -> torch.Tensor:  # Triton's uint_to_uniform_float for 32 bits
        s = torch.where(u >= 1 << 31, u - (1 << 32), u)  # as int32
        s = torch.where(s < 0, -s - 1, s)  # ~s
        return s.to(torch.float32) * torch.tensor(4.6566127342e-10, dtype=torch.float32)

    u1 = torch.clamp_min(uniform(c0), 1.0e-7)
    th = torch.tensor(6.283185307179586, dtype=torch.float32) * uniform(c1)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(th)


def decode_int16(q: torch.Tensor, gain: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
    """Store samples to millivolts: (B, 8, T) int16 with (B,) gain and baseline -> float32 ``(q - baseline) / gain``."""
    return (q.float() - baseline.float()[:, None, None]) / gain.float()[:, None, None]


def crop_windows(x: torch.Tensor, windows: torch.Tensor, length: int) -> torch.Tensor:
    """The view windows of each ECG: x (B, L, T), windows (V, B) first samples -> (V, B, L, length).

    View v of ECG b is ``x[b, :, windows[v, b] : windows[v, b] + length]``; samples past the end of x read 0
    (the fused kernels mask such loads the same way).
    """
    batch, leads, n = x.shape
    t = windows.to(x.device, torch.long)[..., None] + torch.arange(length, device=x.device)  # (V, B, length)
    inside = (t >= 0) & (t < n)
    idx = t.clamp(0, n - 1)[:, :, None, :].expand(-1, -1, leads, -1)  # (V, B, L, length)
    out = torch.gather(x[None].expand(windows.shape[0], -1, -1, -1), 3, idx)
    return torch.where(inside[:, :, None, :], out, torch.zeros((), dtype=x.dtype, device=x.device))


def vcg_augment_views_reference(
    x: torch.Tensor,
    gain: torch.Tensor | None,
    baseline: torch.Tensor | None,
    matrices: torch.Tensor,
    mask_starts: torch.Tensor,
    mask_length: int,
    noise_std: float = 0.0,
    noise_seed: int = 0,
    windows: torch.Tensor | None = None,
    length: int | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The fused op of :mod:`ecgfast.ops.vcg_op` in plain torch: (B, 8, T) -> (V, B, 8, L) ``out_dtype``.

    Decode (int16 with ``gain``/``baseline``; float input is mV), cut the V view windows of L samples
    (:func:`crop_windows`; default one window at 0 of the whole record), then per view
    ``zero_mask(M[v] @ x_v + noise_std * n_v)`` with ``n`` from :func:`philox_randn` at counter
    ``((v * B + b) * 8 + l) * L + t`` of output element (v, b, l, t).
    """
    xf = decode_int16(x, gain, baseline) if x.dtype == torch.int16 else x.float()
    n_views, batch = matrices.shape[0], x.shape[0]
    if windows is None:
        windows, length = torch.zeros(n_views, batch, dtype=torch.long), x.shape[-1]
    length = x.shape[-1] if length is None else length
    views = crop_windows(xf, windows, length)  # (V, B, 8, L)
    outs = []
    for v in range(n_views):
        noise = None
        if noise_std > 0:
            first = v * batch * N_LEADS * length
            counters = torch.arange(first, first + batch * N_LEADS * length, device=x.device)
            noise = noise_std * philox_randn(noise_seed, counters.view(batch, N_LEADS, length))
        outs.append(vcg_augment_reference(views[v], matrices[v], mask_starts[v], mask_length, noise, out_dtype))
    return torch.stack(outs)
