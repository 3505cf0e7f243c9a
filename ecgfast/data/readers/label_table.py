"""A labels CSV beside an array of ECGs: row i of the CSV describes record i of the array.

Each column plays one role: the record id (``record_id_column``), the patient id (``patient_id_column``),
labels (named with ``label_columns``, or inferred: every other column whose non-empty cells are all 0 or 1),
meta kept with the record (``meta_columns``: age, sex by default, and a split or fold column), or none
(ignored). So PTB-XL-style tables work as they are: ``ecg_id`` the record id, ``strat_fold`` a meta column
that prepare splits by, ``age`` and ``sex`` meta, ``NORM``, ``MI``, ``AFIB`` ... labels.
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .base import id_string

#: meta columns taken when present, unless ``meta_columns`` names others
DEFAULT_META_COLUMNS: tuple[str, ...] = ("age", "sex")
_BINARY_CELLS = {"0", "1", "0.0", "1.0"}


@dataclass
class LabelTable:
    """What a labels CSV gives an array source; every list and array has one entry per record."""

    path: str
    record_ids: list[str] | None = None
    patient_ids: list[str | None] | None = None
    labels: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (N,) float64, NaN where empty
    meta: dict[str, list] = field(default_factory=dict)  # name -> N JSON values (None where empty)


def is_binary_column(values: pd.Series) -> bool:
    """True when the column has at least one non-empty cell and every non-empty cell is 0 or 1."""
    cells = values.dropna().astype(str).str.strip()
    cells = cells[cells != ""]
    return len(cells) > 0 and bool(cells.isin(_BINARY_CELLS).all())


def _meta_value(cell: object) -> object:
    if cell is None or (isinstance(cell, float) and math.isnan(cell)) or str(cell).strip() == "":
        return None
    text = str(cell).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() and math.isfinite(number) else number


def read_label_table(path: str | os.PathLike, n_records: int, record_id_column: str | None = None,
                     patient_id_column: str | None = None, label_columns: Sequence[str] | None = None,
                     meta_columns: Sequence[str] | None = None, required_columns: Sequence[str] = ()
                     ) -> LabelTable:
    """Read ``path`` for an array of ``n_records`` ECGs.

    Args:
        path: the CSV, one row per record in array order.
        n_records: rows expected.
        record_id_column: column of unique record ids (default: none; the array reader numbers records).
        patient_id_column: column of patient ids (default: none; each record is its own patient).
        label_columns: the label columns; default: every 0/1 column not given another role.
        meta_columns: meta columns; default :data:`DEFAULT_META_COLUMNS`, those present.
        required_columns: meta columns that must be present (e.g. the split column); added to meta.

    Raises:
        FileNotFoundError: no such regular file.
        ValueError: a row count that is not ``n_records``, a named column that is missing, empty or duplicate
            record ids, a label cell that is not a number. The message names the file and the column.
    """
    path = str(path)
    if not os.path.exists(path) or not stat.S_ISREG(os.stat(path).st_mode):
        raise FileNotFoundError(f"labels table {path}: not found (or not a regular file)")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=True)
    except (OSError, ValueError) as exc:
        raise ValueError(f"labels table {path}: cannot read it as CSV: {exc}") from exc
    if len(df) != n_records:
        raise ValueError(f"labels table {path}: {len(df)} rows, the signals have {n_records} records")
    named = [c for c in (record_id_column, patient_id_column, *(label_columns or ()), *(meta_columns or ()),
                         *required_columns) if c]
    missing = [c for c in named if c not in df.columns]
    if missing:
        raise ValueError(f"labels table {path}: no column(s) {missing}; has {list(df.columns)}")
    table = LabelTable(path=path)
    if record_id_column:
        ids = [id_string(v) for v in df[record_id_column].tolist()]
        empty = [i for i, v in enumerate(ids) if v is None]
        if empty:
            raise ValueError(f"labels table {path}: column {record_id_column} is empty in {len(empty)} row(s), "
                             f"first at data row {empty[0] + 1}")
        dupes = pd.Series(ids)[pd.Series(ids).duplicated()]
        if len(dupes):
            raise ValueError(f"labels table {path}: column {record_id_column} repeats {len(dupes)} id(s), "
                             f"e.g. {dupes.iat[0]!r}; record ids must be unique")
        table.record_ids = ids
    if patient_id_column:
        table.patient_ids = [id_string(v) for v in df[patient_id_column].tolist()]
    metas = list(meta_columns) if meta_columns is not None else [c for c in DEFAULT_META_COLUMNS if c in df.columns]
    metas += [c for c in required_columns if c not in metas]
    taken = {record_id_column, patient_id_column, *metas}
    labels = list(label_columns) if label_columns is not None else [
        c for c in df.columns if c not in taken and is_binary_column(df[c])]
    for name in labels:
        values = pd.to_numeric(df[name].str.strip(), errors="coerce")
        bad = df[name].notna() & (df[name].str.strip() != "") & values.isna()
        if bad.any():
            raise ValueError(f"labels table {path}: label column {name} holds {df[name][bad].iat[0]!r} "
                             f"(data row {int(np.flatnonzero(bad.to_numpy())[0]) + 1}), not a number")
        table.labels[name] = values.to_numpy(np.float64)
    for name in metas:
        table.meta[name] = [_meta_value(v) for v in df[name].tolist()]
    return table
