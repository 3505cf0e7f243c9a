"""Tasks and label fractions of the downstream protocol: which records carry a binary label, per split and patient,
and which training patients a label fraction keeps, split into the arm's training and validation patients.

A fraction f keeps f % of the labelled training *patients* of each class (stratified), nested over fractions (the
1 % patients are inside the 5 % ones) and the same for every arm of a seed, so that gains are paired. With the
carved validation (the default, as the paper does it), the kept patients of each class are split, by a fixed
pattern over their drawn order, into training and validation patients: position i >= 1 validates when
``floor(i s + 1 - s)`` steps up there (s = ``val_share``, at most 0.5), so the second patient validates and then
one in every 1/s (positions 1, 6, 11, ... for 0.2; a share of 0.3 gives 3 in 10). So each class has at least one
patient on each side, both sets are nested over fractions, and they never share a patient. A fraction therefore
keeps at least two patients of each class (one to train, one to validate); where f % would keep fewer, it keeps
two and the report shows the real counts.

Some cells cannot be judged (:func:`judge_cell`): with fewer than :data:`MIN_CLASS_PATIENTS` patients of a class on
the training or the validation side, or a validation AUROC that can take fewer than :data:`MIN_VAL_AUROC_LEVELS`
values, the chosen step (or penalty) is noise and the test score says little about the arm. The rule reads only the
draw's counts, never a score, so it marks the same seeds for every arm and paired gains stay paired.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from ..data.splits import SPLITS
from ..data.store import ECGStore
from ..data.windows import usable

CODE_LIST_PREFIXES = ("dx:", "scp:")  # labels that list positives only: missing means negative
MIN_CLASS_PATIENTS = 3  # patients of each class a cell needs on its training side and on its validation side
MIN_VAL_AUROC_LEVELS = 20  # values a validation AUROC must be able to take (n_pos * n_neg + 1 records): steps <= 0.05


class EvalError(ValueError):
    """Bad input to the evaluation: unknown task, a class missing, an arm without a checkpoint..."""


@dataclass
class TaskData:
    """One binary task on a store: per split, the store rows that carry the label, their 0/1 labels and their
    patients (integer codes, never ids), and how many records were left out (no label; too short)."""

    name: str
    missing_as_negative: bool
    rows: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    patients: dict[str, np.ndarray]
    dropped: dict[str, int]
    too_short: dict[str, int]

    def describe(self) -> dict:
        """Counts per split (records, patients, positives of each) and the records left out: no ids."""
        out: dict = {"missing_as_negative": self.missing_as_negative, "dropped_unlabelled": self.dropped,
                     "dropped_too_short": self.too_short}
        for s in SPLITS:
            _, lab = patient_labels(self.y[s], self.patients[s])
            out[s] = {"records": len(self.y[s]), "positive_records": int(self.y[s].sum()),
                      "patients": len(lab), "positive_patients": int(lab.sum())}
        return out


def _label_values(store: ECGStore, name: str, missing_as_negative: bool) -> np.ndarray:
    return store.label(name, fill=0.0 if missing_as_negative else np.nan)


def task_counts(store: ECGStore, names: Sequence[str] | None = None) -> list[dict]:
    """Per label of the store (or of ``names``): labelled and positive records and patients of each split.

    For choosing a task: ``ecgfast-eval --list-tasks`` prints these counts.
    """
    codes = np.unique(store.patient_ids, return_inverse=True)[1]
    rows = []
    for name in names or store.label_names():
        y = _label_values(store, name, name.startswith(CODE_LIST_PREFIXES))
        row: dict = {"task": name}
        for split in SPLITS:
            idx = store.split_indices(split)
            known = idx[np.isfinite(y[idx])]
            pos = known[y[known] == 1]
            row[split] = {"records": len(known), "positive_records": len(pos),
                          "positive_patients": len(np.unique(codes[pos]))}
        rows.append(row)
    return rows


def format_task_counts(counts: list[dict]) -> str:
    """A plain table of :func:`task_counts`: one line per label, positives (patients) per split."""
    width = max([len(r["task"]) for r in counts] + [4])
    lines = [f"{'task':<{width}}  " + "  ".join(f"{s + ' pos/labelled (pos patients)':>34}" for s in SPLITS)]
    for r in counts:
        cells = [f"{r[s]['positive_records']:>8}/{r[s]['records']:<8} ({r[s]['positive_patients']:>6})" for s in SPLITS]
        lines.append(f"{r['task']:<{width}}  " + "  ".join(f"{c:>34}" for c in cells))
    return "\n".join(lines)


def load_task(store: ECGStore, name: str, missing_as_negative: bool | None = None,
              segment: int | None = None) -> TaskData:
    """The labelled records of task ``name`` per split (records shorter than one ``segment`` left out, counted;
    ``segment`` None: 5 s at the store's rate).

    Raises:
        EvalError: the store has no labels, ``name`` is not one of them (the message lists them with their
            positive counts), the label is not binary, or a split lacks a class.
    """
    names = store.label_names()
    if not names:
        raise EvalError(f"{store.path}: the store has no labels; evaluation needs a binary label per record "
                        "(prepare it from a source with labels)")
    if name not in names:
        raise EvalError(f"unknown task {name!r}; labels of {store.path}, with positive records/labelled records "
                        f"(positive patients) per split:\n{format_task_counts(task_counts(store))}")
    if missing_as_negative is None:
        missing_as_negative = name.startswith(CODE_LIST_PREFIXES)
    y_all = _label_values(store, name, missing_as_negative)
    values = np.unique(y_all[np.isfinite(y_all)])
    if not np.isin(values, (0.0, 1.0)).all():
        raise EvalError(f"task {name!r} is not binary: values {values[:8].tolist()}; threshold it into 0/1 first")
    codes = np.unique(store.patient_ids, return_inverse=True)[1]
    long_enough = usable(store.valid_length, segment or round(5 * store.fs))
    task = TaskData(name, bool(missing_as_negative), {}, {}, {}, {}, {})
    for split in SPLITS:
        rows = store.split_indices(split)
        labelled = np.isfinite(y_all[rows])
        keep = labelled & long_enough[rows]
        task.dropped[split] = int((~labelled).sum())
        task.too_short[split] = int((labelled & ~long_enough[rows]).sum())
        task.rows[split], task.y[split], task.patients[split] = rows[keep], y_all[rows[keep]], codes[rows[keep]]
        n_pos = int(task.y[split].sum())
        if n_pos == 0 or n_pos == int(keep.sum()):
            raise EvalError(f"task {name!r}: the {split} split has {n_pos} positive and {int(keep.sum()) - n_pos} "
                            f"negative labelled records; a binary task needs both classes in train, val and test")
    return task


def patient_labels(y: np.ndarray, patients: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(patient codes (P,), label (P,)): a patient is positive when any of their records is."""
    uniq, inv = np.unique(patients, return_inverse=True)
    lab = np.zeros(len(uniq))
    np.maximum.at(lab, inv, y)
    return uniq, lab


@dataclass(frozen=True)
class FractionDraw:
    """The labelled patients of one (task, fraction, seed), as indices into the task's training patients."""

    train: np.ndarray  # patients the arm trains on
    val: np.ndarray  # patients the arm validates on (carved); empty when the store's val split validates


def sample_fractions(labels: np.ndarray, fractions: Sequence[float], seed: int, task: str = "",
                     carve_share: float | None = 0.2) -> dict[float, FractionDraw]:
    """Stratified, nested label fractions of the training patients, with the carved validation patients.

    Args:
        labels: (P,) 0/1 label of each labelled training patient.
        fractions: percentages in (0, 100].
        seed: with ``task``, fixes the draw (the same for every arm).
        carve_share: share of each class's kept patients that validate (module docstring); None: no carving
            (the store's val split validates) and a fraction keeps at least one patient of each class.

    Returns:
        {fraction: FractionDraw}, sorted indices into ``labels``; smaller fractions inside larger ones.

    Raises:
        EvalError: a class with too few patients for any fraction (two with carving, one without).
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, zlib.crc32(task.encode())])
    order = {c: rng.permutation(np.flatnonzero(labels == c)) for c in (1, 0)}
    floor = 1 if carve_share is None else 2
    if carve_share is not None and not 0 < carve_share <= 0.5:
        raise EvalError(f"val_share must be in (0, 0.5], got {carve_share}")
    share = None if carve_share is None else Fraction(carve_share).limit_denominator(1000)  # exact steps
    out = {}
    for f in fractions:
        if not 0 < f <= 100:
            raise EvalError(f"label fraction {f:g} % is outside (0, 100]")
        train, val = [], []
        for c, drawn in order.items():
            if len(drawn) < floor:
                raise EvalError(f"task {task!r}: the training split has {len(drawn)} {'positive' if c else 'negative'} "
                                f"patient(s); a fraction needs at least {floor} of each class"
                                + (" (one to train, one to validate)" if carve_share is not None else ""))
            k = min(len(drawn), max(floor, math.floor(f / 100 * len(drawn) + 0.5)))
            kept = drawn[:k]
            if share is None:
                train.append(kept)
                continue
            steps = (np.arange(-1, k) * share.numerator + share.denominator - share.numerator) // share.denominator
            is_val = np.diff(steps) > 0  # (k,): position i validates where floor(i s + 1 - s) steps up
            train.append(kept[~is_val])
            val.append(kept[is_val])
        out[float(f)] = FractionDraw(np.sort(np.concatenate(train)),
                                     np.sort(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64))
    return out


def judge_cell(train_patient_labels: np.ndarray, val_patient_labels: np.ndarray,
               val_record_labels: np.ndarray) -> tuple[bool, str, int]:
    """Whether a cell can be judged, from its counts alone (module docstring).

    Args:
        train_patient_labels, val_patient_labels: (P,) 0/1 label of each patient on either side.
        val_record_labels: (N,) 0/1 labels of the validation records (what the validation AUROC is over).

    Returns:
        (usable, why not: "" or the failed rules joined by "; ", how many values the validation AUROC can take).
    """
    why = []
    for side, lab in (("train", train_patient_labels), ("val", val_patient_labels)):
        lab = np.asarray(lab)
        for name, n in (("positive", int((lab == 1).sum())), ("negative", int((lab == 0).sum()))):
            if n < MIN_CLASS_PATIENTS:
                why.append(f"{n} {name} {side} patient{'s' * (n != 1)}")
    y = np.asarray(val_record_labels)
    levels = int((y == 1).sum()) * int((y == 0).sum()) + 1  # rank statistic U in 0..n_pos*n_neg, ties aside
    if levels < MIN_VAL_AUROC_LEVELS:
        why.append(f"val AUROC takes {levels} values")
    return not why, "; ".join(why), levels


__all__ = ["CODE_LIST_PREFIXES", "EvalError", "FractionDraw", "MIN_CLASS_PATIENTS", "MIN_VAL_AUROC_LEVELS", "TaskData",
           "format_task_counts", "judge_cell", "load_task", "patient_labels", "sample_fractions", "task_counts"]
