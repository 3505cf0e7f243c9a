"""ECGs already in a numpy array, in memory or in a ``.npy`` file read through a memory map.

A ``.npy`` path is the way in for a large corpus: the file is opened with ``mmap_mode="r"`` lazily, once per
process, and only the rows a worker reads are paged in; the reader pickles as a path. An in-memory array is
pickled with the reader (to every worker process), so it suits small sets and tests.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from ecgfast import LEADS

from ..leads import lead_indices
from ..record import ECGRecord, RecordError, RejectReason
from .base import Reader, SourceItem, id_string

#: factor from each accepted physical unit to millivolts
UNIT_TO_MV: dict[str, float] = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "v": 1e3}
#: the unit of normalised arrays (each lead z-scored): kept as they are, checked and stored as "z"
NORMALISED_UNIT = "z"
LAYOUTS = ("NLT", "NTL")


def load_ids(source: str | os.PathLike | Sequence | np.ndarray, what: str) -> list[str | None]:
    """Ids from a sequence, a ``.npy`` file (1-D, no pickles) or a text file (one id a line).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the ``.npy`` file is not a 1-D array (``what`` names it in the message).
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{what}: {path} not found")
        if path.suffix == ".npy":
            values = np.load(path, allow_pickle=False)
            if values.ndim != 1:
                raise ValueError(f"{what}: {path} must hold a 1-D array, got shape {values.shape}")
            return [id_string(v) for v in values.tolist()]
        lines = path.read_text().splitlines()
        while lines and not lines[-1].strip():  # a trailing newline is not one more id
            lines.pop()
        return [id_string(v) for v in lines]
    return [id_string(v) for v in (source.tolist() if isinstance(source, np.ndarray) else source)]


class ArrayReader(Reader):
    """ECGs from an (N, L, T) or (N, T, L) array of N records, L leads and T samples each.

    Args:
        signals: the array, or the path of a ``.npy`` file holding it (memory-mapped, never loaded whole).
        patient_ids: N patient ids: a sequence, or a ``.npy``/``.txt`` path. An empty id, or None for all,
            makes a record its own patient (``meta["patient_id_known"] = False``).
        fs: sampling rate in Hz, the same for all records.
        lead_names: the names of the L leads, in array order (8-lead ``I, II, V1..V6``, the 12-lead order,
            any spelling :func:`~ecgfast.data.leads.lead_indices` maps).
        record_ids: N unique ids; default ``array-<i>``, or ``<file stem>-<i>`` for a ``.npy`` file.
        labels: task name -> N values; a NaN value leaves that label out for that record.
        units: unit of the values: "mV", "uV" or "V" (scaled to mV), or "z" for normalised signals (each lead
            z-scored; kept as they are, and a store made from them holds "z", not millivolts).
        layout: "NLT" (leads before samples) or "NTL".
        meta: name -> N JSON values kept in each record's meta (None leaves it out for that record).
        table_path: the labels CSV the ids, labels and meta came from (see :meth:`from_label_table`), for
            :meth:`input_paths` and :meth:`describe`.

    Raises:
        FileNotFoundError: a path given does not exist.
        ValueError: anything inconsistent, named: not 3-D, a length that is not N, lead names that do not
            match L or miss one of I, II, V1..V6, an unknown unit or layout, a rate that is not positive.
    """

    format_name = "numpy"

    def __init__(self, signals: np.ndarray | str | os.PathLike,
                 patient_ids: Sequence | np.ndarray | str | os.PathLike | None, fs: float,
                 lead_names: Sequence[str] | str = LEADS, record_ids: Sequence[str] | None = None,
                 labels: Mapping[str, Sequence[float] | np.ndarray] | None = None, units: str = "mV",
                 layout: str = "NLT", meta: Mapping[str, Sequence] | None = None, table_path: str | None = None):
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.layout = layout
        if isinstance(signals, (str, os.PathLike)):
            self.path: str | None = str(signals)
            self._memory: np.ndarray | None = None
            shape, dtype = self._file_shape(self.path)
            what = self.path
        else:
            self.path, self._memory = None, np.asarray(signals)
            shape, dtype, what = self._memory.shape, self._memory.dtype, "signals array"
        if len(shape) != 3:
            raise ValueError(f"{what}: signals must be 3-D ({layout}), got shape {tuple(shape)}")
        if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
            raise ValueError(f"{what}: signals must be numbers, got dtype {dtype}")
        self.n = int(shape[0])
        n_leads = int(shape[1] if layout == "NLT" else shape[2])

        if not fs or not math.isfinite(float(fs)) or float(fs) <= 0:
            raise ValueError(f"{what}: fs must be a positive number of Hz, got {fs!r}")
        self.fs = self.native_fs = float(fs)
        if isinstance(lead_names, str):
            lead_names = [n for n in lead_names.split(",") if n.strip()]
        self.lead_names = [str(n) for n in lead_names]
        if len(self.lead_names) != n_leads:
            raise ValueError(f"{what}: {len(self.lead_names)} lead names {self.lead_names} for {n_leads} leads "
                             f"(axis {'1' if layout == 'NLT' else '2'} of shape {tuple(shape)}, layout {layout})")
        try:
            self._leads = lead_indices(self.lead_names, what)
        except RecordError as exc:  # one set of names for every record: a configuration error, say it once
            raise ValueError(exc.message) from exc
        unit = str(units).strip().lower()
        if unit != NORMALISED_UNIT and unit not in UNIT_TO_MV:
            raise ValueError(f"{what}: units must be mV, uV, V or z (normalised), got {units!r}")
        self.units, self._scale = units, UNIT_TO_MV.get(unit, 1.0)
        self.signal_units = "z" if unit == NORMALISED_UNIT else "mV"

        ids = load_ids(patient_ids, "patient_ids") if patient_ids is not None else [None] * self.n
        self._check_length(len(ids), "patient_ids", what)
        # ids read from a file are read again in items() rather than pickled to every worker
        self._ids_path = str(patient_ids) if isinstance(patient_ids, (str, os.PathLike)) else None
        self._patient_ids: list[str | None] | None = ids
        if record_ids is not None:
            record_ids = [str(r) for r in record_ids]
            self._check_length(len(record_ids), "record_ids", what)
        self.record_ids = record_ids
        self.prefix = Path(self.path).stem if self.path else "array"
        self.labels: dict[str, np.ndarray] = {}
        for name, values in (labels or {}).items():
            arr = np.asarray(values, dtype=np.float64).reshape(-1)
            self._check_length(arr.size, f"labels[{name!r}]", what)
            self.labels[str(name)] = arr
        self.meta: dict[str, list] = {}
        for name, values in (meta or {}).items():
            values = list(values)
            self._check_length(len(values), f"meta[{name!r}]", what)
            self.meta[str(name)] = values
        self.table_path = table_path
        self._mmap: np.ndarray | None = None

    @classmethod
    def from_label_table(cls, signals: str | os.PathLike | np.ndarray, table: str | os.PathLike, fs: float,
                         lead_names: Sequence[str] | str = LEADS, record_id_column: str | None = None,
                         patient_id_column: str | None = None, label_columns: Sequence[str] | None = None,
                         meta_columns: Sequence[str] | None = None, required_columns: Sequence[str] = (),
                         patient_ids: Sequence | np.ndarray | str | os.PathLike | None = None,
                         units: str = "mV", layout: str = "NLT") -> ArrayReader:
        """An array source whose record ids, patient ids, labels and meta come from a CSV, one row per record
        (:func:`~ecgfast.data.readers.label_table.read_label_table` says which column plays which role).

        Raises:
            FileNotFoundError, ValueError: as :func:`read_label_table` and the constructor; patient ids given
                both as a column and as ``patient_ids``.
        """
        from .label_table import read_label_table

        n = cls(signals, None, fs, lead_names=lead_names, units=units, layout=layout).n
        t = read_label_table(table, n, record_id_column, patient_id_column, label_columns, meta_columns,
                             required_columns)
        if t.patient_ids is not None and patient_ids is not None:
            raise ValueError(f"{table}: patient ids from column {patient_id_column} and from patient_ids; give one")
        return cls(signals, t.patient_ids if t.patient_ids is not None else patient_ids, fs, lead_names=lead_names,
                   record_ids=t.record_ids, labels=t.labels, units=units, layout=layout, meta=t.meta,
                   table_path=t.path)

    def _check_length(self, got: int, name: str, what: str) -> None:
        if got != self.n:
            raise ValueError(f"{what}: {name} has {got} entries, signals have {self.n} records")

    @staticmethod
    def _file_shape(path: str) -> tuple[tuple[int, ...], np.dtype]:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"numpy source {path} not found (or not a regular file)")
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)  # reads the header only
        except (ValueError, OSError) as exc:
            raise ValueError(f"{path}: not a readable .npy array: {exc}") from exc
        shape, dtype = arr.shape, arr.dtype
        del arr  # no open map is kept: the reader must pickle as a path
        return shape, dtype

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_mmap"] = None
        if self._ids_path is not None:
            state["_patient_ids"] = None
        return state

    def _array(self) -> np.ndarray:
        if self._memory is not None:
            return self._memory
        if self._mmap is None:
            self._mmap = np.load(self.path, mmap_mode="r", allow_pickle=False)
        return self._mmap

    def record_id(self, index: int) -> str:
        """The id of record ``index``."""
        return self.record_ids[index] if self.record_ids is not None else f"{self.prefix}-{index}"

    def items(self) -> Iterator[SourceItem]:
        ids = self._patient_ids if self._patient_ids is not None else load_ids(self._ids_path, "patient_ids")
        for i in range(self.n):
            labels = {name: float(v[i]) for name, v in self.labels.items() if math.isfinite(v[i])}
            meta = {name: v[i] for name, v in self.meta.items() if v[i] is not None}
            yield SourceItem(record_id=self.record_id(i), locator=str(i), patient_id=ids[i], labels=labels,
                             meta=meta)

    def read(self, item: SourceItem) -> ECGRecord:
        try:
            index = int(item.locator)
        except ValueError:
            index = -1
        source = f"{self.path}:{item.locator}" if self.path else f"array:{item.locator}"
        if not 0 <= index < self.n:
            raise RecordError(RejectReason.UNREADABLE,
                              f"record {item.record_id}: index {item.locator!r} is outside 0..{self.n - 1} "
                              f"of {self.path or 'the signals array'}")
        rows = self._array()[index]  # (L, T) or (T, L); one record paged in from the map
        picked = rows[self._leads] if self.layout == "NLT" else rows[:, self._leads].T
        signal = np.asarray(picked, dtype=np.float32)  # a copy: never a view into the map
        if self._scale != 1.0:
            signal = signal * np.float32(self._scale)
        return ECGRecord(record_id=item.record_id, patient_id=item.patient_id or item.record_id,
                         signal=np.ascontiguousarray(signal), fs=self.fs, source=source, labels=dict(item.labels),
                         meta={"patient_id_known": item.patient_id is not None, **item.meta},
                         units=self.signal_units)

    def describe(self) -> str:
        where = self.path or "in-memory array"
        table = f", table {self.table_path}" if self.table_path else ""
        return f"{self.format_name} ({where}, {self.n} records, {self.fs:g} Hz, {self.layout}, {self.units}{table})"

    def input_paths(self) -> list[str]:
        return [p for p in (self.path, self._ids_path, self.table_path) if p]

    def redact(self, text: str) -> str:
        return text  # locators are row numbers
