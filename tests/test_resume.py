"""Issue 20, pretraining side: every attack built at run time, as a hostile but ordinary user would.

Resume with the default logging and checkpoint intervals (kill -9, then rerun, twice); resume that refuses changed
settings or another store and records what it may change; provenance that accumulates; --overwrite only of
ecgfast-train's own folders; one writer per run folder (real processes); damaged, non-finite, incomplete and
symlinked checkpoints; SIGTERM during a checkpoint write; disk full; settings refused before any folder exists.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from ecgfast.data.store import ECGStore
from ecgfast.pretrain import checkpoint as checkpoint_mod
from ecgfast.pretrain import cli
from ecgfast.pretrain.checkpoint import CheckpointError, find_checkpoint, load_weights, resolve_checkpoint
from ecgfast.pretrain.config import SYNTHETIC_DEFAULTS
from ecgfast.pretrain.corpus import synthetic_store
from ecgfast.pretrain.provenance import load_provenance, merge, pretraining_provenance
from ecgfast.pretrain.run_folder import MARKER

# what a user of the embedded default types, made small: no --log-every, no --ckpt-every (the defaults apply)
SMALL = ["--synthetic-patients", "40", "--batch-size", "8", "--no-progress", "--seed", "3", "--model", "tiny"]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ECGFAST_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _cli(args: list[str], wrapper: str = "") -> subprocess.Popen:
    """ecgfast-train in a real process; ``wrapper`` is Python run first (to slow a write down, say)."""
    code = wrapper + "\nimport sys\nfrom ecgfast.pretrain.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _rows(run: Path) -> list[dict]:
    """The training rows of metrics.csv (the monitor's row of step 0, before any training, has no loss)."""
    with open(run / "metrics.csv") as f:
        return [r for r in csv.DictReader(f) if r["loss"]]


def _losses(run: Path) -> list[float]:
    return [float(r["loss"]) for r in _rows(run)]


def _step(ckpt: Path | None) -> int:
    return int(ckpt.name.split("-")[1]) if ckpt is not None else -1


def _wait_for_checkpoint(run: Path, proc: subprocess.Popen, at_least: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            if _step(find_checkpoint(run) if (run / "checkpoints").is_dir() else None) >= at_least:
                return
        except CheckpointError:  # a checkpoint being written right now
            pass
        time.sleep(0.05)


# ---- 1. resume with the defaults a user gets ----------------------------------------------------------------------


def test_kill_9_after_each_checkpoint_then_resume_with_default_intervals(tmp_path):
    """The embedded default's intervals (checkpoint every 50 steps, throughput every 5): killed with kill -9 after
    its first checkpoint, resumed, killed again after its second, resumed again with nothing but --out and
    --resume (the run's own settings): its losses are the uninterrupted run's."""
    assert (SYNTHETIC_DEFAULTS["ckpt_every"], SYNTHETIC_DEFAULTS["log_every"]) == (50, 5)
    steps = ["--max-steps", "108"]
    ref = _cli(SMALL + steps + ["--out", str(tmp_path / "ref")])
    assert ref.wait(timeout=600) == 0, ref.stderr.read()

    run = tmp_path / "killed"
    p = _cli(SMALL + steps + ["--out", str(run)])
    for checkpoint in (50, 100):
        _wait_for_checkpoint(run, p, checkpoint)
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert _step(find_checkpoint(run)) == checkpoint, "killed before its checkpoint or after the next one"
        p = _cli(["--out", str(run), "--resume", "--no-progress"])
    assert p.wait(timeout=600) == 0, p.stderr.read()
    assert "108 steps" in p.stdout.read()
    np.testing.assert_allclose(_losses(run), _losses(tmp_path / "ref"), rtol=1e-5, atol=1e-6)
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [(h["event"], h["step"], h["changed"]) for h in history] == [
        ("start", 0, {}), ("resume", 50, {}), ("resume", 100, {})]


def test_resume_at_a_step_that_is_not_a_logging_step_in_process(tmp_path, capsys):
    """The issue's reproduction: log every 10 (the store default), checkpoint every 6, resume at 12 -> 20."""
    args = SMALL + ["--workers", "0", "--log-every", "10", "--ckpt-every", "6", "--out", str(tmp_path / "r")]
    assert cli.main(args + ["--max-steps", "12"]) == 0
    assert cli.main(args + ["--max-steps", "20", "--resume"]) == 0
    assert "20 steps" in capsys.readouterr().out
    rows = _rows(tmp_path / "r")
    assert [int(r["step"]) for r in rows] == list(range(1, 21))
    assert rows[12]["ecgs_per_s"], "the first step after a resume measures throughput"


# ---- 2. a resume is the run that was begun ------------------------------------------------------------------------


def test_resume_refuses_another_store_or_settings_and_records_safe_changes(tmp_path, capsys):
    run = tmp_path / "run"
    base = SMALL + ["--workers", "0", "--out", str(run), "--max-steps", "3"]
    assert cli.main(base) == 0
    other = synthetic_store(44, 3)  # another store: other records
    capsys.readouterr()
    assert cli.main(base + ["--resume", "--store", str(other), "--max-steps", "4"]) == 2
    err = capsys.readouterr().err
    assert "--resume refused" in err and "store content" in err and err.count("\n") == 1, err
    assert cli.main(base + ["--resume", "--lr", "0.5", "--temperature", "0.3", "--no-spatial"]) == 2
    err = capsys.readouterr().err
    for name in ("lr: 0.001 -> 0.5", "loss.temperature: 0.1 -> 0.3", "augment.spatial: True -> False"):
        assert name in err, err
    # the same store moved to another path is the same store: accepted, and recorded
    moved = tmp_path / "moved-store"
    shutil.copytree(synthetic_store(40, 3), moved)
    assert cli.main(base[:-1] + ["5", "--resume", "--store", str(moved), "--log-every", "2"]) == 0
    last = json.loads((run / "history.jsonl").read_text().splitlines()[-1])
    assert last["event"] == "resume" and set(last["changed"]) == {"store", "max_steps", "log_every"}
    assert f'store = "{moved}"' in (run / "config.toml").read_text()
    prov = load_provenance(find_checkpoint(run))
    assert len(prov.info["sources"]) == 1  # one store's content, read from two paths


def test_provenance_accumulates_every_store_a_run_read(tmp_path):
    a, b = ECGStore(synthetic_store(40, 3)), ECGStore(synthetic_store(44, 3))
    first = pretraining_provenance(a, ["train"], a.split_indices("train"))
    second = pretraining_provenance(b, ["train"], b.split_indices("train"), salt=first.salt)
    both = merge(first, second)
    assert [s["store_fingerprint"] for s in both.info["sources"]] == [first.info["sources"][0]["store_fingerprint"],
                                                                      second.info["sources"][0]["store_fingerprint"]]
    assert set(first.patient_keys) | set(second.patient_keys) == set(both.patient_keys)
    assert set(first.record_keys) <= set(both.record_keys) and set(second.record_keys) <= set(both.record_keys)
    with pytest.raises(ValueError, match="salts"):
        merge(first, pretraining_provenance(b, ["train"], b.split_indices("train")))
    # keyed: another run's salt gives other keys for the same patients
    assert not set(first.patient_keys) & set(pretraining_provenance(a, ["train"], a.split_indices("train"))
                                             .patient_keys)


# ---- 4. --overwrite deletes only ecgfast-train's own folders ------------------------------------------------------


def test_overwrite_never_deletes_a_folder_without_the_marker(tmp_path, capsys):
    mine = tmp_path / "models"
    (mine / "checkpoints").mkdir(parents=True)
    (mine / "checkpoints" / "bert.bin").write_bytes(b"weights of a month")
    (mine / "config.toml").write_text("lr = 1\n")
    assert cli.main(SMALL + ["--workers", "0", "--max-steps", "1", "--out", str(mine), "--overwrite"]) == 2
    assert "not an ecgfast-train run" in capsys.readouterr().err
    assert (mine / "checkpoints" / "bert.bin").read_bytes() == b"weights of a month"
    # a run folder with a file of yours in it: refused too, and the file stays
    run = tmp_path / "run"
    assert cli.main(SMALL + ["--workers", "0", "--max-steps", "1", "--out", str(run)]) == 0
    (run / "notes.txt").write_text("mine")
    assert cli.main(SMALL + ["--workers", "0", "--max-steps", "1", "--out", str(run), "--overwrite"]) == 2
    assert "notes.txt" in capsys.readouterr().err and (run / "notes.txt").read_text() == "mine"
    (run / "notes.txt").unlink()
    assert cli.main(SMALL + ["--workers", "0", "--max-steps", "1", "--out", str(run), "--overwrite"]) == 0
    assert (run / MARKER).is_file()


# ---- 5. one writer per run folder ---------------------------------------------------------------------------------


def test_a_second_writer_of_one_run_folder_is_refused(tmp_path):
    run = tmp_path / "run"
    slow = "import time, ecgfast.pretrain.views as v\nreal = v.make_views\n" \
           "def slow(*a, **k):\n    time.sleep(0.3)\n    return real(*a, **k)\nv.make_views = slow\n" \
           "import ecgfast.pretrain.loop as l\nl.make_views = slow\n"
    first = _cli(SMALL + ["--workers", "1", "--max-steps", "30", "--out", str(run)], wrapper=slow)
    deadline = time.time() + 300
    while not (run / "metrics.csv").is_file() and time.time() < deadline and first.poll() is None:
        time.sleep(0.05)
    for extra in ([], ["--resume"], ["--overwrite"]):
        second = _cli(SMALL + ["--workers", "0", "--max-steps", "30", "--out", str(run), *extra])
        assert second.wait(timeout=300) == 2
        err = second.stderr.read()
        assert f"another ecgfast-train (pid {first.pid})" in err and err.count("\n") == 1, err
    assert first.wait(timeout=600) == 0, first.stderr.read()
    assert [int(r["step"]) for r in _rows(run)] == list(range(1, 31))


# ---- 10, 11: checkpoints that must not be trusted ------------------------------------------------------------------


def _run_with_two_checkpoints(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    assert cli.main(SMALL + ["--workers", "0", "--max-steps", "4", "--ckpt-every", "2", "--out", str(run)]) == 0
    return run


def test_non_finite_weights_are_refused_on_load_and_resume_falls_back(tmp_path, caplog):
    run = _run_with_two_checkpoints(tmp_path)
    newest = run / "checkpoints" / "ckpt-00000004"
    weights = load_file(str(newest / "model.safetensors"))
    name = sorted(weights)[3]
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, str(newest / "model.safetensors"))
    with pytest.raises(CheckpointError, match=f"hold NaN/Inf: {name}"):
        resolve_checkpoint(newest)  # a checkpoint folder given by name: refused, the tensor named
    with caplog.at_level("WARNING"):
        assert find_checkpoint(run) == run / "checkpoints" / "ckpt-00000002"
    assert "skipping damaged checkpoint ckpt-00000004" in caplog.text
    assert cli.main(SMALL + ["--workers", "0", "--max-steps", "4", "--ckpt-every", "2", "--out", str(run),
                             "--resume"]) == 0
    load_weights(_tiny(), find_checkpoint(run))  # step 4 again, rewritten from step 2: finite


def _tiny() -> torch.nn.Module:
    from ecgfast.models.temporalnet import DualStreamTemporalNet, temporalnet_config

    return DualStreamTemporalNet(temporalnet_config("tiny"))


def test_a_state_without_its_keys_is_damaged_and_a_symlinked_checkpoint_is_refused(tmp_path, capsys):
    run = _run_with_two_checkpoints(tmp_path)
    torch.save({"step": 4}, run / "checkpoints" / "ckpt-00000004" / "state.pt")
    assert cli.main(SMALL + ["--workers", "0", "--max-steps", "4", "--ckpt-every", "2", "--out", str(run),
                             "--resume"]) == 0  # resumed from step 2, the last intact one
    history = (run / "history.jsonl").read_text().splitlines()
    assert json.loads(history[-1])["step"] == 2
    other = _run_with_two_checkpoints(tmp_path / "other")
    os.symlink(other / "checkpoints" / "ckpt-00000004", run / "checkpoints" / "ckpt-00000099")
    capsys.readouterr()
    assert cli.main(SMALL + ["--workers", "0", "--max-steps", "6", "--out", str(run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "ckpt-00000099" in err and "outside this run" in err and err.count("\n") == 1, err


def test_sigterm_during_a_checkpoint_write_leaves_no_temporary_and_the_run_resumes(tmp_path):
    run = tmp_path / "run"
    slow_save = ("import time, safetensors.torch as st, ecgfast.pretrain.checkpoint as c\nreal = st.save_file\n"
                 "def slow(*a, **k):\n    real(*a, **k)\n    time.sleep(60)\nc.save_file = slow\n")
    p = _cli(SMALL + ["--workers", "0", "--max-steps", "6", "--ckpt-every", "3", "--out", str(run)], wrapper=slow_save)
    deadline = time.time() + 300
    temporaries: list[Path] = []
    while not temporaries and time.time() < deadline and p.poll() is None:
        temporaries = list((run / "checkpoints").glob(".ckpt-*")) if (run / "checkpoints").is_dir() else []
        time.sleep(0.05)
    assert temporaries and (temporaries[0] / "model.safetensors").exists()
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=60) == 128 + signal.SIGTERM
    assert not list((run / "checkpoints").glob(".ckpt-*"))
    # a SIGKILL leaves one behind: the next run of the folder removes it
    stale = run / "checkpoints" / ".ckpt-00000003.x1y2z3"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    assert cli.main(SMALL + ["--workers", "0", "--max-steps", "6", "--ckpt-every", "3", "--out", str(run),
                             "--overwrite"]) == 0
    assert not stale.exists() and find_checkpoint(run).name == "ckpt-00000006"


# ---- 12: settings refused before any folder exists; disk full -------------------------------------------------------


@pytest.mark.parametrize(("flags", "match"), [
    (["--seed", "-1"], "seed must be in"),
    (["--device", "banana"], "not a device name"),
    (["--device", "cuda:7"], "cuda:7"),
    (["--device", "mps"], "cpu or cuda"),
    (["--temperature", "1e-30"], "temperature must be"),
])
def test_settings_errors_are_one_line_exit_2_and_create_no_folder(tmp_path, capsys, flags, match):
    out = tmp_path / "deep" / "run"
    assert cli.main(SMALL + ["--workers", "0", "--max-steps", "1", "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert match in err and err.startswith("ecgfast-train: error:") and err.count("\n") == 1, err
    assert not (tmp_path / "deep").exists()


def test_a_config_that_is_not_utf8_is_a_one_line_error(tmp_path, capsys):
    bad = tmp_path / "latin1.toml"
    bad.write_bytes("model = \"tiny\"\n# r\xe9sum\xe9\n".encode("latin-1"))
    assert cli.main(["--config", str(bad), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "not valid TOML (UTF-8 text)" in err and err.count("\n") == 1 and not (tmp_path / "r").exists()


def test_a_damaged_metrics_file_does_not_stop_a_resume(tmp_path, caplog):
    run = _run_with_two_checkpoints(tmp_path)
    with open(run / "metrics.csv", "a") as f:
        f.write("5,0,4.2")  # the half line a process killed while writing leaves
    lines = (run / "metrics.csv").read_text().splitlines()
    lines[next(i for i, line in enumerate(lines) if line.startswith("2,"))] = "\x00\x00garbage"  # step 2's row
    (run / "metrics.csv").write_text("\n".join(lines) + "\n")
    with caplog.at_level("WARNING"):
        assert cli.main(SMALL + ["--workers", "0", "--max-steps", "6", "--ckpt-every", "2", "--out", str(run),
                                 "--resume"]) == 0
    assert "damaged row(s) dropped" in caplog.text
    assert [int(r["step"]) for r in _rows(run)] == [1, 3, 4, 5, 6]


def test_disk_full_during_a_checkpoint_is_one_line_exit_4_and_the_last_checkpoint_stays(tmp_path, capsys,
                                                                                          monkeypatch):
    run = _run_with_two_checkpoints(tmp_path)
    before = sorted(p.name for p in (run / "checkpoints").iterdir())

    def full(*args, **kwargs):
        with open(args[1], "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_mod, "save_file", full)
    capsys.readouterr()
    code = cli.main(SMALL + ["--workers", "0", "--max-steps", "6", "--ckpt-every", "2", "--out", str(run),
                             "--resume"])
    err = capsys.readouterr().err
    assert code == 4 and "No space left on device" in err and "ckpt-00000006" in err and err.count("\n") == 1, err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before  # no temporary, nothing half-written
    assert find_checkpoint(run).name == "ckpt-00000004"
