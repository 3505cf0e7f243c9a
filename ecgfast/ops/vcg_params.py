"""The random side of the 3KG augmentation: its hyperparameters and the parameters drawn from them (METHOD.md).

Per ECG and view (3KG): rotation angles about x, y, z ~ U(-45 deg, 45 deg); per-axis scales ~ U(1, 1.5), each
replaced by its inverse with probability 0.5; ZeroMask, one circular block of 50 % of the samples per lead from a
uniform start. Optional (ours, off by default): Gaussian noise, drawn inside the op from a counter-based stream.

Randomness is counter-based, never a stateful generator: every draw is a pure function of ``(seed, offset)``
(``offset`` counts calls, e.g. the training step), so a run resumes exactly, every DDP rank can take its own
offsets, and one seed gives the same views on every backend and device. The small parameters (6 floats and 8
ints per view and ECG) are drawn on the host CPU from a ``torch.Generator`` seeded with a hash of
``(seed, offset)``; the noise uses a second hash as its Philox key (:mod:`ecgfast.ops.vcg_op`).

This module imports no op: the op imports it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from ..reference.vcg_augment import N_LEADS, lead_transform_matrices
from .configs import VCGAugmentConfig

_M64 = (1 << 64) - 1
_M63 = (1 << 63) - 1


@dataclass(eq=False)
class VCGAugmentParams:
    """Everything random about one call of the op; with it the call is deterministic.

    Attributes:
        matrices: (V, B, 8, 8) float32 lead transforms ``M = D S R D_inv`` (or residual, Kors, identity).
        mask_starts: (V, B, 8) int64 ZeroMask block starts in [0, L) of the L-sample view.
        mask_length: samples zeroed per lead.
        noise_seed: the 63-bit Philox key of the noise.
        angles: (V, B, 3) radians about x, y, z (R = Rz @ Ry @ Rx); None for explicit matrices.
        scales: (V, B, 3) factors for X, Y, Z; None for explicit matrices.
    """

    matrices: torch.Tensor
    mask_starts: torch.Tensor
    mask_length: int
    noise_seed: int
    angles: torch.Tensor | None = None
    scales: torch.Tensor | None = None

    def to(self, device: torch.device | str | None) -> VCGAugmentParams:
        """The same parameters with their tensors on ``device``."""
        move = (lambda t: None if t is None else t.to(device))  # noqa: E731
        return replace(self, matrices=move(self.matrices), mask_starts=move(self.mask_starts),
                       angles=move(self.angles), scales=move(self.scales))


def mask_length_for(n_samples: int, mask_fraction: float) -> int:
    """Samples per lead that ZeroMask zeroes: ``round(mask_fraction * n_samples)`` (Python's round, half to even),
    at most ``n_samples - 1`` so that a lead always keeps a sample. 2500 samples at 0.5 -> 1250."""
    if n_samples < 1:
        return 0
    return min(round(mask_fraction * n_samples), n_samples - 1)


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def counter_seeds(seed: int, offset: int) -> tuple[int, int]:
    """(generator seed, noise seed) of the call ``(seed, offset)``: two independent 63-bit hashes.

    Raises:
        ValueError: ``offset < 0``.
    """
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    mixed = _splitmix64((_splitmix64(int(seed) & _M64) + int(offset)) & _M64)
    return mixed & _M63, _splitmix64(mixed ^ 0x6E6F697365) & _M63  # "noise"


def counter_generator(seed: int, offset: int, stream: int = 0) -> torch.Generator:
    """A CPU generator for call ``(seed, offset)``; ``stream`` > 0 gives further independent streams of the same
    call (e.g. the view windows of a training step, stream 1), never the augmentation's own (stream 0)."""
    gen_seed, _ = counter_seeds(seed, offset)
    return torch.Generator().manual_seed(gen_seed if stream == 0 else _splitmix64(gen_seed ^ stream) & _M63)


def sample_vcg_params(
    batch: int,
    n_samples: int,
    config: VCGAugmentConfig | None = None,
    seed: int = 0,
    offset: int = 0,
    n_views: int = 2,
    device: torch.device | str | None = None,
) -> VCGAugmentParams:
    """Draw the parameters of ``n_views`` views of ``batch`` ECGs of ``n_samples`` samples from ``(seed, offset)``.

    On a CPU generator from :func:`counter_generator`, view 0 first, each view in this order: angles (B, 3) ~
    U(-a, a) radians; scales (B, 3) ~ U(low, high), then each inverted with probability ``invert_prob``; mask
    starts (B, 8) uniform in [0, n_samples). Angles and scales are drawn whatever ``spatial`` says, so switching
    it off does not change the other draws; ``mask_fraction=0`` gives ``mask_length=0``.

    Returns:
        :class:`VCGAugmentParams` with (V, B, ...) tensors on ``device``.

    Raises:
        ValueError: ``batch < 0``, ``n_samples < 1``, ``n_views`` not 1 or 2, ``offset < 0``.

    Example:
        >>> p = sample_vcg_params(4, 2500, seed=1, offset=0)
        >>> p.matrices.shape, p.mask_starts.shape, p.mask_length
        (torch.Size([2, 4, 8, 8]), torch.Size([2, 4, 8]), 1250)
    """
    if batch < 0 or n_samples < 1:
        raise ValueError(f"need batch >= 0 and n_samples >= 1, got batch={batch}, n_samples={n_samples}")
    if n_views not in (1, 2):
        raise ValueError(f"n_views must be 1 or 2, got {n_views}")
    config = config or VCGAugmentConfig()
    g = counter_generator(seed, offset)
    _, noise_seed = counter_seeds(seed, offset)
    max_angle = math.radians(config.max_angle_deg)
    low, high = config.scale_range
    angles, scales, starts = [], [], []
    for _ in range(n_views):
        angles.append((2.0 * torch.rand(batch, 3, generator=g) - 1.0) * max_angle)
        s = low + (high - low) * torch.rand(batch, 3, generator=g)
        scales.append(torch.where(torch.rand(batch, 3, generator=g) < config.invert_prob, 1.0 / s, s))
        starts.append(torch.randint(0, n_samples, (batch, N_LEADS), generator=g))
    a, s = torch.stack(angles), torch.stack(scales)  # (V, B, 3)
    if config.spatial:
        matrices = lead_transform_matrices(a.flatten(0, 1), s.flatten(0, 1), config.transform, config.residual)
        matrices = matrices.view(n_views, batch, N_LEADS, N_LEADS)
    else:
        matrices = torch.eye(N_LEADS).expand(n_views, batch, N_LEADS, N_LEADS).contiguous()
    params = VCGAugmentParams(matrices, torch.stack(starts), mask_length_for(n_samples, config.mask_fraction),
                              noise_seed, a, s)
    return params.to(device)


__all__ = ["VCGAugmentConfig", "VCGAugmentParams", "counter_generator", "counter_seeds", "mask_length_for",
           "sample_vcg_params"]
