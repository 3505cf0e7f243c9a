"""PTB-XL (Wagner et al. 2020): ``ptbxl_database.csv`` indexes WFDB records at 100 and 500 Hz.

Labels follow the dataset's own example code (PhysioNet ``example_physionet.py``) and the PTB-XL benchmark
(Strodthoff et al. 2021):

- ``scp:<code>`` = 1 for every SCP-ECG statement listed in ``scp_codes``, whatever its likelihood. The
  likelihoods (0 to 100; 0 means "not given", which is what rhythm and form statements carry) are kept in
  ``meta["scp_likelihood"]`` for anyone who wants a threshold.
- With ``scp_statements.csv`` beside the database: ``superclass:<NORM|MI|STTC|CD|HYP>``, 1 when any listed
  code whose ``diagnostic`` column is 1 has that ``diagnostic_class``, else 0. All five keys are emitted for
  every record, so a record with no diagnostic statement is a negative for all five rather than missing.
  As in the benchmark, a likelihood of 0 does not remove a code.
"""

from __future__ import annotations

import ast
import logging
import math
import os
from collections.abc import Iterator

import pandas as pd

from ..record import ECGRecord
from .base import INDEX_ERROR, Reader, SourceItem, id_string, index_columns, raise_index_error
from .input_files import index_path, input_root
from .wfdb_record import read_wfdb

log = logging.getLogger("ecgfast.prepare")
DATABASE_CSV = "ptbxl_database.csv"
STATEMENTS_CSV = "scp_statements.csv"
SUPERCLASSES: tuple[str, ...] = ("NORM", "MI", "STTC", "CD", "HYP")
_REQUIRED = ("ecg_id", "patient_id", "scp_codes", "filename_lr", "filename_hr")
_FILENAME_COLUMN = {100: "filename_lr", 500: "filename_hr"}
_FOLDER = {100: "records100", 500: "records500"}
# PTB-XL writes 300 as the age of patients over 89 (HIPAA); we store 90 and flag it.
_AGE_CENSORED = 300


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == ""


def diagnostic_classes(path: str | os.PathLike) -> dict[str, str]:
    """SCP code -> diagnostic superclass, for the codes ``scp_statements.csv`` marks as diagnostic.

    Raises:
        ValueError: the file lacks the ``diagnostic`` or ``diagnostic_class`` column.
    """
    df = pd.read_csv(path, index_col=0)
    missing = {"diagnostic", "diagnostic_class"} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: needs columns diagnostic and diagnostic_class, missing {sorted(missing)}")
    diagnostic = pd.to_numeric(df["diagnostic"], errors="coerce") == 1
    classes = df.loc[diagnostic, "diagnostic_class"].dropna()
    return {str(code).strip(): str(cls).strip() for code, cls in classes.items()}


def parse_scp_codes(text: object) -> dict[str, float]:
    """``"{'NORM': 100.0, 'SR': 0.0}"`` -> ``{"NORM": 100.0, "SR": 0.0}``.

    Raises:
        ValueError: not a dict literal of code -> number.
    """
    if _missing(text):
        raise ValueError("empty")
    value = ast.literal_eval(str(text))  # raises ValueError/SyntaxError on anything but a literal
    if not isinstance(value, dict):
        raise ValueError(f"a {type(value).__name__}, not a dict")
    return {str(code).strip(): float(likelihood) for code, likelihood in value.items()}


class PTBXLReader(Reader):
    """A PTB-XL folder (the one holding ``ptbxl_database.csv``).

    Record id ``ptbxl-<ecg_id>``; patient id from ``patient_id``; labels as in the module docstring; meta
    ``strat_fold`` (1-10, the dataset's patient-stratified folds, the default split: 9 validation, 10 test),
    ``age`` (years; 90 with ``age_over_89=True`` where the file says 300), ``sex`` ("male"/"female") and
    ``scp_likelihood``.

    A row that cannot be used (unparsable ``scp_codes``, no file name, ...) is still enumerated; reading it
    raises ``RecordError(UNREADABLE)`` naming the ecg_id and the column.

    Args:
        root: the PTB-XL folder.
        rate: 500 reads ``filename_hr`` (records500/), 100 reads ``filename_lr`` (records100/); None (default):
            500 where ``records500/`` is there, else 100 where ``records100/`` is (a copy of the 100 Hz files
            only), said in the log.

    Raises:
        FileNotFoundError: no ``ptbxl_database.csv`` in ``root``; the folder of the rate asked for is absent
            (the message names the one that is there and the flag that reads it).
        ValueError: ``rate`` is not 100 or 500, or the CSV lacks a needed column.
    """

    format_name = "ptbxl"
    default_split_column = "strat_fold"

    def __init__(self, root: str | os.PathLike, rate: int | None = None):
        self.root = str(root)
        self.input_root = input_root(self.root)
        present = [r for r in (500, 100) if os.path.isdir(os.path.join(self.root, _FOLDER[r]))]
        if rate is None:
            rate = present[0] if present else 500
            if present == [100]:
                log.info("PTB-XL at %s: only %s/ is there: reading its 100 Hz files", self.root, _FOLDER[100])
        if rate not in _FILENAME_COLUMN:
            raise ValueError(f"PTB-XL rate must be 100 or 500 Hz, got {rate!r}")
        if os.path.isfile(os.path.join(self.root, DATABASE_CSV)) and present and rate not in present:
            raise FileNotFoundError(f"{self.root}: no {_FOLDER[rate]}/ for PTB-XL at {rate} Hz; this copy holds "
                                    f"{_FOLDER[present[0]]}/: pass --rate {present[0]}")
        self.rate = int(rate)
        self.native_fs = float(rate)
        self.database = os.path.join(self.root, DATABASE_CSV)
        index_columns(self.database, "PTB-XL", self.root, _REQUIRED)
        statements = os.path.join(self.root, STATEMENTS_CSV)
        self.statements = statements if os.path.isfile(statements) else None

    def items(self) -> Iterator[SourceItem]:
        classes = diagnostic_classes(self.statements) if self.statements else None
        superclasses = sorted(set(SUPERCLASSES) | set(classes.values()), key=_superclass_order) if classes else []
        df = pd.read_csv(self.database, dtype=str, keep_default_na=True)
        file_column = _FILENAME_COLUMN[self.rate]
        for row in df.to_dict("records"):
            yield self._item(row, file_column, classes, superclasses)

    def _item(self, row: dict, file_column: str, classes: dict[str, str] | None,
              superclasses: list[str]) -> SourceItem:
        ecg_id = id_string(row["ecg_id"]) or "?"
        rid = f"ptbxl-{ecg_id}"
        meta: dict[str, object] = {}
        labels: dict[str, float] = {}
        problems: list[str] = []

        try:
            codes = parse_scp_codes(row["scp_codes"])
        except (ValueError, SyntaxError, TypeError) as exc:
            codes = {}
            problems.append(f"column scp_codes {str(row['scp_codes'])[:80]!r} is not a dict literal ({exc})")
        for code in codes:
            labels[f"scp:{code}"] = 1.0
        if codes:
            meta["scp_likelihood"] = codes
        if classes is not None:
            reached = {classes[c] for c in codes if c in classes}
            for cls in superclasses:
                labels[f"superclass:{cls}"] = 1.0 if cls in reached else 0.0

        fold = row.get("strat_fold")
        if not _missing(fold):
            try:
                meta["strat_fold"] = int(float(fold))
            except (ValueError, OverflowError):
                problems.append(f"column strat_fold {fold!r} is not a number")
        age = row.get("age")
        if not _missing(age):
            try:
                years = float(age)
            except ValueError:
                years = float("nan")  # age is optional: an unreadable one is left out, not a reject
            if years >= _AGE_CENSORED:
                meta["age"], meta["age_over_89"] = 90.0, True
            elif 0 <= years < _AGE_CENSORED:
                meta["age"] = years
        sex = id_string(row.get("sex"))
        if sex in ("0", "1"):
            meta["sex"] = "male" if sex == "0" else "female"

        filename = row.get(file_column)
        if _missing(filename):
            problems.append(f"column {file_column} is empty")
            locator = os.path.join(self.root, f"<no {file_column}>")
        else:
            try:
                locator = index_path(self.root, str(filename))
            except ValueError as exc:  # absolute or climbing: never read, whatever it points at
                problems.append(f"column {file_column}: {exc}")
                locator = os.path.join(self.root, "<refused path>")
        if problems:
            meta[INDEX_ERROR] = f"record {rid}: {DATABASE_CSV} row of ecg_id {ecg_id}: " + "; ".join(problems)
        return SourceItem(record_id=rid, locator=locator, patient_id=id_string(row["patient_id"]),
                          labels=labels, meta=meta)

    def read(self, item: SourceItem) -> ECGRecord:
        raise_index_error(item)
        return read_wfdb(item.locator, item.record_id, item.patient_id, item.labels, item.meta,
                         root=self.input_root, max_seconds=self.max_seconds)

    def describe(self) -> str:
        return f"{self.format_name} ({self.root}, {self.rate} Hz)"


def _superclass_order(cls: str) -> tuple[int, str]:
    """The five PTB-XL superclasses in their usual order, any others after them alphabetically."""
    return (SUPERCLASSES.index(cls), "") if cls in SUPERCLASSES else (len(SUPERCLASSES), cls)
