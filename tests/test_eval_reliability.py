"""Issue 20, evaluation side: every attack built at run time.

The leakage check that catches the same data re-split (keyed hashes, counts in the refusal); one writer per
evaluation folder (real processes); cells and cached features keyed by the content of the store and checkpoint;
an interrupted ``--demo`` that the same command continues; an encoder of another rate or unit refused; settings
and damaged cells.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from eval_helpers import SEGMENT, encoder_checkpoint, make_eval_store

from ecgfast.data.preprocess import PreprocessConfig
from ecgfast.data.store import ECGStore
from ecgfast.data.synthetic import SyntheticReader
from ecgfast.eval.cli import main
from ecgfast.eval.config import EvalConfig
from ecgfast.eval.protocol import Evaluator
from ecgfast.eval.run import run_evaluation
from ecgfast.eval.tasks import EvalError, sample_fractions
from ecgfast.models.temporalnet import DualStreamTemporalNet, temporalnet_config
from ecgfast.prepare import SplitConfig, prepare_store
from ecgfast.pretrain.checkpoint import save_checkpoint
from ecgfast.pretrain.provenance import KEYS_NAME, pretraining_provenance

QUICK = {"tasks": ("low_ef",), "fractions": (100.0,), "seeds": 1, "min_steps": 25, "eval_every": 25, "patience": 1,
         "max_steps": 50, "batch_size": 16, "eval_batch_size": 64, "n_boot": 100, "progress": False,
         "segment": SEGMENT}


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    return make_eval_store(tmp_path_factory.mktemp("rel") / "store")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ECGFAST_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _pretrained_on_train(store_path: Path, run: Path) -> Path:
    store = ECGStore(store_path)
    return encoder_checkpoint(run, pretraining_provenance(store, ["train"], store.split_indices("train")))


def _config(store: Path, out: Path, checkpoint: Path | None, **kw) -> EvalConfig:
    return EvalConfig(store=str(store), out=str(out), checkpoint=str(checkpoint) if checkpoint else None,
                      **{**QUICK, **kw})


# ---- 3. the same data re-split --------------------------------------------------------------------------------------


def test_the_same_data_re_split_cannot_slip_test_patients_past_the_check(store_path, tmp_path):
    """Pretrained on the train split of one split rule, evaluated on another split rule of the same records: most
    of the new test patients were pretraining patients. The keyed hashes catch it and the refusal counts them."""
    resplit = tmp_path / "resplit"
    prepare_store([SyntheticReader(n_patients=80, seed=10)], resplit, PreprocessConfig(fs=100.0),
                  split=SplitConfig(fractions=(0.5, 0.25, 0.25), seed=7), workers=1, progress=False)
    a, b = ECGStore(store_path), ECGStore(resplit)
    seen = set(a.patient_ids[a.split_indices("train")])
    test = set(b.patient_ids[b.split_indices("test")])
    assert seen & test and a.fingerprint() != b.fingerprint()  # the attack: overlap, under another fingerprint
    ckpt = _pretrained_on_train(store_path, tmp_path / "pre")
    with pytest.raises(EvalError) as info:
        run_evaluation(_config(resplit, tmp_path / "o", ckpt, arms=("frozen",)))
    msg = str(info.value)
    assert f"pretrained on {len(seen & test)} of the {len(test)} test patients" in msg, msg
    # the store the encoder was pretrained on, its own test split: clean, and the report says how it was checked
    run_evaluation(_config(store_path, tmp_path / "ok", ckpt, arms=("frozen",)))
    assert "none of the" in (tmp_path / "ok" / "summary.md").read_text()


def test_the_pretraining_keys_cost_at_most_16_bytes_per_ecg_and_hold_no_ids(store_path, tmp_path):
    store = ECGStore(store_path)
    rows = np.arange(len(store))
    ckpt = encoder_checkpoint(tmp_path / "pre", pretraining_provenance(store, ["train", "val", "test"], rows))
    folder = ckpt / "checkpoints" / "ckpt-00000000"
    keys = np.load(folder / KEYS_NAME)
    assert keys["patients"].dtype == keys["records"].dtype == np.uint64
    assert keys["patients"].nbytes + keys["records"].nbytes <= 16 * len(rows)
    raw = (folder / KEYS_NAME).read_bytes() + (folder / "provenance.json").read_bytes()
    assert not any(str(p).encode() in raw for p in store.patient_ids if len(str(p)) > 3)


# ---- 5. one writer per evaluation folder ----------------------------------------------------------------------------


def _eval_cli(args: list[str], wrapper: str = "") -> subprocess.Popen:
    code = wrapper + "\nimport sys\nfrom ecgfast.eval.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


QUICK_FLAGS = ["--task", "low_ef", "--fractions", "50", "100", "--seeds", "1", "--min-steps", "25", "--eval-every",
               "25", "--patience", "1", "--max-steps", "50", "--batch-size", "16", "--bootstrap", "100", "--segment",
               str(SEGMENT), "--no-progress"]
SLOW_CELLS = ("import time, ecgfast.eval.protocol as p\nreal = p.Evaluator.run_cell\n"
              "def slow(self, *a, **k):\n    time.sleep(2)\n    return real(self, *a, **k)\n"
              "p.Evaluator.run_cell = slow\n")


def test_a_second_evaluation_of_one_folder_is_refused_and_the_reports_hold_every_cell(store_path, tmp_path):
    ckpt = _pretrained_on_train(store_path, tmp_path / "pre")
    out = tmp_path / "eval"
    args = ["--store", str(store_path), "--checkpoint", str(ckpt), "--out", str(out), *QUICK_FLAGS]
    first = _eval_cli(args + ["--arms", "random", "frozen"], wrapper=SLOW_CELLS)
    deadline = time.time() + 300
    while not (out / ".ecgfast.lock").exists() and time.time() < deadline and first.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)
    second = _eval_cli(args + ["--arms", "random-features"])
    assert second.wait(timeout=300) == 2
    err = second.stderr.read()
    assert f"another ecgfast-eval (pid {first.pid})" in err and err.count("\n") == 1, err
    assert first.wait(timeout=600) == 0, first.stderr.read()
    again = _eval_cli(args + ["--arms", "random-features"])  # now it may: it adds its cells to the folder's
    assert again.wait(timeout=600) == 0, again.stderr.read()
    results = pd.read_csv(out / "results.csv")
    assert sorted(results["arm"].unique()) == ["frozen", "random", "random-features"] and len(results) == 6
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cells"]["in_folder"] == 6


# ---- 6. cells keyed by content -------------------------------------------------------------------------------------


def test_a_rewritten_checkpoint_or_store_makes_its_cells_stale_and_they_are_computed_again(store_path, tmp_path,
                                                                                            caplog):
    store = ECGStore(store_path)
    prov = pretraining_provenance(store, ["train"], store.split_indices("train"))
    run = tmp_path / "pre"
    encoder_checkpoint(run, prov)
    cfg = _config(store_path, tmp_path / "eval", run, arms=("random", "frozen"))
    run_evaluation(cfg)
    old = json.loads(next((tmp_path / "eval" / "cells").glob("*__frozen__*")).read_text())
    torch.manual_seed(99)  # ecgfast-train --overwrite: the same path, other weights
    shutil.rmtree(run / "checkpoints")
    save_checkpoint(run, 0, DualStreamTemporalNet(temporalnet_config("tiny")), {}, config={"model": "tiny"},
                    provenance=prov)
    with caplog.at_level("WARNING", logger="ecgfast.eval"):
        run_evaluation(cfg)
    assert "1 cell(s) were computed from other contents" in caplog.text  # the frozen one; random needs no checkpoint
    new = json.loads(next((tmp_path / "eval" / "cells").glob("*__frozen__*")).read_text())
    assert new["settings"]["checkpoint_weights"] != old["settings"]["checkpoint_weights"]
    assert new["test_auroc"] != old["test_auroc"]  # the new encoder's features, not the cached old ones
    results = pd.read_csv(tmp_path / "eval" / "results.csv")
    assert results.loc[results["arm"] == "frozen", "test_auroc"].item() == pytest.approx(new["test_auroc"])
    # a store re-prepared at the same path with other content: every cell is stale
    copy = tmp_path / "store-copy"
    shutil.copytree(store_path, copy)
    cfg2 = _config(copy, tmp_path / "eval2", run, arms=("random",))
    run_evaluation(cfg2)
    m = pd.read_parquet(copy / "manifest.parquet")
    m.loc[0, "checksum"] = "0" * 16  # (as a re-prepared store: another record's samples)
    m.to_parquet(copy / "manifest.parquet")
    caplog.clear()
    with caplog.at_level("WARNING", logger="ecgfast.eval"):
        run_evaluation(cfg2)
    assert "1 cell(s) were computed from other contents" in caplog.text


def test_a_run_folder_moved_with_its_store_and_checkpoint_reuses_every_cell(store_path, tmp_path, monkeypatch):
    """Cells are keyed by content, not paths: the store, the pretraining run and the evaluation folder all moved (a
    run copied to another machine) is the same evaluation, nothing is computed again; another store's content at
    another path is another evaluation, refused by name."""
    where = tmp_path / "before"
    shutil.copytree(store_path, where / "store")
    ckpt = _pretrained_on_train(where / "store", where / "pre")
    run_evaluation(_config(where / "store", where / "eval", ckpt, arms=("random", "frozen")))
    results = pd.read_csv(where / "eval" / "results.csv")
    moved = tmp_path / "after"
    shutil.move(where, moved)

    def boom(*args, **kwargs):
        raise AssertionError("a finished cell was recomputed")

    monkeypatch.setattr(Evaluator, "run_cell", boom)
    run_evaluation(_config(moved / "store", moved / "eval", moved / "pre", arms=("random", "frozen")))
    pd.testing.assert_frame_equal(pd.read_csv(moved / "eval" / "results.csv"), results)
    other = tmp_path / "other-store"  # the same records, one checksum changed: other content, at another path
    shutil.copytree(store_path, other)
    m = pd.read_parquet(other / "manifest.parquet")
    m.loc[0, "checksum"] = "0" * 16
    m.to_parquet(other / "manifest.parquet")
    with pytest.raises(EvalError, match=r"__s0.json: saved with other settings \(differs in \['store', "
                                        r"'store_content'\]\)"):
        run_evaluation(_config(other, moved / "eval", moved / "pre", arms=("random",)))
    # another checkpoint (other weights at another path, as pretraining on another machine): refused, not recomputed
    store = ECGStore(moved / "store")
    torch.manual_seed(99)
    save_checkpoint(tmp_path / "other-pre", 0, DualStreamTemporalNet(temporalnet_config("tiny")), {},
                    config={"model": "tiny"},
                    provenance=pretraining_provenance(store, ["train"], store.split_indices("train")))
    with pytest.raises(EvalError, match=r"frozen__f100__s0.json: saved with other settings \(differs in "
                                        r"\['checkpoint', 'checkpoint_weights'\]\)"):
        run_evaluation(_config(moved / "store", moved / "eval", tmp_path / "other-pre", arms=("random", "frozen")))
    # the same folder without --checkpoint: its frozen cell cannot be matched to an encoder, and says so
    with pytest.raises(EvalError, match=r"frozen__f100__s0.json: saved with other settings \(differs in "
                                        r"\['checkpoint', 'checkpoint_weights'\]\)"):
        run_evaluation(_config(moved / "store", moved / "eval", None, arms=("random",)))


# ---- 7. an interrupted demo continues ------------------------------------------------------------------------------


SMALL_DEMO = ("import ecgfast.eval.demo as d\nd.DEMO_PATIENTS = {'cpu': 60, 'paper': 60}\nd.DEMO_PRETRAIN_STEPS = 40\n"
              "import time, ecgfast.pretrain.views as v, ecgfast.pretrain.loop as l\nreal = v.make_views\n"
              "def slow(*a, **k):\n    time.sleep(0.15)\n    return real(*a, **k)\nl.make_views = slow\n")


def test_an_interrupted_demo_is_continued_by_the_same_command(tmp_path):
    out = tmp_path / "demo"
    args = ["--demo", "--out", str(out), *QUICK_FLAGS, "--fractions", "100"]
    p = _eval_cli(args, wrapper=SMALL_DEMO)
    deadline = time.time() + 300
    metrics = out / "pretrain" / "metrics.csv"
    while time.time() < deadline and p.poll() is None and (
            not metrics.is_file() or len(metrics.read_text().splitlines()) < 6):
        time.sleep(0.1)
    p.send_signal(signal.SIGKILL)  # in the middle of pretraining, before its only checkpoint
    p.wait()
    assert not (out / "pretrain" / "checkpoints").is_dir() or not list((out / "pretrain" / "checkpoints")
                                                                        .glob("ckpt-*"))
    again = _eval_cli(args, wrapper=SMALL_DEMO)
    assert again.wait(timeout=900) == 0, again.stderr.read()
    assert (out / "results.csv").is_file()
    history = [json.loads(x) for x in (out / "pretrain" / "history.jsonl").read_text().splitlines()]
    assert [h["event"] for h in history] == ["start"]  # started over (--overwrite of its own run): no checkpoint
    steps = pd.read_csv(out / "pretrain" / "metrics.csv")["step"]
    assert list(steps[steps > 0]) == list(range(1, 41))
    done = _eval_cli(args, wrapper=SMALL_DEMO)  # a third time: nothing left to do, the same results
    assert done.wait(timeout=600) == 0, done.stderr.read()
    assert len(history) == len((out / "pretrain" / "history.jsonl").read_text().splitlines())


# ---- 8. an encoder of another rate or unit -------------------------------------------------------------------------


def test_an_encoder_pretrained_at_another_rate_is_refused_unless_allowed(store_path, tmp_path):
    other = tmp_path / "store250"
    prepare_store([SyntheticReader(n_patients=80, seed=10)], other, PreprocessConfig(fs=250.0),
                  split=SplitConfig(fractions=(0.5, 0.25, 0.25)), workers=1, progress=False)
    s250 = ECGStore(other)
    ckpt = encoder_checkpoint(tmp_path / "pre", pretraining_provenance(s250, ["train"], s250.split_indices("train")))
    with pytest.raises(EvalError, match="pretrained on 250 Hz mV signals, this store holds 100 Hz mV"):
        run_evaluation(_config(store_path, tmp_path / "o", ckpt, arms=("frozen",)))
    assert not (tmp_path / "o").exists()
    run_evaluation(_config(store_path, tmp_path / "o", ckpt, arms=("frozen",), allow_store_mismatch=True))
    assert "evaluated anyway (--allow-store-mismatch)" in (tmp_path / "o" / "summary.md").read_text()


# ---- 12. settings and damaged files --------------------------------------------------------------------------------


@pytest.mark.parametrize(("flags", "match"), [
    (["--workers", "1000"], "workers (1000) must be at most"),
    (["--val-share", "0.99"], "val_share must be in (0, 0.5]"),
    (["--device", "banana"], "not a device name"),
    (["--device", "cuda:7"], "cuda:7"),
])
def test_settings_errors_are_one_line_exit_2_and_create_no_folder(store_path, tmp_path, capsys, flags, match):
    out = tmp_path / "new" / "eval"
    assert main(["--store", str(store_path), "--out", str(out), "--arms", "random", *QUICK_FLAGS, *flags]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1, err
    assert not (tmp_path / "new").exists()
    assert main(["--demo", "--out", str(out), *QUICK_FLAGS, *flags]) == 2  # a whole job checks them first too
    assert match in capsys.readouterr().err and not (tmp_path / "new").exists()


def test_val_share_is_the_share_asked_for():
    labels = np.array([1] * 40 + [0] * 60)
    for share in (0.2, 0.3, 0.5):
        draw = sample_fractions(labels, (100.0,), seed=0, carve_share=share)[100.0]
        assert len(draw.val) / len(labels) == pytest.approx(share, abs=0.03)


def test_a_damaged_cell_is_computed_again_with_a_warning(store_path, tmp_path, caplog):
    cfg = _config(store_path, tmp_path / "eval", None, arms=("random",))
    run_evaluation(cfg)
    cell = next((tmp_path / "eval" / "cells").glob("*.json"))
    good = json.loads(cell.read_text())
    cell.write_text('{"task": "low_ef", "arm": ')
    with caplog.at_level("WARNING", logger="ecgfast.eval"):
        run_evaluation(cfg)
    assert "damaged cell" in caplog.text and str(cell.name) in caplog.text
    assert json.loads(cell.read_text())["test_auroc"] == pytest.approx(good["test_auroc"])
