"""Tasks and label fractions of the downstream protocol: which records carry a binary label, per split and patient,
and which training patients a label fraction keeps (stratified, nested, the same for every arm of a seed).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .data.splits import SPLITS
from .data.store import ECGStore

CODE_LIST_PREFIXES = ("dx:", "scp:")  # labels that list positives only: missing means negative


class EvalError(ValueError):
    """Bad input to the evaluation: unknown task, a class missing, an arm without a checkpoint..."""


@dataclass
class TaskData:
    """One binary task on a store: per split, the store rows that carry the label, their 0/1 labels and
    their patients (integer codes, never ids), and how many records had no label."""

    name: str
    missing_as_negative: bool
    rows: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    patients: dict[str, np.ndarray]
    dropped: dict[str, int]

    def describe(self) -> dict:
        """Counts per split (records, patients, positives of each) and the records dropped: no ids."""
        out: dict = {"missing_as_negative": self.missing_as_negative, "dropped_unlabelled": self.dropped}
        for s in SPLITS:
            _, lab = patient_labels(self.y[s], self.patients[s])
            out[s] = {"records": len(self.y[s]), "positive_records": int(self.y[s].sum()),
                      "patients": len(lab), "positive_patients": int(lab.sum())}
        return out


def load_task(store: ECGStore, name: str, missing_as_negative: bool | None = None) -> TaskData:
    """The labelled records of task ``name`` per split.

    Raises:
        EvalError: the store has no labels, ``name`` is not one of them (the message lists them), the label
            is not binary, or a split lacks a class.
    """
    names = store.label_names()
    if not names:
        raise EvalError(f"{store.path}: the store has no labels; evaluation needs a binary label per record "
                        "(prepare it from a source with labels)")
    if name not in names:
        shown = ", ".join(names[:30]) + (f", ... ({len(names)} in all)" if len(names) > 30 else "")
        raise EvalError(f"unknown task {name!r}; labels of {store.path}: {shown}")
    if missing_as_negative is None:
        missing_as_negative = name.startswith(CODE_LIST_PREFIXES)
    y_all = store.label(name, fill=0.0 if missing_as_negative else np.nan)
    values = np.unique(y_all[np.isfinite(y_all)])
    if not np.isin(values, (0.0, 1.0)).all():
        raise EvalError(f"task {name!r} is not binary: values {values[:8].tolist()}; threshold it into 0/1 first")
    codes = np.unique(store.patient_ids, return_inverse=True)[1]
    task = TaskData(name, bool(missing_as_negative), {}, {}, {}, {})
    for split in SPLITS:
        rows = store.split_indices(split)
        keep = np.isfinite(y_all[rows])
        task.dropped[split] = int((~keep).sum())
        task.rows[split], task.y[split], task.patients[split] = rows[keep], y_all[rows[keep]], codes[rows[keep]]
        n_pos = int(task.y[split].sum())
        if n_pos == 0 or n_pos == len(rows[keep]):
            raise EvalError(f"task {name!r}: the {split} split has {n_pos} positive and {len(rows[keep]) - n_pos} "
                            f"negative labelled records; a binary task needs both classes in train, val and test")
    return task


def patient_labels(y: np.ndarray, patients: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(patient codes (P,), label (P,)): a patient is positive when any of their records is."""
    uniq, inv = np.unique(patients, return_inverse=True)
    lab = np.zeros(len(uniq))
    np.maximum.at(lab, inv, y)
    return uniq, lab


def sample_fraction_patients(labels: np.ndarray, fractions: Sequence[float], seed: int,
                             task: str = "") -> dict[float, np.ndarray]:
    """Stratified, nested label fractions of the training patients.

    Args:
        labels: (P,) 0/1 label of each labelled training patient.
        fractions: percentages in (0, 100].
        seed: with ``task``, fixes the draw (the same for every arm).

    Returns:
        {fraction: sorted indices into ``labels``}; a smaller fraction's patients are inside every larger one's.

    Raises:
        EvalError: a fraction that would hold no positive or no negative patient.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, zlib.crc32(task.encode())])
    pos = rng.permutation(np.flatnonzero(labels == 1))
    neg = rng.permutation(np.flatnonzero(labels == 0))
    out = {}
    for f in fractions:
        if not 0 < f <= 100:
            raise EvalError(f"label fraction {f:g} % is outside (0, 100]")
        k_pos, k_neg = (math.floor(f / 100 * len(c) + 0.5) for c in (pos, neg))
        if k_pos == 0 or k_neg == 0:
            raise EvalError(f"task {task!r}: {f:g} % of the {len(labels)} labelled training patients ({len(pos)} "
                            f"positive, {len(neg)} negative) would hold {k_pos} positive and {k_neg} negative "
                            "patients; each fraction needs both: drop this fraction or use a store with more patients")
        out[float(f)] = np.sort(np.concatenate([pos[:k_pos], neg[:k_neg]]))
    return out
