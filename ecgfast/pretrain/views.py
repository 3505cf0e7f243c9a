"""The views of one pretraining batch, and the group ids that make them positives (METHOD.md "Views and positives").

One call of the fused augmentation op per batch: the loader's int16 samples with their gain and baseline go in,
and both views of every ECG come out cropped (from the valid part of the record only,
:mod:`ecgfast.data.windows`), decoded to mV, rotated and scaled through the VCG, masked, noised, in the encoder's
dtype. Everything random is a function of ``(seed, offset)``; the training loop passes the batch counter as the
offset, so a resumed run draws what the uninterrupted one drew.

Rows of the embedding matrix are laid out (view, ecg, stream): the dual-stream encoder turns each view into two
stream embeddings, which are interlead views of each other. Every row carries the ECG id (its store row: same ECG
= positive, whichever segment, augmentation or lead group) and the patient id (patient-aware positive).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..data.windows import pair_starts
from ..ops.configs import VCGAugmentConfig
from ..ops.vcg_op import vcg_augment
from ..ops.vcg_params import VCGAugmentParams

N_VIEWS = 2


def view_windows(valid_length: np.ndarray, segment: int, mode: str, seed: int, offset: int) -> torch.Tensor:
    """First sample of each ECG's views: (B,) for ``augment`` (one crop for both views), (2, B) for
    ``intersegment``, drawn from ``(seed, offset)`` (:func:`ecgfast.data.windows.pair_starts`)."""
    starts = pair_starts(valid_length, segment, mode, np.random.default_rng([seed, offset, 0x76696577]))  # "view"
    return torch.from_numpy(starts[0] if mode == "augment" else starts)


def make_views(samples: torch.Tensor, gain: torch.Tensor | None, baseline: torch.Tensor | None,
               valid_length: np.ndarray, segment: int, mode: str, augment: VCGAugmentConfig, seed: int, offset: int,
               out_dtype: torch.dtype = torch.float32, backend: str | None = None,
               return_params: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, VCGAugmentParams]:
    """(B, 8, T) store samples -> (2, B, 8, segment) augmented views, in one fused call.

    Args:
        samples: int16 with ``gain`` and ``baseline`` (B,), or float mV (then both None).
        valid_length: (B,) valid samples of each record (all >= ``segment``).
        segment: samples per view.
        mode: ``"intersegment"`` or ``"augment"``.
        augment: the augmentation's hyperparameters.
        seed, offset: the randomness of this batch (windows and augmentation).
        out_dtype: float32, or bfloat16 for a bf16 encoder.
        backend: the op's backend (None: the default for the device).
        return_params: also return the windows and the augmentation parameters.
    """
    windows = view_windows(valid_length, segment, mode, seed, offset)
    out = vcg_augment(samples, gain, baseline, seed=seed, offset=offset, n_views=N_VIEWS, windows=windows,
                      length=segment, config=augment, out_dtype=out_dtype, backend=backend,
                      return_params=return_params)
    if not return_params:
        return out
    views, params = out
    return views, windows, params


def row_ids(ids: torch.Tensor, n_views: int, n_streams: int) -> torch.Tensor:
    """Per-ECG ids (B,) -> per-row ids (n_views * B * n_streams,) in (view, ecg, stream) order."""
    return ids.repeat(n_views).repeat_interleave(n_streams)


def embedding_loss(loss_fn: Callable[..., torch.Tensor], z: torch.Tensor, ecg_ids: torch.Tensor,
                   patient_ids: torch.Tensor) -> torch.Tensor:
    """The contrastive loss of one step's embeddings: ``z`` (2B, streams, proj_dim) or (2, B, streams, proj_dim),
    views first, as float32 rows (view, ecg, stream), each with its ECG and patient id (``ecg_ids``, ``patient_ids``
    (B,)): ``loss_fn(rows, ecg_row_ids, patient_row_ids)``."""
    n_streams = z.shape[-2]
    rows = z.float().reshape(-1, z.shape[-1])  # (2 * B * streams, proj_dim)
    return loss_fn(rows, row_ids(ecg_ids, N_VIEWS, n_streams), row_ids(patient_ids, N_VIEWS, n_streams))


__all__ = ["N_VIEWS", "embedding_loss", "make_views", "row_ids", "view_windows"]
