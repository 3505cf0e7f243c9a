"""PatientBatchSampler: K ECGs per patient together, every ECG once per epoch, reproducible, DDP shares."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from ecgfast.data.sampler import PatientBatchSampler


def _pids(seed=0, n_patients=300):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 9, n_patients)  # 1 to 8 ECGs per patient
    return np.repeat([f"p{i}" for i in range(n_patients)], counts)


def test_every_record_at_most_once_and_k_together():
    pids = _pids()
    s = PatientBatchSampler(pids, batch_size=64, k_per_patient=4, seed=1)
    batches = list(s)
    assert len(batches) == len(s) == len(pids) // 64
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat)) and all(len(b) == 64 for b in batches)
    assert len(pids) - len(flat) < 64  # only the last partial batch is dropped
    # patients with >= 4 ECGs appear with 4 of them in some batch (chunks split across a batch border aside)
    together = sum(max(Counter(pids[b]).values()) >= 4 for b in batches)
    assert together == len(batches)
    per_batch = np.mean([len(b) - len(set(pids[b])) for b in batches])  # same-patient pairs exist
    assert per_batch > 20


def test_k1_is_plain_shuffling_and_patients_with_fewer_ecgs_are_kept():
    pids = np.array(["a"] * 1 + ["b"] * 2 + ["c"] * 9)
    s = PatientBatchSampler(pids, batch_size=3, k_per_patient=4, seed=0)
    flat = sorted(i for b in s for i in b)
    assert flat == list(range(12))
    s1 = PatientBatchSampler(pids, batch_size=3, k_per_patient=1, seed=0)
    assert sorted(i for b in s1 for i in b) == list(range(12))


def test_reproducible_and_epoch_dependent():
    pids = _pids()
    a = PatientBatchSampler(pids, 32, 4, seed=7)
    b = PatientBatchSampler(pids, 32, 4, seed=7)
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(a) != list(b)
    c = PatientBatchSampler(pids, 32, 4, seed=8)
    assert list(a) != list(c)


def test_resume_skips_batches():
    pids = _pids()
    s = PatientBatchSampler(pids, 32, 4, seed=3)
    s.set_epoch(2)
    full = list(s)
    s.set_epoch(2, start_batch=5)
    assert list(s) == full[5:]


def test_ddp_ranks_partition_the_global_plan():
    pids = _pids()
    ranks = [PatientBatchSampler(pids, 16, 4, seed=5, rank=r, world_size=3) for r in range(3)]
    per_rank = [list(r) for r in ranks]
    assert len({len(p) for p in per_rank}) == 1 and len(per_rank[0]) == len(ranks[0])  # equal step counts
    flat = [i for p in per_rank for b in p for i in b]
    assert len(flat) == len(set(flat))
    single = list(PatientBatchSampler(pids, 16, 4, seed=5))
    assert per_rank[1][0] == single[1] and per_rank[2][1] == single[5]


def test_indices_map_to_store_rows():
    pids = np.array(["x", "x", "y", "y"])
    s = PatientBatchSampler(pids, 2, 2, seed=0, indices=[10, 11, 20, 21])
    assert sorted(map(sorted, s)) == [[10, 11], [20, 21]]


@pytest.mark.parametrize("kw,match", [({"batch_size": 100}, "at least 100"), ({"k_per_patient": 0}, ">= 1"),
                                      ({"rank": 2, "world_size": 2}, "rank 2"),
                                      ({"batch_size": 40, "world_size": 2}, "80 records")])
def test_impossible_batches_are_refused(kw, match):
    args = {"batch_size": 8, "k_per_patient": 2, **kw}
    with pytest.raises(ValueError, match=match):
        PatientBatchSampler(np.array([f"p{i % 20}" for i in range(50)]), **args)
