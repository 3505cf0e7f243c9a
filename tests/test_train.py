"""The pretraining loop and ecgfast-train: runs and learns, resumes exactly after a kill, refuses bad input."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ecgfast import train as train_mod
from ecgfast.checkpoint import latest_checkpoint, load_weights
from ecgfast.config import SYNTHETIC_DEFAULTS, load_config
from ecgfast.models.temporalnet import DualStreamTemporalNet, temporalnet_config

TINY = {**SYNTHETIC_DEFAULTS, "synthetic_patients": 40, "batch_size": 8, "workers": 0, "progress": False,
        "log_every": 1, "seed": 3}


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ECGFAST_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _losses(run: Path) -> list[float]:
    with open(run / "metrics.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def test_pretrain_on_the_synthetic_default_learns_and_saves(tmp_path):
    cfg = load_config(overrides={**TINY, "out": str(tmp_path / "run"), "max_steps": 12, "lr": 3e-3})
    summary = train_mod.pretrain(cfg)
    losses = summary["losses"]
    assert summary["steps"] == 12 and len(losses) == 12 and np.isfinite(losses).all()
    assert np.mean(losses[-4:]) < np.mean(losses[:4])  # it learns something
    ckpt = latest_checkpoint(tmp_path / "run")
    assert ckpt is not None and ckpt.name == "ckpt-00000012"
    model = DualStreamTemporalNet(temporalnet_config("tiny"))
    load_weights(model, ckpt)
    saved = load_config(tmp_path / "run" / "config.toml")
    assert saved.max_steps == 12 and saved.model == "tiny"
    assert _losses(tmp_path / "run") == pytest.approx(losses)


def _cli(args, env=None):
    return subprocess.Popen([sys.executable, "-m", "ecgfast.train", *args], env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_resume_after_kill_gives_the_same_losses(tmp_path):
    common = ["--synthetic-patients", "40", "--batch-size", "8", "--workers", "1", "--no-progress", "--seed", "3",
              "--max-steps", "10", "--ckpt-every", "2", "--log-every", "1", "--model", "tiny"]
    ref = _cli(common + ["--out", str(tmp_path / "ref")])
    assert ref.wait(timeout=300) == 0, ref.stderr.read()

    run = tmp_path / "killed"
    p = _cli(common + ["--out", str(run)])
    deadline = time.time() + 300
    while time.time() < deadline:  # kill -9 once a mid-run checkpoint exists
        ckpt = latest_checkpoint(run) if (run / "checkpoints" / "latest").exists() else None
        if ckpt is not None and int(ckpt.name.split("-")[1]) >= 4 or p.poll() is not None:
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert latest_checkpoint(run) is not None and int(latest_checkpoint(run).name.split("-")[1]) < 10
    resumed = _cli(common + ["--out", str(run), "--resume"])
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    a, b = _losses(tmp_path / "ref"), _losses(run)
    assert len(a) == len(b) == 10
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_nonfinite_steps_are_skipped_and_a_diverging_run_stops(tmp_path, monkeypatch):
    real = train_mod.MultiPositiveContrastiveLoss.forward
    calls = {"n": 0}

    def sometimes_nan(self, z, *ids, **kw):
        calls["n"] += 1
        out = real(self, z, *ids, **kw)
        return out * float("nan") if calls["n"] in (2, 3) or calls["n"] > 6 else out

    monkeypatch.setattr(train_mod.MultiPositiveContrastiveLoss, "forward", sometimes_nan)
    cfg = load_config(overrides={**TINY, "out": str(tmp_path / "a"), "max_steps": 3, "max_nonfinite": 2})
    summary = train_mod.pretrain(cfg)
    assert summary["steps"] == 3 and summary["skipped"] == 2 and np.isfinite(summary["losses"]).all()
    calls["n"] = 3  # from the next call on, every loss is NaN
    cfg = load_config(overrides={**TINY, "out": str(tmp_path / "b"), "max_steps": 5, "max_nonfinite": 2})
    with pytest.raises(train_mod.NonFiniteLossError, match="3 consecutive"):
        train_mod.pretrain(cfg)


def test_bad_input_gets_a_clear_error_and_exit_code(tmp_path, capsys):
    assert train_mod.main(["--store", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    assert "store.json not found" in capsys.readouterr().err
    # a store whose split mixes patients
    store = train_mod.synthetic_store(40, 3)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for f in ("store.json", "shards"):
        os.symlink(store / f, mixed / f)
    m = pd.read_parquet(store / "manifest.parquet")
    pid = m["patient_id"].value_counts().index[0]
    rows = m.index[m["patient_id"] == pid]
    m.loc[rows[0], "split"], m.loc[rows[1], "split"] = "train", "test"
    m.to_parquet(mixed / "manifest.parquet")
    assert train_mod.main(["--store", str(mixed), "--out", str(tmp_path / "r")]) == 2
    assert "more than one split" in capsys.readouterr().err
    # an impossible batch
    assert train_mod.main(["--store", str(store), "--batch-size", "100000", "--out", str(tmp_path / "r")]) == 2
    assert "needs at least" in capsys.readouterr().err
    # a checkpoint of another model shape
    args = ["--synthetic-patients", "40", "--batch-size", "8", "--workers", "0", "--no-progress", "--seed", "3",
            "--max-steps", "1", "--out", str(tmp_path / "shape")]
    assert train_mod.main(args + ["--model", "tiny"]) == 0
    capsys.readouterr()
    assert train_mod.main(args + ["--model", "small", "--resume", "--max-steps", "2"]) == 2
    assert "another model shape" in capsys.readouterr().err
    # an unknown config key
    bad = tmp_path / "bad.toml"
    bad.write_text('store = "x"\nlearning_rate = 3\n')
    assert train_mod.main(["--config", str(bad)]) == 2
    assert "learning_rate" in capsys.readouterr().err


def test_config_file_and_overrides(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('model = "small"\nlr = 0.002\nbatch_size = 64\n')
    cfg = load_config(f, overrides={"lr": 0.005, "epochs": None})
    assert (cfg.model, cfg.lr, cfg.batch_size, cfg.epochs) == ("small", 0.005, 64, 210)
    assert load_config().batch_size == 512 and load_config().model == "paper"  # the paper's recipe by default


def test_lr_schedule_warms_up_then_decays():
    f = [train_mod.lr_factor(s, 10, 100) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[9:], f[10:], strict=False)) and f[-1] < 0.01


def test_ddp_two_processes_on_cpu(tmp_path):
    """torchrun with 2 gloo ranks: runs, rank 0 alone writes, and the loss gathers across ranks."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "ecgfast.train", "--synthetic-patients", "40", "--batch-size", "4", "--workers", "0",
           "--no-progress", "--seed", "3", "--max-steps", "2", "--model", "tiny", "--out", str(tmp_path / "ddp")]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(_losses(tmp_path / "ddp")) == 2
    assert latest_checkpoint(tmp_path / "ddp").name == "ckpt-00000002"
    assert json.loads((latest_checkpoint(tmp_path / "ddp") / "config.json").read_text())["batch_size"] == 4
    assert torch.isfinite(torch.tensor(_losses(tmp_path / "ddp"))).all()
