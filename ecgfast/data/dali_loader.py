"""The DALI input path over the memory-mapped store: the same batches as the torch DataLoader path, read by DALI.

One pipeline per epoch::

    PatientBatchSampler (this rank's batches, from (seed, epoch))
      -> fn.external_source (batch mode, one call per batch): int16 rows gathered from the memory-mapped shards
         (ECGStore.read), each record's gain and baseline, its store row and patient code
      -> .gpu() where there is a GPU (a CPU pipeline otherwise)
      -> optionally decoded there to float32 mV: (q - baseline) / gain
      -> DALIGenericIterator -> (samples, gain, baseline, record, patient), the torch path's batch tuple

Why an external source and not a DALI reader with ``reader_name``: the patient-aware order (K ECGs of a patient
side by side, chunks shuffled from (seed, epoch)) is not one DALI's readers can produce, and the sampler already
slices the epoch's batches by DDP rank. So the sampler is the reader: the epoch ends when its iterator is exhausted
(the source raises StopIteration, and DALIGenericIterator ends the epoch), each rank gets the sampler's
``rank::world_size`` batches, and a last partial batch (from a sampler that yields one; PatientBatchSampler drops
it) comes out with its own, smaller batch size (``LastBatchPolicy.PARTIAL``: nothing padded, nothing repeated).
The pipeline draws no random numbers, so the batches follow from the sampler's seed alone.

A new pipeline is built at every ``iter()`` (a few ms), after the loop has called ``sampler.set_epoch``: DALI
prefetches, and a pipeline kept across epochs would read the next epoch's first batches before the loop chose
that epoch (or its resume point).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch

from .store import ECGStore

OUTPUTS = ("int16", "mv")


def dali_available() -> bool:
    """True where NVIDIA DALI and its PyTorch plugin import (``pip install ecgfast[dali]``)."""
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.plugin.pytorch  # noqa: F401
    except ImportError:
        return False
    return True


class _BatchSource:
    """The external source: one call per batch of the epoch, the five arrays of one batch, StopIteration at the end.

    Returns samples (B, 8, T) int16, gain (B,) float32, baseline (B,) float32, record (B,) int64 store rows,
    patient (B,) int64 patient codes. DALI copies them into its own buffers before the next call.
    """

    def __init__(self, store: ECGStore, patient_codes: np.ndarray, batches: Iterator[list[int]]):
        self.store, self.patient_codes, self.batches = store, patient_codes, batches

    def __call__(self) -> tuple[np.ndarray, ...]:
        idx = np.asarray(next(self.batches), dtype=np.int64)  # StopIteration here ends DALI's epoch
        return (self.store.read(idx), self.store.gain[idx], self.store.baseline[idx], idx, self.patient_codes[idx])


class DALIStoreLoader:
    """Iterable over the batches of ``sampler`` read from ``store`` by a DALI pipeline; one pass is one epoch.

    Yields tuples (samples, gain, baseline, record, patient): samples (B, 8, T) int16 (``output="int16"``, the torch
    path's tuple, decoded by the training step) or float32 mV decoded in the pipeline (``output="mv"``), gain (B,)
    float32 adc units per mV, baseline (B,) float32, record (B,) int64 store rows, patient (B,) int64 patient codes.
    All five are on ``device`` (the GPU the pipeline runs on, or the CPU).

    Args:
        store: the ECG store (memory-mapped; never loaded whole: only the rows of the batches in flight are read).
        sampler: an iterable of lists of store rows, one list per batch: a PatientBatchSampler (its ``batch_size``
            is the pipeline's largest batch; ``set_epoch`` is the caller's, as with a DataLoader), anything else
            with a ``batch_size``, or a sequence of batches.
        patient_codes: (N,) int64 patient code of every store row.
        device: where the batches go: a CUDA device runs the pipeline on that GPU; "cpu" (or None without CUDA)
            runs a CPU-only pipeline.
        output: "int16" (samples as stored) or "mv" (decoded to float32 millivolts in the pipeline).
        copy: clone every output. DALIGenericIterator refills the same tensors at each step, so a batch kept past
            the next one (a list of batches, a prefetch queue) must be copied; False only for a loop that is done
            with a batch when it asks for the next.
        num_threads: DALI CPU threads.
        prefetch: batches DALI prepares ahead.
        seed: the pipeline's seed (it draws no random numbers; set for completeness).

    Raises:
        ImportError: DALI is not installed (``pip install ecgfast[dali]``).
        ValueError: bad ``output``, ``num_threads`` or ``prefetch``, ``patient_codes`` of the wrong length, or a
            sampler without a usable ``batch_size``; at iteration, a batch larger than it.

    Example::

        sampler = PatientBatchSampler(store.patient_ids, 512, seed=0)
        for samples, gain, baseline, record, patient in DALIStoreLoader(store, sampler, codes, device="cuda"):
            x = decode(samples, gain, baseline)  # (512, 8, 5000) float32 mV on the GPU
    """

    def __init__(self, store: ECGStore, sampler: Iterable[list[int]], patient_codes: np.ndarray,
                 device: torch.device | str | None = None, output: str = "int16", copy: bool = True,
                 num_threads: int = 2, prefetch: int = 2, seed: int = 0):
        if not dali_available():
            raise ImportError("the DALI loader needs NVIDIA DALI: pip install 'ecgfast[dali]' "
                              "(nvidia-dali-cuda130), or use the torch loader (backend='torch')")
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        if num_threads < 1 or prefetch < 1:
            raise ValueError(f"num_threads and prefetch must be >= 1, got {num_threads}, {prefetch}")
        self.patient_codes = np.asarray(patient_codes, dtype=np.int64)
        if self.patient_codes.shape != (len(store),):
            raise ValueError(f"patient_codes has shape {self.patient_codes.shape}, the store {len(store)} records")
        batch_size = getattr(sampler, "batch_size", None)
        if batch_size is None and isinstance(sampler, Sequence):  # a list of batches: the largest bounds the pipeline
            batch_size = max((len(b) for b in sampler), default=1)
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"the sampler's batch_size must be an int >= 1, got {batch_size!r}")
        self.store, self.sampler, self.batch_size = store, sampler, int(batch_size)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be a CUDA device or the CPU, got {self.device}")
        self.output, self.copy, self.num_threads, self.prefetch, self.seed = output, copy, num_threads, prefetch, seed

    def __len__(self) -> int:
        """Batches per epoch (the sampler's length)."""
        return len(self.sampler)  # type: ignore[arg-type]

    def _device_id(self) -> int | None:
        if self.device.type == "cpu":
            return None
        return self.device.index if self.device.index is not None else torch.cuda.current_device()

    def _pipeline(self, source: _BatchSource):
        from nvidia.dali import fn, pipeline_def, types

        gpu = self.device.type == "cuda"
        output = self.output

        @pipeline_def(batch_size=self.batch_size, num_threads=self.num_threads, device_id=self._device_id(),
                      seed=self.seed, prefetch_queue_depth=self.prefetch)
        def store_pipeline():
            q, gain, baseline, record, patient = fn.external_source(
                source=source, num_outputs=5, batch=True, no_copy=False,
                dtype=[types.INT16, types.FLOAT, types.FLOAT, types.INT64, types.INT64])
            if gpu:  # int16 crosses the host-device link (2 bytes a sample); decoding happens on the GPU
                q, gain, baseline, record, patient = q.gpu(), gain.gpu(), baseline.gpu(), record.gpu(), patient.gpu()
            if output == "mv":  # per-record scalars broadcast over (8, T): the torch path's decode, bit for bit
                q = (fn.cast(q, dtype=types.FLOAT) - baseline) / gain
            return q, gain, baseline, record, patient

        return store_pipeline()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        batches = iter(self.sampler)  # after the caller's set_epoch: this epoch's batches, this rank's share
        first = next(batches, None)
        if first is None:  # an empty epoch: DALI cannot build a pipeline whose source is empty from the start
            return
        if len(first) > self.batch_size:
            raise ValueError(f"the sampler yielded a batch of {len(first)}, more than its batch_size {self.batch_size}")

        def chained() -> Iterator[list[int]]:
            yield first
            for b in batches:
                if len(b) > self.batch_size:
                    raise ValueError(f"the sampler yielded a batch of {len(b)}, more than its batch_size "
                                     f"{self.batch_size}")
                yield b

        names = ("samples", "gain", "baseline", "record", "patient")
        pipe = self._pipeline(_BatchSource(self.store, self.patient_codes, chained()))
        it = DALIGenericIterator(pipe, list(names), last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=False,
                                 prepare_first_batch=False)
        try:
            for out in it:
                batch = out[0]  # one pipeline per process: DDP ranks run their own
                yield tuple(batch[k].clone() if self.copy else batch[k] for k in names)
        finally:
            del it, pipe  # free the pipeline's buffers and threads now, not at the next garbage collection
