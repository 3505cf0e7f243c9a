"""The DALI input path: the same batches as the torch DataLoader path, the backend choice, bounded memory, errors.

DALI runs CPU-only pipelines, so everything here runs without a GPU; without DALI the DALI tests skip and the
fallback tests still run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ecgfast.data.dali_loader import DALIStoreLoader, dali_available
from ecgfast.data.loader import decode, make_input, make_loader
from ecgfast.data.sampler import PatientBatchSampler
from ecgfast.data.store import ECGStore

needs_dali = pytest.mark.skipif(not dali_available(), reason="NVIDIA DALI not installed (pip install ecgfast[dali])")
LEADS8 = ["I", "II", "V1", "V2", "V3", "V4", "V5", "V6"]


def write_store(root: Path, n: int, t: int, shard_size: int, seed: int = 0, fill: int | None = None) -> Path:
    """A store of n records (random int16, random gain and baseline, 1 to 5 ECGs per patient) written directly."""
    rng = np.random.default_rng(seed)
    (root / "shards").mkdir(parents=True)
    patients = np.repeat(np.arange(n), rng.integers(1, 6, n))[:n]
    gain = rng.uniform(100, 2000, n).astype(np.float32)
    baseline = rng.uniform(-40, 40, n).astype(np.float32)
    rows, shards = [], []
    for s, start in enumerate(range(0, n, shard_size)):
        m = min(shard_size, n - start)
        mm = np.lib.format.open_memmap(root / "shards" / f"{s:05d}.npy", "w+", np.int16, (m, 8, t))
        mm[:] = fill if fill is not None else rng.integers(-32768, 32767, (m, 8, t), dtype=np.int16)
        mm.flush()
        del mm
        shards.append({"file": f"shards/{s:05d}.npy", "n": m})
        rows += [{"record_id": f"r{i}", "source": "x", "patient_id": f"p{patients[i]}", "fs_source": 500.0,
                  "valid_length": t, "gain": float(gain[i]), "baseline": float(baseline[i]), "labels": "{}",
                  "meta": "{}", "split": "train", "checksum": "-", "shard": s, "row": i - start}
                 for i in range(start, start + m)]
    pd.DataFrame(rows).to_parquet(root / "manifest.parquet")
    (root / "store.json").write_text(json.dumps({
        "format": "ecgfast-store", "version": 1, "leads": LEADS8, "fs": 500.0, "n_samples": t, "n_records": n,
        "shards": shards}))
    return root


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> ECGStore:
    return ECGStore(write_store(tmp_path_factory.mktemp("dali") / "s", n=203, t=300, shard_size=64))


def codes(store: ECGStore) -> np.ndarray:
    return np.unique(store.patient_ids, return_inverse=True)[1]


def assert_same_batches(a: list[tuple[torch.Tensor, ...]], b: list[tuple[torch.Tensor, ...]]) -> None:
    assert len(a) == len(b) and len(a) > 0
    for x, y in zip(a, b, strict=True):
        for u, v in zip(x, y, strict=True):
            assert u.dtype == v.dtype and u.shape == v.shape
            assert torch.equal(u.cpu(), v.cpu())  # bit for bit


@needs_dali
def test_dali_and_torch_give_identical_batches_over_epochs(store):
    sampler = PatientBatchSampler(store.patient_ids, batch_size=16, k_per_patient=4, seed=7)
    torch_loader = make_loader(store, sampler, codes(store), workers=0)
    dali_loader = DALIStoreLoader(store, sampler, codes(store), device="cpu")
    dali_mv = DALIStoreLoader(store, sampler, codes(store), device="cpu", output="mv")
    plans = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        plan = list(sampler)
        ref, got, mv = list(torch_loader), list(dali_loader), list(dali_mv)
        assert_same_batches(ref, got)  # copies by default: a list of batches keeps every batch intact
        assert [b[3].tolist() for b in got] == plan  # the sampler's order, record = store row
        for (q, g, b0, *_), (x, g2, b2, *_) in zip(ref, mv, strict=True):
            assert x.dtype == torch.float32 and torch.equal(x, decode(q, g, b0))  # decoded in the pipeline
            assert torch.equal(g, g2) and torch.equal(b0, b2)
        np.testing.assert_array_equal(got[0][0].numpy(), store.read(plan[0]))
        plans.append(plan)
    assert plans[0] != plans[1] and len(plans[0]) == len(sampler) == 203 // 16


@needs_dali
def test_partial_last_batch_and_resume_point(store):
    batches = [list(range(i, min(i + 10, 47))) for i in range(0, 47, 10)]  # 10, 10, 10, 10, 7
    torch_loader = torch.utils.data.DataLoader(make_loader(store, batches, codes(store), workers=0).dataset,
                                               batch_sampler=batches, collate_fn=lambda b: b)
    got = list(DALIStoreLoader(store, batches, codes(store), device="cpu"))
    assert [len(b[0]) for b in got] == [10, 10, 10, 10, 7]
    assert_same_batches(list(torch_loader), got)

    sampler = PatientBatchSampler(store.patient_ids, batch_size=16, seed=3)
    sampler.set_epoch(1, start_batch=len(sampler) - 2)  # resuming near the end of epoch 1
    tail = list(DALIStoreLoader(store, sampler, codes(store), device="cpu"))
    assert_same_batches(list(make_loader(store, sampler, codes(store), workers=0)), tail)
    assert len(tail) == 2
    sampler.set_epoch(1, start_batch=len(sampler))  # nothing left of the epoch: an empty pass, not an error
    assert list(DALIStoreLoader(store, sampler, codes(store), device="cpu")) == []


@needs_dali
def test_ddp_ranks_get_disjoint_shares_of_one_plan(store):
    full = PatientBatchSampler(store.patient_ids, batch_size=8, seed=5, world_size=1)
    shares = [list(DALIStoreLoader(store, PatientBatchSampler(store.patient_ids, batch_size=8, seed=5, rank=r,
                                                               world_size=2), codes(store), device="cpu"))
              for r in range(2)]
    assert len(shares[0]) == len(shares[1])
    rows = [[b[3].tolist() for b in share] for share in shares]
    assert not {i for b in rows[0] for i in b} & {i for b in rows[1] for i in b}
    plan = list(full)[: 2 * len(shares[0])]
    assert rows[0] == plan[0::2] and rows[1] == plan[1::2]


@needs_dali
def test_without_copy_each_batch_is_right_while_it_is_current(store):
    """copy=False: DALI may refill its output tensors at the next step, so check each batch before asking for the
    next one, as the training loop uses them."""
    batches = [[0, 1, 2], [3, 4, 5], [6, 7]]
    for rows, (samples, gain, *_rest) in zip(batches, DALIStoreLoader(store, batches, codes(store), device="cpu",
                                                                      copy=False), strict=True):
        np.testing.assert_array_equal(samples.numpy(), store.read(rows))
        np.testing.assert_array_equal(gain.numpy(), store.gain[rows])


def test_backend_choice_falls_back_to_torch_without_dali(store, monkeypatch):
    sampler = PatientBatchSampler(store.patient_ids, batch_size=16, seed=0)
    assert isinstance(make_input(store, sampler, codes(store), device="cpu"), torch.utils.data.DataLoader)
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # import nvidia.dali now raises ImportError
    assert not dali_available()
    loader = make_input(store, sampler, codes(store), backend="auto", device="cuda", workers=0)
    assert isinstance(loader, torch.utils.data.DataLoader) and loader.pin_memory
    with pytest.raises(ImportError, match="pip install"):
        make_input(store, sampler, codes(store), backend="dali", device="cpu")
    batches = list(make_input(store, sampler, codes(store), backend="torch", device="cpu", workers=0))
    assert len(batches) == len(sampler) and batches[0][0].dtype == torch.int16


@needs_dali
def test_backend_choice_with_dali(store):
    sampler = PatientBatchSampler(store.patient_ids, batch_size=16, seed=0)
    assert isinstance(make_input(store, sampler, codes(store), backend="auto", device="cuda"), DALIStoreLoader)
    assert isinstance(make_input(store, sampler, codes(store), backend="dali", device="cpu"), DALIStoreLoader)


def test_bad_backend(store):
    sampler = PatientBatchSampler(store.patient_ids, batch_size=16, seed=0)
    with pytest.raises(ValueError, match="backend must be one of"):
        make_input(store, sampler, codes(store), backend="jax")


@needs_dali
@pytest.mark.parametrize("kwargs,match", [
    ({"output": "float16"}, "output must be one of"),
    ({"num_threads": 0}, "num_threads and prefetch"),
    ({"device": "meta"}, "CUDA device or the CPU"),
    ({"codes": np.zeros(5, np.int64)}, "patient_codes has shape"),
    ({"sampler": iter([[0, 1]])}, "batch_size"),
])
def test_bad_arguments(store, kwargs, match):
    sampler = kwargs.pop("sampler", [[0, 1]])
    patient_codes = kwargs.pop("codes", codes(store))
    with pytest.raises(ValueError, match=match):
        DALIStoreLoader(store, sampler, patient_codes, **kwargs)


@needs_dali
def test_a_batch_larger_than_the_sampler_says(store):
    class Liar(list):
        batch_size = 2

    with pytest.raises(ValueError, match="more than its batch_size 2"):
        list(DALIStoreLoader(store, Liar([[0, 1], [2, 3, 4]]), codes(store), device="cpu"))


@needs_dali
def test_iterating_a_big_store_keeps_memory_bounded(tmp_path):
    """Four epochs over a 320 MB store (1.3 GB read) through the DALI path: anonymous RSS rises by DALI's buffers
    (80 to 120 MB at batch 64 here, varying from epoch to epoch with the allocator), then stays in that band; it
    does not grow with what is read (file pages of the memmap are page cache the kernel can drop, not memory the
    process holds), nor with the pipeline built for each epoch."""
    root = write_store(tmp_path / "big", n=4000, t=5000, shard_size=1000, fill=7)  # 4 x 80 MB
    code = textwrap.dedent(f"""
        import numpy as np, torch
        from ecgfast.data.dali_loader import DALIStoreLoader
        from ecgfast.data.sampler import PatientBatchSampler
        from ecgfast.data.store import ECGStore
        import nvidia.dali.plugin.pytorch
        def rss_mb():
            line = [ln for ln in open("/proc/self/status") if ln.startswith("RssAnon:")][0]
            return int(line.split()[1]) / 1024
        before = rss_mb()
        store = ECGStore({str(root)!r})
        sampler = PatientBatchSampler(store.patient_ids, batch_size=64, k_per_patient=4, seed=0)
        codes = np.unique(store.patient_ids, return_inverse=True)[1]
        n, peaks = 0, []
        for epoch in range(4):
            sampler.set_epoch(epoch)
            peak = 0.0
            for samples, gain, baseline, record, patient in DALIStoreLoader(store, sampler, codes, device="cpu"):
                assert int(samples[0, 0, 0]) == 7
                n += len(record)
                peak = max(peak, rss_mb() - before)
            peaks.append(peak)
        print(n, *peaks)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    n, peaks = int(out[0]), [float(p) for p in out[1:]]
    assert n == 4 * (4000 // 64 * 64)
    assert max(peaks) < 220, f"reading a 320 MB store 4 times grew RSS by {max(peaks):.0f} MB (per epoch: {peaks})"
    # a leak of the store's reads (320 MB an epoch) or of each epoch's pipeline (~100 MB) would add up here
    assert max(peaks[2:]) < max(peaks[:2]) + 60, f"RSS kept growing over the epochs: {peaks} MB"
