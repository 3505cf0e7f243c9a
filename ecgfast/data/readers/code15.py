"""CODE-15% (Ribeiro et al., Zenodo 4916206): 345,779 12-lead ECGs at 400 Hz in HDF5 parts, with ``exams.csv``.

Each ``exams_part<i>.hdf5`` holds ``tracings`` (N, 4096, 12) float32, leads DI, DII, DIII, AVR, AVL, AVF,
V1..V6, and ``exam_id`` (N,); its last rows are filler with ``exam_id`` 0. ``exams.csv`` has one row per exam:
``exam_id``, ``patient_id``, ``age``, ``is_male``, the six automatic diagnoses ``1dAVb, RBBB, LBBB, SB, ST,
AF``, ``normal_ecg``, ``death``, ``timey``, ``nn_predicted_age`` and ``trace_file`` (the part holding it).
(The authors' READMEs list the augmented leads as AVR, AVL, AVF in one place and AVL, AVF, AVR in another;
ecgfast takes only DI, DII and V1..V6, at positions 0, 1 and 6..11 in both, so that does not matter here.)

Amplitude unit. The authors' documentation contradicts itself: the README of antonior92/automatic-ecg-diagnosis
(``data/README.md`` and the model input description) says the tracings are "at the scale 1e-4V: so if the
signal is in V it should be multiplied by 1000", and the Zenodo record of CODE-15% states no unit. A literal
1e-4 V scale would mean tenths of a millivolt (multiply by 0.1); the multiplier 1000 from volts means
millivolts (multiply by 1), and so does the first author's advice "just make sure your ECG is scaled as
millivolts" (automatic-ecg-diagnosis issue #3). The stored values have millivolt-like sizes (a peak-to-peak
QRS of about 1.4 in exams_part0, ecg-age-prediction issue #1), and a comparison with millivolt corpora found
them about 1.4 to 2 times larger, not 10 times smaller (ecg-age-prediction issue #5). So the default reads
them as millivolts (``scale=1.0``); ``scale`` overrides it (0.1 for the literal 1e-4 V reading, about 0.5
for the empirical match).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from ..leads import lead_indices
from ..record import ECGRecord, RecordError, RejectReason
from .base import INDEX_ERROR, Reader, SourceItem, id_string, index_columns, raise_index_error

EXAMS_CSV = "exams.csv"
FS = 400.0  # Hz, every CODE-15% tracing
CODE15_LEADS: tuple[str, ...] = ("DI", "DII", "DIII", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6")
#: exams.csv columns that become binary labels ``code:<column>``
LABEL_COLUMNS: tuple[str, ...] = ("1dAVb", "RBBB", "LBBB", "SB", "ST", "AF", "normal_ecg")
DEFAULT_SCALE = 1.0  # stored value -> mV; see the module docstring for why 1 and not 0.1
_REQUIRED = ("exam_id", "patient_id")
_HDF5_SUFFIXES = (".hdf5", ".h5")


def _h5py():
    """h5py, an optional dependency; ImportError with the install hint when it is missing."""
    try:
        import h5py
    except ImportError as exc:
        raise ImportError("reading CODE-15% needs h5py: pip install ecgfast[hdf5]") from exc
    return h5py


_BINARY = {"true": 1.0, "t": 1.0, "yes": 1.0, "1": 1.0, "1.0": 1.0,
           "false": 0.0, "f": 0.0, "no": 0.0, "0": 0.0, "0.0": 0.0}


def _binary_column(values: pd.Series) -> list[float | None]:
    """``True``/``False``/``1``/``0`` cells -> 1.0/0.0; None for an empty or unrecognised cell."""
    mapped = values.str.strip().str.lower().map(_BINARY)
    return [None if v != v else float(v) for v in mapped.tolist()]  # v != v: NaN


def trim_zero_padding(tracing: np.ndarray) -> tuple[int, int]:
    """(start, stop) of ``tracing`` (T, leads) without its leading and trailing samples where every lead is 0.

    CODE-15% pads recordings shorter than 4096 samples (7.3 s and 10 s ones) with zeros on both sides.
    Zeros inside the recording are kept. An all-zero tracing gives (0, 0).
    """
    nonzero = np.flatnonzero(np.any(tracing != 0, axis=1))
    if nonzero.size == 0:
        return 0, 0
    return int(nonzero[0]), int(nonzero[-1]) + 1


class Code15Reader(Reader):
    """A CODE-15% folder: ``exams.csv`` and the ``exams_part*.hdf5`` files present (any subset of parts).

    Items come from the HDF5 files: each non-filler row (``exam_id`` != 0) of each file's ``exam_id``
    dataset, joined to ``exams.csv``. Record id ``code15-<exam_id>``, patient id ``patient_id``, labels
    ``code:1dAVb``, ``code:RBBB``, ``code:LBBB``, ``code:SB``, ``code:ST``, ``code:AF``, ``code:normal_ecg``
    (0/1), meta ``age``, ``sex`` and ``zero_padding`` (samples trimmed at each end, at 400 Hz).

    - Reading trims the zero padding (:func:`trim_zero_padding`), so a record is 7.3 s or 10 s, not 10.24 s.
    - An exam in an HDF5 file but not in ``exams.csv`` is still enumerated; reading it raises
      ``RecordError(UNREADABLE)``.
    - ``exams.csv`` rows whose HDF5 part is absent are skipped without a word: CODE-15% ships its 18 parts
      separately and using a few of them is normal.
    - HDF5 files are opened on first read in each process and kept open; the handles are not pickled.

    Args:
        root: the folder with ``exams.csv`` and the HDF5 parts (``*.hdf5``/``*.h5`` directly in it).
        scale: stored value -> millivolts (default 1.0; see the module docstring on the unit).

    Raises:
        FileNotFoundError: no ``exams.csv``, or no HDF5 file, in ``root``.
        ValueError: ``exams.csv`` lacks ``exam_id`` or ``patient_id``; ``scale`` is not positive.
        ImportError: h5py is not installed (raised by ``items`` and ``read``).
    """

    format_name = "code15"

    def __init__(self, root: str | os.PathLike, scale: float = DEFAULT_SCALE):
        self.root = str(root)
        if not math.isfinite(float(scale)) or float(scale) <= 0:
            raise ValueError(f"CODE-15% scale must be a positive number (mV per stored unit), got {scale!r}")
        self.scale = float(scale)
        self.exams = os.path.join(self.root, EXAMS_CSV)
        index_columns(self.exams, "CODE-15%", self.root, _REQUIRED)
        self.files = sorted(str(p) for p in Path(self.root).iterdir()
                            if p.is_file() and p.suffix.lower() in _HDF5_SUFFIXES)
        if not self.files:
            raise FileNotFoundError(f"CODE-15%: no .hdf5 files in {self.root} (unzip exams_part*.zip there)")
        self._leads = lead_indices(CODE15_LEADS, "CODE-15%")
        self._handles: dict[str, object] = {}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"] = {}  # open HDF5 files belong to one process
        return state

    def close(self) -> None:
        """Close the HDF5 files this process opened."""
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()

    def _file(self, path: str):
        handle = self._handles.get(path)
        if handle is None:
            handle = self._handles[path] = _h5py().File(path, "r")
        return handle

    def _exam_table(self) -> tuple[dict[int, int], dict[str, list]]:
        """(exam_id -> row position, column -> parsed values) of exams.csv, for the join.

        Columns are parsed whole (a few seconds for 345,779 rows); the per-item dicts are built only for the
        exams found in the HDF5 files present.
        """
        df = pd.read_csv(self.exams, dtype=str)
        exam_ids = pd.to_numeric(df["exam_id"], errors="coerce").tolist()
        # an exam_id that is not an integer cannot be joined; its tracing (if any) reads as "not in exams.csv"
        index = {int(e): pos for pos, e in enumerate(exam_ids) if e == e and float(e).is_integer()}
        columns: dict[str, list] = {"patient_id": df["patient_id"].tolist()}
        for c in [*LABEL_COLUMNS, "is_male"]:
            if c in df.columns:
                columns[c] = _binary_column(df[c])
        if "age" in df.columns:
            ages = pd.to_numeric(df["age"], errors="coerce").tolist()
            columns["age"] = [a if math.isfinite(a) and a >= 0 else None for a in ages]
        return index, columns

    @staticmethod
    def _joined_item(rid: str, locator: str, columns: dict[str, list], pos: int) -> SourceItem:
        labels = {f"code:{c}": v for c in LABEL_COLUMNS if c in columns and (v := columns[c][pos]) is not None}
        meta: dict[str, object] = {}
        if columns.get("age") and columns["age"][pos] is not None:
            meta["age"] = float(columns["age"][pos])
        if columns.get("is_male") and columns["is_male"][pos] is not None:
            meta["sex"] = "male" if columns["is_male"][pos] else "female"
        return SourceItem(record_id=rid, locator=locator, patient_id=id_string(columns["patient_id"][pos]),
                          labels=labels, meta=meta)

    def items(self) -> Iterator[SourceItem]:
        h5py = _h5py()
        index, columns = self._exam_table()
        for path in self.files:
            try:
                with h5py.File(path, "r") as f:
                    if "exam_id" not in f or "tracings" not in f:
                        raise ValueError(f"{path}: needs datasets exam_id and tracings, has {sorted(f.keys())}")
                    exam_ids = np.asarray(f["exam_id"][:]).reshape(-1)
            except OSError as exc:
                raise OSError(f"{path}: cannot open as HDF5 ({exc}); re-download or remove it") from exc
            name = os.path.basename(path)
            for row, exam in enumerate(exam_ids.tolist()):
                exam = int(exam)
                if exam == 0:
                    continue  # filler rows at the end of each part
                rid, locator = f"code15-{exam}", f"{path}:{row}"
                pos = index.get(exam)
                if pos is None:
                    yield SourceItem(record_id=rid, locator=locator, meta={
                        INDEX_ERROR: f"record {rid}: exam {exam} (row {row} of {name}) not in {EXAMS_CSV}"})
                else:
                    yield self._joined_item(rid, locator, columns, pos)

    def read(self, item: SourceItem) -> ECGRecord:
        raise_index_error(item)
        path, _, row_text = item.locator.rpartition(":")
        try:
            row = int(row_text)
            tracings = self._file(path)["tracings"]
            if tracings.ndim != 3 or tracings.shape[2] != len(CODE15_LEADS):
                raise RecordError(RejectReason.HEADER_MISMATCH,
                                  f"record {item.record_id}: {path} tracings have shape {tracings.shape}, "
                                  f"expected (N, T, {len(CODE15_LEADS)})")
            if not 0 <= row < tracings.shape[0]:
                raise RecordError(RejectReason.UNREADABLE,
                                  f"record {item.record_id}: row {row} outside the {tracings.shape[0]} rows of {path}")
            tracing = np.asarray(tracings[row], dtype=np.float32)  # (T, 12)
        except (RecordError, ImportError):
            raise
        except Exception as exc:  # h5py raises OSError, KeyError, ValueError for damaged files
            raise RecordError(RejectReason.UNREADABLE,
                              f"record {item.record_id}: cannot read row {row_text} of {path}: "
                              f"{type(exc).__name__}: {exc}") from exc
        start, stop = trim_zero_padding(tracing)
        if stop == start:
            raise RecordError(RejectReason.FLAT_LEAD,
                              f"record {item.record_id}: every sample of every lead is 0 (row {row} of {path})")
        signal = np.ascontiguousarray(tracing[start:stop, self._leads].T) * np.float32(self.scale)
        meta = {"patient_id_known": item.patient_id is not None, **item.meta,
                "zero_padding": [start, int(tracing.shape[0]) - stop]}
        return ECGRecord(record_id=item.record_id, patient_id=item.patient_id or item.record_id,
                         signal=signal.astype(np.float32, copy=False), fs=FS, source=f"{path}:{row}",
                         labels=dict(item.labels), meta=meta)

    def describe(self) -> str:
        return f"{self.format_name} ({self.root}, {len(self.files)} HDF5 files, scale {self.scale:g} mV/unit)"
