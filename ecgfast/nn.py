"""Thin ``nn.Module`` wrappers of the fused ops of :mod:`ecgfast.ops`: each holds its op's config, nothing else.

- :class:`VCGAugment`: :func:`ecgfast.ops.vcg_augment` as a module (a call counter as its default offset).
- :class:`MultiPositiveContrastiveLoss`: :func:`ecgfast.ops.multi_positive_contrastive_loss` as a module (gathered
  across ranks under torch.distributed).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .ops.contrastive_loss import ContrastiveLossConfig, multi_positive_contrastive_loss
from .ops.vcg_op import OUT_DTYPES, vcg_augment
from .ops.vcg_params import VCGAugmentConfig, VCGAugmentParams

__all__ = ["MultiPositiveContrastiveLoss", "VCGAugment"]


class VCGAugment(nn.Module):
    """3KG views in one fused pass (:func:`ecgfast.ops.vcg_augment`): (B, 8, T) -> (V, B, 8, L).

    Holds hyperparameters only. Randomness comes from ``(seed, offset)``: pass ``offset`` (e.g. the training step)
    for reproducible runs; without it the module counts its calls and uses the count, so consecutive calls give
    new views. Views never require grad (see :mod:`ecgfast.ops.vcg_op`).

    Args:
        config: the hyperparameters (:class:`~ecgfast.ops.vcg_params.VCGAugmentConfig`; default the paper's:
            45 deg, scales (1, 1.5) inverted with probability 0.5, ZeroMask of 50 %).
        n_views: 1 or 2 views per ECG.
        out_dtype: torch.float32 or torch.bfloat16.
        backend: "triton", "cuda", "cpp", "torch" or None (the default for the device).
        seed: the seed of the parameter and noise streams.
        **hyperparameters: fields of the config to override (``max_angle_deg=30``, ``noise_std=0.05``...).

    Shapes: ``x`` (B, 8, T) int16 with ``gain`` and ``baseline`` (B,), or float mV; optional ``windows`` (B,) or
    (V, B) with ``length`` L -> (V, B, 8, L) (L = T without windows).

    Example:
        >>> aug = VCGAugment(out_dtype=torch.bfloat16, backend="torch")
        >>> views = aug(torch.randn(4, 8, 2500), offset=0)
        >>> views.shape, views.dtype
        (torch.Size([2, 4, 8, 2500]), torch.bfloat16)

    Raises:
        ValueError: a hyperparameter out of range (here), or a bad input (in ``forward``).
    """

    def __init__(self, config: VCGAugmentConfig | None = None, n_views: int = 2,
                 out_dtype: torch.dtype = torch.float32, backend: str | None = None, seed: int = 0,
                 **hyperparameters: object) -> None:
        super().__init__()
        self.config = (config or VCGAugmentConfig()).with_overrides(**hyperparameters)
        if n_views not in (1, 2):
            raise ValueError(f"n_views must be 1 or 2, got {n_views}")
        if out_dtype not in OUT_DTYPES:
            raise ValueError(f"out_dtype must be one of {OUT_DTYPES}, got {out_dtype}")
        self.n_views, self.out_dtype, self.backend, self.seed = n_views, out_dtype, backend, int(seed)
        self.calls = 0  # offset of the next call without an explicit one

    def extra_repr(self) -> str:
        return (f"{self.config}, n_views={self.n_views}, out_dtype={self.out_dtype}, backend={self.backend!r}, "
                f"seed={self.seed}")

    def forward(self, x: torch.Tensor, gain: torch.Tensor | None = None, baseline: torch.Tensor | None = None,
                offset: int | None = None, windows: torch.Tensor | None = None, length: int | None = None,
                return_params: bool = False) -> torch.Tensor | tuple[torch.Tensor, VCGAugmentParams]:
        """Views of ``x`` (B, 8, T) -> (V, B, 8, L); with ``return_params`` also the drawn parameters."""
        if offset is None:
            offset, self.calls = self.calls, self.calls + 1
        return vcg_augment(x, gain, baseline, seed=self.seed, offset=offset, n_views=self.n_views, windows=windows,
                           length=length, config=self.config, out_dtype=self.out_dtype, backend=self.backend,
                           return_params=return_params)


class MultiPositiveContrastiveLoss(nn.Module):
    """Multi-positive contrastive (SupCon) loss with positives from one or more group-id vectors.

    Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020, in the form METHOD.md "Loss" gives for ECG
    pretraining (views of one ECG and ECGs of one patient as positives, CLOCS / PCLR). For N embeddings,
    ``s_ij = cos(z_i, z_j) / tau``, ``w_ij = sum_k lambda_k [g_k[i] == g_k[j]]`` (j != i) and
    ``loss_i = logsumexp_{a != i} s_ia - sum_j w_ij s_ij / sum_j w_ij``; averaged over rows that have a positive.
    Weights add up over kinds: with nested ids (ECG within patient) a same-ECG pair weighs
    ``lambda_ecg + lambda_patient``; pass only the patient ids for the plain union. Rows without positives
    contribute 0 and are not counted in the mean. ``view_ids`` restricts negatives and positives to other views
    (with two views this is CLOCS' symmetric per-view-pair loss). Under torch.distributed the local rows are
    scored against all ranks' rows (:func:`ecgfast.ops.multi_positive_contrastive_loss`).

    Shapes: ``z`` (N, d) any float dtype; each group-id vector (N,) integer; ``view_ids`` (N,) integer; output a
    float32 scalar (float64 for float64 ``z``), or (N,) with ``reduction="none"``.

    Args:
        temperature, weights, normalize, reduction, gather: the fields of
            :class:`~ecgfast.ops.contrastive_loss.ContrastiveLossConfig` (tau 0.1 in METHOD.md; weights one per id
            vector passed to ``forward``, None: all 1).
        config: the same as one config object (then leave the fields above at their defaults).
        backend: the fused op's backend, ``"triton"``, ``"cpp"``, ``"torch"`` or None (the default).

    Raises:
        ValueError: temperature <= 0 or not finite, unknown reduction, a negative or non-finite weight (here);
            a weight count that differs from the number of id vectors, bad shapes or dtypes (in ``forward``).

    Example:
        >>> loss_fn = MultiPositiveContrastiveLoss(temperature=0.1, weights=(1.0, 1.0))
        >>> z = torch.randn(8, 128)  # rows: (view, ECG): 2 views of 4 ECGs of 3 patients
        >>> ecg_ids = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
        >>> patient_ids = torch.tensor([7, 7, 8, 9, 7, 7, 8, 9])
        >>> loss = loss_fn(z, ecg_ids, patient_ids)
        >>> loss.shape
        torch.Size([])
    """

    def __init__(self, temperature: float = 0.1, weights: Sequence[float] | None = None, normalize: bool = True,
                 reduction: str = "mean", gather: bool = True, backend: str | None = None,
                 config: ContrastiveLossConfig | None = None) -> None:
        super().__init__()
        self.config = config or ContrastiveLossConfig(temperature, weights, normalize, reduction, gather)
        self.backend = backend

    def forward(self, z: torch.Tensor, *group_ids: torch.Tensor, view_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Loss of embeddings ``z`` (N, d) with positives from the id vectors ``group_ids`` (each (N,))."""
        c = self.config
        ids: Sequence[torch.Tensor] | torch.Tensor = group_ids[0] if len(group_ids) == 1 else group_ids
        return multi_positive_contrastive_loss(z, ids, c.temperature, c.weights, view_ids, c.normalize, c.reduction,
                                               gather=c.gather, precision=c.precision, backend=self.backend)

    def extra_repr(self) -> str:
        return f"{self.config}, backend={self.backend!r}"
