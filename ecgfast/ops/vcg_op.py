"""Fused 3KG augmentation: (B, 8, T) ECGs -> (V, B, 8, L) views in one pass over memory (METHOD.md).

Per view v and ECG b: ``out[v, b] = zero_mask(M[v, b] @ x_mV[b, :, w : w + L] + noise_std * n)``, with
``M = D S R D_inv`` (or Kors, or the residual mode), ``w`` the view's window start, one circular ZeroMask block
of ``mask_length`` samples per lead, and ``n`` standard Gaussian noise. int16 store samples are decoded
(``mV = (q - baseline) / gain``) inside the op, so a training step hands it the loader's batch as it comes:
both views of every ECG, cropped, decoded, augmented and written in the encoder's dtype, from one read.

Layers (Liger style): the Triton kernel (``ecgfast.kernels.vcg_augment``) and the C++ CPU and CUDA kernels
(``torch.ops.ecgfast.vcg_augment``, csrc/) -> the host launcher and one ``torch.library`` custom op
``ecgfast::vcg_augment_apply`` over every backend (so ``torch.compile(fullgraph=True)`` traces it) -> the
functional :func:`vcg_augment` -> the module :class:`ecgfast.nn.VCGAugment`. The plain-torch version is
:func:`ecgfast.reference.vcg_augment.vcg_augment_views_reference`, the ``"torch"`` backend. Parameters are drawn
by :mod:`ecgfast.ops.vcg_params` from ``(seed, offset)``; backends are chosen by :mod:`ecgfast.ops.backends`.

Noise is counter-based: element (v, b, l, t) gets Philox4x32-10 (key: the noise seed of ``(seed, offset)``,
counter: its flat output index ``((v * B + b) * 8 + l) * L + t``) and Box-Muller, exactly Triton's ``tl.randn``;
the C++, CUDA and torch backends implement the same integer stream, so the noise agrees across backends to the
float rounding of log/cos/sqrt (about 1e-6 relative).

Autograd: views are data, never trained through. The op returns tensors that do not require grad (the input is
detached), so it can sit in any graph. Differentiate through
:func:`ecgfast.reference.vcg_augment.vcg_augment_reference` if you need to.
"""

from __future__ import annotations

import torch

from ..reference.vcg_augment import N_LEADS, vcg_augment_views_reference
from .backends import EXTENSION_LOADED, resolve_backend
from .vcg_params import VCGAugmentConfig, VCGAugmentParams, counter_seeds, mask_length_for, sample_vcg_params

OP = "vcg_augment"
IN_DTYPES: tuple[torch.dtype, ...] = (torch.int16, torch.float16, torch.bfloat16, torch.float32)
OUT_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16)


# ------------------------------------------------------------------------------------------ triton launcher
def _vcg_augment_triton(x, gain, baseline, matrices, mask_starts, windows, shared_window, length, mask_length,
                        noise_std, noise_seed, out_dtype):
    from ecgfast.kernels.vcg_augment import (
        _vcg_augment_fwd_kernel,
        vcg_augment_block_t,
        vcg_augment_grid,
        vcg_augment_num_warps,
    )

    batch, n_views = x.shape[0], matrices.shape[0]
    out = torch.empty(n_views, batch, N_LEADS, length, dtype=out_dtype, device=x.device)
    is_int = x.dtype == torch.int16
    dummy = matrices  # gain/baseline pointers are never read for float input
    block_t = vcg_augment_block_t(length)
    out_bf16 = out_dtype == torch.bfloat16
    _vcg_augment_fwd_kernel[vcg_augment_grid(batch, length, block_t)](
        x, gain if is_int else dummy, baseline if is_int else dummy, matrices, mask_starts, windows,
        out.view(torch.int16) if out_bf16 else out,  # bf16 stored as its bits, rounded in the kernel
        batch, x.shape[2], length, x.stride(0), x.stride(1), x.stride(2),
        mask_length, float(noise_std), noise_seed,
        N_VIEWS=n_views, SHARED_WINDOW=shared_window, IS_INT=is_int, HAS_NOISE=noise_std > 0, OUT_BF16=out_bf16,
        BLOCK_T=block_t, num_warps=vcg_augment_num_warps(block_t),
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
    windows: torch.Tensor,
    shared_window: bool,
    length: int,
    mask_length: int,
    noise_std: float,
    noise_seed: int,
    out_dtype: torch.dtype,
    backend: str,
) -> torch.Tensor:
    """The checked, explicit-parameter op on one backend: (B, 8, T) -> (V, B, 8, ``length``) ``out_dtype``.

    Inputs as :func:`vcg_augment` leaves them, all on ``x.device``: ``gain``/``baseline`` (B,) float32 for int16
    ``x`` (else None); ``matrices`` (V, B, 8, 8) float32 contiguous; ``mask_starts`` (V, B, 8) int64 contiguous in
    [0, length); ``windows`` (V, B) int64 contiguous view starts (``shared_window``: equal for all views, so the
    input is read once for all of them). Call :func:`vcg_augment` instead: it checks and converts.
    """
    if backend == "triton":
        return _vcg_augment_triton(x, gain, baseline, matrices, mask_starts, windows, shared_window, length,
                                   mask_length, noise_std, noise_seed, out_dtype)
    if backend in ("cpp", "cuda"):
        return torch.ops.ecgfast.vcg_augment(x, gain, baseline, matrices, mask_starts, windows, shared_window, length,
                                             mask_length, noise_std, noise_seed, out_dtype)
    return vcg_augment_views_reference(x, gain, baseline, matrices, mask_starts, mask_length, noise_std, noise_seed,
                                       windows, length, out_dtype)


def _fake(x, gain, baseline, matrices, mask_starts, windows, shared_window, length, mask_length, noise_std,
          noise_seed, out_dtype, *backend):
    return x.new_empty((matrices.shape[0], x.shape[0], N_LEADS, length), dtype=out_dtype)


vcg_augment_apply.register_fake(_fake)
if EXTENSION_LOADED and hasattr(torch.ops.ecgfast, "vcg_augment"):
    torch.library.register_fake("ecgfast::vcg_augment")(_fake)


# -------------------------------------------------------------------------------------------- functional
def _check_x(x: torch.Tensor, gain: torch.Tensor | None,
             baseline: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
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
        if not isinstance(t, torch.Tensor) or t.shape != (x.shape[0],) or not t.dtype.is_floating_point:
            raise ValueError(f"{name} must be a floating ({x.shape[0]},) tensor for x {tuple(x.shape)}, got "
                             f"{getattr(t, 'dtype', type(t).__name__)} {tuple(getattr(t, 'shape', ()))}")
        checked.append(t.to(x.device, torch.float32).contiguous())
    return checked[0], checked[1]


def _check_windows(windows: torch.Tensor | None, length: int | None, n_views: int, batch: int,
                   n: int) -> tuple[torch.Tensor, bool, int]:
    """(windows (V, B) int64, shared, length) from the functional's ``windows``/``length`` arguments."""
    if windows is None:
        length = n if length is None else int(length)
        if not 1 <= length <= n:
            raise ValueError(f"length must be in [1, T={n}], got {length}")
        return torch.zeros(n_views, batch, dtype=torch.long), True, length
    if length is None:
        raise ValueError("windows need a length: the samples of every view")
    if not isinstance(windows, torch.Tensor) or windows.dtype.is_floating_point or windows.dtype == torch.bool:
        raise ValueError(f"windows must be an integer tensor, got {getattr(windows, 'dtype', type(windows).__name__)}")
    shared = windows.shape == (batch,)
    if not shared and windows.shape != (n_views, batch):
        raise ValueError(f"windows must be ({batch},) (one start for all views) or ({n_views}, {batch}) (a start per "
                         f"view), got {tuple(windows.shape)}")
    length = int(length)
    if not 1 <= length <= n:
        raise ValueError(f"length must be in [1, T={n}], got {length}")
    if windows.device.type == "cpu" and not torch.compiler.is_compiling() and windows.numel() and (
            int(windows.min()) < 0 or int(windows.max()) > n - length):
        raise ValueError(f"windows must start in [0, T - length] = [0, {n - length}], got starts from "
                         f"{int(windows.min())} to {int(windows.max())}")
    windows = windows.long()
    return (windows.expand(n_views, batch) if shared else windows), shared, length


def _explicit_params(matrices: torch.Tensor, mask_starts: torch.Tensor | None, mask_length: int | None, batch: int,
                     length: int, mask_fraction: float, noise_seed: int) -> VCGAugmentParams:
    if not isinstance(matrices, torch.Tensor) or matrices.ndim != 4 or matrices.shape[0] not in (1, 2) or (
            matrices.shape[1:] != (batch, N_LEADS, N_LEADS)):
        raise ValueError(f"matrices must be (V, {batch}, 8, 8) with V in {{1, 2}}, got {tuple(matrices.shape)}")
    if not matrices.dtype.is_floating_point:
        raise ValueError(f"matrices must be floating, got {matrices.dtype}")
    n_views = matrices.shape[0]
    if mask_starts is None:
        if mask_length:
            raise ValueError(f"mask_length={mask_length} needs mask_starts")
        return VCGAugmentParams(matrices, torch.zeros(n_views, batch, N_LEADS, dtype=torch.long), 0, noise_seed)
    if mask_starts.shape != (n_views, batch, N_LEADS) or mask_starts.dtype.is_floating_point or (
            mask_starts.dtype == torch.bool):
        raise ValueError(f"mask_starts must be an integer ({n_views}, {batch}, 8) tensor, "
                         f"got {mask_starts.dtype} {tuple(mask_starts.shape)}")
    size = mask_length_for(length, mask_fraction) if mask_length is None else int(mask_length)
    return VCGAugmentParams(matrices, mask_starts, size, noise_seed)


def vcg_augment(
    x: torch.Tensor,
    gain: torch.Tensor | None = None,
    baseline: torch.Tensor | None = None,
    *,
    seed: int = 0,
    offset: int = 0,
    n_views: int = 2,
    windows: torch.Tensor | None = None,
    length: int | None = None,
    config: VCGAugmentConfig | None = None,
    matrices: torch.Tensor | None = None,
    mask_starts: torch.Tensor | None = None,
    mask_length: int | None = None,
    out_dtype: torch.dtype = torch.float32,
    backend: str | None = None,
    return_params: bool = False,
    **hyperparameters: object,
) -> torch.Tensor | tuple[torch.Tensor, VCGAugmentParams]:
    """3KG views of a batch of ECGs in one pass: (B, 8, T) -> (V, B, 8, L).

    ``out[v, b, l, t] = 0`` inside lead l's circular ZeroMask block ``[s, s + mask_length) mod L`` with
    ``s = mask_starts[v, b, l]``, else ``(M[v, b] @ x_mV[b, :, w + t])[l] + noise_std * n[v, b, l, t]`` with
    ``w = windows[v, b]``; float32 arithmetic, one rounding to ``out_dtype``.

    Args:
        x: (B, 8, T) ECGs, leads I, II, V1..V6: int16 adc units with ``gain`` and ``baseline`` (``mV =
            (q - baseline) / gain``), or float16 / bfloat16 / float32 mV. Any strides.
        gain, baseline: (B,) per record, for int16 ``x`` only (as in the ECG store's manifest).
        seed, offset: the call's randomness (:func:`ecgfast.ops.vcg_params.sample_vcg_params`; ``offset`` e.g. the
            step). With explicit ``matrices`` they still key the noise.
        n_views: V, 1 or 2.
        windows: where each view starts in x: None (the whole record, L = T), (B,) one start for every view of an
            ECG (the input is read once for all views), or (V, B) a start per view (e.g. the two halves of a 10 s
            ECG). Starts in [0, T - L].
        length: L, samples per view; default T (no windows).
        config: the hyperparameters (:class:`~ecgfast.ops.vcg_params.VCGAugmentConfig`; default the paper's).
        matrices: explicit (V, B, 8, 8) lead transforms instead of drawn ones.
        mask_starts: explicit (V, B, 8) integer block starts (taken mod L); None with explicit matrices: no mask.
        mask_length: samples zeroed per lead; default ``round(mask_fraction * L)`` capped at L - 1.
        out_dtype: torch.float32 or torch.bfloat16.
        backend: "triton", "cuda", "cpp" or "torch"; None: the default for the device (:mod:`ecgfast.ops.backends`).
        return_params: also return the :class:`~ecgfast.ops.vcg_params.VCGAugmentParams` used.
        **hyperparameters: fields of :class:`~ecgfast.ops.vcg_params.VCGAugmentConfig` overriding ``config``
            (``max_angle_deg``, ``scale_range``, ``invert_prob``, ``mask_fraction``, ``transform``, ``residual``,
            ``spatial``, ``noise_std``).

    Returns:
        (V, B, 8, L) ``out_dtype`` on ``x.device``, not requiring grad; with ``return_params`` a tuple.

    Raises:
        ValueError: wrong shape, dtype or range of any input, V not in {1, 2}, an unknown hyperparameter, a missing
            or unavailable backend, a parameter out of range.

    Example:
        >>> q = torch.randint(-2000, 2000, (4, 8, 1000), dtype=torch.int16)
        >>> gain, baseline = torch.full((4,), 200.0), torch.zeros(4)
        >>> views, p = vcg_augment(q, gain, baseline, seed=0, backend="torch", return_params=True)
        >>> views.shape, int((views == 0).sum(-1).min()), p.mask_length
        (torch.Size([2, 4, 8, 1000]), 500, 500)
        >>> halves = torch.tensor([[0] * 4, [500] * 4])  # (V, B): the two halves of each ECG
        >>> vcg_augment(q, gain, baseline, windows=halves, length=500, backend="torch").shape
        torch.Size([2, 4, 8, 500])
    """
    unknown = sorted(set(hyperparameters) - set(VCGAugmentConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(f"unknown vcg_augment argument(s) {unknown}; hyperparameters are the fields of "
                         f"VCGAugmentConfig: {sorted(VCGAugmentConfig.__dataclass_fields__)}")
    cfg = (config or VCGAugmentConfig()).with_overrides(**hyperparameters)
    gain, baseline = _check_x(x, gain, baseline)
    batch, _, n = x.shape
    if out_dtype not in OUT_DTYPES:
        raise ValueError(f"out_dtype must be one of {OUT_DTYPES}, got {out_dtype}")
    chosen = resolve_backend(OP, x.device, backend)
    views = n_views if matrices is None else getattr(matrices, "shape", (n_views,))[0]
    if views not in (1, 2):
        raise ValueError(f"n_views must be 1 or 2, got {views}")
    win, shared, length = _check_windows(windows, length, views, batch, n)
    if matrices is None:
        if mask_starts is not None:
            raise ValueError("mask_starts are explicit parameters: pass matrices with them")
        params = sample_vcg_params(batch, length, cfg, seed, offset, n_views)
        if mask_length is not None:
            params.mask_length = int(mask_length)
    else:
        params = _explicit_params(matrices, mask_starts, mask_length, batch, length, cfg.mask_fraction,
                                  counter_seeds(seed, offset)[1])
    if not 0 <= params.mask_length <= length:
        raise ValueError(f"mask_length must be in [0, L={length}], got {params.mask_length}")
    m = params.matrices.to(x.device, torch.float32).contiguous()
    starts = (params.mask_starts.to(x.device, torch.long) % length).contiguous()
    out = vcg_augment_apply(x.detach(), gain, baseline, m, starts, win.to(x.device).contiguous(), shared, length,
                            params.mask_length, float(cfg.noise_std), params.noise_seed, out_dtype, chosen)
    return (out, params.to(x.device)) if return_params else out


__all__ = ["IN_DTYPES", "OUT_DTYPES", "vcg_augment", "vcg_augment_apply"]
