"""Read one WFDB record (.hea with .dat/.mat signal files, any format wfdb reads) into an ECGRecord.

Beyond ``wfdb.rdrecord`` this checks what real corpora get wrong, each with its own reject reason, most of
it before wfdb reads a byte of signal (:mod:`.wfdb_header`): rates and gains wfdb would replace silently (bad
sampling rate, bad gain), files that are not regular files inside the input (unsafe file), signal files
shorter than the header says (truncated), longer than it says or failing the header's per-signal checksums
(header mismatch), missing leads. At most the samples the store keeps are read (``max_seconds``). Known header
quirks with an unambiguous meaning are repaired on a temporary copy of the header, never in the user's files.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import wfdb

from ecgfast import LEADS

from ..leads import lead_indices, normalise_lead_name
from ..record import ECGRecord, RecordError, RejectReason
from .base import Reader, SourceItem
from .input_files import input_root
from .wfdb_header import HeaderText, check_gains, check_signal_files, number_or_nan, read_header

_SIGNAL_EXTS = (".mat", ".dat")
#: read beyond the kept length, so that resampling and filtering near its end see what the full record has
READ_MARGIN_SECONDS = 1.0


def _fixed_header_copy(base: str, name: str) -> str:
    """Copy of the header with the record line's name fixed, in a temporary folder beside links to the
    signal files; returns its base path. The caller removes the folder."""
    with open(base + ".hea", encoding="latin-1") as f:
        lines = f.read().splitlines()
    tmp = tempfile.mkdtemp(prefix="ecgfast-hea-")
    first = next(i for i, ln in enumerate(lines) if ln.strip() and not ln.strip().startswith("#"))
    fields = lines[first].split()
    fields[0] = name
    lines[first] = " ".join(fields)
    Path(tmp, name + ".hea").write_text("\n".join(lines) + "\n")
    for ext in _SIGNAL_EXTS:
        if os.path.exists(base + ext):
            os.symlink(os.path.abspath(base + ext), os.path.join(tmp, name + ext))
    return os.path.join(tmp, name)


def _check_segments(header: HeaderText, folder: str, root: Path | None, record_id: str) -> int:
    """Multi-segment record: check every segment's header and signal files, and the gains of its ECG leads."""
    for seg in header.segments:
        if seg == "~":  # a gap
            continue
        seg_header = read_header(os.path.join(folder, seg + ".hea"), root, record_id)
        check_signal_files(seg_header, folder, root, record_id)
        used = [i for i, s in enumerate(seg_header.signals) if normalise_lead_name(s.name) in LEADS]
        check_gains(seg_header, used, record_id)
    if header.sig_len is None:
        raise RecordError(RejectReason.HEADER_MISMATCH,
                          f"record {record_id}: multi-segment header {header.path} gives no sample count")
    return header.sig_len


def _check_read_as_written(rec: wfdb.Record, header: HeaderText, channels: list[int], record_id: str) -> None:
    """wfdb read the header as this module parsed it: the files checked are the files read, the rate and the
    gains of the used ``channels`` checked are the ones used. Anything else means the two parsers disagree."""
    problems = []
    if not math.isclose(float(rec.fs), header.fs, rel_tol=1e-9):
        raise RecordError(RejectReason.BAD_SAMPLING_RATE,
                          f"record {record_id}: header {header.path} says sampling rate {header.fs_text!r}, "
                          f"wfdb reads {rec.fs!r}")
    if header.signals:
        if list(rec.file_name) != [s.file_name for s in header.signals]:
            problems.append("signal file names")
        if any(float(rec.adc_gain[ch]) != number_or_nan(header.signals[ch].gain_text) for ch in channels):
            problems.append("gains")
    if problems:
        raise RecordError(RejectReason.HEADER_MISMATCH,
                          f"record {record_id}: wfdb reads the {' and '.join(problems)} of {header.path} "
                          "differently from its text")


def _check_checksums(rec: wfdb.Record, channels: list[int], record_id: str) -> None:
    """WFDB headers may carry a 16-bit checksum of each signal's digital samples: verify it."""
    if not rec.checksum:
        return
    for ch in channels:
        expected = rec.checksum[ch]
        if expected is None:
            continue
        got = int(np.sum(rec.d_signal[:, ch], dtype=np.int64))
        if (got - int(expected)) % 0x10000:  # writers differ: signed or unsigned 16-bit sums
            raise RecordError(RejectReason.HEADER_MISMATCH,
                              f"record {record_id}: lead {rec.sig_name[ch]} checksum {got & 0xFFFF} != "
                              f"header's {int(expected) & 0xFFFF} (16-bit sums)")


def read_wfdb(base: str, record_id: str | None = None, patient_id: str | None = None,
              labels: dict[str, float] | None = None, meta: dict[str, object] | None = None,
              root: str | os.PathLike | None = None, max_seconds: float | None = None) -> ECGRecord:
    """Read the WFDB record at ``base`` (path without extension) as an (8, T) millivolt ECGRecord.

    Before wfdb reads anything, the header's text is parsed and checked (:mod:`.wfdb_header`): the rate and
    the gains of the used leads must be real values, and every file (header, signal files, segments) must be a
    regular file inside ``root`` and as long as the header claims.

    Args:
        base: the record's path without extension (``.hea``, ``.dat`` or ``.mat`` are stripped if given).
        record_id: default: the file name.
        patient_id, labels, meta: carried into the record (no patient id: the record is its own patient).
        root: the input folder every file must resolve inside (default: the record's own folder).
        max_seconds: read at most this many seconds (plus :data:`READ_MARGIN_SECONDS`, so that resampling and
            filtering see the same neighbourhood at the end of what is kept); None reads the whole record.
            The header's checksums can be verified only when the whole record is read.

    Raises:
        RecordError: unreadable, unsafe file, truncated, header mismatch, missing leads, bad sampling rate,
            bad gain, too short (no samples).
    """
    base = str(base)
    for ext in (".hea", *_SIGNAL_EXTS):
        if base.endswith(ext):
            base = base[: -len(ext)]
    record_id = record_id or os.path.basename(base)
    folder = os.path.dirname(base) or "."
    root_path = input_root(root) if root is not None else input_root(folder)
    header = read_header(base + ".hea", root_path, record_id)
    if header.segments:
        sig_len = _check_segments(header, folder, root_path, record_id)
    else:
        idx = lead_indices([s.name for s in header.signals], record_id)
        check_gains(header, idx, record_id)
        sig_len = check_signal_files(header, folder, root_path, record_id)
    if sig_len == 0:
        raise RecordError(RejectReason.TOO_SHORT, f"record {record_id}: header {base}.hea gives 0 samples")
    sampto = sig_len if max_seconds is None else min(sig_len, math.ceil((max_seconds + READ_MARGIN_SECONDS)
                                                                        * header.fs))
    name = os.path.basename(base)
    read_base = base
    if header.name != name and header.name.lower() in {name.lower() + e for e in _SIGNAL_EXTS}:
        read_base = _fixed_header_copy(base, name)  # the CinC 2020 Georgia quirk: "E00001.mat" as record name
    try:
        try:
            rec = wfdb.rdrecord(read_base, physical=False, sampto=sampto)
        except Exception as exc:  # wfdb raises many types for damaged files
            raise RecordError(RejectReason.UNREADABLE, f"record {record_id}: wfdb cannot read it: "
                                                       f"{type(exc).__name__}: {exc}") from exc
        idx = lead_indices(rec.sig_name or [], record_id)
        _check_read_as_written(rec, header, idx, record_id)
        if rec.d_signal is None or rec.d_signal.shape != (sampto, rec.n_sig):
            got = None if rec.d_signal is None else rec.d_signal.shape
            raise RecordError(RejectReason.HEADER_MISMATCH,
                              f"record {record_id}: signal shape {got} != header's ({sampto}, {rec.n_sig})")
        if sampto == sig_len:
            _check_checksums(rec, idx, record_id)
        # digital -> mV; wfdb maps each format's "missing sample" code to NaN here.
        physical = rec.dac(expanded=False, return_res=64)
    finally:
        if read_base != base:
            shutil.rmtree(os.path.dirname(read_base), ignore_errors=True)
    signal = np.ascontiguousarray(physical[:, idx].T, dtype=np.float32)
    units = {u.lower() for u in np.asarray(rec.units)[idx] if u}
    if units and units - {"mv"}:
        scale = {"uv": 1e-3, "µv": 1e-3, "v": 1e3}
        for i, ch in enumerate(idx):
            signal[i] *= scale.get(str(rec.units[ch]).lower(), 1.0)
    return ECGRecord(record_id=record_id, patient_id=patient_id or record_id, signal=signal, fs=float(rec.fs),
                     source=base, labels=dict(labels or {}),
                     meta={"patient_id_known": patient_id is not None, **(meta or {})})


def find_headers(root: str) -> list[str]:
    """All ``.hea`` files under ``root`` (or ``root`` itself), sorted, as base paths without extension."""
    p = Path(root)
    if p.is_file() or p.with_suffix(".hea").is_file() and not p.is_dir():
        return [str(p.with_suffix(""))]
    return sorted(str(h.with_suffix("")) for h in p.rglob("*.hea"))


class WFDBReader(Reader):
    """Any folder of WFDB records (searched recursively), or one record. Record id: the record's name.

    Args:
        root: folder or record path.
        patient_ids: optional record id -> patient id map (e.g. from ``--patients FILE.csv``).
    """

    format_name = "wfdb"

    def __init__(self, root: str, patient_ids: dict[str, str] | None = None):
        self.root = str(root)
        self.patient_ids = dict(patient_ids or {})
        self.input_root = input_root(self.root if os.path.exists(self.root) else self.root + ".hea")

    def items(self) -> Iterator[SourceItem]:
        for base in find_headers(self.root):
            rid = os.path.basename(base)
            yield SourceItem(record_id=rid, locator=base, patient_id=self.patient_ids.get(rid))

    def read(self, item: SourceItem) -> ECGRecord:
        return read_wfdb(item.locator, item.record_id, item.patient_id, item.labels, item.meta,
                         root=self.input_root, max_seconds=self.max_seconds)

    def input_paths(self) -> list[str]:
        return [self.root if os.path.exists(self.root) else self.root + ".hea"]

    def describe(self) -> str:
        return f"{self.format_name} ({self.root})"
