"""Patient-level train/val/test splits, made once at prepare time and checked by every consumer.

A patient's split depends only on (seed, patient id), through a hash: adding records or patients to a
corpus never moves an existing patient to another split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")


class SplitError(ValueError):
    """A split that mixes patients, or split parameters that make no sense."""


def _unit_interval(seed: int, patient_id: str) -> float:
    h = hashlib.blake2b(f"{seed}\x00{patient_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2.0**64


def hash_splits(patient_ids: Sequence[str], fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                seed: int = 0) -> np.ndarray:
    """Split of each record from its patient id: (N,) array of "train"/"val"/"test".

    Args:
        patient_ids: (N,) patient id per record (records of one patient always share a split).
        fractions: expected shares of patients in train, val, test; must sum to 1.
        seed: changes the assignment; the same seed always gives the same split.
    """
    f = np.asarray(fractions, dtype=np.float64)
    if f.shape != (3,) or (f < 0).any() or abs(f.sum() - 1.0) > 1e-6:
        raise SplitError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    edges = np.cumsum(f)[:2]
    uniq, inverse = np.unique(np.asarray(patient_ids, dtype=str), return_inverse=True)
    u = np.array([_unit_interval(seed, p) for p in uniq])
    per_patient = np.asarray(SPLITS, dtype=object)[np.searchsorted(edges, u, side="right")]
    return per_patient[inverse]


def fold_splits(patient_ids: Sequence[str], folds: Sequence[float], val_folds: Sequence[int] = (9,),
                test_folds: Sequence[int] = (10,)) -> np.ndarray:
    """Split from a per-record fold number (PTB-XL's ``strat_fold``: 1-8 train, 9 val, 10 test by default).

    Raises:
        SplitError: a record has no fold, or one patient's records carry different folds.
    """
    df = pd.DataFrame({"p": np.asarray(patient_ids, dtype=str), "fold": pd.to_numeric(pd.Series(folds))})
    if df["fold"].isna().any():
        raise SplitError(f"{int(df['fold'].isna().sum())} records have no fold number (strat_fold)")
    if (df.groupby("p")["fold"].nunique() > 1).any():
        n = int((df.groupby("p")["fold"].nunique() > 1).sum())
        raise SplitError(f"{n} patients have records in different folds: fold splits would mix patients")
    out = np.full(len(df), "train", dtype=object)
    out[df["fold"].isin(list(val_folds)).to_numpy()] = "val"
    out[df["fold"].isin(list(test_folds)).to_numpy()] = "test"
    return out


def column_splits(patient_ids: Sequence[str], values: Sequence[object], val_folds: Sequence[int] = (9,),
                  test_folds: Sequence[int] = (10,)) -> np.ndarray:
    """Split from a per-record column: the words train/val/test as they are, or fold numbers (see
    :func:`fold_splits`).

    Raises:
        SplitError: a record without a value, a value that is neither a split name nor a number, or a patient
            whose records carry different splits.
    """
    text = pd.Series(list(values), dtype=object).map(lambda v: None if v is None else str(v).strip().lower())
    if text.isin(SPLITS).all():
        out = text.to_numpy(dtype=object)
        mixed = pd.DataFrame({"p": np.asarray(patient_ids, dtype=str), "s": out}).groupby("p")["s"].nunique()
        if (mixed > 1).any():
            raise SplitError(f"{int((mixed > 1).sum())} patients have records in different splits of the column")
        return out
    numbers = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce")
    bad = numbers.isna() & text.notna()
    if bad.any():
        raise SplitError(f"{int(bad.sum())} records have a split value that is neither train/val/test nor a fold "
                         f"number, e.g. {text[bad].iat[0]!r}")
    return fold_splits(patient_ids, numbers.tolist(), val_folds, test_folds)


def check_patient_disjoint(patient_ids: Sequence[str], splits: Sequence[str], where: str = "store") -> None:
    """Raise SplitError if any patient has records in more than one split. Never prints patient ids."""
    df = pd.DataFrame({"p": np.asarray(patient_ids, dtype=str), "s": np.asarray(splits, dtype=str)})
    unknown = set(df["s"].unique()) - set(SPLITS)
    if unknown:
        raise SplitError(f"{where}: unknown split name(s) {sorted(unknown)}; expected {SPLITS}")
    mixed = int((df.groupby("p")["s"].nunique() > 1).sum())
    if mixed:
        raise SplitError(f"{where}: {mixed} patient(s) have records in more than one split; "
                         "splits must be by patient (re-run ecgfast-prepare)")
