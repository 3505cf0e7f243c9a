"""Issue 10, the data part: an array source with a labels CSV, splits from a column, a declared unit ("z" for
normalised signals) recorded by the store; the real ptbxl-subset prepared as it is; millivolt stores unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.signal import resample_poly
from wfdb_factory import LEADS12, ecg_like, write_record

from ecgfast.data.preprocess import PreprocessConfig, check_signal, preprocess
from ecgfast.data.readers.label_table import is_binary_column, read_label_table
from ecgfast.data.readers.ptbxl_subset import open_ptbxl_subset
from ecgfast.data.readers.wfdb_record import WFDBReader
from ecgfast.data.record import ECGRecord, RecordError, RejectReason
from ecgfast.data.store import ECGStore
from ecgfast.prepare import pipeline as prep
from ecgfast.prepare.cli import main as prepare_main

ORDER = [0, 1, 6, 7, 8, 9, 10, 11]  # I, II, V1..V6 within the 12-lead order
FOLDS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]


def _zscored(n: int = 20, fs: float = 100.0) -> np.ndarray:
    """(n, 12, 10 fs) float16, each lead z-scored as the public PTB-XL subset is."""
    x = np.stack([ecg_like(fs=fs, seed=i).T for i in range(n)])
    x = (x - x.mean(axis=2, keepdims=True)) / x.std(axis=2, keepdims=True)
    return x.astype(np.float16)


def _table(n: int = 20) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"ecg_id": np.arange(n) * 7 + 9, "strat_fold": FOLDS[:n], "age": rng.integers(20, 90, n),
                         "sex": ["male", "female"] * (n // 2), "NORM": np.arange(n) % 2,
                         "MI": (np.arange(n) % 3 == 0) * 1, "AFIB": np.r_[[1], np.zeros(n - 1, int)]})


@pytest.fixture
def subset(tmp_path) -> Path:
    """A folder in the ptbxl-subset layout: signals_100hz.npy and labels.csv of 20 z-scored ECGs."""
    folder = tmp_path / "ptbxl-subset"
    folder.mkdir()
    np.save(folder / "signals_100hz.npy", _zscored())
    _table().to_csv(folder / "labels.csv", index=False)
    return folder


# ---- the labels CSV ------------------------------------------------------------------------------------------

def test_label_table_roles_inferred_and_chosen(tmp_path):
    df = _table()
    df["sex01"] = np.arange(20) % 2  # a 0/1 column that is not a label: named as meta, it stays meta
    df["score"] = np.linspace(0, 1, 20)  # numbers, not 0/1: a label only when named
    df.loc[3, "MI"] = None  # an empty cell: that record lacks the label
    df.to_csv(tmp_path / "t.csv", index=False)
    t = read_label_table(tmp_path / "t.csv", 20, record_id_column="ecg_id", meta_columns=["age", "sex", "sex01"],
                         required_columns=["strat_fold"])
    assert sorted(t.labels) == ["AFIB", "MI", "NORM"] and t.record_ids[:2] == ["9", "16"]
    assert np.isnan(t.labels["MI"][3]) and t.labels["MI"][0] == 1.0
    assert t.meta["strat_fold"][:3] == [1, 2, 3] and t.meta["sex"][0] == "male" and t.meta["age"][0] >= 20
    chosen = read_label_table(tmp_path / "t.csv", 20, label_columns=["score", "NORM"])
    assert sorted(chosen.labels) == ["NORM", "score"] and chosen.record_ids is None
    assert is_binary_column(df["NORM"].astype(str)) and not is_binary_column(df["score"].astype(str))
    with pytest.raises(ValueError, match="21 rows|20 rows"):
        read_label_table(tmp_path / "t.csv", 21)
    with pytest.raises(ValueError, match=r"no column\(s\) \['nope'\]"):
        read_label_table(tmp_path / "t.csv", 20, label_columns=["nope"])
    df.loc[5, "ecg_id"] = df.loc[4, "ecg_id"]
    df.to_csv(tmp_path / "dup.csv", index=False)
    with pytest.raises(ValueError, match="repeats 1 id"):
        read_label_table(tmp_path / "dup.csv", 20, record_id_column="ecg_id")
    df["NORM"] = df["NORM"].astype(object)
    df.loc[6, "NORM"] = "yes"
    df.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match="label column NORM holds 'yes'"):
        read_label_table(tmp_path / "bad.csv", 20, label_columns=["NORM"])


# ---- array + labels CSV -> store, both CLI shapes ------------------------------------------------------------

def test_array_with_labels_csv_prepares_a_z_store_split_by_fold(tmp_path, subset, capsys):
    out = tmp_path / "explicit"
    rc = prepare_main([str(subset / "signals_100hz.npy"), "--labels", str(subset / "labels.csv"),
                    "--record-id-column", "ecg_id", "--split-column", "strat_fold", "--array-fs", "100",
                    "--array-leads", ",".join(LEADS12), "--units", "z", "--out", str(out), "--quiet",
                    "--workers", "1", "--fs", "500"])
    assert rc == 0 and "20 accepted" in capsys.readouterr().out
    store = ECGStore(out, verify=True)
    assert store.units == "z" and json.loads((out / "store.json").read_text())["units"] == "z"
    assert store.fs == 500.0 and (store.manifest["fs_source"] == 100.0).all() and (store.valid_length == 5000).all()
    table = _table()
    assert list(store.manifest["record_id"]) == [str(v) for v in table["ecg_id"]]
    assert store.label_names() == ["AFIB", "MI", "NORM"]  # age, sex, strat_fold are meta, not labels
    np.testing.assert_array_equal(store.label("NORM"), table["NORM"])
    folds = np.array([json.loads(m)["strat_fold"] for m in store.manifest["meta"]])
    expect = np.where(folds == 10, "test", np.where(folds == 9, "val", "train"))
    np.testing.assert_array_equal(store.manifest["split"].to_numpy(), expect)
    assert len(set(store.patient_ids)) == 20  # no patient ids: each ECG its own patient
    # the store holds the source resampled to 500 Hz, in z units, within a quantisation step
    src = np.load(subset / "signals_100hz.npy")[3][ORDER].astype(np.float32)
    ref = resample_poly(src, 5, 1, axis=1)
    assert np.abs(store.read_mv([3])[0] - ref).max() <= 0.51 / store.gain[3] + 1e-5

    detected = tmp_path / "detected"
    assert prepare_main([str(subset), "--out", str(detected), "--quiet", "--workers", "1", "--fs", "500"]) == 0
    other = ECGStore(detected, verify=True)
    assert other.units == "z" and set(other.manifest["patient_ns"]) == {"ptbxl-subset"}
    pd.testing.assert_frame_equal(store.manifest.drop(columns=["patient_ns", "source"]),
                                  other.manifest.drop(columns=["patient_ns", "source"]))


def test_the_unit_decides_the_amplitude_checks():
    z = ECGRecord("r", "p", _zscored(1, 500.0)[0][ORDER].astype(np.float32), 500.0, "t", units="z")
    z_config, mv_config = PreprocessConfig(units="z"), PreprocessConfig()
    preprocess(z, z_config)
    spiky = z.signal.copy()
    spiky[2, 100] = 45.0  # 45 SD: no per-lead z-scored 10 s lead at 500 Hz can exceed 70.7; allowed below 50
    check_signal(spiky, 500.0, "r", z_config)
    raw = z.signal * 1000  # declared z but not normalised (microvolt-sized values)
    with pytest.raises(RecordError) as err:
        check_signal(raw, 500.0, "r", z_config)
    assert err.value.reason == RejectReason.IMPLAUSIBLE_AMPLITUDE and "SD" in str(err.value)
    flat = z.signal.copy()
    flat[4] = 0.03 * np.sin(np.arange(flat.shape[1]))  # 0.06 peak-to-peak: fine in mV, flat in SD
    check_signal(flat, 500.0, "r", mv_config)
    with pytest.raises(RecordError) as err:
        check_signal(flat, 500.0, "r", z_config)
    assert err.value.reason == RejectReason.FLAT_LEAD and "V3" in str(err.value) and "SD" in str(err.value)
    with pytest.raises(RecordError) as err:
        preprocess(z, mv_config)  # a z record never enters a millivolt store
    assert err.value.reason == RejectReason.HEADER_MISMATCH and "'z'" in str(err.value)
    with pytest.raises(ValueError, match="units"):
        PreprocessConfig(units="mmHg")


def test_sources_of_different_units_are_refused(tmp_path, subset):
    write_record(tmp_path / "wfdb", "m0")
    readers = [WFDBReader(str(tmp_path / "wfdb")), open_ptbxl_subset(subset)]
    with pytest.raises(ValueError, match="different units"):
        prep.prepare_store(readers, tmp_path / "mixed", workers=1, progress=False)
    assert not (tmp_path / "mixed").exists()


def test_a_millivolt_store_is_unchanged(tmp_path):
    """Checksums and gains written by the code before units, namespaces and bounded reads existed (commit 4967360):
    12 s records at 250 Hz, resampled to 500 Hz and cropped to 10 s."""
    for i in range(3):
        write_record(tmp_path / "src", f"m{i}", ecg_like(seed=10 + i, fs=250.0, seconds=12.0), fs=250.0)
    prep.prepare_store([WFDBReader(str(tmp_path / "src"))], tmp_path / "st", workers=1, progress=False)
    store = ECGStore(tmp_path / "st", verify=True)
    assert store.units == "mV" and json.loads((tmp_path / "st" / "store.json").read_text())["units"] == "mV"
    assert list(store.manifest["checksum"]) == ["aa720f412fac9171", "56a5b79ae70511dc", "603ef27dc7b0e11f"]
    assert list(store.gain) == [np.float32(20779.06640625), np.float32(23851.4609375), np.float32(21396.962890625)]
    assert list(store.manifest["baseline"]) == [41, 4415, 632]


def test_a_store_without_units_is_read_as_millivolts(tmp_path):
    write_record(tmp_path / "src", "m0")
    prep.prepare_store([WFDBReader(str(tmp_path / "src"))], tmp_path / "st", workers=1, progress=False)
    info = json.loads((tmp_path / "st" / "store.json").read_text())
    del info["units"]  # written before stores recorded their unit
    (tmp_path / "st" / "store.json").write_text(json.dumps(info))
    assert ECGStore(tmp_path / "st").units == "mV"
    info["units"] = "mmHg"
    (tmp_path / "st" / "store.json").write_text(json.dumps(info))
    with pytest.raises(Exception, match="units 'mmHg'"):
        ECGStore(tmp_path / "st")


# ---- the real subset -----------------------------------------------------------------------------------------

def test_the_real_ptbxl_subset_as_it_is(shared_ecg, tmp_path):
    folder = shared_ecg / "ptbxl-subset"
    report = prep.prepare_store([open_ptbxl_subset(folder)], tmp_path / "ptbxl", workers=2, progress=False)
    assert report.found == report.accepted == 1819 and report.rejected == 0
    assert report.splits == {"train": 1442, "val": 183, "test": 194} and report.units == "z"
    store = ECGStore(tmp_path / "ptbxl")
    assert len(store) == 1819 and store.units == "z" and store.fs == 500.0 and store.n_samples == 5000
    positives = {name: int(store.label(name).sum()) for name in ("NORM", "MI", "STTC", "CD", "HYP", "AFIB",
                                                                 "CLBBB", "LVH")}
    assert positives == {"NORM": 964, "MI": 262, "STTC": 527, "CD": 462, "HYP": 193, "AFIB": 122, "CLBBB": 59,
                         "LVH": 153}
    labels = pd.read_csv(folder / "labels.csv")
    assert list(store.manifest["record_id"]) == [str(v) for v in labels["ecg_id"]]
    expect = np.where(labels["strat_fold"] == 10, "test", np.where(labels["strat_fold"] == 9, "val", "train"))
    np.testing.assert_array_equal(store.manifest["split"].to_numpy(), expect)
    assert "age" not in store.label_names() and "strat_fold" not in store.label_names()
    i = 1000  # one record against scipy's resampling of the source
    src = np.load(folder / "signals_100hz.npy", mmap_mode="r")[i][ORDER].astype(np.float32)
    assert np.abs(store.read_mv([i])[0] - resample_poly(src, 5, 1, axis=1)).max() <= 0.51 / store.gain[i] + 1e-5


def test_zscore_normalisation_makes_one_z_store_of_millivolt_and_z_sources(tmp_path, subset):
    """Issue 22's z-scored point: millivolt WFDB records and a z-scored corpus become one z store with
    --normalize zscore, each lead of each record at mean 0 and sd 1 over its valid part, each record checked in its
    own unit first (a flat millivolt lead is still a reject)."""
    wfdb = tmp_path / "wfdb"
    for i in range(3):
        write_record(wfdb, f"m{i}", ecg_like(seed=i))
    flat = ecg_like(seed=9)
    flat[:, 7] = 0.0  # one flat lead (V2 in the 12-lead order): flat in mV
    write_record(wfdb, "flat", flat)
    out = tmp_path / "z"
    assert prepare_main([str(wfdb), str(subset), "--out", str(out), "--quiet", "--workers", "1", "--fs", "100",
                         "--split-by", "hash", "--normalize", "zscore"]) == 0
    store = ECGStore(out, verify=True)
    assert store.units == "z" and set(store.manifest["patient_ns"]) == {"wfdb", "ptbxl-subset"}
    assert len(store) == 3 + 20 and "flat" not in set(store.manifest["record_id"])
    for i in range(len(store)):
        x = store.read_mv([i])[0][:, :store.valid_length[i]]
        np.testing.assert_allclose(x.mean(axis=1), 0.0, atol=2e-3)
        np.testing.assert_allclose(x.std(axis=1), 1.0, atol=2e-3)
    # without it, the two units cannot share a store
    assert prepare_main([str(wfdb), str(subset), "--out", str(tmp_path / "mixed"), "--quiet", "--fs", "100"]) == 2
