"""Patient ids of different sources never merge by accident; --patients merges them on purpose; ids compare as
exact strings (case included, surrounding whitespace not)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from wfdb_factory import ecg_like

from ecgfast.data.patients import clean_patient_id, patient_keys, source_names
from ecgfast.data.readers.arrays import ArrayReader
from ecgfast.data.splits import SplitError
from ecgfast.data.store import ECGStore
from ecgfast.prepare import pipeline as prep


def _arrays(n: int, seed: int) -> np.ndarray:
    return np.stack([ecg_like(n_leads=8, seed=seed + i).T for i in range(n)]).astype(np.float32)


def _two_databases():
    """Two sources that number their patients independently: "15709" is a patient in each."""
    a = ArrayReader(_arrays(3, 0), ["15709", "15709", "a"], fs=500, record_ids=["A0", "A1", "A2"])
    b = ArrayReader(_arrays(2, 10), ["15709", "A"], fs=500, record_ids=["B0", "B1"])
    return a, b


def test_the_same_id_in_two_sources_is_two_patients(tmp_path):
    report = prep.prepare_store(list(_two_databases()), tmp_path / "s", workers=1, progress=False)
    store = ECGStore(tmp_path / "s")
    keys = dict(zip(store.manifest["record_id"], store.patient_ids, strict=True))
    assert keys["A0"] == keys["A1"] == "numpy.1:15709" and keys["B0"] == "numpy.2:15709"
    assert keys["A2"] != keys["B1"]  # "a" and "A": case counts
    assert json.loads((tmp_path / "s" / "prepare_report.json").read_text())["patients"] == 4
    assert list(store.manifest["patient_id"]) == ["15709", "15709", "a", "15709", "A"]  # stored as given
    assert report.accepted == 5
    # a hash split uses the id as given: equal ids of two sources share a split, so adding a source moves no one
    split = dict(zip(store.manifest["record_id"], store.manifest["split"], strict=True))
    assert split["A0"] == split["B0"]


def test_patients_csv_merges_records_of_two_sources_on_purpose(tmp_path):
    pmap = tmp_path / "patients.csv"
    pd.DataFrame({"record_id": ["A0", "B0"], "patient_id": ["P7", " P7 "]}).to_csv(pmap, index=False)
    from ecgfast.data.sources import read_patient_map

    prep.prepare_store(list(_two_databases()), tmp_path / "s", workers=1, progress=False,
                       patient_map=read_patient_map(pmap))
    store = ECGStore(tmp_path / "s")
    keys = dict(zip(store.manifest["record_id"], store.patient_ids, strict=True))
    assert keys["A0"] == keys["B0"] == "P7"  # one id space across sources
    assert keys["A1"] == "numpy.1:15709"  # records not in the map keep their source's namespace
    assert store.split_indices("train").size + store.split_indices("val").size + store.split_indices("test").size == 5


def test_a_split_column_that_separates_one_patient_is_refused(tmp_path):
    meta = {"fold": [1, 10, 1]}  # records 0 and 1 are one patient in two folds
    reader = ArrayReader(_arrays(3, 0), ["x", "x", "y"], fs=500, meta=meta)
    with pytest.raises(SplitError, match="different folds"):
        prep.prepare_store([reader], tmp_path / "s", workers=1, progress=False,
                           split=prep.SplitConfig(method="column", column="fold"))
    words = ArrayReader(_arrays(3, 0), ["x", "x", "y"], fs=500, meta={"part": ["train", "train", "test"]})
    prep.prepare_store([words], tmp_path / "w", workers=1, progress=False,
                       split=prep.SplitConfig(method="column", column="part"))
    assert list(ECGStore(tmp_path / "w").manifest["split"]) == ["train", "train", "test"]


def test_keys_names_and_cleaning():
    assert list(patient_keys(["1", "1", "2"], ["a", "", "b"])) == ["a:1", "1", "b:2"]
    assert list(patient_keys(["1", "2"])) == ["1", "2"]  # stores written before namespaces
    assert source_names(["cinc", "ptbxl", "cinc", "we:ird"]) == ["cinc.1", "ptbxl", "cinc.2", "we_ird"]
    assert clean_patient_id("  P1\t") == "P1" and clean_patient_id(" ") is None
    assert clean_patient_id(float("nan")) is None
    assert clean_patient_id(b"7 ") == "7"


def test_a_manifest_without_namespaces_keys_patients_by_id(tmp_path):
    reader = ArrayReader(_arrays(2, 0), ["p", "q"], fs=500)
    prep.prepare_store([reader], tmp_path / "s", workers=1, progress=False)
    m = pd.read_parquet(tmp_path / "s" / "manifest.parquet").drop(columns="patient_ns")
    m.to_parquet(tmp_path / "s" / "manifest.parquet")
    assert list(ECGStore(tmp_path / "s").patient_ids) == ["p", "q"]
