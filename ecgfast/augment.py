"""The random side of the 3KG augmentation and the module that applies it (METHOD.md).

Parameters are drawn here, from an explicit ``torch.Generator``; the deterministic op they drive lives
in :mod:`ecgfast.reference.vcg_augment` (and in the fused kernels that must match it). With a CPU
generator every draw happens on the CPU and is then moved, so one seed gives the same views on any
device.

Per ECG and view (3KG): rotation angles about x, y, z ~ U(-45 deg, 45 deg); per-axis scales ~ U(1, 1.5),
each replaced by its inverse with probability 0.5; then ZeroMask, one circular block of 50 % of the
samples per lead from a uniform start. Optional extras (ours, off by default): Gaussian noise and
baseline wander.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import nn

from ecgfast import LEADS
from ecgfast.reference.vcg_augment import TRANSFORMS, lead_transform_matrices, vcg_augment_reference

N_LEADS = len(LEADS)


@dataclass(eq=False)
class VCGAugmentParams:
    """Everything random about one batch of augmented views; with it the augmentation is deterministic.

    Attributes:
        angles: (B, 3) rotation angles in radians about x, y, z (R = Rz @ Ry @ Rx).
        scales: (B, 3) scale factors for X, Y, Z.
        mask_starts: (B, 8) long, first zeroed sample of each lead's ZeroMask block.
        mask_length: samples zeroed per lead (0: no mask).
        noise: (B, 8, T) mV added before masking (Gaussian noise plus baseline wander), or None.
    """

    angles: torch.Tensor
    scales: torch.Tensor
    mask_starts: torch.Tensor
    mask_length: int = 0
    noise: torch.Tensor | None = None

    def to(self, device: torch.device | str | None) -> VCGAugmentParams:
        """The same parameters on ``device``."""
        noise = None if self.noise is None else self.noise.to(device)
        return replace(self, angles=self.angles.to(device), scales=self.scales.to(device),
                       mask_starts=self.mask_starts.to(device), noise=noise)


def mask_length_for(n_samples: int, mask_fraction: float) -> int:
    """Samples per lead that ZeroMask zeroes: ``round(mask_fraction * n_samples)`` (Python's round, half to
    even), at most ``n_samples - 1`` so that a lead always keeps a sample. 2500 samples at 0.5 -> 1250."""
    if n_samples < 1:
        return 0
    return min(round(mask_fraction * n_samples), n_samples - 1)


def _check_hyperparameters(max_angle_deg: float, scale_range: tuple[float, float], invert_prob: float,
                           mask_fraction: float) -> None:
    if not 0.0 <= max_angle_deg <= 180.0:
        raise ValueError(f"max_angle_deg must be in [0, 180], got {max_angle_deg}")
    if len(scale_range) != 2 or not 1.0 <= scale_range[0] <= scale_range[1]:
        raise ValueError(f"scale_range must be (low, high) with 1 <= low <= high, got {scale_range}")
    if not 0.0 <= invert_prob <= 1.0:
        raise ValueError(f"invert_prob must be in [0, 1], got {invert_prob}")
    if not 0.0 <= mask_fraction < 1.0:
        raise ValueError(f"mask_fraction must be in [0, 1), got {mask_fraction}")


def _generator_or_default(generator: torch.Generator | None) -> torch.Generator:
    return torch.default_generator if generator is None else generator


def sample_vcg_params(
    batch: int,
    n_samples: int,
    generator: torch.Generator,
    device: torch.device | str | None = None,
    max_angle_deg: float = 45.0,
    scale_range: tuple[float, float] = (1.0, 1.5),
    invert_prob: float = 0.5,
    mask_fraction: float = 0.5,
) -> VCGAugmentParams:
    """Draw the 3KG parameters of ``batch`` views of ``n_samples``-sample ECGs.

    Draws, in this order, on ``generator.device`` and in float32 (then moved to ``device``):
    angles (B, 3) ~ U(-max_angle, max_angle) radians, each axis independently; scales (B, 3) ~
    U(low, high), then each inverted with probability ``invert_prob``; mask starts (B, 8) uniform
    integers in [0, n_samples), each lead independently. ``mask_length`` is
    ``mask_length_for(n_samples, mask_fraction)``.

    Example:
        >>> p = sample_vcg_params(4, 2500, torch.Generator().manual_seed(0))
        >>> p.angles.shape, p.scales.shape, p.mask_starts.shape, p.mask_length
        (torch.Size([4, 3]), torch.Size([4, 3]), torch.Size([4, 8]), 1250)

    Raises:
        ValueError: a hyperparameter out of range, ``batch < 0`` or ``n_samples < 1``.
    """
    _check_hyperparameters(max_angle_deg, scale_range, invert_prob, mask_fraction)
    if batch < 0 or n_samples < 1:
        raise ValueError(f"need batch >= 0 and n_samples >= 1, got batch={batch}, n_samples={n_samples}")
    g = generator
    max_angle = math.radians(max_angle_deg)
    low, high = scale_range
    angles = (2.0 * torch.rand(batch, 3, generator=g, device=g.device) - 1.0) * max_angle
    scales = low + (high - low) * torch.rand(batch, 3, generator=g, device=g.device)
    invert = torch.rand(batch, 3, generator=g, device=g.device) < invert_prob
    scales = torch.where(invert, 1.0 / scales, scales)
    starts = torch.randint(0, n_samples, (batch, N_LEADS), generator=g, device=g.device)
    return VCGAugmentParams(angles, scales, starts, mask_length_for(n_samples, mask_fraction)).to(device)


def gaussian_noise(
    shape: tuple[int, ...], std_mv: float, generator: torch.Generator, device: torch.device | str | None = None
) -> torch.Tensor:
    """White Gaussian noise of standard deviation ``std_mv`` mV, float32, drawn on ``generator.device``.

    A CPU generator keeps runs reproducible across devices but costs a host-to-device copy of the whole
    tensor; a CUDA generator is faster and device-specific.
    """
    if std_mv < 0:
        raise ValueError(f"noise std must be >= 0 mV, got {std_mv}")
    noise = torch.randn(shape, generator=generator, device=generator.device) * std_mv
    return noise.to(device)


def baseline_wander(
    batch: int,
    n_samples: int,
    fs: float,
    amplitude_mv: float,
    generator: torch.Generator,
    device: torch.device | str | None = None,
    n_leads: int = N_LEADS,
    n_components: int = 3,
    max_freq_hz: float = 0.5,
) -> torch.Tensor:
    """Baseline wander: per ECG and lead, a sum of ``n_components`` slow sinusoids -> (B, n_leads, T) mV.

    Each component has a frequency ~ U(0, max_freq_hz) (0.5 Hz: respiration and electrode drift, below
    the QRS band), a phase ~ U(0, 2 pi) and an amplitude ~ U(0, amplitude_mv / n_components), so
    ``|wander| <= amplitude_mv``. Leads are independent. The small parameter tensors are drawn on
    ``generator.device``; the sinusoids are evaluated on ``device``.
    """
    if amplitude_mv < 0 or fs <= 0 or n_components < 1 or max_freq_hz < 0:
        raise ValueError(f"need amplitude_mv >= 0, fs > 0, n_components >= 1, max_freq_hz >= 0; got "
                         f"{amplitude_mv}, {fs}, {n_components}, {max_freq_hz}")
    g = generator
    size = (batch, n_leads, n_components, 1)
    freq = torch.rand(size, generator=g, device=g.device) * max_freq_hz
    phase = torch.rand(size, generator=g, device=g.device) * (2 * math.pi)
    amp = torch.rand(size, generator=g, device=g.device) * (amplitude_mv / n_components)
    freq, phase, amp = freq.to(device), phase.to(device), amp.to(device)
    t = torch.arange(n_samples, device=freq.device, dtype=torch.float32) / fs  # seconds
    wander = torch.zeros(batch, n_leads, n_samples, device=freq.device)
    for k in range(n_components):  # one component at a time: no (B, L, K, T) temporary
        wander += amp[:, :, k] * torch.sin(2 * math.pi * freq[:, :, k] * t + phase[:, :, k])
    return wander


class ECGAugment(nn.Module):
    """3KG augmentation of a batch of 8-lead ECGs: random VCG rotation and scaling, then ZeroMask.

    Each ECG of the batch gets its own parameters (:func:`sample_vcg_params`), applied by
    :func:`ecgfast.reference.vcg_augment.vcg_augment_reference`: ``zero_mask(M @ x + noise)`` with the 8x8
    lead transform ``M = D S R D_inv``. The module holds hyperparameters only, no weights or state; the
    randomness comes from the generator passed to each call. The result is a linear map of ``x``, so
    autograd flows through it when ``x`` requires grad (it never needs to).

    Args:
        max_angle_deg: rotation angles ~ U(-a, a) degrees about each axis; in [0, 180].
        scale_range: (low, high) of the per-axis scale, 1 <= low <= high.
        invert_prob: probability that a scale is replaced by its inverse.
        mask_fraction: share of each lead's samples that ZeroMask zeroes, in [0, 1).
        transform: ``"dower"`` (3KG) or ``"kors"`` for the leads <-> VCG matrices (Kors goes back to leads
            by its pseudo-inverse, which loses much of a real ECG unless ``residual``; see
            :func:`ecgfast.reference.vcg_augment.transform_matrices`).
        residual: keep the non-dipolar content (``M = I + D (S R - I) D_inv``); 3KG does not.
        spatial: apply the VCG transform at all (False: ``M = I``).
        mask: apply ZeroMask.
        noise_std: Gaussian noise, mV (0: none).
        wander_mv: peak baseline wander, mV (0: none).
        fs: sampling rate in Hz, used by the wander only.
        out_dtype: dtype of the output (float32, or bfloat16 for a bf16 encoder).
        backend: None (default): the reference arithmetic. ``"auto"`` or a backend name (``"triton"``,
            ``"cuda"``, ``"cpp"``, ``"torch"``): the fused op :func:`ecgfast.ops.vcg_augment` wherever it
            applies (float16/bfloat16/float32 input, float32/bfloat16 output, no noise or wander, no grad
            needed through ``x``), the reference elsewhere. Same parameters from the same generator, so the
            same views up to float32 rounding; :meth:`views` then reads the input once per two views.

    Shapes: ``x`` (B, 8, T) mV, leads I, II, V1..V6 -> (B, 8, T).

    Example:
        >>> aug = ECGAugment()
        >>> x = torch.randn(16, 8, 2500)
        >>> out, params = aug(x, torch.Generator().manual_seed(0), return_params=True)
        >>> out.shape, int((out == 0).sum(-1).min())
        (torch.Size([16, 8, 2500]), 1250)
        >>> aug.views(x, torch.Generator().manual_seed(1)).shape
        torch.Size([2, 16, 8, 2500])

    Raises:
        ValueError: a hyperparameter out of range (in ``__init__``); ``x`` not (B, 8, T) floating.
    """

    def __init__(
        self,
        max_angle_deg: float = 45.0,
        scale_range: tuple[float, float] = (1.0, 1.5),
        invert_prob: float = 0.5,
        mask_fraction: float = 0.5,
        transform: str = "dower",
        residual: bool = False,
        spatial: bool = True,
        mask: bool = True,
        noise_std: float = 0.0,
        wander_mv: float = 0.0,
        fs: float = 500.0,
        out_dtype: torch.dtype = torch.float32,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        from ecgfast.ops.vcg_augment import BACKENDS  # lazy: ecgfast.ops.vcg_augment imports this module

        if backend is not None and backend != "auto" and backend not in BACKENDS:
            raise ValueError(f"backend must be None, 'auto' or one of {BACKENDS}, got {backend!r}")
        scale_range = tuple(float(s) for s in scale_range)
        _check_hyperparameters(max_angle_deg, scale_range, invert_prob, mask_fraction)
        if transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
        for name, flag in (("residual", residual), ("spatial", spatial), ("mask", mask)):
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be a bool, got {flag!r}")
        if noise_std < 0 or wander_mv < 0:
            raise ValueError(f"noise_std and wander_mv must be >= 0 mV, got {noise_std} and {wander_mv}")
        if fs <= 0:
            raise ValueError(f"fs must be > 0 Hz, got {fs}")
        if not out_dtype.is_floating_point:
            raise ValueError(f"out_dtype must be a floating dtype, got {out_dtype}")
        self.max_angle_deg = float(max_angle_deg)
        self.scale_range = scale_range
        self.invert_prob = float(invert_prob)
        self.mask_fraction = float(mask_fraction)
        self.transform = transform
        self.residual = residual
        self.spatial = spatial
        self.mask = mask
        self.noise_std = float(noise_std)
        self.wander_mv = float(wander_mv)
        self.fs = float(fs)
        self.out_dtype = out_dtype
        self.backend = backend

    def extra_repr(self) -> str:
        return (f"max_angle_deg={self.max_angle_deg}, scale_range={self.scale_range}, invert_prob={self.invert_prob}, "
                f"mask_fraction={self.mask_fraction}, transform={self.transform!r}, residual={self.residual}, "
                f"spatial={self.spatial}, mask={self.mask}, noise_std={self.noise_std}, wander_mv={self.wander_mv}")

    def sample(self, batch: int, n_samples: int, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> VCGAugmentParams:
        """Draw one view's parameters for ``batch`` ECGs of ``n_samples`` samples.

        The VCG and mask parameters are always drawn (then the noise, if any), whatever ``spatial`` and
        ``mask`` say, so switching a part off does not change the draws of the others. ``mask=False``
        gives ``mask_length = 0``. ``generator`` None: torch's global CPU generator.
        """
        g = _generator_or_default(generator)
        params = sample_vcg_params(batch, n_samples, g, device, self.max_angle_deg, self.scale_range,
                                   self.invert_prob, self.mask_fraction)
        if not self.mask:
            params.mask_length = 0
        if self.noise_std > 0:
            params.noise = gaussian_noise((batch, N_LEADS, n_samples), self.noise_std, g, device)
        if self.wander_mv > 0:
            wander = baseline_wander(batch, n_samples, self.fs, self.wander_mv, g, device)
            params.noise = wander if params.noise is None else params.noise + wander
        return params

    def matrices(self, params: VCGAugmentParams) -> torch.Tensor:
        """The (B, 8, 8) lead transforms of ``params`` under this module's settings (identity if not spatial)."""
        if not self.spatial:
            eye = torch.eye(N_LEADS, device=params.angles.device)
            return eye.expand(params.angles.shape[0], N_LEADS, N_LEADS)
        return lead_transform_matrices(params.angles, params.scales, self.transform, self.residual)

    def apply(self, x: torch.Tensor, params: VCGAugmentParams) -> torch.Tensor:
        """The deterministic part: augment ``x`` (B, 8, T) with given ``params`` -> (B, 8, T) ``out_dtype``."""
        self._check_input(x)
        backend = self._fused_backend(x, params.noise is not None)
        if backend is not None:
            return self._fused(x, [params], backend)[0]
        return vcg_augment_reference(x, self.matrices(params), params.mask_starts, params.mask_length,
                                     params.noise, out_dtype=self.out_dtype)

    def _fused_backend(self, x: torch.Tensor, noisy: bool) -> str | None:
        """The fused op's backend for this call, or None where only the reference applies."""
        needs_grad = x.requires_grad and torch.is_grad_enabled()
        if (self.backend is None or noisy or needs_grad or x.dtype not in (torch.float16, torch.bfloat16, torch.float32)
                or self.out_dtype not in (torch.float32, torch.bfloat16)):
            return None
        from ecgfast.ops.vcg_augment import default_backend

        return default_backend(x.device) if self.backend == "auto" else self.backend

    def _fused(self, x: torch.Tensor, params: list[VCGAugmentParams], backend: str) -> torch.Tensor:
        """Views of ``x`` for each of ``params`` (no noise, one mask length), two per fused call -> (V, B, 8, T)."""
        from ecgfast.ops.vcg_augment import vcg_augment

        outs = []
        for first in range(0, len(params), 2):
            chunk = params[first:first + 2]
            outs.append(vcg_augment(x, matrices=torch.stack([self.matrices(p) for p in chunk]),
                                    mask_starts=torch.stack([p.mask_starts for p in chunk]),
                                    mask_length=chunk[0].mask_length, out_dtype=self.out_dtype, backend=backend))
        return torch.cat(outs)

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None, return_params: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, VCGAugmentParams]:
        """Augment each ECG of ``x`` (B, 8, T) mV with its own random parameters -> (B, 8, T).

        With ``return_params`` also the :class:`VCGAugmentParams` used (on ``x.device``), so that
        ``self.apply(x, params)`` reproduces the output exactly.
        """
        self._check_input(x)
        params = self.sample(x.shape[0], x.shape[-1], generator, x.device)
        out = self.apply(x, params)
        return (out, params) if return_params else out

    def views(
        self, x: torch.Tensor, generator: torch.Generator | None = None, n_views: int = 2,
        return_params: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[VCGAugmentParams]]:
        """``n_views`` independently augmented copies of ``x`` (B, 8, T) -> (n_views, B, 8, T).

        View ``v`` uses the ``v``-th draw from ``generator``; with ``return_params`` also the list of
        parameters, one per view.
        """
        if n_views < 1:
            raise ValueError(f"n_views must be >= 1, got {n_views}")
        g = _generator_or_default(generator)
        self._check_input(x)
        backend = self._fused_backend(x, self.noise_std > 0 or self.wander_mv > 0)
        if backend is not None:  # the same draws as below, then one fused call per two views
            params = [self.sample(x.shape[0], x.shape[-1], g, x.device) for _ in range(n_views)]
            stacked = self._fused(x, params, backend)
            return (stacked, params) if return_params else stacked
        outs, params = [], []
        for _ in range(n_views):
            out, p = self.forward(x, g, return_params=True)
            outs.append(out)
            params.append(p)
        stacked = torch.stack(outs)
        return (stacked, params) if return_params else stacked

    @staticmethod
    def _check_input(x: torch.Tensor) -> None:
        if x.ndim != 3 or x.shape[1] != N_LEADS or not x.dtype.is_floating_point:
            raise ValueError(f"x must be a floating (B, {N_LEADS}, T) tensor in mV with leads {LEADS}, "
                             f"got {x.dtype} {tuple(x.shape)}")
