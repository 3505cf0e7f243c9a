"""The store: opening checks, reads, labels, splits by patient, bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from ecgfast.data.preprocess import dequantize
from ecgfast.data.readers.base import Reader, SourceItem
from ecgfast.data.record import ECGRecord
from ecgfast.data.splits import SplitError, check_patient_disjoint, fold_splits, hash_splits
from ecgfast.data.store import ECGStore, StoreError
from ecgfast.prepare import prepare_store


class RandomReader(Reader):
    """n records of Gaussian noise, 3 per patient, with a label and a fold."""

    format_name = "random"

    def __init__(self, n: int, seconds: float = 10.0):
        self.n, self.seconds = n, seconds

    def items(self):
        for i in range(self.n):
            yield SourceItem(f"r{i:04d}", str(i), patient_id=f"p{i // 3}", labels={"y": float(i % 2)},
                             meta={"strat_fold": (i // 3) % 10 + 1})

    def read(self, item):
        rng = np.random.default_rng(int(item.locator))
        x = rng.standard_normal((8, int(500 * self.seconds))).astype(np.float32) * (1 + int(item.locator) % 5)
        return ECGRecord(item.record_id, item.patient_id, x, 500.0, f"random:{item.locator}", item.labels, item.meta)


@pytest.fixture()
def store_path(tmp_path):
    prepare_store([RandomReader(40)], tmp_path / "s", workers=1, shard_size=16, progress=False)
    return tmp_path / "s"


def test_reads_match_the_source_within_the_quantisation_step(store_path):
    store = ECGStore(store_path, verify=True)
    reader = RandomReader(40)
    idx = np.array([39, 0, 17, 17, 5])  # any order, repeats, across shards
    x = store.read_mv(idx)
    assert x.shape == (5, 8, 5000) and x.dtype == np.float32
    for k, i in enumerate(idx):
        ref = reader.read(SourceItem("", str(i), "p")).signal
        assert np.abs(x[k] - ref).max() <= 0.51 / store.gain[i]
    raw = store.read(idx)
    assert raw.dtype == np.int16
    np.testing.assert_array_equal(dequantize(raw[2], store.gain[17], store.baseline[17]), x[2])


def test_labels_and_splits(store_path):
    store = ECGStore(store_path)
    assert store.label_names() == ["y"]
    np.testing.assert_array_equal(store.label("y"), np.arange(40) % 2)
    assert np.isnan(store.label("nope")).all() and (store.label("nope", fill=0) == 0).all()
    parts = [store.split_indices(s) for s in ("train", "val", "test")]
    assert sum(len(p) for p in parts) == 40
    for a in range(3):
        for b in range(a + 1, 3):
            assert not set(store.patient_ids[parts[a]]) & set(store.patient_ids[parts[b]])


def test_memmapped_not_loaded(store_path):
    store = ECGStore(store_path)
    assert all(isinstance(s, np.memmap) for s in store._shards)


@pytest.mark.parametrize("damage,match", [
    ("no_store_json", "store.json not found"),
    ("shard_shape", "store.json says"),
    ("missing_shard", "cannot open shard"),
    ("mixed_split", "more than one split"),
    ("duplicate_id", "duplicate record ids"),
    ("row_count", "rows"),
])
def test_open_refuses_an_inconsistent_store(store_path, damage, match):
    m = pd.read_parquet(store_path / "manifest.parquet")
    if damage == "no_store_json":
        (store_path / "store.json").unlink()
    elif damage == "shard_shape":
        np.save(store_path / "shards" / "00001.npy", np.zeros((3, 8, 5000), np.int16))
    elif damage == "missing_shard":
        (store_path / "shards" / "00002.npy").unlink()
    elif damage == "mixed_split":
        first = m.index[m["patient_id"] == m["patient_id"].iat[0]]
        m.loc[first[0], "split"] = "train"
        m.loc[first[1], "split"] = "test"
        m.to_parquet(store_path / "manifest.parquet")
    elif damage == "duplicate_id":
        m.loc[1, "record_id"] = m.loc[0, "record_id"]
        m.to_parquet(store_path / "manifest.parquet")
    elif damage == "row_count":
        m.iloc[:-1].to_parquet(store_path / "manifest.parquet")
    with pytest.raises((StoreError, SplitError), match=match):
        ECGStore(store_path)


@pytest.mark.parametrize(("column", "value", "rule"), [
    ("gain", 0.0, "finite number > 0"), ("gain", float("nan"), "finite number > 0"), ("gain", -3.0, "> 0"),
    ("baseline", 1e12, "int16"), ("baseline", float("inf"), "int16"),
    ("valid_length", 5001, "[1, 5000]"), ("valid_length", 0, "[1, 5000]"), ("valid_length", 2.5, "integer"),
    ("fs_source", 0.0, "rate > 0"),
    ("labels", '{"y": 2}', "label 'y' is 2"), ("labels", '{"y": -1}', "label 'y' is -1"),
    ("labels", '{"y": Infinity}', "label 'y' is inf"), ("labels", '{"y": [1, 0]}', "label 'y' is [1, 0]"),
    ("labels", '{"y": "1"}', "label 'y' is '1'"), ("labels", "[1]", "not a JSON object"),
    ("labels", "{y: 1", "not valid JSON"),
])
def test_open_and_verify_refuse_manifest_values_no_prepare_writes(store_path, column, value, rule):
    """Attack of issue 20 (9): a manifest edited (or damaged) into values that would read as garbage or crash
    later. Opening refuses it, naming the column, the record and the rule; verify too."""
    m = pd.read_parquet(store_path / "manifest.parquet")
    if isinstance(value, float) and m[column].dtype.kind in "iu":  # an integer column made float to hold it
        m[column] = m[column].astype(np.float64)
    m.loc[7, column] = value
    m.to_parquet(store_path / "manifest.parquet")
    for verify in (False, True):
        with pytest.raises(StoreError, match="column") as info:
            ECGStore(store_path, verify=verify)
        msg = str(info.value)
        assert f"column {column!r}, record {m['record_id'].iat[7]!r}" in msg and rule in msg and "\n" not in msg


def test_null_and_nan_labels_mean_unknown_and_are_accepted(store_path):
    m = pd.read_parquet(store_path / "manifest.parquet")
    m.loc[3, "labels"], m.loc[4, "labels"] = '{"y": null}', '{"y": NaN}'
    m.to_parquet(store_path / "manifest.parquet")
    y = ECGStore(store_path).label("y")
    assert np.isnan(y[3]) and np.isnan(y[4]) and np.isin(y[[0, 1, 2]], (0.0, 1.0)).all()


def test_verify_catches_a_flipped_sample(store_path):
    mm = np.load(store_path / "shards" / "00001.npy", mmap_mode="r+")
    mm[3, 2, 100] ^= 1
    mm.flush()
    del mm
    ECGStore(store_path)  # shapes still fine
    with pytest.raises(StoreError, match="checksum"):
        ECGStore(store_path, verify=True)


def test_hash_splits_are_by_patient_deterministic_and_stable():
    pids = [f"p{i}" for i in range(3000)]
    s = hash_splits(pids, (0.8, 0.1, 0.1), seed=1)
    assert np.array_equal(s, hash_splits(pids, (0.8, 0.1, 0.1), seed=1))
    assert not np.array_equal(s, hash_splits(pids, (0.8, 0.1, 0.1), seed=2))
    shares = pd.Series(s).value_counts(normalize=True)
    assert abs(shares["train"] - 0.8) < 0.03 and abs(shares["test"] - 0.1) < 0.03
    # adding patients never moves existing ones
    more = hash_splits(pids + [f"q{i}" for i in range(500)], (0.8, 0.1, 0.1), seed=1)
    assert np.array_equal(more[:3000], s)
    # records of one patient share a split
    rec = hash_splits(["a", "b", "a", "c", "a"], seed=3)
    assert rec[0] == rec[2] == rec[4]
    with pytest.raises(SplitError):
        hash_splits(pids, (0.5, 0.1, 0.1))


def test_fold_splits_and_disjointness_check():
    s = fold_splits(["a", "a", "b", "c"], [1, 1, 9, 10])
    assert list(s) == ["train", "train", "val", "test"]
    with pytest.raises(SplitError, match="different folds"):
        fold_splits(["a", "a"], [1, 10])
    with pytest.raises(SplitError, match="1 patient"):
        check_patient_disjoint(["a", "a", "b"], ["train", "test", "val"])


def test_strat_fold_split_in_prepare(tmp_path):
    from ecgfast.prepare import SplitConfig

    prepare_store([RandomReader(60, seconds=6.0)], tmp_path / "f", split=SplitConfig(method="strat_fold"),
                  workers=1, progress=False)
    store = ECGStore(tmp_path / "f")
    folds = np.array([json.loads(m)["strat_fold"] for m in store.manifest["meta"]])
    assert set(folds[store.split_indices("test")]) == {10} and set(folds[store.split_indices("val")]) == {9}
    assert (store.valid_length == 3000).all()


def test_opening_and_reading_a_big_store_keeps_memory_bounded(tmp_path):
    """A 400 MB store opens and serves random batches with little process memory (anonymous RSS: file pages
    the kernel maps in for the memmap are page cache it can drop, not memory the process holds)."""
    root = tmp_path / "big"
    (root / "shards").mkdir(parents=True)
    n_per, n_shards, t = 1250, 4, 5000  # 4 x 100 MB
    rows = []
    for s in range(n_shards):
        mm = np.lib.format.open_memmap(root / "shards" / f"{s:05d}.npy", "w+", np.int16, (n_per, 8, t))
        mm[:] = 7
        mm.flush()
        del mm
        rows += [{"record_id": f"r{s}-{i}", "source": "x", "patient_id": f"p{s}-{i}", "fs_source": 500.0,
                  "valid_length": t, "gain": 1000.0, "baseline": 0, "labels": "{}", "meta": "{}", "split": "train",
                  "checksum": "-", "shard": s, "row": i} for i in range(n_per)]
    pd.DataFrame(rows).to_parquet(root / "manifest.parquet")
    (root / "store.json").write_text(json.dumps({
        "format": "ecgfast-store", "version": 1, "leads": ["I", "II", "V1", "V2", "V3", "V4", "V5", "V6"],
        "fs": 500.0, "n_samples": t, "n_records": n_per * n_shards,
        "shards": [{"file": f"shards/{s:05d}.npy", "n": n_per} for s in range(n_shards)]}))
    code = textwrap.dedent(f"""
        import numpy as np
        from ecgfast.data.store import ECGStore
        def rss_mb():
            line = [ln for ln in open("/proc/self/status") if ln.startswith("RssAnon:")][0]
            return int(line.split()[1]) / 1024
        before = rss_mb()
        store = ECGStore({str(root)!r})
        opened = rss_mb()
        rng = np.random.default_rng(0)
        for _ in range(8):
            x = store.read_mv(rng.integers(0, len(store), 32))
            assert abs(float(x[0, 0, 0]) - 0.007) < 1e-6
        print(opened - before, rss_mb() - before)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    grew_open, grew_read = map(float, out)
    assert grew_open < 60, f"opening a 400 MB store grew RSS by {grew_open:.0f} MB"
    assert grew_read < 60, f"8 batches of 32 grew RSS by {grew_read:.0f} MB"
