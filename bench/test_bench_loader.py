"""The input path: loader throughput (ECGs/s) of the torch and DALI paths vs a peer-style WFDB loader, and the share
of a training step spent waiting for data.

Run: ``pytest bench/test_bench_loader.py --benchmark-only`` (or ``python bench/run_all.py bench/test_bench_loader.py``).
Sizes: batches of ``ECGFAST_BENCH_LOADER_BATCH`` (default 512) ECGs of 8 leads x 5000 samples from a synthetic
int16 store of ``ECGFAST_BENCH_LOADER_BATCHES`` (default 8) batches written by the benchmark. The step profile uses
the model and batch of bench/test_bench_train.py: ``ECGFAST_BENCH_MODEL`` (tiny) and ``ECGFAST_BENCH_BATCH`` (16);
on a GPU machine set ``ECGFAST_BENCH_MODEL=paper ECGFAST_BENCH_BATCH=512`` for the paper's step (the issue's goal:
under 5 % waiting). Every benchmark puts its rate in ``extra_info``; compare rates measured in the same run.

What each loader delivers per batch: float32 mV of (B, 8, 5000). Ours decode int16 -> mV (the torch path after the
DataLoader, as the training step does; DALI inside its pipeline) and leave augmentation to the device (fused VCG op
in the step); the peer-style loader reads one WFDB record per sample and augments it with NumPy in its workers.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import wfdb
from pretrain_step import make_pretrain_step

from ecgfast import LEADS
from ecgfast.data.dali_loader import DALIStoreLoader, dali_available
from ecgfast.data.loader import decode, make_input, make_loader
from ecgfast.data.readers.wfdb_record import find_headers
from ecgfast.data.sampler import PatientBatchSampler
from ecgfast.data.store import ECGStore
from ecgfast.reference.vcg_augment import DOWER, INV_DOWER

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BATCH = int(os.environ.get("ECGFAST_BENCH_LOADER_BATCH", "512"))
N_BATCHES = int(os.environ.get("ECGFAST_BENCH_LOADER_BATCHES", "8"))
WORKERS = int(os.environ.get("ECGFAST_BENCH_WORKERS", str(min(8, len(os.sched_getaffinity(0))))))
PEER_RECORDS = int(os.environ.get("ECGFAST_BENCH_PEER_RECORDS", "256"))  # per round: WFDB reads are slow
STEP_MODEL = os.environ.get("ECGFAST_BENCH_MODEL", "tiny")
STEP_BATCH = int(os.environ.get("ECGFAST_BENCH_BATCH", "16"))
T = 5000
needs_dali = pytest.mark.skipif(not dali_available(), reason="NVIDIA DALI not installed (pip install ecgfast[dali])")


def write_bench_store(root: Path, n: int, t: int = T, ecgs_per_patient: int = 2) -> ECGStore:
    """A one-shard store of n records (noise-like int16, per-record gain and baseline), written in seconds."""
    (root / "shards").mkdir(parents=True)
    rng = np.random.default_rng(0)
    block = rng.integers(-3000, 3000, (64, 8, t), dtype=np.int16)
    mm = np.lib.format.open_memmap(root / "shards" / "00000.npy", "w+", np.int16, (n, 8, t))
    for i in range(0, n, 64):
        mm[i:i + 64] = block[: min(64, n - i)]
    mm.flush()
    del mm
    gain, baseline = rng.uniform(200, 1000, n), rng.uniform(-20, 20, n)
    pd.DataFrame({"record_id": [f"r{i}" for i in range(n)], "source": "bench",
                  "patient_id": [f"p{i // ecgs_per_patient}" for i in range(n)], "fs_source": 500.0,
                  "valid_length": t, "gain": gain, "baseline": baseline, "labels": "{}", "meta": "{}",
                  "split": "train", "checksum": "-", "shard": 0, "row": np.arange(n)}).to_parquet(
        root / "manifest.parquet")
    (root / "store.json").write_text(json.dumps({
        "format": "ecgfast-store", "version": 1, "leads": list(LEADS), "fs": 500.0, "n_samples": t,
        "n_records": n, "shards": [{"file": "shards/00000.npy", "n": n}]}))
    return ECGStore(root)


def patient_codes(store: ECGStore) -> np.ndarray:
    return np.unique(store.patient_ids, return_inverse=True)[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> ECGStore:
    n = max(BATCH, STEP_BATCH) * N_BATCHES
    return write_bench_store(tmp_path_factory.mktemp("bench-loader") / "store", n)


def _epoch(loader: Iterable, sampler: PatientBatchSampler, to_mv: bool) -> int:
    """One pass over ``loader``; every batch ends as float32 mV on DEVICE. Returns the ECGs delivered."""
    n = 0
    sampler.set_epoch(sampler.epoch + 1)
    for samples, gain, baseline, *_ in loader:
        x = samples.to(DEVICE, non_blocking=True)
        if to_mv:
            x = decode(x, gain.to(DEVICE), baseline.to(DEVICE))
        n += x.shape[0]
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    return n


def _rate(benchmark, n: int, **info) -> None:
    benchmark.extra_info.update(ecgs_per_s=n / benchmark.stats.stats.mean, batch=BATCH, device=str(DEVICE), **info)


@pytest.mark.benchmark(group="loader")
def test_torch_loader(benchmark, store):
    """The torch path: DataLoader workers read whole batches from the memmap (int16), decoded to mV after."""
    sampler = PatientBatchSampler(store.patient_ids, BATCH, k_per_patient=4, seed=0)
    loader = make_loader(store, sampler, patient_codes(store), workers=WORKERS, pin_memory=DEVICE.type == "cuda")
    n = benchmark.pedantic(_epoch, args=(loader, sampler, True), rounds=3, warmup_rounds=1)
    _rate(benchmark, n, workers=WORKERS)


@needs_dali
@pytest.mark.benchmark(group="loader")
def test_dali_loader(benchmark, store):
    """The DALI path: external source over the memmap, int16 to the GPU (CPU pipeline here), decoded there."""
    sampler = PatientBatchSampler(store.patient_ids, BATCH, k_per_patient=4, seed=0)
    loader = DALIStoreLoader(store, sampler, patient_codes(store), device=DEVICE, output="mv",
                             num_threads=min(4, WORKERS))
    n = benchmark.pedantic(_epoch, args=(loader, sampler, False), rounds=3, warmup_rounds=1)
    _rate(benchmark, n, threads=min(4, WORKERS))


# ---- the peer-style loader: one WFDB record per sample, NumPy augmentation per sample, in DataLoader workers ----

_D, _D_INV = np.array(DOWER), np.array(INV_DOWER)


def _rotation(angles: np.ndarray) -> np.ndarray:
    (cx, cy, cz), (sx, sy, sz) = np.cos(angles), np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


class PeerWFDBDataset(torch.utils.data.Dataset):
    """What peer code bases do: ``wfdb.rdrecord`` per item, pick 8 leads, fix the length, 3KG VCG augmentation
    and ZeroMask with NumPy, one ECG at a time. Items cycle over the record headers given."""

    def __init__(self, bases: list[str], n: int, seed: int = 0):
        self.bases, self.n, self.seed = bases, n, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        rec = wfdb.rdrecord(self.bases[i % len(self.bases)])
        names = [s.upper() for s in rec.sig_name]
        x = rec.p_signal[:, [names.index(lead.upper()) for lead in LEADS]].T  # (8, T_record) mV
        x = np.nan_to_num(x[:, :T])
        if x.shape[1] < T:
            x = np.pad(x, ((0, 0), (0, T - x.shape[1])))
        rng = np.random.default_rng([self.seed, i])
        scale = rng.uniform(1.0, 1.5, 3)
        scale = np.where(rng.random(3) < 0.5, 1 / scale, scale)
        m = _D @ np.diag(scale) @ _rotation(np.deg2rad(rng.uniform(-45, 45, 3))) @ _D_INV  # (8, 8)
        x = m @ x
        for lead in range(8):  # ZeroMask: half of each lead, one wrapped block
            start = rng.integers(0, T)
            x[lead, (start + np.arange(T // 2)) % T] = 0
        return torch.from_numpy(x.astype(np.float32))


@pytest.mark.benchmark(group="loader")
def test_peer_wfdb_loader(benchmark, cinc_dir):
    """Peer-style: DataLoader over per-record WFDB reads with per-sample NumPy augmentation (64 ECGs a batch)."""
    bases = [b for b in find_headers(str(cinc_dir)) if {"I", "II", "V1", "V6"} <= {s.upper() for s in
                                                                                  wfdb.rdheader(b).sig_name}]
    loader = torch.utils.data.DataLoader(PeerWFDBDataset(bases, PEER_RECORDS), batch_size=64, num_workers=WORKERS,
                                         pin_memory=DEVICE.type == "cuda", prefetch_factor=4)

    def epoch() -> int:
        n = sum(x.to(DEVICE, non_blocking=True).shape[0] for x in loader)
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        return n

    n = benchmark.pedantic(epoch, rounds=3, warmup_rounds=1)
    _rate(benchmark, n, workers=WORKERS, batch_peer=64)


# ---- training-step profile: the share of the step spent waiting for data ----

def profile_data_wait(loader: Iterable, step: Callable[[tuple[torch.Tensor, ...]], None], steps: int,
                      warmup: int = 1) -> dict[str, float]:
    """Time ``steps`` training steps fed by ``loader`` (after ``warmup`` ones): the wait in ``next(loader)`` vs the
    step's own work (synchronised on CUDA). Returns wait_s, compute_s (totals) and wait_share = wait / total.

    Raises:
        ValueError: the loader has fewer than ``warmup + steps`` batches.
    """
    it = iter(loader)
    wait = compute = 0.0
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        batch = next(it, None)
        if batch is None:
            raise ValueError(f"the loader gave {i} batches, the profile needs {warmup + steps}")
        t1 = time.perf_counter()
        step(batch)
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        if i >= warmup:
            wait, compute = wait + t1 - t0, compute + t2 - t1
    return {"wait_s": wait, "compute_s": compute, "wait_share": wait / (wait + compute)}


@pytest.mark.parametrize("backend", ["torch", "dali"])
@pytest.mark.benchmark(group="train-step-data-wait")
def test_step_data_wait_share(benchmark, store, backend):
    """Steps fed by make_input(backend): the share of step time spent waiting for the next batch."""
    if backend == "dali" and not dali_available():
        pytest.skip("NVIDIA DALI not installed")
    steps = int(os.environ.get("ECGFAST_BENCH_STEPS", "3"))
    sampler = PatientBatchSampler(store.patient_ids, STEP_BATCH, k_per_patient=4, seed=0)
    loader = make_input(store, sampler, patient_codes(store), backend=backend, device=DEVICE, workers=WORKERS)
    _, _, _, train_step = make_pretrain_step(STEP_MODEL, DEVICE, os.environ.get("ECGFAST_BENCH_COMPILE") == "1")
    step, results = train_step, []

    def run() -> None:
        sampler.set_epoch(len(results))
        results.append(profile_data_wait(loader, step, steps))

    benchmark.pedantic(run, rounds=1, warmup_rounds=0)
    r = results[-1]
    benchmark.extra_info.update(wait_share=r["wait_share"], wait_ms_per_step=1e3 * r["wait_s"] / steps,
                                step_ms=1e3 * (r["wait_s"] + r["compute_s"]) / steps, model=STEP_MODEL,
                                batch=STEP_BATCH, device=str(DEVICE),
                                ecgs_per_s=STEP_BATCH * steps / (r["wait_s"] + r["compute_s"]))
    print(f"\n{backend}: waiting for data {100 * r['wait_share']:.1f} % of the step "
          f"({1e3 * r['wait_s'] / steps:.1f} ms of {1e3 * (r['wait_s'] + r['compute_s']) / steps:.1f} ms)")
