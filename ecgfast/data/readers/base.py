"""The reader interface: cheap enumeration of a source's records, then one record read at a time.

Prepare enumerates every reader's items first (so duplicate ids are known before any signal is read),
then reads items in worker processes. Readers and items are therefore plain picklable values: paths and
indices, never open file handles.
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..record import ECGRecord, RecordError, RejectReason

# meta key for a problem found while enumerating an index row (CSV, HDF5): read() raises it, so one bad
# row never stops the enumeration of the others and is reported as that record's reject reason.
INDEX_ERROR = "_index_error"


def id_string(value: object) -> str | None:
    """An id as an opaque string, or None for an empty cell.

    Index files read by pandas turn integer columns with gaps into floats: ``15709.0`` -> ``"15709"``;
    bytes (HDF5) are decoded.
    """
    if isinstance(value, bytes):
        value = value.decode()
    if value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == "":
        return None
    text = str(value).strip()
    if text.isdigit():  # the common case, without a float round trip
        return text
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


def index_columns(path: str, corpus: str, root: str, required: tuple[str, ...]) -> set[str]:
    """The columns of a corpus's index CSV (PTB-XL's database, MIMIC's record list, CODE-15%'s exams), checked.

    Raises:
        FileNotFoundError: no such file (the message asks whether ``root`` is the corpus folder).
        ValueError: a required column is missing (named, with the columns found).
    """
    import pandas as pd

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{corpus}: {path} not found (is {root} the {corpus} folder?)")
    columns = set(pd.read_csv(path, nrows=0).columns)
    missing = [c for c in required if c not in columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; has {sorted(columns)}")
    return columns


def raise_index_error(item: SourceItem) -> None:
    """Raise the enumeration-time problem recorded in ``item.meta`` as an UNREADABLE reject, if any."""
    if INDEX_ERROR in item.meta:
        raise RecordError(RejectReason.UNREADABLE, str(item.meta[INDEX_ERROR]))


@dataclass
class SourceItem:
    """One record of a source, before its signal is read.

    Attributes:
        record_id: unique id of the record (duplicates across sources are rejected at prepare time).
        locator: where the reader finds it: a path (without extension for WFDB) or a row index.
        patient_id: known patient id, or None when the source has none (then the record id is used).
        labels: labels known from the index file (CSV) without reading the signal.
        meta: other metadata known from the index (strat_fold, age, sex, ...).
    """

    record_id: str
    locator: str
    patient_id: str | None = None
    labels: dict[str, float] = field(default_factory=dict)
    meta: dict[str, object] = field(default_factory=dict)


class Reader(ABC):
    """A source of ECG records. Subclasses set ``format_name`` and implement ``items`` and ``read``.

    Class attributes with defaults that subclasses may override:
        signal_units: the unit of the signals ``read`` yields: "mV" (every physical source converts to it) or
            "z" (normalised signals, :class:`~ecgfast.data.readers.arrays.ArrayReader` with ``units="z"``).
        max_seconds: read at most about this many seconds of a record where the format allows it; prepare sets
            it (on its own copy of the reader) to the store's record length. None reads whole records.
        default_split_column: a meta key whose values split the records patient-disjointly (fold numbers or
            train/val/test), used by prepare when no split is asked for; None: split by a hash of patient ids.
        native_fs: the one sampling rate (Hz) of every record the source yields, where its format says so
            (PTB-XL's records100/ or records500/, an array): ecgfast-prepare's store rate follows it unless --fs is
            given. None: rates may differ from record to record.
    """

    format_name: str = ""
    signal_units: str = "mV"
    max_seconds: float | None = None
    default_split_column: str | None = None
    native_fs: float | None = None

    @abstractmethod
    def items(self) -> Iterator[SourceItem]:
        """Enumerate the source's records, in a deterministic order, without reading signals."""

    @abstractmethod
    def read(self, item: SourceItem) -> ECGRecord:
        """Read one record; raise :class:`~ecgfast.data.record.RecordError` when it is unusable."""

    def describe(self) -> str:
        """One line for logs: the format and the root, never patient data."""
        return self.format_name

    def input_paths(self) -> list[str]:
        """The files and folders this reader reads (default: its ``root`` attribute, if it has one).

        prepare refuses a ``--out`` that holds one of them, or lies inside one: ``--overwrite`` would delete
        the data, or the store would be read as data.
        """
        root = getattr(self, "root", None)
        return [str(root)] if root else []

    def redact(self, text: str) -> str:
        """``text`` (a locator or a reject message) as prepare writes it to ``rejects.csv``: paths relative to
        the reader's input folder. Readers whose paths carry patient ids replace those parts too."""
        root = getattr(self, "root", None)
        if not root:
            return text
        for folder in {os.path.abspath(root), str(Path(root).resolve()), str(root)}:
            folder = folder if os.path.isdir(folder) else os.path.dirname(folder)
            if folder:
                text = text.replace(os.path.join(folder, ""), "")
        return text
