"""The WFDB and CinC readers: lead mapping, header quirks, and every bad-input case, on files the tests write."""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
import wfdb
from wfdb_factory import LEADS12, ecg_like, write_digital_record, write_record

from ecgfast.data.leads import lead_indices, normalise_lead_name
from ecgfast.data.readers.cinc import CinCReader, parse_cinc_comments
from ecgfast.data.readers.wfdb_record import WFDBReader, read_wfdb
from ecgfast.data.record import RecordError, RejectReason

ORDER = [0, 1, 6, 7, 8, 9, 10, 11]  # I, II, V1..V6 within LEADS12


def test_reads_the_8_leads_in_mV_in_ecgfast_order(tmp_path):
    sig = ecg_like()
    base = write_record(tmp_path, "r1", sig)
    rec = read_wfdb(base)
    assert rec.record_id == "r1" and rec.fs == 500.0 and rec.signal.shape == (8, 5000)
    assert rec.signal.dtype == np.float32
    np.testing.assert_allclose(rec.signal, sig[:, ORDER].T, atol=0.5e-3 + 1e-6)  # 1000 adc/mV
    assert rec.patient_id == "r1" and rec.meta["patient_id_known"] is False


def test_lead_names_map_case_insensitively_in_any_order(tmp_path):
    sig = ecg_like()
    names = ["v6", "AVR", "lead II", "v1", "V2", "D1", "v3", "III", "avl", "V4", "aVF", "V5"]
    base = write_record(tmp_path, "r2", sig, sig_name=names)
    rec = read_wfdb(base)
    want = [names.index(n) for n in ["D1", "lead II", "v1", "V2", "v3", "V4", "V5", "v6"]]
    np.testing.assert_allclose(rec.signal, sig[:, want].T, atol=0.5e-3 + 1e-6)


@pytest.mark.parametrize("name,canon", [("aVR", "AVR"), ("avr", "AVR"), ("MLII", "II"), ("lead_i", "I"),
                                        ("C3", "V3"), (" v5 ", "V5")])
def test_normalise_lead_name(name, canon):
    assert normalise_lead_name(name) == canon


def test_duplicate_lead_is_ambiguous():
    with pytest.raises(RecordError) as err:
        lead_indices(["I", "II", "i", "V1", "V2", "V3", "V4", "V5", "V6"], "x")
    assert err.value.reason == RejectReason.HEADER_MISMATCH


def test_missing_lead_is_rejected_and_named(tmp_path):
    base = write_record(tmp_path, "r3", ecg_like(n_leads=11), sig_name=LEADS12[:10] + ["V6"])  # no V5
    with pytest.raises(RecordError) as err:
        read_wfdb(base)
    assert err.value.reason == RejectReason.MISSING_LEADS and "V5" in str(err.value) and "r3" in str(err.value)


def test_truncated_signal_file(tmp_path):
    base = write_record(tmp_path, "r4")
    dat = base.with_suffix(".dat")
    dat.write_bytes(dat.read_bytes()[: 12 * 2 * 3000])
    with pytest.raises(RecordError) as err:
        read_wfdb(base)
    assert err.value.reason == RejectReason.TRUNCATED and "r4.dat" in str(err.value)


def test_signal_longer_than_header_says(tmp_path):
    base = write_record(tmp_path, "r5")
    dat = base.with_suffix(".dat")
    dat.write_bytes(dat.read_bytes() + bytes(12 * 2 * 100))
    with pytest.raises(RecordError) as err:
        read_wfdb(base)
    assert err.value.reason == RejectReason.HEADER_MISMATCH


def test_checksum_mismatch_is_header_mismatch(tmp_path):
    base = write_record(tmp_path, "r6")
    dat = base.with_suffix(".dat")
    raw = bytearray(dat.read_bytes())
    raw[2 * 12 * 10] ^= 0x40  # flip one bit of lead I, sample 10
    dat.write_bytes(bytes(raw))
    with pytest.raises(RecordError) as err:
        read_wfdb(base)
    assert err.value.reason == RejectReason.HEADER_MISMATCH and "checksum" in str(err.value)


@pytest.mark.parametrize("damage", ["no_signal_file", "garbage_header", "no_header"])
def test_unreadable(tmp_path, damage):
    base = write_record(tmp_path, "r7")
    if damage == "no_signal_file":
        base.with_suffix(".dat").unlink()
    elif damage == "garbage_header":
        base.with_suffix(".hea").write_text("this is not a header\n\x00\x01")
    else:
        base.with_suffix(".hea").unlink()
    with pytest.raises(RecordError) as err:
        read_wfdb(base)
    assert err.value.reason == RejectReason.UNREADABLE and "r7" in str(err.value)


def test_missing_samples_become_nan_and_are_rejected_later(tmp_path):
    d = np.rint(ecg_like() * 1000).astype(np.int16)
    d[100:110, 7] = -32768  # format 16's "no sample" code, in V2
    rec = read_wfdb(write_digital_record(tmp_path, "r8", d))
    assert np.isnan(rec.signal[3, 100:110]).all() and np.isfinite(rec.signal[:, :100]).all()


def test_georgia_header_quirk_is_repaired_without_touching_the_file(tmp_path):
    base = write_record(tmp_path, "E00001")
    hea = base.with_suffix(".hea")
    text = hea.read_text().splitlines()
    text[0] = text[0].replace("E00001", "E00001.mat", 1)
    hea.write_text("\n".join(text) + "\n")
    with pytest.raises(wfdb.io._header.HeaderSyntaxError):
        wfdb.rdheader(str(base))  # wfdb itself refuses this header
    rec = read_wfdb(base)
    assert rec.record_id == "E00001" and rec.signal.shape == (8, 5000)
    assert hea.read_text().startswith("E00001.mat")  # the user's file is left as it was


def test_cinc_comments_become_labels_and_meta(tmp_path):
    comments = ["Age: 61", "Sex: Female", "Dx: 426783006,164889003", "Rx: Unknown"]
    write_record(tmp_path / "g", "A0001", comments=comments)
    write_record(tmp_path / "g", "A0002", comments=["Age: NaN", "Sex: Unknown", "Dx: 426783006"])
    reader = CinCReader(str(tmp_path / "g"))
    reader = pickle.loads(pickle.dumps(reader))
    items = list(reader.items())
    assert [i.record_id for i in items] == ["A0001", "A0002"]
    rec = reader.read(pickle.loads(pickle.dumps(items[0])))
    assert rec.labels == {"dx:426783006": 1.0, "dx:164889003": 1.0}
    assert rec.meta["age"] == 61.0 and rec.meta["sex"] == "female"
    assert "age" not in items[1].meta and "sex" not in items[1].meta
    assert parse_cinc_comments(["#Dx: 1, 2"])[0] == {"dx:1": 1.0, "dx:2": 1.0}


def test_wfdb_reader_finds_records_recursively_with_patient_map(tmp_path):
    write_record(tmp_path / "a" / "b", "x1")
    write_record(tmp_path / "c", "x2")
    shutil.copy(tmp_path / "c" / "x2.hea", tmp_path / "c" / "notes.txt")
    reader = WFDBReader(str(tmp_path), patient_ids={"x2": "P9"})
    items = list(reader.items())
    assert [(i.record_id, i.patient_id) for i in items] == [("x1", None), ("x2", "P9")]
    assert reader.read(items[1]).patient_id == "P9"
