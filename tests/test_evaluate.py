"""The downstream protocol (ecgfast-eval, ecgfast-embed): label fractions and the carved validation patients, AUROC
and its intervals, the linear probe's port, the leakage refusal, short records, an end-to-end run of all four arms
with resume, the reports, and the errors on bad input. The step rule, the converged probe, the random-features
control and the cells that cannot be judged: tests/test_eval_rule.py.

Everything runs on the store and checkpoint of tests/eval_helpers.py with the tiny preset. Tests of other things than
the budget rule shrink it (a floor of 10 steps, a cap of 40) to stay fast; the rule's own tests use the defaults.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from eval_helpers import SEGMENT, encoder_checkpoint, make_eval_store
from scipy import stats
from scipy.optimize import minimize
from scipy.special import expit
from sklearn.metrics import roc_auc_score

from ecgfast.data.store import ECGStore
from ecgfast.data.windows import segment_starts
from ecgfast.eval.cli import embed_main, main
from ecgfast.eval.config import ARMS, EvalConfig
from ecgfast.eval.embed import encode_records, record_segments
from ecgfast.eval.plot import task_title
from ecgfast.eval.probe import select_probe
from ecgfast.eval.protocol import Evaluator, batches
from ecgfast.eval.report import auroc, bootstrap_auroc, seed_interval, summarize, weighted_auroc
from ecgfast.eval.run import run_evaluation
from ecgfast.eval.tasks import EvalError, load_task, patient_labels, sample_fractions
from ecgfast.models.temporalnet import DualStreamTemporalNet, ECGClassifier, temporalnet_config
from ecgfast.pretrain.provenance import pretraining_provenance

OUTPUTS = ("results.csv", "summary.json", "summary.md", "auroc_vs_fraction.png")
SMALL_BUDGET = {"min_steps": 10, "eval_every": 5, "patience": 2, "max_steps": 40}  # for tests of other things
DEFAULT_RULE = {k: getattr(EvalConfig("", "", ()), k) for k in (*SMALL_BUDGET, "batch_size")}  # what a user gets


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    return make_eval_store(tmp_path_factory.mktemp("eval") / "store")


_encoder_checkpoint = encoder_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, store_path) -> Path:
    """An encoder 'pretrained' on the store's train split (as ecgfast-train records it)."""
    store = ECGStore(store_path)
    prov = pretraining_provenance(store, ["train"], store.split_indices("train"))
    return _encoder_checkpoint(tmp_path_factory.mktemp("pretrain"), prov)


def _edited_store(src: Path, dst: Path, **columns) -> Path:
    """A copy of store ``src`` whose manifest columns are replaced (values: a list, or a function of the frame)."""
    shutil.copytree(src, dst)
    manifest = pd.read_parquet(dst / "manifest.parquet")
    for name, value in columns.items():
        manifest[name] = value(manifest) if callable(value) else value
    manifest.to_parquet(dst / "manifest.parquet")
    return dst


def _config(store: Path, out: Path, checkpoint: Path | None, **kw) -> EvalConfig:
    base = {"tasks": ("low_ef",), "fractions": (50.0, 100.0), "seeds": 1, **SMALL_BUDGET, "batch_size": 16,
            "eval_batch_size": 64, "n_boot": 200, "progress": False, "segment": SEGMENT}
    return EvalConfig(store=str(store), out=str(out), checkpoint=str(checkpoint) if checkpoint else None,
                      **{**base, **kw})


# ---- AUROC and its intervals -------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, n_levels", [(7, 3), (50, 5), (333, 1000)])
def test_auroc_is_sklearns_and_the_weighted_form_matches_sample_weights(n, n_levels):
    rng = np.random.default_rng(n)
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    scores = rng.integers(0, n_levels, n).astype(float)  # few levels: many ties across the classes
    assert auroc(y, scores) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)
    assert weighted_auroc(y, scores, np.ones((1, n)))[0] == pytest.approx(auroc(y, scores), abs=1e-12)
    weights = rng.integers(0, 4, (5, n)).astype(float)
    weights[:, :2] = 1
    fast = weighted_auroc(y, scores, weights)
    for b in range(5):  # the vectorised bootstrap kernel is sklearn's AUROC under sample weights
        assert fast[b] == pytest.approx(roc_auc_score(y, scores, sample_weight=weights[b]), abs=1e-12)


def test_auroc_rejects_one_class_and_nan():
    with pytest.raises(ValueError, match="both classes"):
        auroc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="NaN"):
        auroc([0, 1], [0.1, np.nan])


def _patients_scores(n_patients: int, per_patient: int, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, 2, n_patients)
    patient = np.repeat(np.arange(n_patients), per_patient)
    score = lab[patient] + rng.normal(0, 1.0, n_patients)[patient]  # a patient's records score alike
    return lab[patient], score, patient


def test_bootstrap_covers_estimate_and_narrows_with_patients():
    widths = []
    for n in (30, 300):
        y, s, p = _patients_scores(n, 3, seed=n)
        lo, hi = bootstrap_auroc(y, s, p, n_boot=500, seed=0)
        assert lo <= auroc(y, s) <= hi
        widths.append(hi - lo)
    assert widths[1] < 0.6 * widths[0]  # ~ 1/sqrt(10) expected


def test_bootstrap_resamples_patients_not_records():
    # 5 identical records per patient carry the information of 1: the interval must be as wide as with 1 record
    y1, s1, p1 = _patients_scores(80, 1, seed=1)
    lo1, hi1 = bootstrap_auroc(y1, s1, p1, n_boot=500, seed=0)
    lo5, hi5 = bootstrap_auroc(np.repeat(y1, 5), np.repeat(s1, 5), np.repeat(p1, 5), n_boot=500, seed=0)
    assert (hi5 - lo5) == pytest.approx(hi1 - lo1, rel=0.2)


def test_seed_interval_is_student_t_and_one_seed_shows_its_bootstrap_interval():
    v = [0.71, 0.74, 0.69, 0.73, 0.75]
    mean, lo, hi = seed_interval(v)
    ref = stats.t.interval(0.95, len(v) - 1, loc=np.mean(v), scale=stats.sem(v))
    assert (mean, lo, hi) == pytest.approx((np.mean(v), *ref))
    assert np.isnan(seed_interval([0.7])[1])
    one = pd.DataFrame([{"task": "t", "arm": "random", "fraction": 1.0, "seed": 0, "test_auroc": 0.545,
                         "test_lo": 0.41, "test_hi": 0.66, "n_train_patients": 8, "n_val_patients": 2}])
    row = summarize(one).iloc[0]
    assert (row["lo"], row["hi"], row["interval"]) == (0.41, 0.66, "bootstrap")  # never [0.545, 0.545]


# ---- label fractions and the carved validation patients ----------------------------------------------------------


def test_fractions_are_stratified_nested_and_deterministic():
    labels = (np.random.default_rng(0).random(803) < 0.23).astype(float)
    fractions = (1, 5, 10, 50, 100)
    draws = sample_fractions(labels, fractions, seed=3, task="t", carve_share=None)
    n_pos, n_neg = labels.sum(), (1 - labels).sum()
    for f, d in draws.items():
        assert len(d.val) == 0
        assert labels[d.train].sum() == np.floor(f / 100 * n_pos + 0.5)
        assert (1 - labels[d.train]).sum() == np.floor(f / 100 * n_neg + 0.5)
    for small, large in zip(fractions[:-1], fractions[1:], strict=True):
        assert set(draws[small].train) <= set(draws[large].train)
    assert len(draws[100].train) == len(labels)
    again = sample_fractions(labels, fractions[::-1], seed=3, task="t", carve_share=None)  # order irrelevant
    assert all(np.array_equal(draws[f].train, again[f].train) for f in fractions)
    other = sample_fractions(labels, (10,), seed=4, task="t", carve_share=None)[10].train
    assert not np.array_equal(draws[10].train, other)


def test_carved_validation_is_patient_disjoint_stratified_and_nested():
    labels = (np.random.default_rng(1).random(500) < 0.1).astype(float)  # 10 % positive, as a rare diagnosis
    fractions = (1, 5, 10, 50, 100)
    draws = sample_fractions(labels, fractions, seed=0, task="rare", carve_share=0.2)
    for f, d in draws.items():
        assert not set(d.train) & set(d.val)  # patient-disjoint
        for part in (d.train, d.val):  # both classes on both sides, however small the fraction
            assert 0 < labels[part].sum() < len(part)
        kept = len(d.train) + len(d.val)
        n_pos = labels.sum()
        assert labels[np.concatenate([d.train, d.val])].sum() == max(2, np.floor(f / 100 * n_pos + 0.5))
        if kept >= 100:  # about the requested share of each class validates
            assert 0.15 < len(d.val) / kept < 0.25
    for small, large in zip(fractions[:-1], fractions[1:], strict=True):
        assert set(draws[small].train) <= set(draws[large].train)  # nested on both sides
        assert set(draws[small].val) <= set(draws[large].val)
    with pytest.raises(EvalError, match="at least 2 of each class"):
        sample_fractions(np.array([1.0] + [0.0] * 40), (50,), seed=0, carve_share=0.2)


def test_fraction_patients_are_train_patients_only(store_path):
    store = ECGStore(store_path)
    task = load_task(store, "low_ef")
    codes, lab = patient_labels(task.y["train"], task.patients["train"])
    held_out = set(task.patients["val"]) | set(task.patients["test"])
    for seed in range(3):
        for d in sample_fractions(lab, (10, 50, 100), seed, "low_ef").values():
            chosen = set(codes[d.train]) | set(codes[d.val])
            assert chosen <= set(task.patients["train"]) and not chosen & held_out


def test_balanced_batches():
    y = np.array([1] * 3 + [0] * 40)
    stream = batches(y, 8, balanced=True, rng=np.random.default_rng(0))
    assert all(y[next(stream)].sum() == 4 for _ in range(10))


# ---- the linear probe ----------------------------------------------------------------------------------------------


def _lbfgs_logistic(x, y, l2, weight=None):
    """The hand-written probe ecgfast had before scikit-learn took over: the oracle of the port."""
    n, d = x.shape
    w = np.ones(n) if weight is None else weight
    w = w / w.sum()

    def loss_grad(theta):
        z = x @ theta[:d] + theta[d]
        loss = float(w @ (np.logaddexp(0.0, z) - y * z) + 0.5 * l2 * theta[:d] @ theta[:d])
        r = w * (expit(z) - y)
        return loss, np.concatenate([x.T @ r + l2 * theta[:d], [r.sum()]])

    res = minimize(loss_grad, np.zeros(d + 1), jac=True, method="L-BFGS-B",
                   options={"maxiter": 1000, "gtol": 1e-9, "ftol": 1e-12})
    return res.x[:d], res.x[d]


@pytest.mark.parametrize("balanced", [False, True])
def test_probe_gives_the_results_of_the_hand_written_fit_it_replaced(balanced):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)) * rng.uniform(0.5, 3, 6) + rng.normal(size=6)
    y = (x @ rng.normal(size=6) + rng.normal(size=200) > 1).astype(float)
    x_val = rng.normal(size=(80, 6)) * rng.uniform(0.5, 3, 6)
    y_val = (rng.random(80) < 0.3).astype(float)
    probe = select_probe(x, y, x_val, y_val, balanced=balanced)
    mean, std = x.mean(0), x.std(0)
    weight = np.where(y == 1, 0.5 / y.sum(), 0.5 / (len(y) - y.sum())) if balanced else None
    coef, icpt = _lbfgs_logistic((x - mean) / std, y, probe.l2, weight)
    expected = ((x_val - mean) / std) @ coef + icpt
    np.testing.assert_allclose(probe.decision_function(x_val), expected, atol=2e-4)


def test_frozen_features_give_the_classifiers_logits(store_path):
    # the frozen arm trains its head on cached features: they must reproduce ECGClassifier's forward
    store = ECGStore(store_path)
    torch.manual_seed(0)
    clf = ECGClassifier(DualStreamTemporalNet(temporalnet_config("tiny"))).freeze_encoder().eval()
    rows = np.array([0, 5])
    feats = torch.from_numpy(encode_records(clf.encoder, store, rows, SEGMENT))  # (2, 2 halves, D)
    segments = record_segments(torch.from_numpy(store.read_mv(rows)), np.array([[0, 500]] * 2), SEGMENT).flatten(0, 1)
    with torch.no_grad():
        direct = clf(segments).view(2, 2)
        cached = clf.head.linear(feats)[..., 0]
    torch.testing.assert_close(cached, direct, atol=1e-5, rtol=1e-5)


# ---- leakage, short records -----------------------------------------------------------------------------------------


def test_an_encoder_that_saw_the_test_patients_is_refused(store_path, tmp_path):
    store = ECGStore(store_path)
    everything = _encoder_checkpoint(tmp_path / "all", pretraining_provenance(store, ["train", "val", "test"],
                                                                              np.arange(len(store))))
    test = store.split_indices("test")
    n, r = len(np.unique(store.patient_ids[test])), len(test)  # every test patient and record
    refused = f"refusing to evaluate: the encoder was pretrained on {n} of the {n} test patients and {r} of the {r} "
    with pytest.raises(EvalError, match=refused):
        run_evaluation(_config(store_path, tmp_path / "o1", everything, arms=("frozen",)))
    # the same patients in another store (another fingerprint, other record ids): caught by the keyed hashes of the
    # patient keys and record checksums (provenance v2)
    copy = _edited_store(store_path, tmp_path / "copy", record_id=lambda m: [f"r{i}" for i in range(len(m))])
    with pytest.raises(EvalError, match=refused):
        run_evaluation(_config(copy, tmp_path / "o2", everything, arms=("frozen",)))
    # an encoder from elsewhere: evaluated, and the report says the overlap could not be checked
    unknown = _encoder_checkpoint(tmp_path / "elsewhere", None)
    run_evaluation(_config(store_path, tmp_path / "o3", unknown, arms=("frozen",), fractions=(100.0,)))
    assert "cannot be checked" in (tmp_path / "o3" / "summary.md").read_text()


def test_records_shorter_than_a_segment_are_left_out_and_shorter_ones_use_their_valid_part(store_path, tmp_path):
    valid = ECGStore(store_path).valid_length.copy()
    valid[::7] = 400  # shorter than one 500-sample segment
    valid[1::7] = 600  # one segment and a bit: two overlapping segments inside the valid part
    short = _edited_store(store_path, tmp_path / "short", valid_length=valid)
    store = ECGStore(short)
    task = load_task(store, "low_ef", segment=SEGMENT)
    assert sum(task.too_short.values()) == int((valid < SEGMENT).sum())
    assert all((store.valid_length[task.rows[s]] >= SEGMENT).all() for s in task.rows)
    assert segment_starts(store.valid_length[[1]], 2, SEGMENT).tolist() == [[0, 100]]  # inside the 600 valid samples
    feats = encode_records(DualStreamTemporalNet(temporalnet_config("tiny")).eval(), store, np.array([1]), SEGMENT)
    assert np.isfinite(feats).all() and feats.shape[:2] == (1, 2)


# ---- end to end ----------------------------------------------------------------------------------------------


def test_end_to_end_all_arms_then_resume_and_extend(store_path, checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "eval"
    summary = run_evaluation(_config(store_path, out, checkpoint))
    assert {(r.arm, r.fraction) for r in summary.itertuples()} == {(a, f) for a in ARMS for f in (50.0, 100.0)}
    assert all((out / name).is_file() and (out / name).stat().st_size > 0 for name in OUTPUTS)
    assert len(list((out / "cells").glob("*.json"))) == 8
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 8 and results["test_auroc"].between(0, 1).all()
    assert {"steps", "best_step", "stopped_by", "usable"} <= set(results.columns)
    assert not {"epochs_run", "best_epoch"} & set(results.columns)  # an epoch means nothing under the step rule
    e2e = results[results.arm.isin(["random", "finetuned"])]
    assert (e2e["steps"] >= SMALL_BUDGET["min_steps"]).all() and (e2e["steps"] <= SMALL_BUDGET["max_steps"]).all()
    assert (results["test_lo"] <= results["test_auroc"]).all() and (results["test_auroc"] <= results["test_hi"]).all()
    task = load_task(ECGStore(store_path), "low_ef")
    n_train = len(np.unique(task.patients["train"]))
    full = results[results.fraction == 100]
    assert (full["n_train_patients"] + full["n_val_patients"] == n_train).all()  # carved from the train patients
    md = (out / "summary.md").read_text()
    assert "| low_ef | 50 % |" in md and "finetuned - random |" in md and "frozen - random-features |" in md
    for words in ("Budget rule, the same for every end-to-end arm", "Seeds: 1", "Validation: carved", "test",
                  "test patients or", "none of the", "Usable seeds"):  # the leakage check found no overlap
        assert words in md, words
    summary_json = json.loads((out / "summary.json").read_text())
    assert summary_json["tasks"]["low_ef"]["test"]["patients"] == len(np.unique(task.patients["test"]))
    assert "syn-p" not in md + json.dumps(summary_json) + results.to_csv()  # patient ids never reported

    def boom(*args, **kwargs):
        raise AssertionError("a finished cell was recomputed")

    monkeypatch.setattr(Evaluator, "run_cell", boom)
    run_evaluation(_config(store_path, out, checkpoint))  # every cell is saved: nothing runs
    pd.testing.assert_frame_equal(pd.read_csv(out / "results.csv"), results)
    with pytest.raises(EvalError, match="other settings"):  # a saved cell made otherwise is not silently reused
        run_evaluation(_config(store_path, out, checkpoint, batch_size=4))
    monkeypatch.undo()
    # another fraction in the same folder adds rows: the reports cover every finished cell
    run_evaluation(_config(store_path, out, checkpoint, fractions=(10.0,), arms=("random",)))
    grown = pd.read_csv(out / "results.csv")
    assert len(grown) == 9 and set(grown["fraction"]) == {10.0, 50.0, 100.0}


def test_cells_run_in_worker_processes_give_what_one_process_gives(store_path, checkpoint, tmp_path):
    """Two worker processes give every cell bit for bit as one process does, for the same arithmetic: a cell trained
    1 epoch on a few patients turns float32 noise (another thread count, floating-point state that earlier tests
    left in the pytest process) into AUROC steps. So both runs start in a fresh interpreter with a worker's share of
    the cores: the one-process run, and the parent of the two workers, which computes the frozen features they read.
    """
    cores = len(os.sched_getaffinity(0))
    kw = {"arms": ("random", "random-features", "frozen"), "fractions": (50.0,), "seeds": 2}
    threads = max(1, cores // 2)  # what each of two workers gets
    code = ("import pickle, sys, torch; torch.set_num_threads(int(sys.argv[2])); "
            "from ecgfast.eval.run import run_evaluation; "
            "run_evaluation(pickle.loads(open(sys.argv[1], 'rb').read()))")
    for name, workers in (("one", 1), ("two", 2)):
        cfg = _config(store_path, tmp_path / name, checkpoint, workers=workers, **kw)
        (tmp_path / f"{name}.pkl").write_bytes(pickle.dumps(cfg))
        res = subprocess.run([sys.executable, "-c", code, str(tmp_path / f"{name}.pkl"), str(threads)],
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
    for path in sorted((tmp_path / "one" / "cells").glob("*.json")):
        a, b = json.loads(path.read_text()), json.loads((tmp_path / "two" / "cells" / path.name).read_text())
        a.pop("seconds"), b.pop("seconds")
        assert a == b, path.name
    assert len(list((tmp_path / "two" / "cells").glob("*.json"))) == 6


def test_the_adam_head_trained_to_convergence_agrees_with_the_probe(store_path, checkpoint, tmp_path):
    """The paper's linear head (Adam, lr 0.02) under the default step rule and the default probe reach the same test
    AUROC within the test set's own noise: both are converged linear classifiers of the same features."""
    outs = {}
    for head in ("adam", "probe"):
        cfg = _config(store_path, tmp_path / head, checkpoint, arms=("frozen",), frozen_head=head, fractions=(100.0,),
                      seeds=2, val_source="store", **DEFAULT_RULE)
        outs[head] = run_evaluation(cfg).iloc[0]
    adam, probe = outs["adam"], outs["probe"]
    noise = (probe["boot_hi"] - probe["boot_lo"]) / 2  # half the width of the test-patient bootstrap interval
    assert abs(adam["mean"] - probe["mean"]) <= noise, (adam["mean"], probe["mean"], noise)
    assert embed_main(["--store", str(store_path), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "emb"),
                       "--splits", "test", "--segment", str(SEGMENT), "--no-progress"]) == 0
    with np.load(tmp_path / "emb" / "test.npz") as z:
        assert z["features"].shape[1:] == (2, 64) and len(z["rows"]) == len(ECGStore(store_path).split_indices("test"))


def test_the_command_runs_the_four_arms(store_path, checkpoint, tmp_path, capsys):
    out = tmp_path / "cli"
    code, printed, err = _cli(capsys, "--store", store_path, "--checkpoint", checkpoint, "--task", "low_ef", "--out",
                              out, "--arms", "random", "random-features", "frozen", "finetuned", "--fractions", "100",
                              "--seeds", "1", "--min-steps", "10", "--eval-every", "5", "--max-steps", "20",
                              "--segment", SEGMENT, "--bootstrap", "100")
    assert code == 0, err
    results = pd.read_csv(out / "results.csv")
    assert sorted(results["arm"]) == sorted(ARMS) and results["steps"].notna().all()
    assert "frozen - random-features" in printed and "finetuned - random" in printed


# ---- bad input and the first hour --------------------------------------------------------------------------------


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([*map(str, argv), "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_unknown_task_lists_the_labels_with_their_counts(store_path, tmp_path, capsys):
    code, _, err = _cli(capsys, "--store", store_path, "--task", "lvef", "--out", tmp_path / "o")
    assert code == 2 and "unknown task 'lvef'" in err and "low_ef" in err and "hyperk" in err
    assert "train pos/labelled (pos patients)" in err
    code, out, _ = _cli(capsys, "--store", store_path, "--list-tasks")
    store = ECGStore(store_path)
    n_pos = int(np.nansum(store.label("low_ef")[store.split_indices("test")]))
    line = next(ln for ln in out.splitlines() if ln.startswith("low_ef"))
    assert code == 0 and f"{n_pos:>8}/" in line


def test_task_titles_name_known_codes():
    assert task_title("dx:164889003") == "dx:164889003 (atrial fibrillation)"
    assert task_title("MI") == "MI (myocardial infarction)"
    assert task_title("my_label") == "my_label"


def test_store_without_labels(store_path, tmp_path, capsys):
    bare = _edited_store(store_path, tmp_path / "bare", labels="{}")
    code, _, err = _cli(capsys, "--store", bare, "--task", "low_ef", "--out", tmp_path / "o")
    assert code == 2 and "has no labels" in err


def test_task_with_one_class(store_path, tmp_path, capsys):
    flat = _edited_store(store_path, tmp_path / "flat", labels='{"low_ef": 0}')
    code, _, err = _cli(capsys, "--store", flat, "--task", "low_ef", "--out", tmp_path / "o")
    assert code == 2 and "0 positive" in err and "both classes" in err


def test_frozen_arm_needs_a_checkpoint(store_path, tmp_path, capsys):
    code, _, err = _cli(capsys, "--store", store_path, "--task", "low_ef", "--arms", "random", "frozen",
                        "--out", tmp_path / "o")
    assert code == 2 and "--checkpoint" in err and "frozen" in err


def test_store_that_mixes_patients(store_path, tmp_path, capsys):
    def leak(m: pd.DataFrame) -> list[str]:
        split = m["split"].tolist()
        first_test = split.index("test")
        same = m.index[(m["patient_id"] == m["patient_id"].iloc[first_test])][-1]
        split[same] = "train"  # one record of a test patient moves to train
        return split

    mixed = _edited_store(store_path, tmp_path / "mixed", split=leak)
    code, _, err = _cli(capsys, "--store", mixed, "--task", "low_ef", "--out", tmp_path / "o")
    assert code == 2 and "more than one split" in err


def test_code_list_labels_treat_missing_as_negative(store_path, tmp_path):
    # dx: codes list positives only; every record of the low_ef positives gets dx:1 and nothing else
    coded = _edited_store(store_path, tmp_path / "coded", labels=lambda m: [
        json.dumps({"dx:1": 1.0} if json.loads(s)["low_ef"] else {}) for s in m["labels"]])
    store = ECGStore(coded)
    inferred = load_task(store, "dx:1")
    assert inferred.missing_as_negative and sum(inferred.dropped.values()) == 0
    assert np.array_equal(inferred.y["train"], load_task(ECGStore(store_path), "low_ef").y["train"])
    with pytest.raises(EvalError, match="0 negative"):  # without the rule only positives are labelled
        load_task(store, "dx:1", missing_as_negative=False)
