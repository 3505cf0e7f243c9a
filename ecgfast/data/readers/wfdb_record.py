"""Read one WFDB record (.hea with .dat/.mat signal files, any format wfdb reads) into an ECGRecord.

Beyond ``wfdb.rdrecord`` this checks what real corpora get wrong, each with its own reject reason:
signal files shorter than the header says (truncated), longer than it says or failing the header's
per-signal checksums (header mismatch), missing leads. Known header quirks with an unambiguous meaning
are repaired on a temporary copy of the header, never in the user's files.
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
from wfdb.io._signal import BYTES_PER_SAMPLE

from ..leads import lead_indices
from ..record import ECGRecord, RecordError, RejectReason
from .base import Reader, SourceItem

_SIGNAL_EXTS = (".mat", ".dat")


def _read_after_failure(base: str, record_id: str, error: Exception) -> tuple[wfdb.Record, str]:
    """``wfdb.rdrecord`` failed: find out why (for the reject reason), or repair a known header quirk.

    Returns (record, base path it was read from) when the CinC 2020 Georgia quirk (a record line naming
    ``E00001.mat`` instead of ``E00001``) was repaired on a temporary copy of the header; raises otherwise.
    """
    hea = base + ".hea"
    try:
        header = wfdb.rdheader(base)
    except Exception as exc:  # wfdb raises several types for malformed headers
        try:
            with open(hea, encoding="latin-1") as f:
                lines = f.read().splitlines()
        except OSError as os_exc:
            raise RecordError(RejectReason.UNREADABLE, f"record {record_id}: cannot read {hea}: {os_exc}") from exc
        head = lines[0].split() if lines else []
        name = os.path.basename(base)
        if head and head[0].lower() in {name.lower() + e for e in _SIGNAL_EXTS}:
            fixed_base = _fixed_header_copy(base, lines, name)
            try:
                return wfdb.rdrecord(fixed_base, physical=False), fixed_base
            except Exception as fixed_exc:  # classify it (truncated?) on the repaired header, then clean up
                try:
                    _check_signal_files(wfdb.rdheader(fixed_base), fixed_base, record_id)
                finally:
                    shutil.rmtree(os.path.dirname(fixed_base), ignore_errors=True)
                error = fixed_exc
        else:
            raise RecordError(RejectReason.UNREADABLE, f"record {record_id}: cannot parse header {hea}: "
                                                       f"{type(exc).__name__}: {exc}") from exc
    else:
        lead_indices(header.sig_name or [], record_id)
        _check_signal_files(header, base, record_id)
    raise RecordError(RejectReason.UNREADABLE,
                      f"record {record_id}: wfdb cannot read the signal: {type(error).__name__}: {error}") from error


def _fixed_header_copy(base: str, lines: list[str], name: str) -> str:
    """Copy of the header with the record line's name fixed, in a temporary folder beside links to the
    signal files; returns its base path. The caller removes the folder."""
    tmp = tempfile.mkdtemp(prefix="ecgfast-hea-")
    fields = lines[0].split()
    fields[0] = name
    Path(tmp, name + ".hea").write_text("\n".join([" ".join(fields)] + lines[1:]) + "\n")
    for ext in _SIGNAL_EXTS:
        if os.path.exists(base + ext):
            os.symlink(os.path.abspath(base + ext), os.path.join(tmp, name + ext))
    return os.path.join(tmp, name)


def _check_signal_files(header: wfdb.Record, base: str, record_id: str) -> None:
    """Compare each signal file's size with what the header's formats, channels and length require."""
    if getattr(header, "n_seg", None):  # multi-segment: sizes are per segment, wfdb checks those
        return
    folder = os.path.dirname(base)
    per_file: dict[str, list[tuple[str, int]]] = {}
    for fname, fmt, off in zip(header.file_name, header.fmt, header.byte_offset or [None] * header.n_sig, strict=False):
        per_file.setdefault(fname, []).append((fmt, off or 0))
    for fname, sigs in per_file.items():
        path = os.path.join(folder, fname)
        if not os.path.exists(path):
            raise RecordError(RejectReason.UNREADABLE, f"record {record_id}: signal file {path} not found")
        fmts = {f for f, _ in sigs}
        if len(fmts) != 1 or BYTES_PER_SAMPLE.get(next(iter(fmts)), 0) == 0:
            continue  # mixed or compressed (FLAC) formats: sizes not predictable, wfdb validates
        offset = sigs[0][1]
        need = offset + math.ceil(len(sigs) * header.sig_len * BYTES_PER_SAMPLE[next(iter(fmts))])
        have = os.path.getsize(path)
        if have < need:
            raise RecordError(RejectReason.TRUNCATED,
                              f"record {record_id}: {fname} has {have} bytes, header needs {need} "
                              f"({len(sigs)} signals x {header.sig_len} samples)")
        frame = math.ceil(len(sigs) * BYTES_PER_SAMPLE[next(iter(fmts))])
        if have >= need + frame:
            raise RecordError(RejectReason.HEADER_MISMATCH,
                              f"record {record_id}: {fname} has {have} bytes, header declares only {need} "
                              f"({len(sigs)} signals x {header.sig_len} samples)")


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
              labels: dict[str, float] | None = None, meta: dict[str, object] | None = None) -> ECGRecord:
    """Read the WFDB record at ``base`` (path without extension) as an (8, T) millivolt ECGRecord.

    Raises:
        RecordError: unreadable, truncated, header mismatch, missing leads or bad sampling rate.
    """
    base = str(base)
    for ext in (".hea", *_SIGNAL_EXTS):
        if base.endswith(ext):
            base = base[: -len(ext)]
    record_id = record_id or os.path.basename(base)
    if not os.path.exists(base + ".hea"):
        raise RecordError(RejectReason.UNREADABLE, f"record {record_id}: header {base}.hea not found")
    read_base = base
    try:
        try:  # the common case parses the header once (wfdb's header parsing dominates read time)
            rec = wfdb.rdrecord(base, physical=False)
        except Exception as exc:
            rec, read_base = _read_after_failure(base, record_id, exc)
        idx = lead_indices(rec.sig_name or [], record_id)
        if not rec.fs or rec.fs <= 0:
            raise RecordError(RejectReason.BAD_SAMPLING_RATE, f"record {record_id}: sampling rate {rec.fs!r}")
        _check_signal_files(rec, read_base, record_id)  # a file longer than its header says
        if rec.d_signal is None or rec.d_signal.shape != (rec.sig_len, rec.n_sig):
            got = None if rec.d_signal is None else rec.d_signal.shape
            raise RecordError(RejectReason.HEADER_MISMATCH,
                              f"record {record_id}: signal shape {got} != header's ({rec.sig_len}, {rec.n_sig})")
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

    def items(self) -> Iterator[SourceItem]:
        for base in find_headers(self.root):
            rid = os.path.basename(base)
            yield SourceItem(record_id=rid, locator=base, patient_id=self.patient_ids.get(rid))

    def read(self, item: SourceItem) -> ECGRecord:
        return read_wfdb(item.locator, item.record_id, item.patient_id, item.labels, item.meta)

    def describe(self) -> str:
        return f"{self.format_name} ({self.root})"
