"""The corpus readers (PTB-XL, MIMIC-IV-ECG, numpy arrays, CODE-15%) on tiny datasets written in their layouts."""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pandas as pd
import pytest
from wfdb_factory import LEADS12, ecg_like, write_record

from ecgfast.data.readers.arrays import ArrayReader
from ecgfast.data.readers.mimic import MIMICECGReader
from ecgfast.data.readers.ptbxl import PTBXLReader, parse_scp_codes
from ecgfast.data.record import RecordError, RejectReason

ORDER = [0, 1, 6, 7, 8, 9, 10, 11]  # I, II, V1..V6 within the 12-lead order
WFDB_ATOL = 0.5e-3 + 1e-6  # half an ADC step at 1000 units/mV


def roundtrip(obj):
    return pickle.loads(pickle.dumps(obj))


# ---- PTB-XL ------------------------------------------------------------------------------------------------

PTBXL_ROWS = [  # ecg_id, patient_id, age, sex, scp_codes, strat_fold
    (1, 15709.0, 56.0, 1, "{'NORM': 100.0, 'SR': 0.0}", 3),
    (2, 15709.0, 300.0, 0, "{'IMI': 35.0, 'LVH': 100.0, 'SR': 0.0}", 10),
    (3, 20372.0, 40.0, 0, "{'NORM': 100.0", 1),  # unparsable
    (4, 17014.0, None, 1, "{'SR': 0.0}", 9),  # no diagnostic statement; its record lacks V5
]


@pytest.fixture
def ptbxl(tmp_path):
    """A PTB-XL folder of 4 records at 100 and 500 Hz; returns (root, {ecg_id: {rate: signal}})."""
    root = tmp_path / "ptbxl"
    signals: dict[int, dict[int, np.ndarray]] = {}
    rows = []
    for ecg_id, patient, age, sex, codes, fold in PTBXL_ROWS:
        names = LEADS12[:10] + ["V6"] if ecg_id == 4 else LEADS12
        signals[ecg_id] = {}
        for rate, suffix in ((500, "hr"), (100, "lr")):
            sig = ecg_like(n_leads=len(names), fs=rate, seed=ecg_id)
            write_record(root / f"records{rate}" / "00000", f"{ecg_id:05d}_{suffix}", sig, fs=rate, sig_name=names)
            signals[ecg_id][rate] = sig
        rows.append({"ecg_id": ecg_id, "patient_id": patient, "age": age, "sex": sex, "scp_codes": codes,
                     "strat_fold": fold, "filename_lr": f"records100/00000/{ecg_id:05d}_lr",
                     "filename_hr": f"records500/00000/{ecg_id:05d}_hr"})
    pd.DataFrame(rows).to_csv(root / "ptbxl_database.csv", index=False)
    pd.DataFrame({"description": ["normal ECG", "inferior MI", "LV hypertrophy", "sinus rhythm"],
                  "diagnostic": [1.0, 1.0, 1.0, None], "rhythm": [None, None, None, 1.0],
                  "diagnostic_class": ["NORM", "MI", "HYP", None]},
                 index=["NORM", "IMI", "LVH", "SR"]).to_csv(root / "scp_statements.csv")
    return root, signals


def test_ptbxl_items_ids_patients_labels_and_meta(ptbxl):
    root, _ = ptbxl
    items = {it.record_id: it for it in PTBXLReader(root).items()}
    assert list(items) == ["ptbxl-1", "ptbxl-2", "ptbxl-3", "ptbxl-4"]
    assert items["ptbxl-1"].patient_id == items["ptbxl-2"].patient_id == "15709"
    one, two, four = items["ptbxl-1"], items["ptbxl-2"], items["ptbxl-4"]
    assert one.labels == {"scp:NORM": 1.0, "scp:SR": 1.0, "superclass:NORM": 1.0, "superclass:MI": 0.0,
                          "superclass:STTC": 0.0, "superclass:CD": 0.0, "superclass:HYP": 0.0}
    assert {k: v for k, v in two.labels.items() if v} == {"scp:IMI": 1.0, "scp:LVH": 1.0, "scp:SR": 1.0,
                                                          "superclass:MI": 1.0, "superclass:HYP": 1.0}
    assert [k for k in four.labels if k.startswith("superclass:")] == [
        "superclass:NORM", "superclass:MI", "superclass:STTC", "superclass:CD", "superclass:HYP"]
    assert not any(v for k, v in four.labels.items() if k.startswith("superclass:"))
    assert one.meta == {"strat_fold": 3, "age": 56.0, "sex": "female", "scp_likelihood": {"NORM": 100.0, "SR": 0.0}}
    assert two.meta["sex"] == "male" and two.meta["age"] == 90.0 and two.meta["age_over_89"] is True
    assert "age" not in four.meta and four.meta["strat_fold"] == 9


def test_ptbxl_without_statements_has_scp_labels_only(ptbxl):
    root, _ = ptbxl
    (root / "scp_statements.csv").unlink()
    item = next(iter(PTBXLReader(root).items()))
    assert item.labels == {"scp:NORM": 1.0, "scp:SR": 1.0}


@pytest.mark.parametrize("rate", [500, 100])
def test_ptbxl_reads_the_chosen_rate_in_mV_and_ecgfast_lead_order(ptbxl, rate):
    root, signals = ptbxl
    reader = PTBXLReader(root, rate=rate)
    item = next(iter(reader.items()))
    rec = reader.read(item)
    assert rec.fs == rate and rec.signal.shape == (8, 10 * rate)
    assert rec.source.endswith(f"records{rate}/00000/00001_{'hr' if rate == 500 else 'lr'}")
    np.testing.assert_allclose(rec.signal, signals[1][rate][:, ORDER].T, atol=WFDB_ATOL)
    assert rec.record_id == "ptbxl-1" and rec.patient_id == "15709" and rec.meta["patient_id_known"] is True
    assert rec.labels["superclass:NORM"] == 1.0 and rec.meta["strat_fold"] == 3


def test_ptbxl_unparsable_row_is_enumerated_and_rejected_on_read(ptbxl):
    root, _ = ptbxl
    reader = PTBXLReader(root)
    item = [it for it in reader.items() if it.record_id == "ptbxl-3"][0]
    assert item.patient_id == "20372"
    with pytest.raises(RecordError) as err:
        reader.read(item)
    assert err.value.reason == RejectReason.UNREADABLE
    assert "ecg_id 3" in str(err.value) and "scp_codes" in str(err.value)


def test_ptbxl_record_without_a_lead_is_rejected(ptbxl):
    root, _ = ptbxl
    reader = PTBXLReader(root)
    item = [it for it in reader.items() if it.record_id == "ptbxl-4"][0]
    with pytest.raises(RecordError) as err:
        reader.read(item)
    assert err.value.reason == RejectReason.MISSING_LEADS and "V5" in str(err.value)


def test_ptbxl_reader_and_items_pickle(ptbxl):
    root, signals = ptbxl
    reader = roundtrip(PTBXLReader(root, rate=100))
    rec = reader.read(roundtrip(next(iter(reader.items()))))
    np.testing.assert_allclose(rec.signal, signals[1][100][:, ORDER].T, atol=WFDB_ATOL)


def test_a_ptbxl_folder_with_only_records100_prepares_with_no_flags_at_100_hz(ptbxl, tmp_path, caplog, capsys):
    """Issue 22: the 100 Hz files alone (PTB-XL's records100/, as ../shared's ptbxl-mini ships them) are found,
    read and said so; the store's rate follows them; the split is PTB-XL's strat_fold (9 val, 10 test)."""
    import shutil

    from ecgfast.data.store import ECGStore
    from ecgfast.prepare.cli import main as prepare_main

    root, _ = ptbxl
    shutil.rmtree(root / "records500")
    db = pd.read_csv(root / "ptbxl_database.csv")
    db.loc[db["ecg_id"] == 2, "patient_id"] = 99.0  # the fixture's patient 15709 sits in folds 3 and 10
    db.to_csv(root / "ptbxl_database.csv", index=False)
    with caplog.at_level("INFO"):
        assert prepare_main([str(root), "--out", str(tmp_path / "store"), "--workers", "1"]) == 0
    assert "only records100/ is there" in caplog.text and "store rate: 100 Hz" in caplog.text
    store = ECGStore(tmp_path / "store")
    assert store.fs == 100.0 and store.n_samples == 1000 and len(store) == 2  # ptbxl-3 and ptbxl-4 are rejects
    assert list(store.manifest["split"]) == ["train", "test"]  # folds 3 and 10
    # asking for the absent 500 Hz files names the folder that is there and the flag
    capsys.readouterr()
    assert prepare_main([str(root), "--out", str(tmp_path / "s500"), "--rate", "500"]) == 2
    err = capsys.readouterr().err
    assert "no records500/" in err and "--rate 100" in err and not (tmp_path / "s500").exists()
    # --fs still wins
    assert prepare_main([str(root), "--out", str(tmp_path / "s250"), "--workers", "1", "--fs", "250"]) == 0
    assert ECGStore(tmp_path / "s250").fs == 250.0


def test_ptbxl_errors(tmp_path, ptbxl):
    with pytest.raises(FileNotFoundError, match="ptbxl_database.csv"):
        PTBXLReader(tmp_path / "nowhere")
    root, _ = ptbxl
    with pytest.raises(ValueError, match="100 or 500"):
        PTBXLReader(root, rate=250)
    pd.DataFrame({"ecg_id": [1], "patient_id": [2]}).to_csv(root / "ptbxl_database.csv", index=False)
    with pytest.raises(ValueError, match="scp_codes"):
        PTBXLReader(root)


def test_parse_scp_codes():
    assert parse_scp_codes("{'NORM': 100.0, 'SR': 0.0}") == {"NORM": 100.0, "SR": 0.0}
    for bad in ["{'NORM': 100.0", "['NORM']", "", "__import__('os')"]:
        with pytest.raises((ValueError, SyntaxError)):
            parse_scp_codes(bad)


# ---- MIMIC-IV-ECG ------------------------------------------------------------------------------------------

def test_mimic_items_and_read(tmp_path):
    root = tmp_path / "mimic"
    rows, signals = [], {}
    for seed, (subject, study) in enumerate([(10000032, 40689238), (10000032, 44458630), (10000117, 45090959)]):
        rel = f"files/p{str(subject)[:4]}/p{subject}/s{study}/{study}"
        folder = root / rel.rsplit("/", 1)[0]
        signals[study] = ecg_like(seed=seed)
        write_record(folder, str(study), signals[study])
        rows.append({"subject_id": subject, "study_id": study, "file_name": study,
                     "ecg_time": f"2180-07-2{seed} 08:44:00", "path": rel})
    rows.append({"subject_id": 10000118, "study_id": 45000000, "file_name": 45000000, "ecg_time": "", "path": ""})
    pd.DataFrame(rows).to_csv(root / "record_list.csv", index=False)

    reader = roundtrip(MIMICECGReader(root))
    items = list(reader.items())
    assert [it.record_id for it in items] == ["mimic-40689238", "mimic-44458630", "mimic-45090959", "mimic-45000000"]
    assert [it.patient_id for it in items] == ["10000032", "10000032", "10000117", "10000118"]
    assert items[1].meta == {"ecg_time": "2180-07-21 08:44:00"}
    rec = reader.read(roundtrip(items[2]))
    assert rec.record_id == "mimic-45090959" and rec.patient_id == "10000117" and rec.fs == 500.0
    assert rec.meta["ecg_time"] == "2180-07-22 08:44:00"
    np.testing.assert_allclose(rec.signal, signals[45090959][:, ORDER].T, atol=WFDB_ATOL)
    with pytest.raises(RecordError) as err:
        reader.read(items[3])
    assert err.value.reason == RejectReason.UNREADABLE and "path" in str(err.value) and "45000000" in str(err.value)


def test_mimic_missing_csv(tmp_path):
    with pytest.raises(FileNotFoundError, match="record_list.csv"):
        MIMICECGReader(tmp_path)


# ---- numpy arrays ------------------------------------------------------------------------------------------

@pytest.fixture
def arrays():
    """(5, 12, 1000) float32 in the 12-lead order, and 5 patient ids."""
    sig = np.stack([ecg_like(fs=100, seed=i).T for i in range(5)]).astype(np.float32)
    return sig, ["a", "a", "b", "c", "c"]


def test_array_reader_nlt_and_ntl_give_the_same_records(arrays):
    sig, pids = arrays
    nlt = ArrayReader(sig, pids, fs=100, lead_names=LEADS12)
    ntl = ArrayReader(np.ascontiguousarray(sig.transpose(0, 2, 1)), pids, fs=100, lead_names=LEADS12, layout="NTL")
    for a, b in zip(nlt.items(), ntl.items(), strict=True):
        ra, rb = nlt.read(a), ntl.read(b)
        assert ra.record_id == rb.record_id == a.record_id and ra.patient_id == a.patient_id
        np.testing.assert_array_equal(ra.signal, rb.signal)
    rec = nlt.read(list(nlt.items())[3])
    assert rec.record_id == "array-3" and rec.patient_id == "c" and rec.fs == 100.0 and rec.source == "array:3"
    assert rec.signal.dtype == np.float32 and rec.signal.flags.c_contiguous
    np.testing.assert_array_equal(rec.signal, sig[3][ORDER])


def test_array_reader_units_labels_and_record_ids(arrays):
    sig, pids = arrays
    reader = ArrayReader(sig[:, ORDER] * 1000, pids, fs=100, units="uV", record_ids=[f"r{i}" for i in range(5)],
                         labels={"low_ef": [0, 1, np.nan, 1, 0], "k": np.arange(5) * 0.5})
    items = list(reader.items())
    assert [it.record_id for it in items] == ["r0", "r1", "r2", "r3", "r4"]
    assert items[1].labels == {"low_ef": 1.0, "k": 0.5} and items[2].labels == {"k": 1.0}
    np.testing.assert_allclose(reader.read(items[1]).signal, sig[1][ORDER], rtol=1e-6)
    volts = ArrayReader(sig[:, ORDER] / 1000, pids, fs=100, units="V")
    np.testing.assert_allclose(volts.read(next(iter(volts.items()))).signal, sig[0][ORDER], rtol=1e-6)


def test_array_reader_npy_is_memory_mapped_and_pickles_as_a_path(tmp_path, arrays):
    sig, pids = arrays
    path = tmp_path / "corpus.npy"
    np.save(path, sig)
    (tmp_path / "pids.txt").write_text("\n".join(pids) + "\n")
    reader = ArrayReader(str(path), str(tmp_path / "pids.txt"), fs=100, lead_names=LEADS12)
    assert reader._mmap is None  # nothing opened until a read
    blob = pickle.dumps(reader)
    assert len(blob) < sig.nbytes / 10  # the samples are not in the pickle
    items = [roundtrip(it) for it in reader.items()]
    assert [it.record_id for it in items] == [f"corpus-{i}" for i in range(5)]
    assert [it.patient_id for it in items] == pids
    worker = pickle.loads(blob)
    assert worker._patient_ids is None  # ids read from a file are not carried to workers
    rec = worker.read(items[4])
    assert isinstance(worker._mmap, np.memmap) and rec.source == f"{path}:4"
    np.testing.assert_array_equal(rec.signal, sig[4][ORDER])
    assert roundtrip(worker)._mmap is None
    assert [it.patient_id for it in worker.items()] == pids  # ids reloaded from the file

    np.save(tmp_path / "pids.npy", np.array([15709.0, 15709.0, 3.0, 4.0, 5.0]))
    numeric = ArrayReader(path, tmp_path / "pids.npy", fs=100, lead_names=LEADS12)
    assert [it.patient_id for it in numeric.items()] == ["15709", "15709", "3", "4", "5"]


def test_array_reader_rejects_inconsistent_inputs(tmp_path, arrays):
    sig, pids = arrays
    with pytest.raises(ValueError, match="patient_ids has 4 entries, signals have 5"):
        ArrayReader(sig, pids[:4], fs=100, lead_names=LEADS12)
    with pytest.raises(ValueError, match=r"labels\['y'\] has 3 entries"):
        ArrayReader(sig, pids, fs=100, lead_names=LEADS12, labels={"y": [1, 0, 1]})
    with pytest.raises(ValueError, match="record_ids has 6 entries"):
        ArrayReader(sig, pids, fs=100, lead_names=LEADS12, record_ids=[str(i) for i in range(6)])
    with pytest.raises(ValueError, match="8 lead names"):
        ArrayReader(sig, pids, fs=100)  # default 8 names for a 12-lead array
    with pytest.raises(ValueError, match="missing lead"):
        ArrayReader(sig[:, :11], pids, fs=100, lead_names=LEADS12[:10] + ["V6"])
    with pytest.raises(ValueError, match="layout"):
        ArrayReader(sig, pids, fs=100, lead_names=LEADS12, layout="LTN")
    with pytest.raises(ValueError, match="units"):
        ArrayReader(sig, pids, fs=100, lead_names=LEADS12, units="mmHg")
    with pytest.raises(ValueError, match="fs"):
        ArrayReader(sig, pids, fs=0, lead_names=LEADS12)
    with pytest.raises(ValueError, match="3-D"):
        ArrayReader(sig[0], pids, fs=100, lead_names=LEADS12)
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        ArrayReader(tmp_path / "missing.npy", pids, fs=100)


# ---- CODE-15% ----------------------------------------------------------------------------------------------

CODE15_COLUMNS = ["exam_id", "age", "is_male", "nn_predicted_age", "1dAVb", "RBBB", "LBBB", "SB", "ST", "AF",
                  "patient_id", "death", "timey", "normal_ecg", "trace_file"]


@pytest.fixture
def code15(tmp_path):
    """exams.csv + exams_part0.hdf5: a 10 s exam, a 7 s exam, an exam missing from the CSV, an all-zero exam and
    a filler row; the CSV also lists an exam of the absent exams_part1.hdf5. Returns (root, {exam: signal})."""
    h5py = pytest.importorskip("h5py")
    root = tmp_path / "code15"
    root.mkdir()
    exams = [  # exam_id, age, is_male, 1dAVb, RBBB, normal_ecg, patient_id, trace_file
        (1169160, 81, True, False, True, False, 523632, "exams_part0.hdf5"),
        (2873686, 57, False, True, False, False, 1724173, "exams_part0.hdf5"),
        (168405, 38, True, False, False, True, 1724173, "exams_part0.hdf5"),
        (1000000, 40, False, False, False, True, 999, "exams_part1.hdf5"),
    ]
    rows = []
    for exam, age, male, avb, rbbb, normal, patient, part in exams:
        rows.append({"exam_id": exam, "age": age, "is_male": male, "nn_predicted_age": age + 1.5, "1dAVb": avb,
                     "RBBB": rbbb, "LBBB": False, "SB": False, "ST": False, "AF": False, "patient_id": patient,
                     "death": "", "timey": "", "normal_ecg": normal, "trace_file": part})
    pd.DataFrame(rows, columns=CODE15_COLUMNS).to_csv(root / "exams.csv", index=False)
    ten = ecg_like(fs=400, seconds=10, seed=1).astype(np.float32)  # 4000 samples: 48 zeros each side
    seven = ecg_like(fs=400, seconds=7, seed=2).astype(np.float32)  # 2800 samples: 648 zeros each side
    other = ecg_like(fs=400, seconds=10.24, seed=3).astype(np.float32)
    tracings = np.zeros((5, 4096, 12), np.float32)
    tracings[0, 48:4048] = ten
    tracings[1, 648:3448] = seven
    tracings[2] = other
    with h5py.File(root / "exams_part0.hdf5", "w") as f:
        f["tracings"] = tracings  # row 3: exam 168405, all zeros; row 4: filler
        f["exam_id"] = np.array([1169160, 2873686, 555, 168405, 0], dtype=np.int64)
    return root, {1169160: ten, 2873686: seven, 555: other}


def test_code15_items_join_the_csv_and_skip_filler_rows(code15):
    from ecgfast.data.readers.code15 import Code15Reader

    root, _ = code15
    items = list(Code15Reader(root).items())
    assert [it.record_id for it in items] == ["code15-1169160", "code15-2873686", "code15-555", "code15-168405"]
    first, second = items[0], items[1]
    assert first.patient_id == "523632" and second.patient_id == "1724173" and items[2].patient_id is None
    assert first.labels == {"code:1dAVb": 0.0, "code:RBBB": 1.0, "code:LBBB": 0.0, "code:SB": 0.0, "code:ST": 0.0,
                            "code:AF": 0.0, "code:normal_ecg": 0.0}
    assert second.labels["code:1dAVb"] == 1.0
    assert first.meta == {"age": 81.0, "sex": "male"} and second.meta == {"age": 57.0, "sex": "female"}


def test_code15_trims_zero_padding_and_keeps_lead_order_and_scale(code15):
    from ecgfast.data.readers.code15 import Code15Reader

    root, signals = code15
    reader = Code15Reader(root)
    items = {it.record_id: it for it in reader.items()}
    rec = reader.read(items["code15-2873686"])
    assert rec.fs == 400.0 and rec.signal.shape == (8, 2800) and rec.meta["zero_padding"] == [648, 648]
    np.testing.assert_array_equal(rec.signal, signals[2873686][:, ORDER].T)
    assert rec.patient_id == "1724173" and rec.labels["code:1dAVb"] == 1.0 and rec.meta["sex"] == "female"
    ten = reader.read(items["code15-1169160"])
    assert ten.signal.shape == (8, 4000) and ten.meta["zero_padding"] == [48, 48]
    tenth = Code15Reader(root, scale=0.1).read(items["code15-1169160"])
    np.testing.assert_allclose(tenth.signal, signals[1169160][:, ORDER].T * 0.1, rtol=1e-6)


def test_code15_rejects_unknown_and_empty_exams(code15):
    from ecgfast.data.readers.code15 import Code15Reader

    root, _ = code15
    reader = Code15Reader(root)
    items = {it.record_id: it for it in reader.items()}
    with pytest.raises(RecordError) as err:
        reader.read(items["code15-555"])
    assert err.value.reason == RejectReason.UNREADABLE and "not in exams.csv" in str(err.value)
    with pytest.raises(RecordError) as err:
        reader.read(items["code15-168405"])
    assert err.value.reason == RejectReason.FLAT_LEAD and "168405" in str(err.value)


def test_code15_pickles_without_its_open_files(code15):
    from ecgfast.data.readers.code15 import Code15Reader

    root, signals = code15
    reader = Code15Reader(root)
    item = next(iter(reader.items()))
    reader.read(item)
    assert reader._handles  # the file stays open in this process
    worker = roundtrip(reader)
    assert worker._handles == {}
    rec = worker.read(roundtrip(item))
    np.testing.assert_array_equal(rec.signal, signals[1169160][:, ORDER].T)
    worker.close()
    reader.close()


def test_code15_errors(tmp_path, code15, monkeypatch):
    from ecgfast.data.readers.code15 import Code15Reader

    with pytest.raises(FileNotFoundError, match="exams.csv"):
        Code15Reader(tmp_path / "empty")
    root, _ = code15
    with pytest.raises(ValueError, match="scale"):
        Code15Reader(root, scale=0)
    reader = Code15Reader(root)
    monkeypatch.setitem(sys.modules, "h5py", None)  # as if h5py were not installed
    with pytest.raises(ImportError, match=r"pip install ecgfast\[hdf5\]"):
        list(reader.items())
    (root / "exams_part0.hdf5").unlink()
    with pytest.raises(FileNotFoundError, match="no .hdf5 files"):
        Code15Reader(root)
