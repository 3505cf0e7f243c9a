"""ecgfast-prepare end to end on files the tests write: every bad-input case, parallel = serial, resume."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from wfdb_factory import ecg_like, write_record

from ecgfast.data.readers.cinc import CinCReader
from ecgfast.data.readers.wfdb_record import WFDBReader
from ecgfast.data.store import ECGStore, StoreError
from ecgfast.prepare import pipeline as prep
from ecgfast.prepare.cli import main as prepare_main


def _corpus(root):
    """12 good records and one of every bad kind. Returns {record_id: expected reason or None}."""
    expect = {}
    for i in range(12):
        write_record(root / "good", f"g{i:02d}", ecg_like(seed=i), comments=["Age: 50", "Sex: Male", "Dx: 1"])
        expect[f"g{i:02d}"] = None
    bad = root / "bad"
    base = write_record(bad, "b_trunc")
    base.with_suffix(".dat").write_bytes(base.with_suffix(".dat").read_bytes()[:1000])
    expect["b_trunc"] = "truncated"
    base = write_record(bad, "b_long")
    base.with_suffix(".dat").write_bytes(base.with_suffix(".dat").read_bytes() + bytes(2400))
    expect["b_long"] = "header_mismatch"
    write_record(bad, "b_missing", ecg_like(n_leads=8), sig_name=["I", "II", "III", "aVR", "V1", "V2", "V3", "V4"])
    expect["b_missing"] = "missing_leads"
    s = ecg_like()
    s[:, 6] = 0.3
    write_record(bad, "b_flat", s)
    expect["b_flat"] = "flat_lead"
    s = ecg_like()
    s[:, 0] = np.clip(s[:, 0] * 5, -0.5, 0.5)
    write_record(bad, "b_clip", s)
    expect["b_clip"] = "saturated_lead"
    write_record(bad, "b_short", ecg_like(seconds=3.0))
    expect["b_short"] = "too_short"
    base = write_record(bad, "b_garbage")
    base.with_suffix(".hea").write_text("garbage\n")
    expect["b_garbage"] = "unreadable"
    write_record(bad, "g03", ecg_like(seed=3))  # same id as a good record
    return expect


def _run(tmp_path, out="store", workers=1, shard_size=5, **kw):
    readers = [CinCReader(str(tmp_path / "good")), WFDBReader(str(tmp_path / "bad"))]
    return prep.prepare_store(readers, tmp_path / out, workers=workers, shard_size=shard_size, progress=False, **kw)


def test_every_bad_record_is_rejected_with_its_reason_and_nothing_is_lost(tmp_path):
    expect = _corpus(tmp_path)
    report = _run(tmp_path)
    assert report.found == report.accepted + report.rejected == len(expect) + 1  # + the duplicate
    rejects = pd.read_csv(tmp_path / "store" / "rejects.csv")
    got = dict(zip(rejects["record_id"] + "@" + rejects["reason"], rejects["message"], strict=False))
    for rid, reason in expect.items():
        if reason:
            assert f"{rid}@{reason}" in got, (rid, reason, got)
            assert rid in got[f"{rid}@{reason}"]  # the message names the record
    assert "g03@duplicate_id" in got
    store = ECGStore(tmp_path / "store", verify=True)
    assert sorted(store.manifest["record_id"]) == sorted(r for r, v in expect.items() if v is None)
    report_json = json.loads((tmp_path / "store" / "prepare_report.json").read_text())
    assert report_json["found"] == report.found and report_json["by_reason"]["flat_lead"] == 1
    assert json.loads(store.manifest["labels"].iat[0]) == {"dx:1": 1.0}


def test_parallel_equals_serial(tmp_path):
    _corpus(tmp_path)
    _run(tmp_path, "serial", workers=1)
    _run(tmp_path, "parallel", workers=2)
    a, b = ECGStore(tmp_path / "serial"), ECGStore(tmp_path / "parallel")
    pd.testing.assert_frame_equal(a.manifest.drop(columns="source"), b.manifest.drop(columns="source"))
    assert np.array_equal(a.read(np.arange(len(a))), b.read(np.arange(len(b))))


def test_resume_after_a_crash_redoes_nothing_and_duplicates_nothing(tmp_path, monkeypatch):
    _corpus(tmp_path)
    real = prep._process_shard
    calls = []

    def crash_on_third(out, shard, items):
        calls.append(shard)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if the run were killed mid-way
        return real(out, shard, items)

    monkeypatch.setattr(prep, "_process_shard", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path)
    out = tmp_path / "store"
    assert not list(out.rglob("*.tmp"))  # nothing half-written
    with pytest.raises(StoreError, match="resume"):
        ECGStore(out)
    calls.clear()
    report = _run(tmp_path)
    assert report.resumed_shards == 2 and calls == [2, 3]  # 19 unique ids in shards of 5: 0 and 1 were done
    monkeypatch.setattr(prep, "_process_shard", real)
    _run(tmp_path, "clean")
    a, b = ECGStore(out, verify=True), ECGStore(tmp_path / "clean")
    pd.testing.assert_frame_equal(a.manifest.drop(columns="source"), b.manifest.drop(columns="source"))


def test_refuses_to_mix_runs_or_overwrite_a_store(tmp_path, monkeypatch):
    _corpus(tmp_path)
    _run(tmp_path)
    with pytest.raises(StoreError, match="already there"):
        _run(tmp_path)
    _run(tmp_path, overwrite=True)
    (tmp_path / "store" / "store.json").unlink()  # a store damaged after it was finished...
    with pytest.raises(StoreError, match="damaged"):
        _run(tmp_path)  # ...is not silently rebuilt over
    real = prep._process_shard

    def crash_on_second(out, shard, items):
        if shard == 1:
            raise KeyboardInterrupt
        return real(out, shard, items)

    monkeypatch.setattr(prep, "_process_shard", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, overwrite=True)  # an unfinished run...
    monkeypatch.setattr(prep, "_process_shard", real)
    with pytest.raises(StoreError, match="other sources or settings"):
        _run(tmp_path, shard_size=7)  # ...is not resumed with other settings
    _run(tmp_path)  # but with the same ones
    ECGStore(tmp_path / "store", verify=True)


def test_cli_end_to_end(tmp_path, capsys):
    for i in range(3):
        write_record(tmp_path / "src", f"r{i}", ecg_like(seed=i, fs=250.0), fs=250.0)
    pmap = tmp_path / "patients.csv"
    pd.DataFrame({"record_id": ["r0", "r1", "r2"], "patient_id": ["A", "A", "B"]}).to_csv(pmap, index=False)
    out = tmp_path / "st"
    rc = prepare_main([str(tmp_path / "src"), "--out", str(out), "--patients", str(pmap), "--quiet", "--workers", "1",
                    "--notch", "50"])
    assert rc == 0 and "3 accepted" in capsys.readouterr().out
    store = ECGStore(out)
    assert store.fs == 500.0 and store.n_samples == 5000 and list(store.patient_ids) == ["A", "A", "B"]
    assert store.manifest["fs_source"].tolist() == [250.0] * 3
    assert store.info["preprocess"]["notch"] == 50.0
    assert prepare_main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "nowhere" in capsys.readouterr().err
