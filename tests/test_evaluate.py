"""The downstream protocol (ecgfast-eval, ecgfast-embed): label fractions, AUROC and its intervals, the
logistic regression, an end-to-end run of all three arms with resume, and the errors on bad input.

Everything runs on a 60-patient synthetic store (half train, a quarter each val and test, so that both
classes reach every split) with the tiny preset and a few optimisation steps: the file takes about a minute
on a 2-core CPU. The "pretrained" checkpoint is a randomly initialised encoder: the protocol, not the
pretraining, is under test.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from ecgfast.checkpoint import save_checkpoint
from ecgfast.data.store import ECGStore
from ecgfast.data.synthetic import SyntheticReader
from ecgfast.embed import encode_records, fit_logistic_regression, record_segments
from ecgfast.embed import main as embed_main
from ecgfast.eval_report import auroc, bootstrap_auroc, seed_interval, weighted_auroc
from ecgfast.evaluate import (
    EvalConfig,
    EvalError,
    Evaluator,
    _batches,
    cell_path,
    load_task,
    main,
    patient_labels,
    run_evaluation,
    sample_fraction_patients,
    schedule,
)
from ecgfast.models.temporalnet import DualStreamTemporalNet, ECGClassifier, temporalnet_config
from ecgfast.prepare import SplitConfig, prepare_store

OUTPUTS = ("results.csv", "summary.json", "summary.md", "auroc_vs_fraction.png")


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    """60 patients, seed 10: train 34 (14 low_ef, 6 hyperk positive), val 14 (5, 2), test 12 (3, 3) patients."""
    path = tmp_path_factory.mktemp("eval") / "store"
    prepare_store([SyntheticReader(n_patients=60, seed=10)], path, split=SplitConfig(fractions=(0.5, 0.25, 0.25)),
                  workers=1, progress=False)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("pretrain")
    save_checkpoint(run, 0, DualStreamTemporalNet(temporalnet_config("tiny")), {}, config={"model": "tiny"})
    return run


def _edited_store(src: Path, dst: Path, **columns) -> Path:
    """A copy of store ``src`` whose manifest columns are replaced (values: a list, or a function of the frame)."""
    shutil.copytree(src, dst)
    manifest = pd.read_parquet(dst / "manifest.parquet")
    for name, value in columns.items():
        manifest[name] = value(manifest) if callable(value) else value
    manifest.to_parquet(dst / "manifest.parquet")
    return dst


def _config(store: Path, out: Path, checkpoint: Path | None, **kw) -> EvalConfig:
    base = {"tasks": ("low_ef",), "fractions": (50.0, 100.0), "seeds": 1, "epochs": 2, "max_steps": 2, "evals": 2,
            "batch_size": 8, "eval_batch_size": 64, "n_boot": 200, "progress": False}
    return EvalConfig(store=str(store), out=str(out), checkpoint=str(checkpoint) if checkpoint else None,
                      **{**base, **kw})


# ---- AUROC and its intervals -------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, n_levels", [(7, 3), (50, 5), (333, 1000)])
def test_auroc_matches_sklearn_with_ties(n, n_levels):
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(n)
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    scores = rng.integers(0, n_levels, n).astype(float)  # few levels: many ties across the classes
    assert auroc(y, scores) == pytest.approx(metrics.roc_auc_score(y, scores), abs=1e-12)
    assert weighted_auroc(y, scores, np.ones((1, n)))[0] == pytest.approx(auroc(y, scores), abs=1e-12)
    counts = rng.integers(0, 4, n)
    counts[:2] = 1
    expanded = np.repeat(np.arange(n), counts)  # integer weights are copies of records
    assert weighted_auroc(y, scores, counts[None])[0] == pytest.approx(auroc(y[expanded], scores[expanded]))


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


def test_seed_interval_is_student_t():
    v = [0.71, 0.74, 0.69, 0.73, 0.75]
    mean, lo, hi = seed_interval(v)
    ref = stats.t.interval(0.95, len(v) - 1, loc=np.mean(v), scale=stats.sem(v))
    assert (mean, lo, hi) == pytest.approx((np.mean(v), *ref))
    assert np.isnan(seed_interval([0.7])[1])


# ---- label fractions, schedule, batches --------------------------------------------------------------------------


def test_fractions_are_stratified_nested_and_deterministic():
    labels = (np.random.default_rng(0).random(803) < 0.23).astype(float)
    fractions = (1, 5, 10, 50, 100)
    draws = sample_fraction_patients(labels, fractions, seed=3, task="t")
    n_pos, n_neg = labels.sum(), (1 - labels).sum()
    for f, idx in draws.items():
        assert labels[idx].sum() == np.floor(f / 100 * n_pos + 0.5)
        assert (1 - labels[idx]).sum() == np.floor(f / 100 * n_neg + 0.5)
    for small, large in zip(fractions[:-1], fractions[1:], strict=True):
        assert set(draws[small]) <= set(draws[large])
    assert len(draws[100]) == len(labels)
    again = sample_fraction_patients(labels, fractions[::-1], seed=3, task="t")  # order of fractions irrelevant
    assert all(np.array_equal(draws[f], again[f]) for f in fractions)
    assert not np.array_equal(draws[10], sample_fraction_patients(labels, (10,), seed=4, task="t")[10])


def test_fraction_without_both_classes_is_named():
    labels = np.array([1.0] * 5 + [0.0] * 45)
    with pytest.raises(EvalError, match=r"1 % of the 50 .*0 positive"):
        sample_fraction_patients(labels, (1, 50), seed=0)


def test_fraction_patients_are_train_patients_only(store_path):
    store = ECGStore(store_path)
    task = load_task(store, "low_ef")
    codes, lab = patient_labels(task.y["train"], task.patients["train"])
    held_out = set(task.patients["val"]) | set(task.patients["test"])
    for seed in range(3):
        for idx in sample_fraction_patients(lab, (10, 50, 100), seed, "low_ef").values():
            assert set(codes[idx]) <= set(task.patients["train"]) and not set(codes[idx]) & held_out


def test_schedule_and_balanced_batches():
    assert schedule(100, 32, epochs=3, max_steps=None, evals=None) == (12, [4, 8, 12])  # each epoch's end
    assert schedule(100, 32, epochs=30, max_steps=10, evals=2) == (10, [5, 10])
    y = np.array([1] * 3 + [0] * 40)
    batches = _batches(y, 8, balanced=True, rng=np.random.default_rng(0))
    assert all(y[next(batches)].sum() == 4 for _ in range(10))


def test_logistic_regression_matches_sklearn():
    linear_model = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6))
    y = (x @ rng.normal(size=6) + rng.normal(size=200) > 0).astype(float)
    coef, icpt = fit_logistic_regression(x, y, l2=0.05)
    ref = linear_model.LogisticRegression(C=1 / (0.05 * len(y)), tol=1e-10, max_iter=10_000).fit(x, y)
    np.testing.assert_allclose(coef, ref.coef_[0], atol=1e-4)
    assert icpt == pytest.approx(ref.intercept_[0], abs=1e-4)


def test_frozen_features_give_the_classifiers_logits(store_path):
    # the frozen arm trains its head on cached features: they must reproduce ECGClassifier's forward
    store = ECGStore(store_path)
    torch.manual_seed(0)
    clf = ECGClassifier(DualStreamTemporalNet(temporalnet_config("tiny"))).freeze_encoder().eval()
    rows = np.array([0, 5])
    feats = torch.from_numpy(encode_records(clf.encoder, store, rows))  # (2, 2 halves, D)
    segments = record_segments(torch.from_numpy(store.read_mv(rows))).flatten(0, 1)  # (4, 8, 2500)
    with torch.no_grad():
        direct = clf(segments).view(2, 2)
        cached = clf.head.linear(feats)[..., 0]
    torch.testing.assert_close(cached, direct, atol=1e-5, rtol=1e-5)


# ---- end to end ----------------------------------------------------------------------------------------------


def test_end_to_end_all_arms_then_resume(store_path, checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "eval"
    summary = run_evaluation(_config(store_path, out, checkpoint))
    assert {(r.arm, r.fraction) for r in summary.itertuples()} == {(a, f) for a in ("random", "frozen", "finetuned")
                                                                    for f in (50.0, 100.0)}
    assert all((out / name).is_file() and (out / name).stat().st_size > 0 for name in OUTPUTS)
    assert len(list((out / "cells").glob("*.json"))) == 6
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 6 and results["test_auroc"].between(0, 1).all()
    assert (results["test_lo"] <= results["test_auroc"]).all() and (results["test_auroc"] <= results["test_hi"]).all()
    assert (results.loc[results.fraction == 100, "n_train_patients"] == 34).all()
    md = (out / "summary.md").read_text()
    assert "| low_ef | 50 % |" in md and "finetuned - random" in md
    summary_json = json.loads((out / "summary.json").read_text())
    assert summary_json["tasks"]["low_ef"]["test"]["patients"] == 12
    assert summary_json["tasks"]["low_ef"]["test"]["positive_patients"] == 3
    assert "syn-p" not in md + json.dumps(summary_json) + results.to_csv()  # patient ids never reported
    cell = json.loads(cell_path(out, "low_ef", "finetuned", 50.0, 0).read_text())
    assert cell["steps"] == 2 and cell["best_step"] in cell["eval_steps"]

    def boom(*args, **kwargs):
        raise AssertionError("a finished cell was recomputed")

    monkeypatch.setattr(Evaluator, "run_cell", boom)
    run_evaluation(_config(store_path, out, checkpoint))  # every cell is saved: nothing runs
    pd.testing.assert_frame_equal(pd.read_csv(out / "results.csv"), results)
    with pytest.raises(EvalError, match="other settings"):  # a saved cell made otherwise is not silently reused
        run_evaluation(_config(store_path, out, checkpoint, batch_size=4))


def test_fast_frozen_agrees_with_trained_linear_head(store_path, checkpoint, tmp_path):
    outs = {}
    for fast in (False, True):  # the head trains to convergence on cached features: cheap
        cfg = _config(store_path, tmp_path / f"fast{fast}", checkpoint, arms=("frozen",), fast_frozen=fast,
                      fractions=(100.0,), epochs=40, max_steps=400, evals=8, seeds=2)
        outs[fast] = run_evaluation(cfg).iloc[0]
    linear, logistic = outs[False], outs[True]
    noise = (linear["boot_hi"] - linear["boot_lo"]) / 2  # half the width of the test-patient bootstrap interval
    assert abs(linear["mean"] - logistic["mean"]) <= noise, (linear["mean"], logistic["mean"], noise)
    assert embed_main(["--store", str(store_path), "--checkpoint", str(checkpoint), "--out",
                       str(tmp_path / "emb"), "--splits", "test", "--no-progress"]) == 0
    with np.load(tmp_path / "emb" / "test.npz") as z:
        assert z["features"].shape[1:] == (2, 64) and len(z["rows"]) == summary_test_records(store_path)


def summary_test_records(store_path: Path) -> int:
    return len(ECGStore(store_path).split_indices("test"))


# ---- bad input --------------------------------------------------------------------------------------------------


def _cli(capsys, *argv) -> tuple[int, str]:
    code = main([*map(str, argv), "--no-progress"])
    return code, capsys.readouterr().err


def test_unknown_task_lists_the_labels(store_path, tmp_path, capsys):
    code, err = _cli(capsys, "--store", store_path, "--task", "lvef", "--out", tmp_path / "o")
    assert code == 2 and "unknown task 'lvef'" in err and "hyperk, low_ef" in err


def test_store_without_labels(store_path, tmp_path, capsys):
    bare = _edited_store(store_path, tmp_path / "bare", labels="{}")
    code, err = _cli(capsys, "--store", bare, "--task", "low_ef", "--out", tmp_path / "o")
    assert code == 2 and "has no labels" in err


def test_task_with_one_class(store_path, tmp_path, capsys):
    flat = _edited_store(store_path, tmp_path / "flat", labels='{"low_ef": 0}')
    code, err = _cli(capsys, "--store", flat, "--task", "low_ef", "--out", tmp_path / "o")
    assert code == 2 and "0 positive" in err and "both classes" in err


def test_frozen_arm_needs_a_checkpoint(store_path, tmp_path, capsys):
    code, err = _cli(capsys, "--store", store_path, "--task", "low_ef", "--arms", "random", "frozen",
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
    code, err = _cli(capsys, "--store", mixed, "--task", "low_ef", "--out", tmp_path / "o")
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
