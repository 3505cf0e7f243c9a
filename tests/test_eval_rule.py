"""Issue 21, the evaluation's instruments: the step rule (a floor, patience counted past it, one cap every arm shares,
cells stopped by the cap flagged), the frozen arm's probe trained to convergence (scikit-learn's fit on the cached
features), the random-features control (an untrained encoder of the checkpoint's architecture), and the cells that
cannot be judged. The rule's tests run with the defaults a user gets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from eval_helpers import SEGMENT, encoder_checkpoint, make_eval_store
from safetensors.torch import load_file
from scipy.optimize import minimize
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from ecgfast.data.store import ECGStore
from ecgfast.eval import protocol
from ecgfast.eval.config import EvalConfig
from ecgfast.eval.embed import encode_records, random_encoder
from ecgfast.eval.probe import L2_GRID, fit_probe
from ecgfast.eval.protocol import Evaluator, fit_with_early_stopping
from ecgfast.eval.report import markdown_table, summarize
from ecgfast.eval.run import cell_path, run_evaluation
from ecgfast.eval.tasks import MIN_CLASS_PATIENTS, judge_cell, load_task, patient_labels, sample_fractions
from ecgfast.models.temporalnet import DualStreamTemporalNet, ECGClassifier, temporalnet_config
from ecgfast.pretrain.provenance import pretraining_provenance

DEFAULTS = EvalConfig("", "", ())  # the budget a user gets


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    return make_eval_store(tmp_path_factory.mktemp("rule") / "store")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, store_path) -> Path:
    store = ECGStore(store_path)
    prov = pretraining_provenance(store, ["train"], store.split_indices("train"))
    return encoder_checkpoint(tmp_path_factory.mktemp("pretrain"), prov)


def _config(store: Path, out: Path, checkpoint: Path | None, **kw) -> EvalConfig:
    base = {"tasks": ("low_ef",), "seeds": 1, "n_boot": 200, "progress": False, "segment": SEGMENT}
    return EvalConfig(store=str(store), out=str(out), checkpoint=str(checkpoint) if checkpoint else None,
                      **{**base, **kw})


# ---- the step rule -----------------------------------------------------------------------------------------------


def test_a_one_percent_cell_takes_the_floor_then_stops_by_patience(store_path, tmp_path):
    """With the default rule a 1 % cell (one positive training patient here) trains at least --min-steps steps and
    stops by patience, not by the cap; the step it stops at follows from its best step alone."""
    out = tmp_path / "one"
    run_evaluation(_config(store_path, out, None, arms=("random",), fractions=(1.0,)))
    cell = json.loads(cell_path(out, "low_ef", "random", 1.0, 0).read_text())
    c = DEFAULTS
    assert cell["steps"] >= c.min_steps and cell["stopped_by"] == "patience" and cell["steps"] < c.max_steps
    assert cell["val_steps"] == list(range(c.eval_every, cell["steps"] + 1, c.eval_every))
    hist = np.array(cell["val_auroc"])
    assert cell["best_step"] == cell["val_steps"][int(np.argmax(hist))]  # the first of the best
    assert cell["steps"] == max(cell["best_step"], c.min_steps) + c.patience * c.eval_every
    results = pd.read_csv(out / "results.csv")
    assert results.loc[0, "steps"] == cell["steps"] and results.loc[0, "best_step"] == cell["best_step"]
    # one positive patient on each side: the cell cannot be judged, and the table says so with the counts
    assert not cell["usable"] and "1 positive train patient" in cell["unusable_reason"]
    assert "1 positive val patient" in cell["unusable_reason"]
    row = next(ln for ln in (out / "summary.md").read_text().splitlines() if ln.startswith("| low_ef | 1 % |"))
    assert row.startswith("| low_ef | 1 % | 2 (1) / 2 (1) | 0/1 | not judged (") and " cap " not in row


def _fit(scores_of_call, cfg: EvalConfig) -> dict:
    """fit_with_early_stopping on a one-weight model, with a validation scorer that gives ``scores_of_call(k)`` at
    its k-th call (k = 1, 2, ...): the rule alone is under test."""
    torch.manual_seed(0)
    module = torch.nn.Linear(1, 1)
    calls = {"n": 0}

    def score_val():
        calls["n"] += 1
        return scores_of_call(calls["n"])

    y = np.arange(40) % 2
    result = fit_with_early_stopping(module, torch.optim.SGD(module.parameters(), lr=1e-3),
                                     lambda idx: torch.ones(len(idx), 1), y, 1, score_val, _Y_VAL, cfg,
                                     np.random.default_rng(0), torch.device("cpu"))
    assert calls["n"] == len(result["val_auroc"])
    return result


_Y_VAL = np.repeat([0, 1], 500)
_NOISE = np.random.default_rng(0).normal(0, 100.0, _Y_VAL.size)


def _improving(k: int) -> np.ndarray:
    return _Y_VAL + _NOISE / k  # less noise at every call: the validation AUROC rises at every evaluation


def test_patience_counts_only_after_the_floor():
    result = _fit(lambda k: -_improving(k), DEFAULTS)  # worse at every evaluation: the first is the best
    assert np.all(np.diff(result["val_auroc"]) < 0)
    c = DEFAULTS
    assert result["best_step"] == c.eval_every and result["stopped_by"] == "patience"
    assert result["steps"] == c.min_steps + c.patience * c.eval_every  # the evaluations before the floor never count


def test_a_cell_still_improving_at_the_cap_is_flagged():
    result = _fit(_improving, DEFAULTS)
    assert np.all(np.diff(result["val_auroc"]) > 0)  # it improves at every evaluation
    assert result["steps"] == result["best_step"] == DEFAULTS.max_steps and result["stopped_by"] == "cap"
    cells = pd.DataFrame([{"task": "t", "arm": arm, "fraction": 100.0, "seed": s, "test_auroc": 0.7 + 0.01 * s,
                           "test_lo": 0.6, "test_hi": 0.8, "usable": True,
                           "stopped_by": result["stopped_by"] if (arm, s) == ("random", 1) else "patience",
                           "n_train_patients": 30, "n_train_positive_patients": 9, "n_val_patients": 8,
                           "n_val_positive_patients": 3} for arm in ("random", "finetuned") for s in range(3)])
    summary = summarize(cells)
    assert summary.set_index("arm").loc["random", "n_cap"] == 1
    line = markdown_table(summary).splitlines()[2]
    random_entry = line.split(" | ")[4]
    assert random_entry.endswith("cap 1/3") and "cap" not in line.split(" | ")[5]


def test_the_floor_and_cap_are_checked():
    for bad, match in (({"max_steps": 100, "min_steps": 200}, "cap cannot sit below the floor"),
                       ({"eval_every": 300}, "would pass without a validation point"),
                       ({"patience": 0}, "patience must be >= 1"), ({"frozen_head": "sgd"}, "frozen_head")):
        with pytest.raises(ValueError, match=match):
            EvalConfig("s", "o", ("t",), **bad).check()


# ---- the probe --------------------------------------------------------------------------------------------------


def _objective(theta: np.ndarray, x: np.ndarray, y: np.ndarray, l2: float) -> tuple[float, np.ndarray]:
    """The probe's loss, mean logloss + l2 / 2 |w|^2 (the intercept unpenalised), and its gradient."""
    d = x.shape[1]
    z = x @ theta[:d] + theta[d]
    r = (expit(z) - y) / len(y)
    return (float(np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * l2 * theta[:d] @ theta[:d]),
            np.concatenate([x.T @ r + l2 * theta[:d], [r.sum()]]))


def test_the_frozen_probe_converges_and_is_scikit_learns_fit_on_the_cached_features(store_path, checkpoint, tmp_path):
    out = tmp_path / "probe"
    cfg = _config(store_path, out, checkpoint, arms=("frozen",), fractions=(100.0,))
    run_evaluation(cfg)
    cell = json.loads(cell_path(out, "low_ef", "frozen", 100.0, 0).read_text())
    assert cell["stopped_by"] == "converged" and cell["settings"]["frozen_head"] == "probe"
    # an independent fit: the draw as the run makes it, the cached features averaged over segments, sklearn's
    # logistic regression on standardised features for every penalty, the best validation AUROC kept
    store = ECGStore(store_path)
    task = load_task(store, "low_ef", segment=SEGMENT)
    codes, labels = patient_labels(task.y["train"], task.patients["train"])
    draw = sample_fractions(labels, (100.0,), 0, "low_ef", cfg.val_share)[100.0]
    cached = {}
    # the store's val split is not embedded: this run carves its validation patients from train
    assert not (out / "embeddings" / "val.npz").exists()
    for split in ("train", "test"):
        with np.load(out / "embeddings" / f"{split}.npz") as z:
            cached.update(zip(z["rows"].tolist(), z["features"].mean(axis=1).astype(np.float64), strict=True))

    def side(patients: np.ndarray, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
        keep = np.isin(task.patients[split], patients)
        return np.stack([cached[r] for r in task.rows[split][keep]]), task.y[split][keep]

    (x, y), (xv, yv), (xt, yt) = side(codes[draw.train]), side(codes[draw.val]), side(task.patients["test"], "test")
    scaler = StandardScaler().fit(x)
    best = None
    for l2 in L2_GRID:
        lr = LogisticRegression(C=1 / (l2 * len(y)), tol=1e-10, max_iter=100_000).fit(scaler.transform(x), y)
        val = roc_auc_score(yv, lr.decision_function(scaler.transform(xv)))
        if best is None or val > best[0]:
            best = (val, l2, lr)
    assert cell["l2"] == best[1] and cell["val_auroc_best"] == pytest.approx(best[0], abs=1e-12)
    assert cell["test_auroc"] == pytest.approx(roc_auc_score(yt, best[2].decision_function(scaler.transform(xt))),
                                               abs=1e-9)
    # converged: from the probe's own solution, a tighter optimiser lowers its loss by nothing that matters
    fit = fit_probe(x, y, best[1])
    xs = fit[0].transform(x)
    theta = np.concatenate([fit[-1].coef_[0], fit[-1].intercept_])
    loss, grad = _objective(theta, xs, y, best[1])
    again = minimize(_objective, theta, args=(xs, y, best[1]), jac=True, method="L-BFGS-B",
                     options={"maxiter": 10_000, "gtol": 1e-14, "ftol": 1e-16})
    assert loss - again.fun <= 1e-9 * loss and np.abs(grad).max() < 1e-6


# ---- the random-features control ------------------------------------------------------------------------------


def test_random_features_use_an_untrained_encoder_of_the_checkpoints_architecture(store_path, checkpoint, tmp_path,
                                                                                 monkeypatch):
    # the checkpoint's preset wins over --model: the control has the pretrained encoder's architecture
    ev = Evaluator(_config(store_path, tmp_path / "rf", checkpoint, model="small", arms=("random-features",)))
    assert ev.preset == "tiny"
    pretrained = load_file(checkpoint / "checkpoints" / "ckpt-00000000" / "model.safetensors")
    seed = 3
    enc = random_encoder(ev.preset, seed)
    weights = enc.state_dict()
    assert {k: tuple(v.shape) for k, v in weights.items()} == {k: tuple(v.shape) for k, v in pretrained.items()}
    assert any(not torch.equal(weights[k], pretrained[k]) for k in pretrained)  # not the pretrained weights
    # untrained: exactly the encoder the random-init arm of that seed starts from, BatchNorm never run on a batch
    torch.manual_seed(seed)
    start = ECGClassifier(DualStreamTemporalNet(temporalnet_config("tiny"))).encoder.state_dict()
    assert all(torch.equal(weights[k], start[k]) for k in start)
    assert all(int(v) == 0 for k, v in weights.items() if k.endswith("num_batches_tracked"))
    # its features are that encoder's, computed once per seed and cached; another seed gives others
    test_rows, feats = ev.features(seed)["test"]
    np.testing.assert_array_equal(feats, encode_records(enc, ECGStore(store_path), test_rows, SEGMENT))
    assert not np.allclose(feats, ev.features(seed + 1)["test"][1])
    assert not np.allclose(feats, ev.features(None)["test"][1])
    # a random-features cell asks for the untrained encoder of its own seed and the checkpoint's preset
    seen = []
    real = protocol.random_encoder

    def spy(preset, s, device="cpu"):
        seen.append((preset, s))
        return real(preset, s, device)

    monkeypatch.setattr(protocol, "random_encoder", spy)
    out = tmp_path / "cells"
    run_evaluation(_config(store_path, out, checkpoint, arms=("random-features", "frozen"), fractions=(100.0,),
                           seeds=2))
    assert seen == [("tiny", 0), ("tiny", 1)]
    results = pd.read_csv(out / "results.csv").set_index(["arm", "seed"])
    assert results.loc[("random-features", 0), "test_auroc"] != results.loc[("frozen", 0), "test_auroc"]
    assert "frozen - random-features" in (out / "summary.md").read_text()


# ---- cells that cannot be judged ------------------------------------------------------------------------------


def test_a_cell_with_too_few_patients_or_validation_values_is_not_judged():
    ok = np.array([1, 1, 1, 0, 0, 0])
    assert judge_cell(ok, ok, np.repeat([0, 1], 5)) == (True, "", 26)
    few = np.array([1] * (MIN_CLASS_PATIENTS - 1) + [0] * 9)
    usable, why, _ = judge_cell(few, ok, np.repeat([0, 1], 5))
    assert not usable and why == f"{MIN_CLASS_PATIENTS - 1} positive train patients"
    usable, why, levels = judge_cell(ok, ok, np.array([1, 1, 1, 0, 0, 0]))  # 3 x 3 + 1 = 10 possible AUROCs
    assert not usable and levels == 10 and why == "val AUROC takes 10 values"
    # means over seeds are over the usable seeds, and say how many; gains stay paired on them
    cells = pd.DataFrame([{"task": "t", "arm": arm, "fraction": 1.0, "seed": s, "test_auroc": auc,
                           "test_lo": 0.4, "test_hi": 0.9, "usable": s != 0, "stopped_by": "patience",
                           "n_train_patients": 6, "n_train_positive_patients": 3, "n_val_patients": 6,
                           "n_val_positive_patients": 3}
                          for arm, aucs in (("random", (0.9, 0.6, 0.62)), ("finetuned", (0.1, 0.7, 0.74)))
                          for s, auc in enumerate(aucs)])
    summary = summarize(cells).set_index("arm")
    assert summary.loc["random", "n_usable"] == 2 and summary.loc["random", "mean"] == pytest.approx(0.61)
    assert summary.loc["finetuned", "gain_mean"] == pytest.approx(0.11)  # (0.1 + 0.12) / 2, seed 0 left out
    assert "| 2/3 |" in markdown_table(summarize(cells))
    none = summarize(cells.assign(usable=False))
    assert not none["judged"].any() and "| 0/3 | not judged (0.707) |" in markdown_table(none)
