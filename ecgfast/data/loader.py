"""The torch DataLoader path over the memory-mapped store, and :func:`make_input`, which picks it or the DALI path.

Workers read whole batches (one sorted memmap gather per shard) and hand over int16 samples with each
record's gain and baseline; decoding to float millivolts happens on the training device, so 2 bytes a
sample cross the host-device link instead of 4. The DALI path (dali_loader.py) yields the same tuples.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from .sampler import PatientBatchSampler
from .store import ECGStore


class StoreBatchDataset(torch.utils.data.Dataset):
    """Map-style dataset over a store whose ``__getitems__`` reads a whole batch at once.

    A batch is a tuple of tensors: samples (B, 8, T) int16, gain (B,) float32, baseline (B,) float32,
    record (B,) int64 store row (the ECG id), patient (B,) int64 patient code (the patient id).
    """

    def __init__(self, store: ECGStore, patient_codes: np.ndarray):
        self.store = store
        self.patient_codes = np.asarray(patient_codes, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.store)

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, ...]:
        idx = np.asarray(indices, dtype=np.int64)
        return (torch.from_numpy(self.store.read(idx)), torch.from_numpy(self.store.gain[idx]),
                torch.from_numpy(self.store.baseline[idx]), torch.from_numpy(idx),
                torch.from_numpy(self.patient_codes[idx]))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        return tuple(t[0] for t in self.__getitems__([index]))


def _whole_batch(batch):
    return batch  # __getitems__ already returns the collated batch


def make_loader(store: ECGStore, sampler: PatientBatchSampler, patient_codes: np.ndarray, workers: int = 2,
                pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader yielding the batches of ``sampler`` from ``store``, prefetched by ``workers`` processes.

    The loader gets a generator of its own: each new iterator draws its workers' base seed from it, and drawing
    from torch's global generator instead would shift the dropout masks of the training step, so that a run
    resumed mid-epoch (its iterator made at another point) would no longer repeat the uninterrupted one.
    """
    return torch.utils.data.DataLoader(
        StoreBatchDataset(store, patient_codes), batch_sampler=sampler, collate_fn=_whole_batch,
        num_workers=workers, pin_memory=pin_memory, prefetch_factor=4 if workers > 0 else None,
        persistent_workers=False, generator=torch.Generator().manual_seed(0))


BACKENDS = ("auto", "dali", "torch")


def make_input(store: ECGStore, sampler: PatientBatchSampler, patient_codes: np.ndarray, backend: str = "auto",
               device: torch.device | str | None = None, workers: int = 2,
               pin_memory: bool | None = None) -> Iterable[tuple[torch.Tensor, ...]]:
    """The input path of training: an iterable over ``sampler``'s batches, one pass per epoch, either backend.

    Every batch is (samples (B, 8, T) int16, gain (B,) float32, baseline (B,) float32, record (B,) int64 store row,
    patient (B,) int64 patient code), the same values from either backend for the same sampler and seed. The
    torch path gives CPU tensors (pinned with CUDA); the DALI path gives them on ``device``.

    Args:
        backend: "dali" (DALI pipeline: on the GPU of ``device``, or CPU-only), "torch" (DataLoader with
            ``workers`` processes), or "auto": DALI where it is installed and ``device`` is a CUDA device, the
            torch DataLoader otherwise (no DALI, or no GPU: on the CPU the DataLoader's workers are the faster path).
        device: the training device (default: CUDA if available, else the CPU).
        workers: DataLoader worker processes (torch path).
        pin_memory: pin the torch path's batches (default: when ``device`` is CUDA).

    Raises:
        ValueError: an unknown backend.
        ImportError: backend="dali" without DALI installed.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
    if backend == "auto":
        from .dali_loader import dali_available

        backend = "dali" if device.type == "cuda" and dali_available() else "torch"
    if backend == "dali":
        from .dali_loader import DALIStoreLoader

        return DALIStoreLoader(store, sampler, patient_codes, device=device, output="int16")
    return make_loader(store, sampler, patient_codes, workers=workers,
                       pin_memory=device.type == "cuda" if pin_memory is None else pin_memory)


def decode(samples: torch.Tensor, gain: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
    """int16 (B, 8, T) -> float32 millivolts on the samples' device: (q - baseline) / gain."""
    return (samples.float() - baseline[:, None, None]) / gain[:, None, None]
