"""Issue 16, the data layer: each attack of the adversarial run, reproduced on files built here, and its fix.

1 --overwrite and nested folders; 4 header values wfdb takes silently, implausible amplitudes; 5 files that hang
or exhaust a reader; 6 kill -9 of prepare; 9 privacy of reports and leftovers; 10 durability of every write.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from wfdb_factory import ecg_like, set_header_field, write_record

from ecgfast.data import store as store_module
from ecgfast.data.readers.cinc import CinCReader
from ecgfast.data.readers.mimic import MIMICECGReader
from ecgfast.data.readers.wfdb_record import WFDBReader, read_wfdb
from ecgfast.data.record import RecordError
from ecgfast.data.store import ECGStore, StoreError, write_json_atomic, write_shard
from ecgfast.prepare import pipeline as prep
from ecgfast.prepare.cli import main as prepare_main

TESTS = Path(__file__).resolve().parent


def _good(folder: Path, n: int = 3, prefix: str = "g") -> None:
    for i in range(n):
        write_record(folder, f"{prefix}{i}", ecg_like(seed=i))


def _prepare(sources, out, **kw):
    readers = [WFDBReader(str(s)) for s in sources]
    return prep.prepare_store(readers, out, workers=1, progress=False, **kw)


def _rejects(out: Path) -> dict[str, str]:
    df = pd.read_csv(out / "rejects.csv")
    return dict(zip(df["record_id"], df["reason"], strict=True))


# ---- 1: --overwrite deletes only prepare's own folder, never a source -----------------------------------------

def test_overwrite_refuses_a_folder_prepare_did_not_make(tmp_path):
    _good(tmp_path / "src")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    with pytest.raises(StoreError, match="not made by ecgfast-prepare"):
        _prepare([tmp_path / "src"], out, overwrite=True)
    assert (out / "thesis.tex").read_text() == "years of work"
    assert prepare_main([str(tmp_path / "src"), "--out", str(out), "--overwrite", "--quiet"]) == 2
    assert (out / "thesis.tex").exists()


def test_overwrite_keeps_a_users_file_inside_a_store(tmp_path):
    _good(tmp_path / "src")
    out = tmp_path / "store"
    _prepare([tmp_path / "src"], out)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match=r"--overwrite refused.*notes\.txt"):
        _prepare([tmp_path / "src"], out, overwrite=True)
    assert (out / "notes.txt").exists() and ECGStore(out).manifest.shape[0] == 3  # nothing deleted
    (out / "notes.txt").unlink()
    _prepare([tmp_path / "src"], out, overwrite=True)
    assert len(ECGStore(out, verify=True)) == 3


def test_a_source_inside_out_or_out_inside_a_source_is_refused(tmp_path):
    out = tmp_path / "OUT"
    _good(out / "data")  # the source lives inside --out
    (out / ".ecgfast-prepare").write_text("{}")  # even a folder that looks like prepare's
    with pytest.raises(StoreError, match="is inside --out"):
        _prepare([out / "data"], out, overwrite=True)
    assert len(list((out / "data").glob("*.hea"))) == 3  # the source is intact
    _good(tmp_path / "src")
    with pytest.raises(StoreError, match="is inside source"):
        _prepare([tmp_path / "src"], tmp_path / "src" / "store")
    assert not (tmp_path / "src" / "store").exists()


def test_a_second_run_on_the_same_out_is_refused_while_the_first_holds_it(tmp_path):
    from ecgfast.data import store_folder

    _good(tmp_path / "src")
    out = tmp_path / "store"
    store_folder.claim(out)
    with store_folder.exclusive(out):  # as a running prepare holds it
        with pytest.raises(StoreError, match="another ecgfast-prepare is writing"):
            _prepare([tmp_path / "src"], out)
    _prepare([tmp_path / "src"], out)
    (tmp_path / "file").write_text("x")
    assert prepare_main([str(tmp_path / "src"), "--out", str(tmp_path / "file"), "--quiet"]) == 2


# ---- 4: header values wfdb replaces silently; amplitudes no ECG has -------------------------------------------

@pytest.mark.parametrize("line,field,value,reason", [
    (0, 2, "-500", "bad_sampling_rate"),   # wfdb: 250 Hz, the record stretched over twice its time
    (0, 2, "nan", "bad_sampling_rate"),
    (0, 2, "1e9", "bad_sampling_rate"),    # wfdb: 1 Hz
    (1, 2, "0/mV", "bad_gain"),            # wfdb: 200, lead I 5x too large
    (2, 2, "nan(0)/mV", "bad_gain"),       # wfdb: 200
    (1, 2, "1e-30(0)/mV", "bad_gain"),     # peaks of 1e33 mV
    (7, 2, "-1000(0)/mV", "bad_gain"),     # V1 inverted
])
def test_hostile_header_values_are_rejects_with_reasons(tmp_path, line, field, value, reason):
    base = write_record(tmp_path / "src", "h1")
    set_header_field(base, line, field, value)
    with pytest.raises(RecordError) as err:
        read_wfdb(base)
    assert err.value.reason.value == reason and "h1" in str(err.value)
    assert value.split("(")[0].split("/")[0] in str(err.value)  # the message quotes the header's value
    report = _prepare([tmp_path / "src"], tmp_path / "store")
    assert report.accepted == 0 and _rejects(tmp_path / "store") == {"h1": reason}


def test_a_missing_rate_is_rejected_and_an_unused_channels_gain_does_not_matter(tmp_path):
    base = write_record(tmp_path, "h2")
    hea = Path(str(base) + ".hea")
    lines = hea.read_text().splitlines()
    lines[0] = " ".join(lines[0].split()[:2])  # "h2 12": wfdb would assume 250 Hz
    hea.write_text("\n".join(lines) + "\n")
    with pytest.raises(RecordError) as err:
        read_wfdb(base)
    assert err.value.reason == "bad_sampling_rate"
    base = write_record(tmp_path, "h3")
    set_header_field(base, 3, 2, "0/mV")  # lead III: ecgfast does not use it
    assert read_wfdb(base).signal.shape == (8, 5000)


def test_an_implausible_amplitude_never_reaches_the_store(tmp_path):
    sig = ecg_like(seed=1)
    sig[1000:1010, 7] = 80.0  # 80 mV in V2 with a valid header: no ECG is that large
    write_record(tmp_path / "src", "big", sig, fmt="32")
    write_record(tmp_path / "src", "ok", ecg_like(seed=2) * 20, fmt="32")  # 20x a normal ECG, within 50 mV: kept
    report = _prepare([tmp_path / "src"], tmp_path / "store")
    assert report.accepted == 1 and _rejects(tmp_path / "store") == {"big": "implausible_amplitude"}
    msg = pd.read_csv(tmp_path / "store" / "rejects.csv")["message"].iat[0]
    assert "V2" in msg and "80" in msg and "50 mV" in msg


# ---- 5: files that hang a reader or exhaust memory ------------------------------------------------------------

def _run_python(code: str, timeout: float) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (a hang is a failed test, not a hung suite)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)


@pytest.mark.parametrize("which", ["signal", "header"])
def test_a_fifo_is_refused_without_hanging(tmp_path, which):
    src = tmp_path / "src"
    _good(src, 2)
    base = write_record(src, "fifo", comments=["Dx: 1"])
    victim = Path(str(base) + (".dat" if which == "signal" else ".hea"))
    victim.unlink()
    os.mkfifo(victim)  # opening it for reading blocks until a writer comes: none will
    code = f"""
        import json
        from ecgfast.data.readers.cinc import CinCReader
        from ecgfast.prepare import prepare_store
        r = prepare_store([CinCReader({str(src)!r})], {str(tmp_path / 'store')!r}, workers=1, progress=False)
        print(json.dumps(r.by_reason))
    """
    done = _run_python(code, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"unsafe_file": 1}
    assert "FIFO" in pd.read_csv(tmp_path / "store" / "rejects.csv")["message"].iat[0]


@pytest.mark.parametrize("claimed", [20_000_000, 1_000_000_000])
def test_a_sparse_file_claiming_a_huge_length_is_read_only_as_far_as_the_store_keeps(tmp_path, claimed):
    base = write_record(tmp_path / "src", "huge")
    set_header_field(base, 0, 3, str(claimed))
    with open(str(base) + ".dat", "r+b") as f:
        f.truncate(12 * 2 * claimed)  # sparse: no disk space, but as long as the header says (24 GB for 1e9)
    code = f"""
        import resource, time
        from ecgfast.data.readers.wfdb_record import WFDBReader
        from ecgfast.prepare import prepare_store
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        r = prepare_store([WFDBReader({str(tmp_path / 'src')!r})], {str(tmp_path / 'store')!r}, workers=1,
                          progress=False)
        grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        print(r.accepted, time.perf_counter() - t0, grew)
    """
    done = _run_python(code, timeout=300)
    assert done.returncode == 0, done.stderr
    accepted, seconds, grew_mb = done.stdout.split()[-3:]
    assert int(accepted) == 1
    assert float(grew_mb) < 200, f"reading one record grew the process by {float(grew_mb):.0f} MB"
    assert float(seconds) < 30
    store = ECGStore(tmp_path / "store", verify=True)
    np.testing.assert_allclose(store.read_mv([0])[0], read_wfdb(base, max_seconds=10).signal[:, :5000],
                               atol=1 / store.gain[0])


def _as_mat(base: Path) -> Path:
    """Rename a record's .dat to .mat (as CinC ships them) and fix its header."""
    Path(str(base) + ".dat").rename(str(base) + ".mat")
    hea = Path(str(base) + ".hea")
    hea.write_text(hea.read_text().replace(f"{base.name}.dat", f"{base.name}.mat"))
    return Path(str(base) + ".mat")


def test_files_symlinked_or_named_outside_the_input_are_refused(tmp_path):
    src, outside = tmp_path / "in", tmp_path / "outside"
    _good(src, 2)
    mat = _as_mat(write_record(outside, "A0001", comments=["Dx: 1"]))
    shutil.copy(str(mat.with_suffix(".hea")), src / "A0001.hea")
    os.symlink(mat, src / "A0001.mat")  # the signal file is elsewhere
    os.symlink(outside / "A0001.hea", src / "A0002.hea")  # the header is elsewhere
    write_record(outside, "x", ecg_like(seed=5))
    base = write_record(src, "A0003")
    hea = Path(str(base) + ".hea")
    hea.write_text(hea.read_text().replace("A0003.dat", "../outside/x.dat"))  # the header climbs out
    report = prep.prepare_store([CinCReader(str(src))], tmp_path / "store", workers=1, progress=False)
    assert report.accepted == 2
    assert _rejects(tmp_path / "store") == {"A0001": "unsafe_file", "A0002": "unsafe_file", "A0003": "unsafe_file"}


def _mimic(root: Path, rows: list[tuple[int, int, str]]) -> None:
    pd.DataFrame([{"subject_id": s, "study_id": st, "path": p} for s, st, p in rows]).to_csv(
        root / "record_list.csv", index=False)


def test_mimic_paths_that_are_absolute_or_climb_out_are_refused(tmp_path):
    root = tmp_path / "mimic"
    write_record(root / "files/p1000/p10000032/s40000001", "40000001", ecg_like(seed=1))
    elsewhere = write_record(tmp_path / "elsewhere" / "s40000002", "40000002", ecg_like(seed=2))
    write_record(tmp_path / "up" / "s40000003", "40000003", ecg_like(seed=3))
    _mimic(root, [(10000032, 40000001, "files/p1000/p10000032/s40000001/40000001"),
                  (10000032, 40000002, str(elsewhere)),
                  (10000032, 40000003, "../up/s40000003/40000003")])
    report = prep.prepare_store([MIMICECGReader(root)], tmp_path / "store", workers=1, progress=False)
    assert report.accepted == 1
    assert _rejects(tmp_path / "store") == {"mimic-40000002": "unreadable", "mimic-40000003": "unreadable"}
    messages = " ".join(pd.read_csv(tmp_path / "store" / "rejects.csv")["message"])
    assert "absolute" in messages and "climbs out" in messages


# ---- 6: kill -9 of prepare's main process --------------------------------------------------------------------

def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (dead, not yet reaped by whoever inherited it) is dead
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _wait_dead(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


def test_kill_9_of_prepare_kills_its_workers_and_the_rerun_leaves_no_temporaries(tmp_path):
    pid_dir, out = tmp_path / "pids", tmp_path / "store"
    pid_dir.mkdir()
    code = f"""
        from slow_reader import SlowReader
        from ecgfast.prepare import prepare_store
        prepare_store([SlowReader(40, 1.0, {str(pid_dir)!r})], {str(out)!r}, workers=2, shard_size=10,
                      progress=False)
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    main = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env)
    deadline = time.monotonic() + 120
    while len(list(pid_dir.iterdir())) < 2 and time.monotonic() < deadline and main.poll() is None:
        time.sleep(0.1)
    workers = [int(p.name) for p in pid_dir.iterdir()]
    assert len(workers) == 2 and main.pid not in workers, "the two workers never started reading"
    os.kill(main.pid, signal.SIGKILL)
    main.wait()
    survivors = _wait_dead(workers, 10)
    for pid in survivors:  # leave no process behind, then fail
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"{len(survivors)} worker(s) outlived the killed prepare"
    # what a worker killed mid-write leaves: atomic_path's temporaries
    (out / "shards").mkdir(exist_ok=True)
    (out / "shards" / ".00001.npy.k1ll3d.tmp").write_bytes(b"half a shard")
    (out / ".parts" / ".00001.json.k1ll3d.tmp").write_text("{")
    from slow_reader import SlowReader

    report = prep.prepare_store([SlowReader(40, 0.0, str(pid_dir))], out, workers=1, shard_size=10, progress=False)
    assert report.accepted == 40
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert len(ECGStore(out, verify=True)) == 40


@pytest.mark.parametrize("use_prctl", [
    pytest.param(True, marks=pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux")),
    False])
def test_a_worker_dies_with_its_parent(use_prctl):
    child = ("import os, time; from ecgfast.data.worker_lifetime import die_with_parent; "
             f"die_with_parent(os.getppid(), poll_seconds={600 if use_prctl else 0.1}, use_prctl={use_prctl}); "
             "time.sleep(600)")
    parent = ("import subprocess, sys, time; "
              f"c = subprocess.Popen([sys.executable, '-c', {child!r}]); print(c.pid, flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    grandchild = int(proc.stdout.readline())
    time.sleep(3)  # the child has imported and armed itself
    assert _alive(grandchild)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    survivors = _wait_dead([grandchild], 10)
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert not survivors


# ---- 9: privacy ----------------------------------------------------------------------------------------------

def test_rejects_carry_no_subject_ids_and_parts_are_removed(tmp_path):
    root = tmp_path / "mimic"
    rows = []
    for study, seed in ((40000001, 1), (40000002, 2), (40000003, 3)):
        rel = f"files/p1000/p10000032/s{study}/{study}"
        write_record(root / rel.rsplit("/", 1)[0], str(study), ecg_like(seed=seed))
        rows.append((10000032, study, rel))
    Path(root / rows[1][2]).with_suffix(".dat").unlink()  # unreadable: its message names the file
    dat = Path(root / rows[2][2]).with_suffix(".dat")
    dat.write_bytes(dat.read_bytes()[:5000])  # truncated
    _mimic(root, rows)
    out = tmp_path / "store"
    report = prep.prepare_store([MIMICECGReader(root)], out, workers=1, progress=False)
    assert report.accepted == 1 and report.rejected == 2
    text = (out / "rejects.csv").read_text()
    assert "10000032" not in text and "p1000" not in text and str(tmp_path) not in text
    assert "files/p*/p*/s40000002/40000002" in text  # relative to the source, id parts redacted
    assert not (out / ".parts").exists()  # no plain copy of the patient ids beside the finished store
    assert set(ECGStore(out).manifest["patient_id"]) == {"10000032"}


def test_patient_ids_differing_only_by_surrounding_whitespace_are_one_patient(tmp_path):
    _good(tmp_path / "src", 4, prefix="r")
    pmap = tmp_path / "patients.csv"
    pmap.write_text("record_id,patient_id\nr0, P1\nr1,P1 \nr2,\tP1\t\nr3,P2\n")
    out = tmp_path / "store"
    assert prepare_main([str(tmp_path / "src"), "--out", str(out), "--patients", str(pmap), "--quiet",
                      "--workers", "1"]) == 0
    store = ECGStore(out)
    assert list(store.manifest["patient_id"]) == ["P1", "P1", "P1", "P2"]
    assert len(set(store.patient_ids)) == 2
    reader = WFDBReader(str(tmp_path / "src"), patient_ids={"r0": " Q ", "r1": "Q"})
    report = prep.prepare_store([reader], tmp_path / "direct", workers=1, progress=False)
    assert json.loads((tmp_path / "direct" / "prepare_report.json").read_text())["patients"] == 3
    assert report.accepted == 4


# ---- 10: durability ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("writer", ["shard", "json"])
def test_files_are_fsynced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch, writer):
    events: list[tuple[str, int]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.fstat(fd).st_ino))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.stat(src).st_ino))
        real_replace(src, dst)

    monkeypatch.setattr(store_module.os, "fsync", fsync)
    monkeypatch.setattr(store_module.os, "replace", replace)
    target = tmp_path / "shards" / "00000.npy"
    if writer == "shard":
        write_shard(target, np.zeros((2, 8, 50), np.int16))
    else:
        write_json_atomic(target, {"a": 1})
    file_ino, folder_ino = os.stat(target).st_ino, os.stat(target.parent).st_ino
    assert events.index(("fsync", file_ino)) < events.index(("replace", file_ino)) \
        < len(events) - 1 - events[::-1].index(("fsync", folder_ino))


def test_store_open_compares_shard_sizes_with_store_json(tmp_path):
    _good(tmp_path / "src", 4)
    out = tmp_path / "store"
    _prepare([tmp_path / "src"], out, shard_size=2)
    info = json.loads((out / "store.json").read_text())
    assert [s["bytes"] for s in info["shards"]] == [os.path.getsize(out / s["file"]) for s in info["shards"]]
    shard = out / "shards" / "00001.npy"
    good = shard.read_bytes()
    shard.write_bytes(good + b"\0" * 10)  # grown: the old check (header shape only) opened it
    with pytest.raises(StoreError, match="bytes on disk"):
        ECGStore(out)
    shard.write_bytes(b"")  # what a power cut before the data reached the disk leaves
    with pytest.raises(StoreError, match="0 bytes on disk"):
        ECGStore(out)
    for entry in info["shards"]:  # a store written before sizes were recorded: checked from its shape
        del entry["bytes"]
    (out / "store.json").write_text(json.dumps(info))
    shard.write_bytes(good + b"\0" * 10)
    with pytest.raises(StoreError, match="need"):
        ECGStore(out)
    shard.write_bytes(good)
    assert len(ECGStore(out, verify=True)) == 4


# ---- issue 20 (12): settings refused before any folder exists; a full disk -----------------------------------


@pytest.mark.parametrize(("flags", "match"), [
    (["--seconds", "0.001"], "seconds (the store's record length) must be in"),
    (["--seconds", "1e9"], "seconds (the store's record length) must be in"),
    (["--fs", "1"], "fs must be in [50, 10000] Hz"),
    (["--fs", "100000"], "fs must be in [50, 10000] Hz"),
    (["--split-by", "strat_fold", "--split-fractions", "0.7", "0.2", "0.1"], "--split-fractions would be ignored"),
    (["--split-by", "strat_fold", "--split-seed", "4"], "--split-seed would be ignored"),
    (["--split-by", "hash", "--test-folds", "3"], "--val-folds/--test-folds would be ignored"),
    (["--split-fractions", "0.9", "0.2", "0.1"], "sum to 1"),
])
def test_settings_errors_are_one_line_exit_2_before_any_folder(tmp_path, capsys, flags, match):
    src = tmp_path / "src"
    _good(src, 2)
    out = tmp_path / "new" / "store"
    assert prepare_main([str(src), "--out", str(out), "--quiet", "--workers", "1", *flags]) == 2
    err = capsys.readouterr().err
    assert match in err and err.startswith("ecgfast-prepare: error:") and err.count("\n") == 1, err
    assert not (tmp_path / "new").exists()


def test_a_full_disk_is_one_line_exit_4_nothing_half_written_and_the_rerun_finishes(tmp_path, capsys, monkeypatch):
    src = tmp_path / "src"
    _good(src, 5)
    out = tmp_path / "store"
    real = np.save
    calls = {"n": 0}

    def full_after_one_shard(f, arr, *a, **k):
        calls["n"] += 1
        if calls["n"] >= 2:  # the second shard: the disk is full half-way through its bytes
            f.write(b"\x93NUMPY partial")
            raise OSError(28, "No space left on device")
        return real(f, arr, *a, **k)

    monkeypatch.setattr(store_module.np, "save", full_after_one_shard)
    code = prepare_main([str(src), "--out", str(out), "--quiet", "--workers", "1", "--shard-size", "2"])
    err = capsys.readouterr().err
    assert code == 4 and "No space left on device" in err and "shards/00001.npy" in err, err
    assert err.count("\n") == 1
    names = {p.name for p in (out / "shards").iterdir()}
    assert names == {"00000.npy"} and not (out / "store.json").exists()  # no temporary, no half shard
    monkeypatch.setattr(store_module.np, "save", real)
    assert prepare_main([str(src), "--out", str(out), "--quiet", "--workers", "1", "--shard-size", "2"]) == 0
    assert len(ECGStore(out, verify=True)) == 5
