"""The pretraining loop and ecgfast-train: runs and learns, resumes exactly after a kill, skips non-finite steps
without a trace, refuses bad settings and run folders with one-line errors (exit 2)."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ecgfast.data.store import ECGStore
from ecgfast.models.temporalnet import DualStreamTemporalNet, temporalnet_config
from ecgfast.pretrain import cli, loop
from ecgfast.pretrain import views as views_mod
from ecgfast.pretrain.checkpoint import find_checkpoint, load_weights
from ecgfast.pretrain.config import SYNTHETIC_DEFAULTS, ConfigError, TrainConfig, load_config, to_toml
from ecgfast.pretrain.corpus import synthetic_store
from ecgfast.pretrain.monitor import VIEW_OFFSET
from ecgfast.pretrain.provenance import load_provenance

TINY = {**SYNTHETIC_DEFAULTS, "synthetic_patients": 40, "batch_size": 8, "workers": 0, "progress": False,
        "log_every": 1, "seed": 3}


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ECGFAST_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _rows(run: Path) -> list[dict]:
    """The training rows of metrics.csv (the monitor's row of step 0, before any training, has no loss)."""
    with open(run / "metrics.csv") as f:
        return [r for r in csv.DictReader(f) if r["loss"]]


def _losses(run: Path) -> list[float]:
    return [float(r["loss"]) for r in _rows(run)]


def test_pretrain_on_the_synthetic_default_learns_and_saves(tmp_path):
    cfg = load_config(overrides={**TINY, "out": str(tmp_path / "run"), "max_steps": 12, "lr": 3e-3})
    summary = loop.pretrain(cfg)
    losses = summary["losses"]
    assert summary["steps"] == 12 and len(losses) == 12 and np.isfinite(losses).all()
    assert np.mean(losses[-4:]) < np.mean(losses[:4])  # it learns something
    ckpt = find_checkpoint(tmp_path / "run")
    assert ckpt is not None and ckpt.name == "ckpt-00000012"
    load_weights(DualStreamTemporalNet(temporalnet_config("tiny")), ckpt)
    saved = load_config(tmp_path / "run" / "config.toml")
    assert saved == cfg  # config.toml reads back as the same settings, [augment] and [loss] included
    assert _losses(tmp_path / "run") == pytest.approx(losses)
    # throughput is there from the first step on, never "nan"
    rows = _rows(tmp_path / "run")
    assert rows[0]["ecgs_per_s"] and float(rows[0]["ecgs_per_s"]) > 0
    assert all(r["ecgs_per_s"] != "nan" for r in rows)
    # the checkpoint says what it was pretrained on: this store's train split, as keyed hashes, no ids
    prov = load_provenance(ckpt)
    source = prov.info["sources"][0]
    assert source["splits"] == ["train"] and source["n_patients"] > 0 and len(prov.salt) == 32
    assert len(prov.patient_keys) == source["n_patients"] and len(prov.record_keys) == source["n_records"]
    store = ECGStore(synthetic_store(40, 3))
    text = (ckpt / "provenance.json").read_text()
    assert not any(f'"{p}"' in text for p in store.patient_ids)


def test_memory_modes_give_the_plain_runs_losses_and_are_logged(tmp_path, caplog):
    """--memory checkpoint, and chunked with one chunk per batch, repeat the full run to float tolerance; chunks
    smaller than the batch run (BatchNorm then sees each chunk, as one GPU's share) and the log names the plan."""
    runs = {}
    for name, extra in {"full": {"memory": "full"}, "checkpoint": {"memory": "checkpoint"},
                        "one_chunk": {"memory": "chunked", "memory_chunk": 8},
                        "chunks": {"memory": "chunked", "memory_chunk": 3}}.items():
        cfg = load_config(overrides={**TINY, **extra, "out": str(tmp_path / name), "max_steps": 3})
        with caplog.at_level("INFO", logger="ecgfast.train"):
            caplog.clear()
            runs[name] = loop.pretrain(cfg)["losses"]
        log = caplog.text
        assert "MB saved for backward per ECG" in log and f"--memory {extra['memory']}" in log, log
        assert "batch: 8 ECGs per step over 1 rank: 8 per rank" in log
        rows = _rows(tmp_path / name)
        assert all(r["grad_norm"] and float(r["grad_norm"]) > 0 for r in rows)  # read at flush time, every row
    assert runs["checkpoint"] == pytest.approx(runs["full"], rel=1e-5)
    assert runs["one_chunk"] == pytest.approx(runs["full"], rel=1e-5)
    assert len(runs["chunks"]) == 3 and np.isfinite(runs["chunks"]).all()
    assert "--memory chunked in chunks of 3 ECGs" in log  # the last run's plan (8 ECGs: chunks of 3, 3, 2)


@pytest.mark.parametrize("bf16,asked,expected", [(True, None, "bf16"), (False, None, None), (True, "fp32", "fp32")])
def test_bf16_training_feeds_the_loss_bf16_products(tmp_path, monkeypatch, bf16, asked, expected):
    """The loss's tensor-core path by design: a bf16 run asks the loss for bf16 products unless told otherwise."""
    seen = []
    real = loop.MultiPositiveContrastiveLoss

    def spy(*args, config=None, **kwargs):
        seen.append(config.precision)
        return real(*args, config=config, **kwargs)

    monkeypatch.setattr(loop, "MultiPositiveContrastiveLoss", spy)
    cfg = load_config(overrides={**TINY, "out": str(tmp_path / "run"), "max_steps": 1, "bf16": bf16,
                                 "precision": asked})
    assert np.isfinite(loop.pretrain(cfg)["losses"]).all()
    assert seen == [expected]


def _cli(args, env=None):
    return subprocess.Popen([sys.executable, "-m", "ecgfast.pretrain", *args], env={**os.environ, **(env or {})},
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
        ckpt = find_checkpoint(run) if (run / "checkpoints").is_dir() else None
        if ckpt is not None and int(ckpt.name.split("-")[1]) >= 4 or p.poll() is not None:
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert find_checkpoint(run) is not None and int(find_checkpoint(run).name.split("-")[1]) < 10
    (run / "checkpoints" / "latest").unlink()  # a lost pointer does not matter: checkpoints are found by scanning
    resumed = _cli(common + ["--out", str(run), "--resume"])
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    a, b = _losses(tmp_path / "ref"), _losses(run)
    assert len(a) == len(b) == 10
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_nonfinite_steps_are_skipped_and_a_diverging_run_stops(tmp_path, monkeypatch):
    real = loop.MultiPositiveContrastiveLoss.forward
    calls = {"n": 0}

    def sometimes_nan(self, z, *ids, **kw):
        calls["n"] += 1
        out = real(self, z, *ids, **kw)
        return out * float("nan") if calls["n"] in (2, 3) or calls["n"] > 6 else out

    monkeypatch.setattr(loop.MultiPositiveContrastiveLoss, "forward", sometimes_nan)
    cfg = load_config(overrides={**TINY, "out": str(tmp_path / "a"), "max_steps": 3, "max_nonfinite": 2})
    summary = loop.pretrain(cfg)
    assert summary["steps"] == 3 and summary["skipped"] == 2 and np.isfinite(summary["losses"]).all()
    rows = _rows(tmp_path / "a")
    assert len(rows) == 5 and [r["skipped"] for r in rows] == ["0", "1", "2", "2", "2"]
    calls["n"] = 3  # from the next call on, every loss is NaN
    cfg = load_config(overrides={**TINY, "out": str(tmp_path / "b"), "max_steps": 5, "max_nonfinite": 2})
    with pytest.raises(loop.NonFiniteLossError, match="3 consecutive"):
        loop.pretrain(cfg)
    # three good steps, then the skips, each on disk before the exit 3
    assert [r["skipped"] for r in _rows(tmp_path / "b")] == ["0", "0", "0", "1", "2", "3"]


def test_a_skipped_step_leaves_no_trace_in_batchnorm(tmp_path, monkeypatch):
    """Attack of issue 16: a batch of huge or infinite samples poisons BatchNorm's running statistics through the
    forward pass, whether or not the loss stays finite. Such steps are skipped and the statistics restored."""
    real = views_mod.make_views
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        views = real(*args, **kwargs)
        if calls["n"] == 2:
            return views * float("inf")  # NaN/Inf in the forward: NaN loss
        if calls["n"] == 3:
            return views * 1e30  # finite loss (BatchNorm normalises), running_var = inf
        return views

    monkeypatch.setattr(loop, "make_views", poisoned)
    cfg = load_config(overrides={**TINY, "out": str(tmp_path / "run"), "max_steps": 3})
    summary = loop.pretrain(cfg)
    assert summary["steps"] == 3 and summary["skipped"] == 2
    model = DualStreamTemporalNet(temporalnet_config("tiny"))
    load_weights(model, find_checkpoint(tmp_path / "run"))
    for name, t in model.state_dict().items():
        assert torch.isfinite(t).all(), name


def test_training_views_are_one_fused_call_on_int16_with_windows(tmp_path, monkeypatch):
    """The step hands the op the loader's int16 batch with gain, baseline and both windows: one call per batch (the
    monitor's views of validation ECGs, at their own counter, are made the same way and counted apart)."""
    seen, watched = [], []
    real = views_mod.vcg_augment

    def spy(x, gain=None, baseline=None, **kw):
        call = (x.dtype, gain is not None, tuple(kw["windows"].shape), kw["length"])
        (watched if kw["offset"] >= VIEW_OFFSET else seen).append(call)
        return real(x, gain, baseline, **kw)

    monkeypatch.setattr(views_mod, "vcg_augment", spy)
    loop.pretrain(load_config(overrides={**TINY, "out": str(tmp_path / "run"), "max_steps": 2}))
    assert seen == [(torch.int16, True, (2, 8), 500)] * 2  # 5 s at the embedded corpus' 100 Hz
    assert watched and all(c[:2] == (torch.int16, True) and c[2][0] == 2 and c[3] == 500 for c in watched)
    seen.clear()
    loop.pretrain(load_config(overrides={**TINY, "out": str(tmp_path / "aug"), "max_steps": 1, "views": "augment",
                                         "noise_std": 0.05}))
    assert seen == [(torch.int16, True, (8,), 500)]  # one shared crop: the input read once for both views


def test_an_existing_run_is_refused_unless_resume_or_overwrite(tmp_path, capsys):
    args = ["--synthetic-patients", "40", "--batch-size", "8", "--workers", "0", "--no-progress", "--seed", "3",
            "--max-steps", "1", "--model", "tiny", "--out", str(tmp_path / "run")]
    assert cli.main(args) == 0
    first = (tmp_path / "run" / "metrics.csv").read_text()
    capsys.readouterr()
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "already holds a pretraining run" in err and "--overwrite" in err and err.count("\n") == 1
    assert (tmp_path / "run" / "metrics.csv").read_text() == first  # untouched
    assert cli.main(args + ["--overwrite"]) == 0
    # --overwrite never deletes a folder that is not a run
    other = tmp_path / "mine"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    capsys.readouterr()
    assert cli.main(args[:-1] + [str(other), "--overwrite"]) == 2
    assert "not an ecgfast-train run" in capsys.readouterr().err and (other / "thesis.tex").read_text() == "precious"


def test_resume_with_nothing_to_resume_is_an_error(tmp_path, capsys):
    args = ["--synthetic-patients", "40", "--batch-size", "8", "--workers", "0", "--no-progress", "--max-steps", "1",
            "--model", "tiny", "--out", str(tmp_path / "empty"), "--resume"]
    assert cli.main(args) == 2
    assert "no checkpoint to resume" in capsys.readouterr().err
    assert not (tmp_path / "empty").exists()  # the folder this failed command made is gone again


def test_bad_input_gets_a_clear_error_and_exit_code(tmp_path, capsys):
    assert cli.main(["--store", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    assert "store.json not found" in capsys.readouterr().err
    # a store whose split mixes patients
    store = synthetic_store(40, 3)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for f in ("store.json", "shards"):
        os.symlink(store / f, mixed / f)
    m = pd.read_parquet(store / "manifest.parquet")
    pid = m["patient_id"].value_counts().index[0]
    rows = m.index[m["patient_id"] == pid]
    m.loc[rows[0], "split"], m.loc[rows[1], "split"] = "train", "test"
    m.to_parquet(mixed / "manifest.parquet")
    assert cli.main(["--store", str(mixed), "--out", str(tmp_path / "r")]) == 2
    assert "more than one split" in capsys.readouterr().err
    # an impossible batch
    assert cli.main(["--store", str(store), "--batch-size", "100000", "--out", str(tmp_path / "r")]) == 2
    assert "needs at least" in capsys.readouterr().err
    # a checkpoint of another model shape
    args = ["--synthetic-patients", "40", "--batch-size", "8", "--workers", "0", "--no-progress", "--seed", "3",
            "--max-steps", "1", "--out", str(tmp_path / "shape")]
    assert cli.main(args + ["--model", "tiny"]) == 0
    capsys.readouterr()
    assert cli.main(args + ["--model", "small", "--resume", "--max-steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "--resume refused" in err and "model: 'tiny' -> 'small'" in err, err


@pytest.mark.parametrize(("toml", "match"), [
    ('learning_rate = 3\n', "unknown config key 'learning_rate'"),
    ('compile = "no"\n', "compile .*expected true or false"),
    ('epochs = "10"\n', "epochs .*expected an integer"),
    ('epochs = 2.5\n', "epochs .*expected an integer"),
    ('lr = true\n', "lr .*expected a finite number"),
    ('[augment]\nmax_angle_deg = 200\n', "max_angle_deg must be in"),
    ('[augment]\nscale_range = [1.0]\n', "scale_range"),
    ('[loss]\ntemperature = 0\n', "temperature must be"),
    ('[loss]\nweights = [1.0, 1.0, 1.0]\n', "two numbers"),
    ('[augment]\nwander_mv = 1\n', r"unknown key 'wander_mv' in \[augment\]"),
    ('augment = 3\n', r"expected a \[augment\] table"),
    ('epochs = \n', "not valid TOML"),
])
def test_config_files_are_checked_for_types_and_ranges(tmp_path, capsys, toml, match):
    f = tmp_path / "c.toml"
    f.write_text(toml)
    assert cli.main(["--config", str(f), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ecgfast-train: error:") and err.count("\n") == 1, err
    assert re.search(match, err), err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("flags", [["--epochs", "0"], ["--epochs", "-3"], ["--max-steps", "-1"], ["--max-steps", "0"],
                                   ["--ckpt-every", "0"], ["--log-every", "0"], ["--batch-size", "1"],
                                   ["--lr", "0"], ["--workers", "-1"], ["--mask-fraction", "1"]])
def test_impossible_settings_exit_2_before_anything_runs(tmp_path, capsys, flags):
    assert cli.main(flags + ["--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ecgfast-train: error:") and err.count("\n") == 1, err
    assert not (tmp_path / "r").exists()


def test_an_out_that_is_a_file_or_inside_one_is_a_one_line_error(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    for out in (f, f / "run"):
        assert cli.main(["--synthetic-patients", "40", "--batch-size", "8", "--workers", "0", "--max-steps", "1",
                         "--no-progress", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("ecgfast-train: error:") and err.count("\n") == 1, err


def test_config_file_and_overrides(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('model = "small"\nlr = 0.002\nbatch_size = 64\n'
                 '[augment]\nnoise_std = 0.05\n[loss]\ntemperature = 0.2\n')
    cfg = load_config(f, overrides={"lr": 0.005, "epochs": None, "max_angle_deg": 30.0})
    assert (cfg.model, cfg.lr, cfg.batch_size, cfg.epochs) == ("small", 0.005, 64, 210)
    assert (cfg.augment.noise_std, cfg.augment.max_angle_deg, cfg.loss.temperature) == (0.05, 30.0, 0.2)
    assert load_config().batch_size == 512 and load_config().model == "paper"  # the paper's recipe by default
    assert load_config().loss.weights == (1.0, 1.0) and load_config().augment.max_angle_deg == 45.0
    written = tmp_path / "back.toml"
    written.write_text(to_toml(cfg))
    assert load_config(written) == cfg
    with pytest.raises(ConfigError):
        TrainConfig(views="both")


def test_help_lists_every_setting_with_its_default():
    text = cli.build_parser().format_help()
    for flag in ("--max-angle-deg", "--scale-range", "--noise-std", "--temperature", "--weights", "--batch-size",
                 "--overwrite", "--resume"):
        assert flag in text, flag
    assert "global batch" in " ".join(text.split())


def test_lr_schedule_warms_up_then_decays():
    f = [loop.lr_factor(s, 10, 100) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[9:], f[10:], strict=False)) and f[-1] < 0.01


def test_ddp_two_processes_on_cpu_split_the_global_batch(tmp_path):
    """torchrun with 2 gloo ranks: --batch-size 8 is the global batch (4 per rank); rank 0 alone writes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "ecgfast.pretrain", "--synthetic-patients", "40", "--batch-size", "8", "--workers", "0",
           "--no-progress", "--seed", "3", "--max-steps", "2", "--model", "tiny", "--out", str(tmp_path / "ddp")]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    losses = _losses(tmp_path / "ddp")
    assert len(losses) == 2 and np.isfinite(losses).all()
    ckpt = find_checkpoint(tmp_path / "ddp")
    assert ckpt.name == "ckpt-00000002"
    assert json.loads((ckpt / "config.json").read_text())["batch_size"] == 8
    assert "8 ECGs per step over 2 ranks: 4 per rank" in res.stderr
    # GradCache under DDP: 2 chunks per rank, the first backward without the gradient all-reduce (no_sync)
    res = subprocess.run(cmd[:-1] + [str(tmp_path / "chunked"), "--memory", "chunked", "--memory-chunk", "2"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "--memory chunked in chunks of 2 ECGs" in res.stderr
    chunked = _losses(tmp_path / "chunked")
    assert len(chunked) == 2 and np.isfinite(chunked).all()
    assert find_checkpoint(tmp_path / "chunked").name == "ckpt-00000002"
    # an odd global batch cannot be split evenly: refused
    bad = cmd[:-1] + [str(tmp_path / "odd")]
    bad[bad.index("--batch-size") + 1] = "7"
    res = subprocess.run(bad, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "split evenly" in res.stderr
