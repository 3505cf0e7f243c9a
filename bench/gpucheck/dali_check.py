"""Phase ``dali``: the DALI input path on the device (a GPU pipeline there; a CPU pipeline on a CPU), where DALI
imports; otherwise one line saying it is not installed.

A store of ``dali_records`` random int16 records of ``record_samples`` samples (four records a patient) is written
to a temporary folder; :class:`ecgfast.data.dali_loader.DALIStoreLoader` reads one epoch of patient-aware batches
of ``dali_batch``: ECGs/s after the first batch (the pipeline's start, timed apart), and the first batch compared
bit for bit with the torch DataLoader path's.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ecgfast import LEADS
from ecgfast.data.dali_loader import DALIStoreLoader, dali_available
from ecgfast.data.loader import make_loader
from ecgfast.data.sampler import PatientBatchSampler
from ecgfast.data.store import ECGStore

from .record import Context
from .timers import sync


def write_store(root: Path, n: int, samples: int, shard_size: int = 1024) -> Path:
    """A store of ``n`` random int16 records (gain 100 to 2000 adc units per mV), four a patient, all in train."""
    rng = np.random.default_rng(0)
    (root / "shards").mkdir(parents=True)
    rows, shards = [], []
    for s, start in enumerate(range(0, n, shard_size)):
        m = min(shard_size, n - start)
        mm = np.lib.format.open_memmap(root / "shards" / f"{s:05d}.npy", "w+", np.int16, (m, 8, samples))
        mm[:] = rng.integers(-3000, 3000, (m, 8, samples), dtype=np.int16)
        mm.flush()
        del mm
        shards.append({"file": f"shards/{s:05d}.npy", "n": m})
        rows += [{"record_id": f"r{i}", "source": "gpu_check", "patient_id": f"p{i // 4}", "fs_source": 500.0,
                  "valid_length": samples, "gain": float(rng.uniform(100, 2000)), "baseline": 0.0, "labels": "{}",
                  "meta": "{}", "split": "train", "checksum": "-", "shard": s, "row": i - start}
                 for i in range(start, start + m)]
    pd.DataFrame(rows).to_parquet(root / "manifest.parquet")
    (root / "store.json").write_text(json.dumps({"format": "ecgfast-store", "version": 1, "leads": list(LEADS),
                                                 "fs": 500.0, "n_samples": samples, "n_records": n,
                                                 "shards": shards}))
    return root


def run(ctx: Context) -> dict:
    if not dali_available():
        ctx.record("DALI", installed=False, note="nvidia-dali is not installed here: the DALI path was not measured")
        return {"status": "skipped", "reason": "nvidia-dali not installed"}
    import nvidia.dali

    sizes, device = ctx.sizes, ctx.device
    with tempfile.TemporaryDirectory(prefix="gpu_check_store_") as tmp:
        t = time.perf_counter()
        store = ECGStore(write_store(Path(tmp) / "store", sizes.dali_records, sizes.record_samples))
        write_s = time.perf_counter() - t
        codes = np.unique(store.patient_ids, return_inverse=True)[1]
        sampler = PatientBatchSampler(store.patient_ids, sizes.dali_batch, 4, seed=0)
        expected = next(iter(make_loader(store, sampler, codes, workers=0)))
        loader = DALIStoreLoader(store, sampler, codes, device=device, copy=False)
        t = time.perf_counter()
        batches = iter(loader)
        first = tuple(x.clone() for x in next(batches))
        sync(device)
        start_s = time.perf_counter() - t
        same = all(torch.equal(a.cpu(), b.cpu()) for a, b in zip(first, expected, strict=True))
        t, ecgs = time.perf_counter(), 0
        for batch in batches:
            ecgs += batch[0].shape[0]
            if ctx.out_of_time(2):
                break
        sync(device)
        seconds = time.perf_counter() - t
    ctx.record("DALI", installed=True, version=nvidia.dali.__version__, pipeline="gpu" if device.type == "cuda"
               else "cpu", records=sizes.dali_records, batch=sizes.dali_batch, store_write_s=write_s,
               first_batch_s=start_s, ecgs_per_s=ecgs / seconds if ecgs else None, same_as_torch_loader=same,
               ok=same)
    return {}
