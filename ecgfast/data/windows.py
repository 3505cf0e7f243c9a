"""Where the encoder's segments come from in a stored record: only from its valid samples, never from padding.

The store keeps every record at a fixed length T and remembers how many of its samples are real
(``valid_length``; a shorter record is zero-padded). A segment of ``segment`` samples may start anywhere in
``[0, valid_length - segment]``. The rules, shared by pretraining and evaluation:

- A record shorter than one segment yields no segment: it is left out (and counted), never padded with zeros.
- :func:`segment_starts` (evaluation): S segments per record, S = T // segment. Where the record holds them
  all they are adjacent from 0 (the two halves of a 10 s ECG); where it is shorter they are spread evenly over
  its valid part and overlap, so no segment reaches into the padding.
- :func:`pair_starts` (pretraining): two views per record. ``intersegment``: two adjacent segments at a random
  position (the halves of a 10 s record, whose only position is 0), or, where the valid part is shorter than
  two segments, its first and last segment, which overlap. ``augment``: one random crop, used by both views.
"""

from __future__ import annotations

import numpy as np

PAIR_MODES = ("intersegment", "augment")


def usable(valid_length: np.ndarray, segment: int) -> np.ndarray:
    """(N,) bool: the records that hold at least one segment of valid samples."""
    return np.asarray(valid_length) >= segment


def segment_starts(valid_length: np.ndarray, n_segments: int, segment: int) -> np.ndarray:
    """(N, S) int64 first sample of each of ``n_segments`` segments of each record (module docstring).

    Raises:
        ValueError: a record shorter than one segment (leave those out first: :func:`usable`).
    """
    valid = np.asarray(valid_length, dtype=np.int64)
    if (valid < segment).any():
        raise ValueError(f"{int((valid < segment).sum())} record(s) hold fewer than {segment} valid samples: "
                         "leave them out (ecgfast.data.windows.usable)")
    adjacent = np.arange(n_segments, dtype=np.int64) * segment  # (S,)
    spread = np.rint(np.linspace(0.0, 1.0, n_segments) * (valid - segment)[:, None]).astype(np.int64)  # (N, S)
    return np.where((valid >= n_segments * segment)[:, None], adjacent[None, :], spread)


def pair_starts(valid_length: np.ndarray, segment: int, mode: str, rng: np.random.Generator) -> np.ndarray:
    """(2, N) int64 first sample of each record's two views (module docstring); ``rng`` draws the positions.

    Raises:
        ValueError: an unknown mode, or a record shorter than one segment.
    """
    if mode not in PAIR_MODES:
        raise ValueError(f"unknown view mode {mode!r}: expected one of {PAIR_MODES}")
    valid = np.asarray(valid_length, dtype=np.int64)
    if (valid < segment).any():
        raise ValueError(f"{int((valid < segment).sum())} record(s) hold fewer than {segment} valid samples: "
                         "leave them out (ecgfast.data.windows.usable)")
    if mode == "augment":
        crop = rng.integers(0, valid - segment + 1)  # (N,) one crop per record, inclusive of the last start
        return np.stack([crop, crop])
    two = valid >= 2 * segment
    first = np.where(two, rng.integers(0, np.maximum(valid - 2 * segment, 0) + 1), 0)
    second = np.where(two, first + segment, valid - segment)
    return np.stack([first, second])


__all__ = ["PAIR_MODES", "pair_starts", "segment_starts", "usable"]
