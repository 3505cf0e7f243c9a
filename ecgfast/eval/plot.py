"""The figure of an evaluation: test AUROC against label fraction per arm (top row), and the gains of
:data:`ecgfast.eval.config.GAINS` with their intervals (bottom row), one column per task.

A fraction where no seed could be judged is drawn with a hollow marker (its mean is over all seeds, as the table's
"not judged"); a cap-stopped seed is not drawn differently here: the table names those.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from .config import ARMS as ARM_ORDER
from .config import GAINS

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


ARM_COLORS = {"random": "tab:gray", "random-features": "tab:green", "frozen": "tab:blue", "finetuned": "tab:orange"}


def _line(ax, r: pd.DataFrame, y: str, lo: str, hi: str, color: str, label: str, style: str = "-") -> None:
    """One arm's (or gain's, dashed) means against fraction, its interval as a band, hollow where not judged."""
    ax.plot(r["fraction"], r[y], color=color, label=label, linestyle=style)
    judged = r["judged"].to_numpy(bool)
    ax.scatter(r["fraction"][judged], r[y][judged], color=color, zorder=3, s=18)
    ax.scatter(r["fraction"][~judged], r[y][~judged], facecolors="white", edgecolors=color, zorder=3, s=18)
    ok = np.isfinite(r[lo]) & np.isfinite(r[hi])
    ax.fill_between(r["fraction"][ok], r[lo][ok], r[hi][ok], color=color, alpha=0.18, linewidth=0)


def plot_auroc_vs_fraction(summary: pd.DataFrame, path: str | Path) -> Path:
    """AUROC against label fraction (log x axis) per arm with its interval band, and below it the gains
    (``frozen - random-features``, ``finetuned - random``) with theirs; one column per task, titled with the task's
    name in words; the legend sits outside the panels."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    tasks = sorted(summary["task"].unique())
    gains = [a for a in GAINS if a in set(summary["arm"]) and summary.loc[summary["arm"] == a, "gain_vs"].notna().any()]
    n_rows = 2 if gains else 1
    cols = min(len(tasks), 3)
    blocks = math.ceil(len(tasks) / cols)
    width = max(4.6 * cols, 8.0)  # room for the legend and the note with a single task
    fig, axes = plt.subplots(n_rows * blocks, cols, figsize=(width, 3.4 * n_rows * blocks + 1.0), squeeze=False)
    for i, task in enumerate(tasks):
        block = summary[summary["task"] == task]
        fractions = sorted(block["fraction"].unique())
        top = axes[(i // cols) * n_rows, i % cols]
        for arm in [a for a in ARM_ORDER if a in set(block["arm"])]:
            r = block[block["arm"] == arm].sort_values("fraction")
            _line(top, r.assign(lo=r["lo"].clip(0, 1), hi=r["hi"].clip(0, 1)), "mean", "lo", "hi", ARM_COLORS[arm],
                  arm)
        top.axhline(0.5, color="black", linewidth=0.6, linestyle=":")
        top.set_title(task_title(task), fontsize=10)
        top.set_ylabel("test AUROC")
        panels = [top]
        if gains:
            low = axes[(i // cols) * n_rows + 1, i % cols]
            for arm in gains:
                r = block[block["arm"] == arm].sort_values("fraction")
                _line(low, r, "gain_mean", "gain_lo", "gain_hi", ARM_COLORS[arm], f"{arm} - {GAINS[arm]}", "--")
            low.axhline(0.0, color="black", linewidth=0.6)
            low.set_ylabel("gain in test AUROC")
            panels.append(low)
        for ax in panels:
            ax.set_xscale("log")
            ax.set_xticks(fractions, [f"{f:g}" for f in fractions])
            ax.minorticks_off()
            ax.set_xlabel("labelled training patients (%)")
            ax.grid(alpha=0.3)
    for j in range(len(tasks), blocks * cols):
        for k in range(n_rows):
            axes[(j // cols) * n_rows + k, j % cols].set_visible(False)
    one_seed = bool((summary["interval"] == "bootstrap").any())
    band = "one seed: 95 % patient-bootstrap interval" if one_seed else "mean over usable seeds, 95 % t-interval"
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 3), frameon=False,
               bbox_to_anchor=(0.5, 1.0))
    fig.text(0.5, 0.005, f"{band}; hollow: no seed could be judged (mean over all seeds)", ha="center", fontsize=8)
    top = 1 - 0.75 / fig.get_figheight()  # the legend's two rows
    fig.tight_layout(rect=(0, 0.03, 1, top))
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


__all__ = ["ARM_COLORS", "TASK_NAMES", "plot_auroc_vs_fraction", "task_title"]
