"""The text of a WFDB header, parsed and checked before wfdb opens any signal file.

wfdb replaces header values it cannot use without a word: a sampling rate of ``-500`` or ``nan`` is read as
250 Hz (the record is then stretched), a gain of ``0`` or ``nan`` as 200 (the WFDB default for "uncalibrated"),
``1e9`` Hz as 1 Hz. This module parses the record line and the signal lines itself, following the header format
(https://physionet.org/physiotools/wag/header-5.htm), rejects such values with a reason, and names every file
the record needs, so that each can be checked (a regular file inside the input, as long as the header claims)
before a byte of it is read.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from wfdb.io._signal import BYTES_PER_SAMPLE

from ..leads import normalise_lead_name
from ..record import RecordError, RejectReason
from .input_files import check_input_file

#: larger than any real header (a 12-lead header is under 2 kB); a bigger file is not read
MAX_HEADER_BYTES = 1 << 20
#: plausible gains in ADC units per millivolt: one step between 1 mV and 0.1 nV
GAIN_PER_MV = (1.0, 1e7)
#: millivolts per physical unit of a signal line
_MV_PER_UNIT = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "v": 1e3}
_DECIMAL = re.compile(r"^(\d+\.?\d*|\.\d+)$")  # the WFDB form of a rate: no sign, exponent, nan or inf
_FORMAT = re.compile(r"^(\d+)(?:x(\d+))?(?::(\d+))?(?:\+(\d+))?$")
_GAIN = re.compile(r"^([^(/]*)(?:\(([^)]*)\))?(?:/(.*))?$")


@dataclass
class SignalLine:
    """One signal line: the file it lives in and the fields wfdb would otherwise take on trust."""

    file_name: str
    fmt: str
    samples_per_frame: int
    byte_offset: int
    gain_text: str | None  # None when the line has no gain field
    units: str
    name: str


@dataclass
class HeaderText:
    """The record line and signal (or segment) lines of one header."""

    path: Path
    name: str
    n_sig: int
    fs_text: str | None
    sig_len: int | None
    signals: list[SignalLine] = field(default_factory=list)
    segments: list[str] = field(default_factory=list)  # multi-segment records: segment names ("~" = gap)

    @property
    def fs(self) -> float:
        return float(self.fs_text.split("/")[0]) if self.fs_text else float("nan")


def number_or_nan(text: str) -> float:
    """``float(text)``, or NaN where it is not a number."""
    try:
        return float(text)
    except ValueError:
        return float("nan")


def read_header(path: str | os.PathLike, root: Path | None, record_id: str) -> HeaderText:
    """Check ``path`` (a regular file inside ``root``, at most :data:`MAX_HEADER_BYTES`) and parse it.

    Raises:
        RecordError: UNREADABLE (missing, unparsable), UNSAFE_FILE (see :func:`check_input_file`),
            BAD_SAMPLING_RATE (a rate that is missing, not a number, not finite or not positive).
    """
    real = check_input_file(path, root, record_id, "header")
    size = os.path.getsize(real)
    if size > MAX_HEADER_BYTES:
        raise RecordError(RejectReason.UNREADABLE, f"record {record_id}: header {path} has {size} bytes, more than "
                                                   f"any WFDB header ({MAX_HEADER_BYTES} at most); not read")
    with open(real, encoding="latin-1") as f:
        lines = [ln.strip() for ln in f.read().splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    return parse_header(lines, Path(path), record_id)


def parse_header(lines: list[str], path: Path, record_id: str) -> HeaderText:
    """Parse a header's non-comment lines (see :func:`read_header`)."""
    def bad(what: str) -> RecordError:
        return RecordError(RejectReason.UNREADABLE, f"record {record_id}: cannot parse header {path}: {what}")

    if not lines:
        raise bad("no record line")
    head = lines[0].split()
    if len(head) < 2 or not head[1].isdigit():
        raise bad(f"record line {lines[0][:80]!r} has no signal count")
    name, _, n_seg = head[0].partition("/")
    fs_text = head[2] if len(head) > 2 else None
    header = HeaderText(path=path, name=name, n_sig=int(head[1]), fs_text=fs_text, sig_len=None)
    fs = header.fs
    if fs_text is None or not _DECIMAL.match(fs_text.split("/")[0]) or not math.isfinite(fs) or fs <= 0:
        raise RecordError(RejectReason.BAD_SAMPLING_RATE,
                          f"record {record_id}: header {path} gives sampling rate {fs_text!r} "
                          "(missing, not a positive decimal number; wfdb would read another rate or 250 Hz)")
    if len(head) > 3:
        if not head[3].isdigit():
            raise bad(f"sample count {head[3]!r} is not a whole number")
        header.sig_len = int(head[3])
    body = lines[1:]
    if n_seg:
        if not n_seg.isdigit() or len(body) < int(n_seg):
            raise bad(f"record line promises {n_seg!r} segments, {len(body)} lines follow")
        header.segments = [ln.split()[0] for ln in body[: int(n_seg)]]
        return header
    if len(body) < header.n_sig:
        raise bad(f"record line promises {header.n_sig} signals, {len(body)} signal lines follow")
    for ln in body[: header.n_sig]:
        tokens = ln.split()
        fmt = _FORMAT.match(tokens[1]) if len(tokens) > 1 else None
        if fmt is None:
            raise bad(f"signal line {ln[:80]!r} has no valid format field")
        gain = _GAIN.match(tokens[2]) if len(tokens) > 2 else None
        header.signals.append(SignalLine(
            file_name=tokens[0], fmt=fmt.group(1), samples_per_frame=int(fmt.group(2) or 1),
            byte_offset=int(fmt.group(4) or 0), gain_text=gain.group(1) if gain else None,
            units=(gain.group(3) or "mV") if gain else "mV", name=" ".join(tokens[8:])))
    return header


def check_gains(header: HeaderText, channels: list[int], record_id: str) -> None:
    """Reject a used lead whose gain is missing, zero, negative, not finite, or outside :data:`GAIN_PER_MV`.

    wfdb turns a missing, zero or unparsable gain into 200 ADC units per unit, the WFDB convention for an
    uncalibrated signal: its millivolts would be invented.
    """
    for ch in channels:
        sig = header.signals[ch]
        gain = number_or_nan(sig.gain_text) if sig.gain_text not in (None, "") else float("nan")
        per_mv = gain / _MV_PER_UNIT.get(sig.units.lower(), 1.0)
        if not math.isfinite(gain) or gain <= 0 or not GAIN_PER_MV[0] <= per_mv <= GAIN_PER_MV[1]:
            lead = normalise_lead_name(sig.name)
            raise RecordError(RejectReason.BAD_GAIN,
                              f"record {record_id}: lead {lead} has gain {sig.gain_text!r} in {header.path} "
                              f"(missing, zero or not a number means uncalibrated; a gain must lie within "
                              f"{GAIN_PER_MV[0]:g} to {GAIN_PER_MV[1]:g} ADC units per mV)")


def check_signal_files(header: HeaderText, folder: str, root: Path | None, record_id: str) -> int:
    """Check every signal file of a single-segment header before it is read; return the record's length.

    Each file must be a regular file inside ``root`` whose size is what the header's formats, channels and
    length need (a sparse file matching a header that claims 10^9 samples passes: the caller then reads at
    most what it keeps). A header without a sample count gets it from the size of its first file.

    Raises:
        RecordError: UNREADABLE or UNSAFE_FILE (see :func:`check_input_file`), TRUNCATED (file shorter than
            the header says), HEADER_MISMATCH (longer, or no length to be found).
    """
    per_file: dict[str, list[SignalLine]] = {}
    for sig in header.signals:
        per_file.setdefault(sig.file_name, []).append(sig)
    sig_len = header.sig_len
    for fname, sigs in per_file.items():
        path = os.path.join(folder, fname)
        real = check_input_file(path, root, record_id, "signal file")
        fmts = {s.fmt for s in sigs}
        per_sample = BYTES_PER_SAMPLE.get(next(iter(fmts)), 0) if len(fmts) == 1 else 0
        if per_sample == 0:
            continue  # mixed or compressed (FLAC) formats: sizes not predictable, wfdb validates them
        offset, frame = sigs[0].byte_offset, sum(s.samples_per_frame for s in sigs) * per_sample
        have = os.path.getsize(real)
        if sig_len is None:
            sig_len = int((have - offset) // frame)
        need = offset + math.ceil(frame * sig_len)
        if have < need:
            raise RecordError(RejectReason.TRUNCATED,
                              f"record {record_id}: {fname} has {have} bytes, header needs {need} "
                              f"({len(sigs)} signals x {sig_len} samples)")
        if have >= need + math.ceil(frame):
            raise RecordError(RejectReason.HEADER_MISMATCH,
                              f"record {record_id}: {fname} has {have} bytes, header declares only {need} "
                              f"({len(sigs)} signals x {sig_len} samples)")
    if sig_len is None:
        raise RecordError(RejectReason.HEADER_MISMATCH,
                          f"record {record_id}: header {header.path} gives no sample count and its signal files "
                          "are compressed; the length cannot be known before reading")
    return sig_len
