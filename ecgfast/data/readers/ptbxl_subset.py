"""The PTB-XL subset as arrays (``../shared/data/ecg/ptbxl-subset``): ``signals_<rate>hz.npy`` (N, 12, T) beside
``labels.csv`` (one row per ECG: ``ecg_id``, ``strat_fold``, ``age``, ``sex`` and 0/1 label columns).

Its signals are band-passed and z-scored per lead (not millivolts), so the layout's unit is "z"; it carries no
patient ids, so each ECG is its own patient, and the split comes from ``strat_fold`` (PTB-XL keeps all ECGs of a
patient in one fold: 1-8 train, 9 validation, 10 test), never from a hash that could separate a patient's
ECGs. Everything here is a default of :meth:`ArrayReader.from_label_table`, and each can be overridden.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from .arrays import ArrayReader

LABELS_CSV = "labels.csv"
#: the lead order of PTB-XL's records, and so of this array's axis 1
PTBXL_LEADS: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
RECORD_ID_COLUMN = "ecg_id"
SPLIT_COLUMN = "strat_fold"
UNITS = "z"
_SIGNALS = re.compile(r"^signals_(\d+(?:\.\d+)?)hz\.npy$", re.IGNORECASE)


def signals_file(folder: str | os.PathLike) -> tuple[Path, float] | None:
    """(path, rate) of the one ``signals_<rate>hz.npy`` in ``folder`` beside a ``labels.csv`` with ``ecg_id``
    and ``strat_fold`` columns; None when ``folder`` is not this layout."""
    p = Path(folder)
    if not p.is_dir() or not (p / LABELS_CSV).is_file():
        return None
    found = [(f, float(m.group(1))) for f in sorted(p.iterdir()) if f.is_file() and (m := _SIGNALS.match(f.name))]
    if len(found) != 1:
        return None
    try:
        columns = set(pd.read_csv(p / LABELS_CSV, nrows=0).columns)
    except (OSError, ValueError):
        return None
    return found[0] if {RECORD_ID_COLUMN, SPLIT_COLUMN} <= columns else None


class PTBXLSubsetReader(ArrayReader):
    """An :class:`ArrayReader` under its own format name (and so its own patient namespace), whose split comes
    from ``strat_fold`` unless prepare is told otherwise. Made by :func:`open_ptbxl_subset`."""

    format_name = "ptbxl-subset"
    default_split_column = SPLIT_COLUMN

    def input_paths(self) -> list[str]:
        folder = [os.path.dirname(self.table_path)] if self.table_path else []
        return folder + super().input_paths()


def open_ptbxl_subset(folder: str | os.PathLike, fs: float | None = None, lead_names: Sequence[str] | None = None,
                      units: str | None = None, record_id_column: str | None = None,
                      patient_id_column: str | None = None, label_columns: Sequence[str] | None = None,
                      meta_columns: Sequence[str] | None = None, patient_ids: str | None = None,
                      split_column: str | None = None) -> PTBXLSubsetReader:
    """The reader of a ptbxl-subset folder; any argument given replaces the layout's default.

    Defaults: the rate in the file name, :data:`PTBXL_LEADS`, units "z", record ids from ``ecg_id``, labels
    every 0/1 column, meta ``age``, ``sex`` and ``strat_fold``, no patient ids (each ECG its own patient).

    Raises:
        FileNotFoundError: ``folder`` is not this layout.
        ValueError: as :meth:`ArrayReader.from_label_table`.
    """
    found = signals_file(folder)
    if found is None:
        raise FileNotFoundError(f"{folder}: not a ptbxl-subset folder (one signals_<rate>hz.npy beside a "
                                f"{LABELS_CSV} with columns {RECORD_ID_COLUMN} and {SPLIT_COLUMN})")
    path, rate = found
    required = [c for c in (SPLIT_COLUMN, split_column) if c]
    return PTBXLSubsetReader.from_label_table(
        str(path), Path(folder) / LABELS_CSV, fs or rate, lead_names=lead_names or PTBXL_LEADS,
        record_id_column=record_id_column or RECORD_ID_COLUMN, patient_id_column=patient_id_column,
        label_columns=label_columns, meta_columns=meta_columns, required_columns=required,
        patient_ids=patient_ids, units=units or UNITS)
