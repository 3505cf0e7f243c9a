"""The hyperparameters of ecgfast's fused ops: one frozen dataclass per op, validated where it is made.

The op's functional, its module (:mod:`ecgfast.nn`), the training config (:mod:`ecgfast.pretrain.config`) and the
tests all use these classes. This module imports nothing heavy (no torch), so that a CLI can build its ``--help``
from them at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

TRANSFORMS: tuple[str, ...] = ("dower", "kors")  # as ecgfast.reference.vcg_augment.TRANSFORMS (a test checks)
REDUCTIONS: tuple[str, ...] = ("mean", "sum", "none")  # as ecgfast.reference.contrastive_loss.REDUCTIONS


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _weight_tuple(weights: object) -> tuple[float, ...]:
    """Per-kind loss weights as a tuple of floats: a 1-D sequence (or tensor) of finite numbers >= 0."""
    values = weights.tolist() if hasattr(weights, "tolist") else weights
    if not isinstance(values, Sequence) or isinstance(values, str) or not values:
        raise ValueError(f"weights must be a non-empty 1-D sequence, one weight per id vector, got {weights!r}")
    if not all(_number(w) for w in values):
        raise ValueError(f"weights must be a 1-D sequence of numbers, one weight per id vector, got {values!r}")
    if not all(math.isfinite(w) and w >= 0 for w in values):
        raise ValueError(f"weights must be finite and >= 0, got {list(values)}")
    return tuple(float(w) for w in values)


@dataclass(frozen=True)
class VCGAugmentConfig:
    """Hyperparameters of the VCG augmentation: the module, the training config and the tests use this one class.

    Raises:
        ValueError: a value out of range, named (in ``__post_init__``).
    """

    max_angle_deg: float = 45.0  # rotation angles ~ U(-a, a) degrees about each of x, y, z; in [0, 180]
    scale_range: tuple[float, float] = (1.0, 1.5)  # per-axis scale ~ U(low, high), 1 <= low <= high
    invert_prob: float = 0.5  # probability that a drawn scale is replaced by its inverse
    mask_fraction: float = 0.5  # ZeroMask: this share of each lead's samples zeroed, one wrapped block; in [0, 1)
    transform: str = "dower"  # leads <-> VCG matrices: "dower" (3KG) or "kors"
    residual: bool = False  # keep non-dipolar content: x + D (S R - I) D_inv x instead of D S R D_inv x
    spatial: bool = True  # apply the VCG rotation and scaling at all (False: identity matrices, for ablations)
    noise_std: float = 0.0  # Gaussian noise in mV, added before the mask (0: none)

    def __post_init__(self) -> None:
        scales = self.scale_range
        if not isinstance(scales, Sequence) or not all(_number(s) for s in scales):
            raise ValueError(f"scale_range must be (low, high) with 1 <= low <= high, got {scales!r}")
        object.__setattr__(self, "scale_range", tuple(float(s) for s in scales))
        if not (_number(self.max_angle_deg) and 0.0 <= self.max_angle_deg <= 180.0):
            raise ValueError(f"max_angle_deg must be in [0, 180], got {self.max_angle_deg!r}")
        low_high = self.scale_range
        if len(low_high) != 2 or not 1.0 <= low_high[0] <= low_high[1] < math.inf:
            raise ValueError(f"scale_range must be (low, high) with 1 <= low <= high, got {self.scale_range}")
        if not (_number(self.invert_prob) and 0.0 <= self.invert_prob <= 1.0):
            raise ValueError(f"invert_prob must be in [0, 1], got {self.invert_prob!r}")
        if not (_number(self.mask_fraction) and 0.0 <= self.mask_fraction < 1.0):
            raise ValueError(f"mask_fraction must be in [0, 1), got {self.mask_fraction!r}")
        if self.transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {TRANSFORMS}, got {self.transform!r}")
        for name in ("residual", "spatial"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if not (_number(self.noise_std) and 0.0 <= self.noise_std < math.inf):
            raise ValueError(f"noise_std must be a finite number >= 0 mV, got {self.noise_std!r}")

    def with_overrides(self, **overrides: object) -> VCGAugmentConfig:
        """A copy with some fields replaced (validated again); no overrides: ``self``.

        Raises:
            ValueError: a name that is not a field (named), or a value out of range.
        """
        unknown = sorted(set(overrides) - set(self.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown VCG augmentation hyperparameter(s) {unknown}; the fields are "
                             f"{sorted(self.__dataclass_fields__)}")
        return replace(self, **overrides) if overrides else self


#: Precisions of the loss's similarity products (ecgfast.ops.multi_positive_contrastive_loss's precision contract).
LOSS_PRECISIONS: tuple[str, ...] = ("bf16", "fp16", "tf32", "fp32")


@dataclass(frozen=True)
class ContrastiveLossConfig:
    """Hyperparameters of the multi-positive contrastive loss: the module, the training config and the tests use
    this one class.

    Raises:
        ValueError: a value out of range, named (in ``__post_init__``).
    """

    temperature: float = 0.1  # tau in [0.01, 100]: similarities are cos / tau (METHOD.md: 0.1)
    weights: tuple[float, ...] | None = None  # per id-kind weights lambda_k >= 0, one per id vector (None: all 1)
    # (a list or tensor is accepted and stored as a tuple)
    normalize: bool = True  # L2-normalise the embeddings first (False when the model already did)
    reduction: str = "mean"  # "mean" over rows with positives, "sum", or "none" (per row)
    gather: bool = True  # under torch.distributed: score local rows against every rank's rows
    precision: str | None = None  # similarity products: bf16 (tensor cores), fp16, tf32, fp32; unset: z's own

    def __post_init__(self) -> None:
        t = self.temperature
        # below 0.01 a logit cos / tau exceeds 100 and the bf16 products' rounding (2^-9 of cos) moves it by more
        # than 0.2: the loss's precision contract no longer holds; above 100 every pair looks alike
        if not _number(t) or not 0.01 <= t <= 100:
            raise ValueError(f"temperature must be a number in [0.01, 100], got {t!r}")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {self.reduction!r}")
        for name in ("normalize", "gather"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.precision is not None and self.precision not in LOSS_PRECISIONS:
            raise ValueError(f"precision must be one of {LOSS_PRECISIONS} or unset, got {self.precision!r}")
        if self.weights is not None:
            object.__setattr__(self, "weights", _weight_tuple(self.weights))

    def weights_for(self, kinds: int) -> tuple[float, ...]:
        """The weight of each of ``kinds`` id vectors (all 1 when unset).

        Raises:
            ValueError: a weight count other than ``kinds``.
        """
        if self.weights is None:
            return (1.0,) * kinds
        if len(self.weights) != kinds:
            raise ValueError(f"got {len(self.weights)} weights for {kinds} group-id vectors: give one weight per id "
                             "vector")
        return self.weights


__all__ = ["ContrastiveLossConfig", "LOSS_PRECISIONS", "REDUCTIONS", "TRANSFORMS", "VCGAugmentConfig"]
