"""Data-layer throughput: prepare vs a bare wfdb.rdrecord loop; store batch reads vs per-file WFDB reads.

Run: ``pytest bench/test_bench_data.py --benchmark-only --benchmark-json bench/results/<name>.json``.
Each benchmark puts its rate (records/s) in ``extra_info``; compare rates measured in the same run.
"""

from __future__ import annotations

import numpy as np
import pytest
import wfdb

from ecgfast.data.readers.cinc import CinCReader
from ecgfast.data.readers.wfdb_record import find_headers
from ecgfast.data.store import ECGStore
from ecgfast.prepare import prepare_store

BATCH = 512


@pytest.fixture(scope="module")
def bases(cinc_dir):
    return find_headers(str(cinc_dir))


@pytest.fixture(scope="module")
def store(cinc_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "store"
    prepare_store([CinCReader(str(cinc_dir))], out, workers=1, progress=False)
    return ECGStore(out)


def _rate(benchmark, n: int) -> None:
    benchmark.extra_info["records_per_s"] = n / benchmark.stats.stats.mean


@pytest.mark.benchmark(group="prepare")
def test_bare_wfdb_read_loop(benchmark, bases):
    """The floor peers start from: wfdb.rdrecord of every record, physical units, nothing else."""
    benchmark.pedantic(lambda: [wfdb.rdrecord(b) for b in bases], rounds=3, warmup_rounds=1)
    _rate(benchmark, len(bases))


@pytest.mark.benchmark(group="prepare")
def test_prepare_one_process(benchmark, cinc_dir, tmp_path):
    """ecgfast-prepare on one process: read, check, quantise, checksum, write shard + manifest + report."""
    runs = iter(range(1000))
    benchmark.pedantic(lambda: prepare_store([CinCReader(str(cinc_dir))], tmp_path / f"s{next(runs)}", workers=1,
                                             progress=False), rounds=3, warmup_rounds=1)
    _rate(benchmark, len(find_headers(str(cinc_dir))))


@pytest.mark.benchmark(group="batch-read")
def test_store_random_batch(benchmark, store):
    """A random batch of 512 records from the memory-mapped store, decoded to float32 mV."""
    rng = np.random.default_rng(0)
    benchmark(lambda: store.read_mv(rng.integers(0, len(store), BATCH)))
    _rate(benchmark, BATCH)


@pytest.mark.benchmark(group="batch-read")
def test_per_file_wfdb_batch(benchmark, bases):
    """What per-sample Datasets of peers do: one wfdb.rdrecord per record of the batch (64 here, for time)."""
    rng = np.random.default_rng(0)
    n = 64
    benchmark.pedantic(lambda: [wfdb.rdrecord(bases[i]).p_signal for i in rng.integers(0, len(bases), n)],
                       rounds=5, warmup_rounds=1)
    _rate(benchmark, n)
