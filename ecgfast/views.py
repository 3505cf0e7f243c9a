"""Views of a batch of ECGs for contrastive pretraining, and the group ids that make them positives.

Rows of the embedding matrix are laid out (view, ecg, stream): the dual-stream encoder turns each view
into two stream embeddings, which are interlead views of each other (METHOD.md). Every row carries the
ECG id (its store row: same ECG = positive, whichever segment, augmentation or lead group) and the
patient id (same patient = patient-aware positive).
"""

from __future__ import annotations

import torch


def intersegment_views(x: torch.Tensor, segment: int) -> torch.Tensor:
    """The two adjacent non-overlapping segments of each ECG: (B, 8, T) -> (2, B, 8, segment).

    Raises:
        ValueError: T < 2 * segment.
    """
    if x.shape[-1] < 2 * segment:
        raise ValueError(f"intersegment views need {2 * segment} samples per ECG, the store has {x.shape[-1]}")
    return torch.stack([x[..., :segment], x[..., segment:2 * segment]])


def random_crop(x: torch.Tensor, segment: int, generator: torch.Generator) -> torch.Tensor:
    """One random window of ``segment`` samples per ECG (start from ``generator``): (B, 8, T) -> (B, 8, segment)."""
    b, _, t = x.shape
    if t < segment:
        raise ValueError(f"a crop of {segment} samples needs at least that many, the store has {t}")
    starts = torch.randint(0, t - segment + 1, (b,), generator=generator).to(x.device)
    offsets = starts[:, None] + torch.arange(segment, device=x.device)[None, :]  # (B, segment)
    return torch.gather(x, 2, offsets[:, None, :].expand(-1, x.shape[1], -1))


def make_views(x: torch.Tensor, mode: str, segment: int, generator: torch.Generator) -> torch.Tensor:
    """(B, 8, T) ECGs -> (2, B, 8, segment) views before augmentation.

    ``intersegment``: the two halves (CMSC); ``augment``: the same random crop twice, so the two views
    differ only by their independent augmentations (3KG).
    """
    if mode == "intersegment":
        return intersegment_views(x, segment)
    if mode == "augment":
        crop = random_crop(x, segment, generator)
        return torch.stack([crop, crop])
    raise ValueError(f"unknown view mode {mode!r}")


def row_ids(ids: torch.Tensor, n_views: int, n_streams: int) -> torch.Tensor:
    """Per-ECG ids (B,) -> per-row ids (n_views * B * n_streams,) in (view, ecg, stream) order."""
    return ids.repeat(n_views).repeat_interleave(n_streams)
