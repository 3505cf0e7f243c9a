"""Fused 3KG augmentation: (B, 8, T) ECGs -> (V, B, 8, T) views in one pass over memory (METHOD.md).

Per view v and ECG b: ``out[v, b] = zero_mask(M[v, b] @ x[b] + noise_std * n)``, with ``M = D S R D_inv``
(or Kors, or the residual mode: :func:`ecgfast.reference.vcg_augment.lead_transform_matrices`), one
circular ZeroMask block of ``mask_length`` samples per lead, and ``n`` standard Gaussian noise.

Layers (Liger style): the Triton kernel (``ecgfast.kernels.vcg_augment``), the C++ CPU and CUDA kernels
(``torch.ops.ecgfast.vcg_augment``, csrc/), the plain-torch path (the reference of
:mod:`ecgfast.reference.vcg_augment`), one ``torch.library`` custom op ``ecgfast::vcg_augment_apply`` over
them (so ``torch.compile(fullgraph=True)`` traces it), and the functional :func:`vcg_augment`.

Randomness, and why it is the same on every backend and device:
- The small parameters (angles, scales, inversions, mask starts: 6 floats and 8 ints per view and ECG) are
  drawn on the host CPU from a ``torch.Generator`` seeded with a hash of ``(seed, offset)``, view 0 first,
  by :func:`ecgfast.augment.sample_vcg_params`; :func:`vcg_augment_params` returns them.
- The noise is counter-based: element (v, b, l, t) gets Philox4x32-10 (key = a 64-bit noise seed also
  derived from ``(seed, offset)``, counter = its flat output index) and Box-Muller, exactly Triton's
  ``tl.randn``. The C++, CUDA and torch backends implement the same integer stream, so the noise agrees
  across backends to float rounding of log/cos/sqrt (about 1e-6 relative), not bit for bit.

Autograd: the views are data, never trained through. The op returns tensors that do not require grad
(the input is detached), so it can sit in any graph without breaking the backward of the rest. Use
:func:`ecgfast.reference.vcg_augment.vcg_augment_reference` to differentiate through the linear map.

Backends: ``"triton"`` (CUDA; CPU only under ``TRITON_INTERPRET=1``, for tests), ``"cuda"`` and ``"cpp"``
(the extension ``ecgfast._C``, where built), ``"torch"`` (always). The default is picked once per device
type, fastest first (CUDA: triton, cuda, torch; CPU: cpp, torch); the environment variable
``ECGFAST_VCG_BACKEND`` overrides the default and the ``backend`` argument overrides both.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import torch

from ecgfast.reference.vcg_augment import N_LEADS, TRANSFORMS, lead_transform_matrices, vcg_augment_reference

BACKENDS: tuple[str, ...] = ("triton", "cuda", "cpp", "torch")
ENV_BACKEND = "ECGFAST_VCG_BACKEND"
IN_DTYPES: tuple[torch.dtype, ...] = (torch.int16, torch.float16, torch.bfloat16, torch.float32)
OUT_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16)
_M64 = (1 << 64) - 1
_M63 = (1 << 63) - 1
_DEFAULT_BACKEND: dict[str, str] = {}  # device type -> backend, filled on first use


# ------------------------------------------------------------------------------------------------ backends
def _extension_loaded() -> bool:
    try:
        import ecgfast._C  # noqa: F401  (registers torch.ops.ecgfast.*)
    except ImportError:
        return False
    return True


def _has_ext_kernel(dispatch_key: str) -> bool:
    if not _extension_loaded() or not hasattr(torch.ops.ecgfast, "vcg_augment"):
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key("ecgfast::vcg_augment", dispatch_key)


def _has_triton(device_type: str) -> bool:
    if importlib.util.find_spec("triton") is None:
        return False
    return device_type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def _detect_backends(device_type: str) -> tuple[str, ...]:
    found = []
    if device_type == "cuda":
        found += ["triton"] if _has_triton(device_type) else []
        found += ["cuda"] if _has_ext_kernel("CUDA") else []
    elif device_type == "cpu":
        found += ["cpp"] if _has_ext_kernel("CPU") else []
        found += ["triton"] if _has_triton(device_type) else []  # the interpreter: correct, slow, for tests
    return tuple(found + ["torch"])


# Detected once at import (a constant lookup is what torch.compile can trace; the dispatcher query is not).
_AVAILABLE: dict[str, tuple[str, ...]] = {kind: _detect_backends(kind) for kind in ("cpu", "cuda")}


def available_backends(device: torch.device | str = "cpu") -> tuple[str, ...]:
    """The backends that can run on ``device`` here, fastest first (the first is the default).

    Example:
        >>> available_backends("cpu")[-1]
        'torch'
    """
    return _AVAILABLE.get(torch.device(device).type, ("torch",))


def default_backend(device: torch.device | str = "cpu") -> str:
    """The backend used for ``device`` when none is named: ``$ECGFAST_VCG_BACKEND`` if set, else the fastest
    available; decided once per device type and cached."""
    kind = torch.device(device).type
    if kind not in _DEFAULT_BACKEND:
        env = os.environ.get(ENV_BACKEND)
        _DEFAULT_BACKEND[kind] = _check_backend(env, kind, f"${ENV_BACKEND}") if env else available_backends(kind)[0]
    return _DEFAULT_BACKEND[kind]


def _check_backend(backend: str, device_type: str, where: str = "backend") -> str:
    if backend not in BACKENDS:
        raise ValueError(f"{where} must be one of {BACKENDS}, got {backend!r}")
    if backend not in available_backends(device_type):
        raise ValueError(f"{where}={backend!r} is not available on {device_type} here; available: "
                         f"{available_backends(device_type)} (cpp/cuda need the built extension ecgfast._C, "
                         f"triton on CPU needs TRITON_INTERPRET=1)")
    return backend


# ---------------------------------------------------------------------------------------------- parameters
def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _seeds(seed: int, offset: int) -> tuple[int, int]:
    """(generator seed, noise seed) of the call ``(seed, offset)``: two 63-bit hashes."""
    mixed = _splitmix64((_splitmix64(seed & _M64) + offset) & _M64)
    return mixed & _M63, _splitmix64(mixed ^ 0x6E6F697365) & _M63  # "noise"


@dataclass(eq=False)
class VCGAugmentDraw:
    """The parameters of one fused call, enough to reproduce it with explicit parameters.

    Attributes:
        matrices: (V, B, 8, 8) float32 lead transforms.
        mask_starts: (V, B, 8) int64 ZeroMask block starts in [0, T).
        mask_length: samples zeroed per lead.
        noise_seed: Philox key of the noise.
        angles: (V, B, 3) radians about x, y, z (R = Rz @ Ry @ Rx), or None for explicit matrices.
        scales: (V, B, 3) factors for X, Y, Z, or None for explicit matrices.
    """

    matrices: torch.Tensor
    mask_starts: torch.Tensor
    mask_length: int
    noise_seed: int
    angles: torch.Tensor | None = None
    scales: torch.Tensor | None = None


def vcg_augment_params(
    batch: int,
    n_samples: int,
    seed: int = 0,
    offset: int = 0,
    n_views: int = 2,
    max_angle_deg: float = 45.0,
    scale_range: tuple[float, float] = (1.0, 1.5),
    invert_prob: float = 0.5,
    mask_fraction: float = 0.5,
    transform: str = "dower",
    residual: bool = False,
    device: torch.device | str | None = None,
) -> VCGAugmentDraw:
    """Draw the parameters of :func:`vcg_augment` from ``(seed, offset)``, on the CPU, then move them.

    A CPU ``torch.Generator`` seeded with a hash of ``(seed, offset)`` draws view 0's angles, scales,
    inversions and mask starts (:func:`ecgfast.augment.sample_vcg_params`), then view 1's. ``offset`` is
    the call counter (e.g. the training step): every ``(seed, offset)`` pair gives independent views.

    Returns:
        :class:`VCGAugmentDraw` with (V, B, ...) tensors on ``device``.

    Example:
        >>> p = vcg_augment_params(4, 2500, seed=1, offset=0)
        >>> p.matrices.shape, p.mask_starts.shape, p.mask_length
        (torch.Size([2, 4, 8, 8]), torch.Size([2, 4, 8]), 1250)
    """
    from ecgfast.augment import sample_vcg_params  # ecgfast.augment imports this module lazily too

    if n_views not in (1, 2):
        raise ValueError(f"n_views must be 1 or 2, got {n_views}")
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    gen_seed, noise_seed = _seeds(int(seed), int(offset))
    g = torch.Generator().manual_seed(gen_seed)
    views = [sample_vcg_params(batch, n_samples, g, None, max_angle_deg, scale_range, invert_prob, mask_fraction)
             for _ in range(n_views)]
    angles = torch.stack([p.angles for p in views])
    scales = torch.stack([p.scales for p in views])
    matrices = lead_transform_matrices(angles.flatten(0, 1), scales.flatten(0, 1), transform, residual)
    return VCGAugmentDraw(matrices.view(n_views, batch, N_LEADS, N_LEADS).to(device),
                          torch.stack([p.mask_starts for p in views]).to(device), views[0].mask_length, noise_seed,
                          angles.to(device), scales.to(device))


# ------------------------------------------------------------------------------------------- torch backend
def _mulhilo32(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32 bits of ``a * b`` for a 32-bit constant ``a`` and int64 ``b`` in [0, 2^32), in int64."""
    b_hi, b_lo = b >> 16, b & 0xFFFF
    lo_part, hi_part = a * b_lo, a * b_hi  # each < 2^48
    hi = (hi_part + (lo_part >> 16)) >> 16
    lo = (lo_part + ((hi_part & 0xFFFF) << 16)) & 0xFFFFFFFF
    return hi, lo


def philox_randn(seed: int, counters: torch.Tensor) -> torch.Tensor:
    """Triton's ``tl.randn(seed, counters)`` in torch: Philox4x32-10 then Box-Muller, float32.

    ``counters`` is an int64 tensor (>= 0); the result has its shape. Used by the torch backend so that its
    noise is the Triton kernel's (up to float rounding).
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


def _decode(x: torch.Tensor, gain: torch.Tensor | None, baseline: torch.Tensor | None) -> torch.Tensor:
    if x.dtype != torch.int16:
        return x.float()
    return (x.float() - baseline[:, None, None]) / gain[:, None, None]


def _vcg_augment_torch(x, gain, baseline, matrices, mask_starts, mask_length, noise_std, noise_seed, out_dtype):
    xf = _decode(x, gain, baseline)
    n_views, (batch, _, n) = matrices.shape[0], x.shape
    outs = []
    for v in range(n_views):
        noise = None
        if noise_std > 0:
            first = v * batch * N_LEADS * n
            counters = torch.arange(first, first + batch * N_LEADS * n, device=x.device).view(batch, N_LEADS, n)
            noise = noise_std * philox_randn(noise_seed, counters)
        outs.append(vcg_augment_reference(xf, matrices[v], mask_starts[v], mask_length, noise, out_dtype))
    return torch.stack(outs)


# ------------------------------------------------------------------------------------------ triton backend
def _vcg_augment_triton(x, gain, baseline, matrices, mask_starts, mask_length, noise_std, noise_seed, out_dtype):
    from ecgfast.kernels.vcg_augment import (
        _vcg_augment_fwd_kernel,
        vcg_augment_block_t,
        vcg_augment_grid,
        vcg_augment_num_warps,
    )

    batch, _, n = x.shape
    n_views = matrices.shape[0]
    out = torch.empty(n_views, batch, N_LEADS, n, dtype=out_dtype, device=x.device)
    is_int = x.dtype == torch.int16
    dummy = matrices  # gain/baseline pointers are never read for float input
    block_t = vcg_augment_block_t(n)
    out_bf16 = out_dtype == torch.bfloat16
    _vcg_augment_fwd_kernel[vcg_augment_grid(batch, n, block_t)](
        x, gain if is_int else dummy, baseline if is_int else dummy, matrices, mask_starts,
        out.view(torch.int16) if out_bf16 else out,  # bf16 stored as its bits, rounded in the kernel
        batch, n, x.stride(0), x.stride(1), x.stride(2),
        mask_length, float(noise_std), noise_seed,
        N_VIEWS=n_views, IS_INT=is_int, HAS_NOISE=noise_std > 0, OUT_BF16=out_bf16, BLOCK_T=block_t,
        num_warps=vcg_augment_num_warps(block_t),
    )
    return out


# ---------------------------------------------------------------------------------------------- custom op
@torch.library.custom_op("ecgfast::vcg_augment_apply", mutates_args=())
def vcg_augment_apply(
    x: torch.Tensor,
    gain: torch.Tensor | None,
    baseline: torch.Tensor | None,
    matrices: torch.Tensor,
    mask_starts: torch.Tensor,
    mask_length: int,
    noise_std: float,
    noise_seed: int,
    out_dtype: torch.dtype,
    backend: str,
) -> torch.Tensor:
    """The checked, explicit-parameter op on one backend: (B, 8, T) -> (V, B, 8, T) ``out_dtype``.

    Inputs as the launcher leaves them: ``gain``/``baseline`` (B,) float32 for int16 ``x`` (else None),
    ``matrices`` (V, B, 8, 8) float32 contiguous, ``mask_starts`` (V, B, 8) int64 contiguous in [0, T), all on
    ``x.device``. Call :func:`vcg_augment` instead: it checks and converts.
    """
    if backend == "triton":
        return _vcg_augment_triton(x, gain, baseline, matrices, mask_starts, mask_length, noise_std, noise_seed,
                                   out_dtype)
    if backend in ("cpp", "cuda"):
        return torch.ops.ecgfast.vcg_augment(x, gain, baseline, matrices, mask_starts, mask_length, noise_std,
                                             noise_seed, out_dtype)
    return _vcg_augment_torch(x, gain, baseline, matrices, mask_starts, mask_length, noise_std, noise_seed,
                              out_dtype)


def _fake(x, gain, baseline, matrices, mask_starts, mask_length, noise_std, noise_seed, out_dtype, *rest):
    return x.new_empty((matrices.shape[0], *x.shape), dtype=out_dtype)


vcg_augment_apply.register_fake(_fake)
if _extension_loaded() and hasattr(torch.ops.ecgfast, "vcg_augment"):
    torch.library.register_fake("ecgfast::vcg_augment")(_fake)


# -------------------------------------------------------------------------------------------- functional
def _check_x(x: torch.Tensor, gain: torch.Tensor | None, baseline: torch.Tensor | None):
    if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[1] != N_LEADS or x.shape[0] < 1 or x.shape[2] < 1:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be (B, {N_LEADS}, T) with B >= 1, T >= 1 (leads I, II, V1..V6), got {shape}")
    if x.dtype not in IN_DTYPES:
        raise ValueError(f"x dtype must be one of {IN_DTYPES} (int16 with gain and baseline, or mV), got {x.dtype}")
    if x.dtype != torch.int16:
        if gain is not None or baseline is not None:
            raise ValueError(f"gain and baseline are for int16 x only; x is {x.dtype} (already mV)")
        return None, None
    checked = []
    for name, t in (("gain", gain), ("baseline", baseline)):
        if t is None:
            raise ValueError(f"int16 x needs {name}: a ({x.shape[0]},) tensor, mV = (q - baseline) / gain")
        if t.shape != (x.shape[0],) or not t.dtype.is_floating_point:
            raise ValueError(f"{name} must be a floating ({x.shape[0]},) tensor for x {tuple(x.shape)}, "
                             f"got {t.dtype} {tuple(t.shape)}")
        checked.append(t.to(x.device, torch.float32).contiguous())
    return tuple(checked)


def vcg_augment(
    x: torch.Tensor,
    gain: torch.Tensor | None = None,
    baseline: torch.Tensor | None = None,
    *,
    seed: int = 0,
    offset: int = 0,
    n_views: int = 2,
    matrices: torch.Tensor | None = None,
    mask_starts: torch.Tensor | None = None,
    mask_length: int | None = None,
    max_angle_deg: float = 45.0,
    scale_range: tuple[float, float] = (1.0, 1.5),
    invert_prob: float = 0.5,
    mask_fraction: float = 0.5,
    transform: str = "dower",
    residual: bool = False,
    noise_std: float = 0.0,
    out_dtype: torch.dtype = torch.float32,
    backend: str | None = None,
    return_params: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, VCGAugmentDraw]:
    """3KG views of a batch of ECGs in one pass: (B, 8, T) -> (V, B, 8, T).

    ``out[v, b, l, t] = 0`` inside lead l's circular ZeroMask block ``[s, s + mask_length) mod T`` with
    ``s = mask_starts[v, b, l]``, else ``(M[v, b] @ x_mV[b])[l, t] + noise_std * n[v, b, l, t]``; float32
    arithmetic, one rounding to ``out_dtype``.

    Args:
        x: (B, 8, T) ECGs, leads I, II, V1..V6: int16 adc units with ``gain`` and ``baseline`` (``mV =
            (q - baseline) / gain``), or float16 / bfloat16 / float32 mV. Any strides.
        gain, baseline: (B,) per record, for int16 ``x`` only (as in the ECG store's manifest).
        seed, offset: the call's randomness (:func:`vcg_augment_params`; ``offset`` e.g. the step).
            With explicit ``matrices`` they still key the noise.
        n_views: V, 1 or 2; the input is read once for both.
        matrices: explicit (V, B, 8, 8) lead transforms instead of drawn ones.
        mask_starts: explicit (V, B, 8) integer block starts (taken mod T); None with explicit matrices:
            no mask.
        mask_length: samples zeroed per lead; default ``round(mask_fraction * T)`` capped at T - 1.
        max_angle_deg, scale_range, invert_prob, mask_fraction, transform, residual: the distribution of
            drawn parameters (:class:`ecgfast.augment.ECGAugment`).
        noise_std: Gaussian noise in mV, added before the mask (0: none).
        out_dtype: torch.float32 or torch.bfloat16.
        backend: "triton", "cuda", "cpp" or "torch"; None: :func:`default_backend`.
        return_params: also return the :class:`VCGAugmentDraw` used.

    Returns:
        (V, B, 8, T) ``out_dtype`` on ``x.device``, not requiring grad; with ``return_params`` a tuple.

    Raises:
        ValueError: wrong shape, dtype or rank of any input, V not in {1, 2}, a missing or unavailable
            backend, a parameter out of range.

    Example:
        >>> q = torch.randint(-2000, 2000, (4, 8, 1000), dtype=torch.int16)
        >>> gain, baseline = torch.full((4,), 200.0), torch.zeros(4)
        >>> views, p = vcg_augment(q, gain, baseline, seed=0, backend="torch", return_params=True)
        >>> views.shape, int((views == 0).sum(-1).min()), p.mask_length
        (torch.Size([2, 4, 8, 1000]), 500, 500)
    """
    gain, baseline = _check_x(x, gain, baseline)
    batch, _, n = x.shape
    if out_dtype not in OUT_DTYPES:
        raise ValueError(f"out_dtype must be one of {OUT_DTYPES}, got {out_dtype}")
    if not noise_std >= 0:
        raise ValueError(f"noise_std must be >= 0 mV, got {noise_std}")
    backend = default_backend(x.device) if backend is None else _check_backend(backend, x.device.type)
    if matrices is None:
        if mask_starts is not None:
            raise ValueError("mask_starts are explicit parameters: pass matrices with them")
        draw = vcg_augment_params(batch, n, seed, offset, n_views, max_angle_deg, scale_range, invert_prob,
                                  mask_fraction, transform, residual, x.device)
        if mask_length is not None:
            draw.mask_length = mask_length
    else:
        draw = _explicit_draw(matrices, mask_starts, mask_length, batch, n, mask_fraction, _seeds(seed, offset)[1])
    if not 0 <= draw.mask_length <= n:
        raise ValueError(f"mask_length must be in [0, T={n}], got {draw.mask_length}")
    m = draw.matrices.to(x.device, torch.float32).contiguous()
    starts = (draw.mask_starts.to(x.device, torch.long) % n).contiguous()
    out = vcg_augment_apply(x.detach(), gain, baseline, m, starts, draw.mask_length, float(noise_std),
                            draw.noise_seed, out_dtype, backend)
    return (out, draw) if return_params else out


def _explicit_draw(matrices: torch.Tensor, mask_starts: torch.Tensor | None, mask_length: int | None, batch: int,
                   n: int, mask_fraction: float, noise_seed: int) -> VCGAugmentDraw:
    from ecgfast.augment import mask_length_for

    if matrices.ndim != 4 or matrices.shape[0] not in (1, 2) or matrices.shape[1:] != (batch, N_LEADS, N_LEADS):
        raise ValueError(f"matrices must be (V, {batch}, 8, 8) with V in {{1, 2}}, got {tuple(matrices.shape)}")
    if not matrices.dtype.is_floating_point:
        raise ValueError(f"matrices must be floating, got {matrices.dtype}")
    n_views = matrices.shape[0]
    if mask_starts is None:
        if mask_length:
            raise ValueError(f"mask_length={mask_length} needs mask_starts")
        return VCGAugmentDraw(matrices, torch.zeros(n_views, batch, N_LEADS, dtype=torch.long), 0, noise_seed)
    if mask_starts.shape != (n_views, batch, N_LEADS) or mask_starts.dtype.is_floating_point or (
            mask_starts.dtype == torch.bool):
        raise ValueError(f"mask_starts must be an integer ({n_views}, {batch}, 8) tensor, "
                         f"got {mask_starts.dtype} {tuple(mask_starts.shape)}")
    length = mask_length_for(n, mask_fraction) if mask_length is None else int(mask_length)
    return VCGAugmentDraw(matrices, mask_starts, length, noise_seed)
