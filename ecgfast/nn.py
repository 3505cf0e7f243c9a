"""Thin ``nn.Module`` wrappers of the fused ops of :mod:`ecgfast.ops`: they only hold hyperparameters.

- :class:`VCGAugment`: :func:`ecgfast.ops.vcg_augment` as a module.
- :class:`MultiPositiveContrastiveLoss`: the loss module of :mod:`ecgfast.loss` (the fused op, gathered across
  ranks under torch.distributed).
"""

import torch
from torch import nn

from ecgfast.loss import MultiPositiveContrastiveLoss
from ecgfast.ops.vcg_augment import OUT_DTYPES, TRANSFORMS, VCGAugmentDraw, vcg_augment

__all__ = ["MultiPositiveContrastiveLoss", "VCGAugment"]


class VCGAugment(nn.Module):
    """3KG views in one fused pass (:func:`ecgfast.ops.vcg_augment`): (B, 8, T) -> (V, B, 8, T).

    Holds hyperparameters only. Randomness comes from ``(seed, offset)``: pass ``offset`` (e.g. the training
    step) for reproducible runs; without it the module counts its calls and uses the count, so consecutive
    calls give new views. Views never require grad (see :mod:`ecgfast.ops.vcg_augment`).

    Args:
        n_views: 1 or 2 views per ECG (the input is read once for both).
        max_angle_deg, scale_range, invert_prob, mask_fraction: the 3KG distributions (45 deg, (1, 1.5),
            0.5, 0.5 in the paper).
        transform: "dower" or "kors"; residual: keep the non-dipolar content.
        noise_std: Gaussian noise in mV before the mask (0: none).
        out_dtype: torch.float32 or torch.bfloat16.
        backend: "triton", "cuda", "cpp", "torch" or None (the default for the device).
        seed: the seed of the parameter and noise streams.

    Shapes: ``x`` (B, 8, T) int16 with ``gain`` and ``baseline`` (B,), or float mV -> (V, B, 8, T).

    Example:
        >>> aug = VCGAugment(out_dtype=torch.bfloat16, backend="torch")
        >>> views = aug(torch.randn(4, 8, 2500), offset=0)
        >>> views.shape, views.dtype
        (torch.Size([2, 4, 8, 2500]), torch.bfloat16)

    Raises:
        ValueError: a hyperparameter out of range (here), or a bad input (in ``forward``).
    """

    def __init__(self, n_views: int = 2, max_angle_deg: float = 45.0, scale_range: tuple[float, float] = (1.0, 1.5),
                 invert_prob: float = 0.5, mask_fraction: float = 0.5, transform: str = "dower",
                 residual: bool = False, noise_std: float = 0.0, out_dtype: torch.dtype = torch.float32,
                 backend: str | None = None, seed: int = 0) -> None:
        super().__init__()
        from ecgfast.augment import _check_hyperparameters

        scale_range = tuple(float(s) for s in scale_range)
        _check_hyperparameters(max_angle_deg, scale_range, invert_prob, mask_fraction)
        if n_views not in (1, 2):
            raise ValueError(f"n_views must be 1 or 2, got {n_views}")
        if transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
        if not noise_std >= 0:
            raise ValueError(f"noise_std must be >= 0 mV, got {noise_std}")
        if out_dtype not in OUT_DTYPES:
            raise ValueError(f"out_dtype must be one of {OUT_DTYPES}, got {out_dtype}")
        self.n_views, self.max_angle_deg, self.scale_range = n_views, float(max_angle_deg), scale_range
        self.invert_prob, self.mask_fraction = float(invert_prob), float(mask_fraction)
        self.transform, self.residual, self.noise_std = transform, bool(residual), float(noise_std)
        self.out_dtype, self.backend, self.seed = out_dtype, backend, int(seed)
        self.calls = 0  # offset of the next call without an explicit one

    def extra_repr(self) -> str:
        return (f"n_views={self.n_views}, max_angle_deg={self.max_angle_deg}, scale_range={self.scale_range}, "
                f"invert_prob={self.invert_prob}, mask_fraction={self.mask_fraction}, transform={self.transform!r}, "
                f"residual={self.residual}, noise_std={self.noise_std}, out_dtype={self.out_dtype}, "
                f"backend={self.backend!r}, seed={self.seed}")

    def forward(self, x: torch.Tensor, gain: torch.Tensor | None = None, baseline: torch.Tensor | None = None,
                offset: int | None = None, return_params: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, VCGAugmentDraw]:
        """Views of ``x`` (B, 8, T) -> (V, B, 8, T); with ``return_params`` also the drawn parameters."""
        if offset is None:
            offset, self.calls = self.calls, self.calls + 1
        return vcg_augment(x, gain, baseline, seed=self.seed, offset=offset, n_views=self.n_views,
                           max_angle_deg=self.max_angle_deg, scale_range=self.scale_range,
                           invert_prob=self.invert_prob, mask_fraction=self.mask_fraction, transform=self.transform,
                           residual=self.residual, noise_std=self.noise_std, out_dtype=self.out_dtype,
                           backend=self.backend, return_params=return_params)
