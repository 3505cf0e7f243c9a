"""Patient-aware batches: K ECGs of a patient side by side, so patient-level positives meet in a batch.

In a random batch from a large corpus, two ECGs of one patient almost never meet (METHOD.md), and the
patient-aware term of the loss has nothing to work on. Each epoch this sampler:

1. shuffles every patient's ECGs and cuts them into chunks of at most K (a patient with fewer than K
   ECGs gives one smaller chunk; one with 7 and K=4 gives chunks of 4 and 3);
2. shuffles the chunks and packs them into batches of exactly ``batch_size`` records (a chunk that does
   not fit is continued in the next batch);
3. drops the last partial batch and gives rank r of W every W-th batch.

So every ECG is seen once per epoch, the batches are identical on every rank's copy of the plan (each
rank takes its own), and everything follows from (seed, epoch): the same seed gives the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np


class PatientBatchSampler:
    """Yields lists of record indices (into ``patient_ids``), ``batch_size`` per batch, per rank.

    Args:
        patient_ids: (N,) patient id of each record that may be sampled (e.g. the train split's).
        batch_size: records per batch on each rank.
        k_per_patient: ECGs of one patient kept together (1 disables patient-aware grouping).
        seed: base seed; the epoch is mixed in by :meth:`set_epoch`.
        rank, world_size: this process's share under DDP.
        indices: record indices to yield instead of 0..N-1 (e.g. store rows of the train split).

    Raises:
        ValueError: an impossible batch (batch larger than the records available to one rank, K < 1...).
    """

    def __init__(self, patient_ids: Sequence[str] | np.ndarray, batch_size: int, k_per_patient: int = 4,
                 seed: int = 0, rank: int = 0, world_size: int = 1, indices: Sequence[int] | None = None):
        patient_ids = np.asarray(patient_ids)
        if batch_size < 1 or k_per_patient < 1:
            raise ValueError(f"batch_size and k_per_patient must be >= 1, got {batch_size}, {k_per_patient}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        n = len(patient_ids)
        if batch_size * world_size > n:
            raise ValueError(f"a batch of {batch_size} records on each of {world_size} rank(s) needs at least "
                             f"{batch_size * world_size} records; only {n} are available")
        self.indices = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64)
        if len(self.indices) != n:
            raise ValueError(f"indices has {len(self.indices)} entries, patient_ids {n}")
        _, self._patient_code = np.unique(patient_ids, return_inverse=True)
        # records of each patient, as positions into patient_ids: one array per patient
        order = np.argsort(self._patient_code, kind="stable")
        bounds = np.flatnonzero(np.diff(self._patient_code[order])) + 1
        self._by_patient = np.split(order, bounds)
        self.batch_size, self.k, self.seed = batch_size, k_per_patient, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Choose the epoch (changes the shuffle) and skip its first ``start_batch`` batches (for resuming)."""
        self.epoch, self.start_batch = epoch, start_batch

    def _global_batches(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        chunks = []
        for recs in self._by_patient:
            recs = rng.permutation(recs)
            chunks.extend(recs[i:i + self.k] for i in range(0, len(recs), self.k))
        order = rng.permutation(len(chunks))
        flat = np.concatenate([chunks[i] for i in order])
        n_batches = len(flat) // self.batch_size // self.world_size * self.world_size
        return flat[: n_batches * self.batch_size].reshape(n_batches, self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._global_batches()[self.rank::self.world_size]
        for b in batches[self.start_batch:]:
            yield self.indices[b].tolist()

    def __len__(self) -> int:
        """Batches per epoch on this rank (before skipping ``start_batch``)."""
        return len(self._patient_code) // self.batch_size // self.world_size
