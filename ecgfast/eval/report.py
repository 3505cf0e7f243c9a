"""Scores and reports of the downstream protocol: AUROC, its intervals, the summary table and the plot.

- :func:`auroc` is scikit-learn's ``roc_auc_score`` after checks that name what is wrong with the input.
- :func:`bootstrap_auroc` resamples test *patients* with replacement (all records of a drawn patient come along,
  as many times as the patient is drawn), because records of one patient are not independent. Resamples are
  weights on records, and :func:`weighted_auroc` scores a thousand of them in a few vectorised passes (scikit-learn
  scores one weighting per call, about 8 ms each: seconds per cell); a test checks it against ``roc_auc_score``
  with ``sample_weight``.
- :func:`seed_interval` is a Student-t interval over seeds (mean +- t_{0.975, n-1} * sd / sqrt(n)); with a
  single seed there is no spread to measure and that seed's patient-bootstrap interval stands in, labelled so.
- :func:`summarize` gives one row per (task, fraction, arm) with the mean over the usable seeds, its interval, how
  many seeds were usable and how many stopped at the cap, and the gain of each arm over its control
  (:data:`ecgfast.eval.config.GAINS`: ``frozen - random-features``, what pretraining put into the representation;
  ``finetuned - random``, what it buys end to end), paired by seed (the same seed draws the same labelled patients
  for every arm, so the difference per seed removes the draw's luck). A seed is usable when its draw can be judged
  (:func:`ecgfast.eval.tasks.judge_cell`, the same for every arm); where no seed is, the mean over all seeds is
  shown and marked "not judged".
- :func:`markdown_table` and :func:`protocol_notes` make summary.md; the plot is :mod:`ecgfast.eval.plot`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import roc_auc_score

from .config import ARMS as ARM_ORDER
from .config import GAINS
from .tasks import MIN_CLASS_PATIENTS, MIN_VAL_AUROC_LEVELS


def auroc(y: Sequence[float] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for binary ``y`` (1 positive), ties counted as one half.

    Raises:
        ValueError: lengths differ, ``y`` is not 0/1, scores are not finite, or one class is absent.
    """
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"auroc: {y.size} labels but {s.size} scores")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("auroc: labels must be 0 or 1")
    if not np.isfinite(s).all():
        raise ValueError(f"auroc: {int((~np.isfinite(s)).sum())} scores are NaN or infinite")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise ValueError(f"auroc: needs both classes, got {n_pos} positives and {y.size - n_pos} negatives")
    return float(roc_auc_score(y, s))


def weighted_auroc(y: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC under record weights, for many weightings at once: ``weights`` (B, N) -> (B,) AUROCs.

    A record of weight k counts as k copies of it (the bootstrap's multiplicities). NaN where a weighting
    leaves one class empty. With all weights 1 this is :func:`auroc`.
    """
    y = np.asarray(y).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    starts = np.concatenate([[0], np.nonzero(np.diff(s_sorted))[0] + 1])  # first index of each tie group
    w_sorted, y_sorted = w[:, order], y[order]
    pos = np.add.reduceat(w_sorted * y_sorted, starts, axis=1)  # (B, G) positive weight per tie group
    neg = np.add.reduceat(w_sorted * ~y_sorted, starts, axis=1)  # (B, G) negative weight per tie group
    below = np.cumsum(neg, axis=1) - neg  # negative weight strictly below each group
    num = (pos * (below + 0.5 * neg)).sum(axis=1)
    den = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def bootstrap_auroc(y: np.ndarray, scores: np.ndarray, patients: np.ndarray, n_boot: int = 1000,
                    level: float = 0.95, seed: int = 0, chunk: int = 200) -> tuple[float, float]:
    """Percentile interval of AUROC over resamples of *patients* (with replacement).

    Args:
        y, scores: (N,) record labels and scores.
        patients: (N,) patient of each record (any hashable codes; never printed).
        n_boot: resamples; those that draw a single class are skipped.
        level: coverage of the interval.
        seed: the resampling is deterministic given the seed.
        chunk: resamples per vectorised pass (memory is chunk x N floats).

    Returns:
        (lo, hi); (nan, nan) when no resample had both classes.
    """
    _, patient_of = np.unique(np.asarray(patients), return_inverse=True)
    n_patients = int(patient_of.max()) + 1
    rng = np.random.default_rng(seed)
    values = []
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        counts = rng.multinomial(n_patients, np.full(n_patients, 1.0 / n_patients), size=b)  # (b, P) draws
        values.append(weighted_auroc(y, scores, counts[:, patient_of]))  # a record weighs as its patient
    v = np.concatenate(values)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    return float(np.quantile(v, alpha)), float(np.quantile(v, 1.0 - alpha))


def seed_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi): Student-t interval of the mean over seeds; (mean, nan, nan) with fewer than 2 values."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(v.mean())
    if v.size < 2:
        return mean, float("nan"), float("nan")
    half = stats.t.ppf(0.5 + level / 2.0, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
    return mean, float(mean - half), float(mean + half)


def _cap_count(cells: pd.DataFrame) -> int:
    return int((cells["stopped_by"] == "cap").sum()) if "stopped_by" in cells else 0


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, fraction, arm) from per-cell ``results`` (columns task, arm, fraction, seed,
    test_auroc, test_lo, test_hi; optional usable, stopped_by and the patient counts).

    Columns: n_seeds, n_usable (seeds whose cell can be judged), judged (any usable seed: the statistics are over
    the usable seeds, else over all and marked), mean, lo, hi (clipped to [0, 1]), interval ("t over seeds", or
    "bootstrap" with one seed), boot_lo and boot_hi (per-seed patient-bootstrap bounds averaged over seeds),
    n_cap (seeds stopped at the cap), gain_vs (the control of ``GAINS``), gain_mean, gain_lo, gain_hi (the arm
    minus its control, paired by seed, t-interval; NaN without the control), and the first seed's patient counts.
    """
    rows = []
    for (task, fraction), block in results.groupby(["task", "fraction"], sort=True):
        usable = (block.groupby("seed")["usable"].all().astype(bool) if "usable" in block
                  else pd.Series(True, index=sorted(set(block["seed"]))))
        good = set(usable.index[usable])
        by_arm = {a: block[block["arm"] == a].sort_values("seed") for a in ARM_ORDER if a in set(block["arm"])}
        for arm, cells in by_arm.items():
            judged = bool(good & set(cells["seed"]))
            use = cells[cells["seed"].isin(good)] if judged else cells
            mean, lo, hi = np.clip(seed_interval(use["test_auroc"]), 0.0, 1.0)  # bounds beyond [0, 1] say nothing
            interval = "t over seeds"
            if len(use) == 1:
                lo, hi, interval = float(use["test_lo"].iloc[0]), float(use["test_hi"].iloc[0]), "bootstrap"
            control, gain = GAINS.get(arm), (float("nan"),) * 3
            if control in by_arm:
                base = by_arm[control].set_index("seed")["test_auroc"]
                paired = use.set_index("seed")["test_auroc"].sub(base).dropna()
                if len(paired):
                    gain = tuple(np.clip(seed_interval(paired), -1.0, 1.0))
            first = cells.iloc[0]
            rows.append({"task": task, "fraction": float(fraction), "arm": arm, "n_seeds": len(cells),
                         "n_usable": len(good & set(cells["seed"])), "judged": judged,
                         "mean": mean, "lo": lo, "hi": hi, "interval": interval,
                         "boot_lo": float(use["test_lo"].mean()), "boot_hi": float(use["test_hi"].mean()),
                         "n_cap": _cap_count(cells), "gain_vs": control if control in by_arm else None,
                         "gain_mean": gain[0], "gain_lo": gain[1], "gain_hi": gain[2],
                         **{k: int(first[k]) if k in cells else -1
                            for k in ("n_train_patients", "n_train_positive_patients", "n_val_patients",
                                      "n_val_positive_patients")}})
    return pd.DataFrame(rows)


def _fmt(mean: float, lo: float, hi: float, signed: bool = False) -> str:
    if not np.isfinite(mean):
        return "-"
    m = f"{mean:+.3f}" if signed else f"{mean:.3f}"
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return m
    return f"{m} [{lo:+.3f}, {hi:+.3f}]" if signed else f"{m} [{lo:.3f}, {hi:.3f}]"


def _entry(row: pd.Series, cols: tuple[str, str, str], signed: bool = False, caps: bool = True) -> str:
    """One table entry: "mean [lo, hi]", "cap k/n" where k seeds stopped at the cap, "not judged (mean)" where no
    seed could be judged."""
    if not row["judged"]:
        return f"not judged ({row[cols[0]]:+.3f})" if signed else f"not judged ({row[cols[0]]:.3f})"
    text = _fmt(*row[list(cols)], signed=signed)
    return text + (f" cap {int(row['n_cap'])}/{int(row['n_seeds'])}" if caps and row["n_cap"] else "")


def markdown_table(summary: pd.DataFrame) -> str:
    """Task x fraction rows: the first seed's train / val patients (positive ones), the usable seeds, one column per
    arm ("mean [lo, hi]", flagged "cap k/n" or "not judged"), then one column per gain of ``GAINS``."""
    arms = [a for a in ARM_ORDER if a in set(summary["arm"])]
    gains = [a for a in GAINS if a in arms and GAINS[a] in arms]
    header = ["task", "labels", "train / val patients (positive)", "usable seeds", *arms,
              *(f"{a} - {GAINS[a]}" for a in gains)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for (task, fraction), block in summary.groupby(["task", "fraction"], sort=True):
        by_arm = block.set_index("arm")
        first = block.iloc[0]
        counts = (f"{int(first['n_train_patients'])} ({int(first['n_train_positive_patients'])}) / "
                  f"{int(first['n_val_patients'])} ({int(first['n_val_positive_patients'])})")
        cells = [task, f"{fraction:g} %", counts, f"{int(block['n_usable'].max())}/{int(block['n_seeds'].max())}"]
        cells += [_entry(by_arm.loc[a], ("mean", "lo", "hi")) if a in by_arm.index else "-" for a in arms]
        cells += [_entry(by_arm.loc[a], ("gain_mean", "gain_lo", "gain_hi"), signed=True, caps=False)
                  if a in by_arm.index else "-" for a in gains]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def protocol_notes(settings: dict, tasks: dict[str, dict], extra: Sequence[str] = ()) -> list[str]:
    """The header of the report: how its numbers were made (``settings``: EvalConfig as a dict; ``tasks``: task ->
    its counts, as ``TaskData.describe`` gives them; ``extra``: further lines, e.g. the pretraining-data check)."""
    arms, probe = settings["arms"], settings.get("frozen_head", "probe") == "probe"
    on_features = ("an L2 logistic regression on its standardised features (segments averaged), trained to "
                   "convergence, penalty chosen on validation AUROC" if probe else
                   f"a linear head (Adam lr {settings['lr_head']:g}) on its cached features, under the step rule")
    arm_text = {"random": f"random init (all trainable, Adam lr {settings['lr_random']:g})",
                "random-features": "random-features (the untrained encoder the random-init arm of the seed starts "
                                   f"from, frozen; {on_features})",
                "frozen": f"frozen pretrained encoder ({on_features})",
                "finetuned": f"finetuned (backbone lr {settings['lr_backbone']:g}, head lr {settings['lr_head']:g})"}
    val = ("carved from each cell's labelled training patients: every "
           f"{max(2, round(1 / settings['val_share']))}th of each class's drawn patients (at least one per class, "
           "patient-disjoint from the cell's training patients, nested over fractions); a fraction keeps at least "
           "two patients of each class" if settings["val_source"] == "carved"
           else "the store's val split (its own patients, fully labelled)")
    notes = [
        "Arms: " + "; ".join(arm_text[a] for a in arms) + ". BCE with logits.",
        f"Budget rule, the same for every end-to-end arm{'' if probe else ' and head'}: at least "
        f"{settings['min_steps']} optimiser steps (batch {settings['batch_size']}) whatever the label fraction, "
        f"validation AUROC every {settings['eval_every']} steps, the best step's weights kept (ties: the earlier), "
        f"then a stop after {settings['patience']} evaluations without improvement past the floor, at most "
        f"{settings['max_steps']} steps; test scored once. 'cap k/n': k of n seeds stopped at the cap (the probe: at "
        "its iteration cap) before patience ran out, still improving: the budget, not the arm, set their score."
        + (f" Sized for this run: {settings['budget_note']}." if settings.get("budget_note") else ""),
        f"Seeds: {settings['seeds']} per cell. Test AUROC per record: mean over the usable seeds [95 % Student-t "
        "interval over seeds, clipped to [0, 1]; one seed: its patient-bootstrap interval]. Gains: frozen minus "
        "random-features (what pretraining put into the representation) and finetuned minus random init, paired "
        "by seed.",
        f"Usable seeds: a cell is judged only with at least {MIN_CLASS_PATIENTS} patients of each class on its "
        f"training side and on its validation side, and a validation AUROC that can take at least "
        f"{MIN_VAL_AUROC_LEVELS} values (positive x negative validation records + 1); otherwise the chosen step is "
        "noise. The rule reads counts only, so it marks the same seeds for every arm. 'not judged (x)': no usable "
        "seed, x the mean over all seeds.",
        f"Per cell (results.csv test_lo/test_hi): 95 % percentile interval over {settings['n_boot']} resamples of "
        "test patients.",
        f"Validation: {val}.",
        "Labels: stratified, nested samples of training patients" + (". Class-balanced batches."
                                                                    if settings.get("balanced") else "."),
        "Records are cut into 5 s segments from their valid samples: a step shows each record of its batch through "
        "one of its segments drawn at random; a record's score is the mean of its segments' logits.",
        *extra,
    ]
    for task, d in tasks.items():
        test = d["test"]
        notes.append(f"{task}: test {test['patients']} patients ({test['positive_patients']} positive), "
                     f"{test['records']} records" + (" (missing label = negative)" if d["missing_as_negative"] else "")
                     + ".")
        left = {k: v for k, v in d["dropped_unlabelled"].items() if v}
        short = {k: v for k, v in d.get("dropped_too_short", {}).items() if v}
        if left:
            notes.append(f"{task}: records without the label left out: "
                         + ", ".join(f"{s} {n}" for s, n in left.items()))
        if short:
            notes.append(f"{task}: records shorter than one segment left out: "
                         + ", ".join(f"{s} {n}" for s, n in short.items()))
    return notes


def write_reports(results: pd.DataFrame, out: str | Path, header: dict) -> pd.DataFrame:
    """results.csv, summary.json, summary.md and auroc_vs_fraction.png in ``out``; returns the summary."""
    out = Path(out)
    results = results.sort_values(["task", "arm", "fraction", "seed"], key=_arm_key).reset_index(drop=True)
    results.to_csv(out / "results.csv", index=False)
    summary = summarize(results)
    payload = {**header, "summary": json.loads(summary.to_json(orient="records"))}
    (out / "summary.json").write_text(json.dumps(payload, indent=2) + "\n")
    notes = header.get("notes", [])
    md = ["# Downstream evaluation", "", *(f"- {n}" for n in notes), "", markdown_table(summary)]
    (out / "summary.md").write_text("\n".join(md))
    from .plot import plot_auroc_vs_fraction  # matplotlib loads only here

    plot_auroc_vs_fraction(summary, out / "auroc_vs_fraction.png")
    return summary


def _arm_key(col: pd.Series) -> pd.Series:
    return col.map({a: i for i, a in enumerate(ARM_ORDER)}) if col.name == "arm" else col


__all__ = ["auroc", "bootstrap_auroc", "markdown_table", "protocol_notes", "seed_interval", "summarize",
           "weighted_auroc", "write_reports"]
