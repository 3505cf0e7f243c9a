"""Scores and reports of the downstream protocol: AUROC, its intervals, the summary table and the plot.

- :func:`auroc` is scikit-learn's ``roc_auc_score`` after checks that name what is wrong with the input.
- :func:`bootstrap_auroc` resamples test *patients* with replacement (all records of a drawn patient come along,
  as many times as the patient is drawn), because records of one patient are not independent. Resamples are
  weights on records, and :func:`weighted_auroc` scores a thousand of them in a few vectorised passes (scikit-learn
  scores one weighting per call, about 8 ms each: seconds per cell); a test checks it against ``roc_auc_score``
  with ``sample_weight``.
- :func:`seed_interval` is a Student-t interval over seeds (mean +- t_{0.975, n-1} * sd / sqrt(n)); with a
  single seed there is no spread to measure and that seed's patient-bootstrap interval stands in, labelled so.
- :func:`summarize` gives one row per (task, fraction, arm) with the mean over seeds, its interval, and the gain
  of a pretrained arm over random init, paired by seed (the same seed draws the same labelled patients for every
  arm, so the difference per seed removes the draw's luck).
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

ARM_ORDER = ("random", "frozen", "finetuned")
ARM_COLORS = {"random": "tab:gray", "frozen": "tab:blue", "finetuned": "tab:orange"}
#: Names in words of the labels ecgfast knows (SNOMED-CT codes of the CinC challenges, PTB-XL statements), for plots.
TASK_NAMES = {
    "NORM": "normal ECG", "MI": "myocardial infarction", "STTC": "ST/T change", "CD": "conduction disturbance",
    "HYP": "hypertrophy", "AFIB": "atrial fibrillation", "CLBBB": "complete LBBB", "CRBBB": "complete RBBB",
    "IRBBB": "incomplete RBBB", "LAFB": "left anterior fascicular block", "1AVB": "first-degree AV block",
    "LVH": "left ventricular hypertrophy", "PVC": "ventricular ectopics", "PAC": "atrial ectopics",
    "STACH": "sinus tachycardia", "SBRAD": "sinus bradycardia", "SR": "sinus rhythm", "IMI": "inferior MI",
    "ASMI": "anteroseptal MI", "AMI": "anterior MI",
    "164889003": "atrial fibrillation", "164890007": "atrial flutter", "426783006": "sinus rhythm",
    "270492004": "first-degree AV block", "164909002": "LBBB", "59118001": "RBBB", "713427006": "complete RBBB",
    "284470004": "premature atrial contraction", "427172004": "premature ventricular contraction",
    "164934002": "T-wave abnormal", "59931005": "T-wave inversion", "426177001": "sinus bradycardia",
    "427084000": "sinus tachycardia", "39732003": "left axis deviation", "164873001": "LVH",
    "251146004": "low QRS voltage", "10370003": "pacing rhythm", "164917005": "Q wave abnormal",
    "low_ef": "low-EF-like phenotype (synthetic)", "hyperk": "hyperkalemia-like phenotype (synthetic)",
    "af": "atrial fibrillation (synthetic)",
}


def task_title(task: str) -> str:
    """``task`` with its name in words where ecgfast knows the code: ``dx:164889003 (atrial fibrillation)``."""
    code = task.split(":", 1)[-1]
    name = TASK_NAMES.get(code)
    return f"{task} ({name})" if name and name != task else task


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


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, fraction, arm) from per-cell ``results`` (columns task, arm, fraction, seed,
    test_auroc, test_lo, test_hi).

    Columns: n_seeds, mean, lo, hi (clipped to [0, 1]), interval ("t over seeds", or "bootstrap" with one
    seed), boot_lo and
    boot_hi (per-seed patient-bootstrap bounds averaged over seeds), gain_mean, gain_lo, gain_hi (the arm
    minus random init, paired by seed, t-interval; NaN for random itself or without a random arm).
    """
    rows = []
    for (task, fraction), block in results.groupby(["task", "fraction"], sort=True):
        random = block[block["arm"] == "random"].set_index("seed")["test_auroc"]
        for arm in [a for a in ARM_ORDER if a in set(block["arm"])]:
            cells = block[block["arm"] == arm].sort_values("seed")
            mean, lo, hi = np.clip(seed_interval(cells["test_auroc"]), 0.0, 1.0)  # bounds beyond [0, 1] say nothing
            interval = "t over seeds"
            if len(cells) == 1:
                lo, hi, interval = float(cells["test_lo"].iloc[0]), float(cells["test_hi"].iloc[0]), "bootstrap"
            gain = (float("nan"),) * 3
            if arm != "random":
                paired = cells.set_index("seed")["test_auroc"].sub(random).dropna()
                if len(paired):
                    gain = tuple(np.clip(seed_interval(paired), -1.0, 1.0))
            rows.append({"task": task, "fraction": float(fraction), "arm": arm, "n_seeds": len(cells),
                         "mean": mean, "lo": lo, "hi": hi, "interval": interval,
                         "boot_lo": float(cells["test_lo"].mean()), "boot_hi": float(cells["test_hi"].mean()),
                         "gain_mean": gain[0], "gain_lo": gain[1], "gain_hi": gain[2],
                         "n_train_patients": int(cells["n_train_patients"].iloc[0])
                         if "n_train_patients" in cells else -1,
                         "n_val_patients": int(cells["n_val_patients"].iloc[0])
                         if "n_val_patients" in cells else -1})
    return pd.DataFrame(rows)


def _fmt(mean: float, lo: float, hi: float, signed: bool = False) -> str:
    if not np.isfinite(mean):
        return "-"
    m = f"{mean:+.3f}" if signed else f"{mean:.3f}"
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return m
    return f"{m} [{lo:+.3f}, {hi:+.3f}]" if signed else f"{m} [{lo:.3f}, {hi:.3f}]"


def markdown_table(summary: pd.DataFrame) -> str:
    """Task x fraction rows, one column per arm ("mean [lo, hi]"), then one gain column per pretrained arm."""
    arms = [a for a in ARM_ORDER if a in set(summary["arm"])]
    gains = [a for a in arms if a != "random"] if "random" in arms else []
    header = ["task", "labels", "train / val patients", *arms, *(f"{a} - random" for a in gains)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for (task, fraction), block in summary.groupby(["task", "fraction"], sort=True):
        by_arm = block.set_index("arm")
        first = block.iloc[0]
        cells = [task, f"{fraction:g} %", f"{int(first['n_train_patients'])} / {int(first['n_val_patients'])}"]
        cells += [_fmt(*by_arm.loc[a, ["mean", "lo", "hi"]]) if a in by_arm.index else "-" for a in arms]
        cells += [_fmt(*by_arm.loc[a, ["gain_mean", "gain_lo", "gain_hi"]], signed=True)
                  if a in by_arm.index else "-" for a in gains]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_auroc_vs_fraction(summary: pd.DataFrame, path: str | Path) -> Path:
    """AUROC against label fraction (log x axis), one line per arm with its interval band, one panel per task,
    titled with the task's name in words; the legend sits outside the panels."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    tasks = sorted(summary["task"].unique())
    cols = min(len(tasks), 3)
    rows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows + 0.6), squeeze=False, sharey=True)
    for ax, task in zip(axes.flat, tasks, strict=False):
        block = summary[summary["task"] == task]
        for arm in [a for a in ARM_ORDER if a in set(block["arm"])]:
            r = block[block["arm"] == arm].sort_values("fraction")
            ax.plot(r["fraction"], r["mean"], marker="o", color=ARM_COLORS[arm], label=arm)
            ok = np.isfinite(r["lo"]) & np.isfinite(r["hi"])
            ax.fill_between(r["fraction"][ok], r["lo"][ok].clip(0, 1), r["hi"][ok].clip(0, 1),
                            color=ARM_COLORS[arm], alpha=0.18, linewidth=0)
        fractions = sorted(block["fraction"].unique())
        ax.set_xscale("log")
        ax.set_xticks(fractions, [f"{f:g}" for f in fractions])
        ax.minorticks_off()
        ax.axhline(0.5, color="black", linewidth=0.6, linestyle=":")
        ax.set_title(task_title(task), fontsize=10)
        ax.set_xlabel("labelled training patients (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tasks):]:
        ax.set_visible(False)
    one_seed = bool((summary["interval"] == "bootstrap").any())
    band = ("one seed: 95 % patient-bootstrap interval" if one_seed
            else "mean over seeds, 95 % t-interval")
    for ax in axes[:, 0]:
        ax.set_ylabel(f"test AUROC\n({band})")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), frameon=False, bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def protocol_notes(settings: dict, tasks: dict[str, dict], extra: Sequence[str] = ()) -> list[str]:
    """The header of the report: how its numbers were made (``settings``: EvalConfig as a dict; ``tasks``: task ->
    its counts, as ``TaskData.describe`` gives them; ``extra``: further lines, e.g. the pretraining-data check)."""
    arms = settings["arms"]
    arm_text = {"random": f"random init (all trainable, Adam lr {settings['lr_random']:g})",
                "frozen": ("frozen encoder, L2 logistic regression on its embeddings, penalty chosen on validation"
                           if settings.get("fast_frozen") else
                           f"frozen encoder, linear head (Adam lr {settings['lr_head']:g}) on its features"),
                "finetuned": f"finetuned (backbone lr {settings['lr_backbone']:g}, head lr {settings['lr_head']:g})"}
    val = ("carved from each cell's labelled training patients: every "
           f"{max(2, round(1 / settings['val_share']))}th of each class's drawn patients (at least one per class, "
           "patient-disjoint from the cell's training patients, nested over fractions); a fraction keeps at least "
           "two patients of each class" if settings["val_source"] == "carved"
           else "the store's val split (its own patients, fully labelled)")
    notes = [
        "Arms: " + "; ".join(arm_text[a] for a in arms) + ". BCE with logits.",
        f"Budget rule, the same for every arm: at most {settings['epochs']} epochs of its labelled training records "
        f"(batch {settings['batch_size']}), validation AUROC after every epoch, the best epoch's weights kept "
        f"(ties: the earlier), early stop after {settings['patience']} epochs without improvement; test scored once."
        + (" The frozen arm's logistic regression instead chooses its penalty on validation." if "frozen" in arms
           and settings.get("fast_frozen") else "")
        + (f" Sized for this run: {settings['budget_note']}." if settings.get("budget_note") else ""),
        f"Seeds: {settings['seeds']} per cell. Test AUROC per record: mean over seeds [95 % Student-t interval over "
        "seeds, clipped to [0, 1]; one seed: its patient-bootstrap interval]. Gain: arm minus random init, paired by "
        "seed.",
        f"Per cell (results.csv test_lo/test_hi): 95 % percentile interval over {settings['n_boot']} resamples of "
        "test patients.",
        f"Validation: {val}.",
        "Labels: stratified, nested samples of training patients" + (". Class-balanced batches."
                                                                    if settings.get("balanced") else "."),
        "Records are cut into 5 s segments from their valid samples: an epoch shows every training record once, "
        "through one of its segments drawn at random; a record's score is the mean of its segments' logits.",
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
    plot_auroc_vs_fraction(summary, out / "auroc_vs_fraction.png")
    return summary


def _arm_key(col: pd.Series) -> pd.Series:
    return col.map({a: i for i, a in enumerate(ARM_ORDER)}) if col.name == "arm" else col


__all__ = ["TASK_NAMES", "auroc", "bootstrap_auroc", "markdown_table", "plot_auroc_vs_fraction", "protocol_notes",
           "seed_interval", "summarize", "task_title", "weighted_auroc", "write_reports"]
