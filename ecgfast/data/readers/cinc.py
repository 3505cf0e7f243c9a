"""PhysioNet/Computing in Cardiology Challenge 2020/2021 folders: WFDB headers with ``# Age:``,
``# Sex:`` and ``# Dx:`` comment lines. SNOMED-CT codes of ``# Dx:`` become binary labels ``dx:<code>``."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from ..record import ECGRecord, RecordError
from .base import SourceItem
from .input_files import check_input_file
from .wfdb_header import MAX_HEADER_BYTES
from .wfdb_record import WFDBReader, read_wfdb

_COMMENT = re.compile(r"^\s*#?\s*(Age|Sex|Dx)\s*:\s*(.*?)\s*$", re.IGNORECASE)


def parse_cinc_comments(lines: list[str]) -> tuple[dict[str, float], dict[str, object]]:
    """(labels, meta) from header comment lines: ``Dx: 426177001,164934002`` -> ``{"dx:426177001": 1, ...}``.

    Age "NaN"/"Unknown" and sex "Unknown" are left out rather than stored as values.
    """
    labels: dict[str, float] = {}
    meta: dict[str, object] = {}
    for line in lines:
        m = _COMMENT.match(line)
        if not m:
            continue
        key, value = m.group(1).lower(), m.group(2)
        if key == "dx":
            for code in re.split(r"[,\s]+", value):
                if code.isdigit():
                    labels[f"dx:{code}"] = 1.0
        elif key == "age":
            try:
                age = float(value)
            except ValueError:
                continue
            if age == age and age >= 0:  # drops NaN
                meta["age"] = age
        elif key == "sex" and value.lower() in {"male", "female", "m", "f"}:
            meta["sex"] = "male" if value.lower().startswith("m") else "female"
    return labels, meta


def _header_comments(base: str, root: Path | None = None) -> list[str]:
    """The ``#`` lines of ``base.hea``. Raises OSError for a header that is missing, not a regular file inside
    ``root`` (a FIFO would block here) or larger than any header."""
    try:
        real = check_input_file(base + ".hea", root, os.path.basename(base), "header")
    except RecordError as exc:
        raise OSError(exc.message) from exc
    if os.path.getsize(real) > MAX_HEADER_BYTES:
        raise OSError(f"{base}.hea: larger than any header")
    with open(real, encoding="latin-1") as f:
        return [ln for ln in f.read().splitlines() if ln.lstrip().startswith("#")]


class CinCReader(WFDBReader):
    """A CinC 2020/2021 challenge folder (any depth). Labels ``dx:<SNOMED code>``; meta ``age``, ``sex``."""

    format_name = "cinc"

    def items(self) -> Iterator[SourceItem]:
        for item in super().items():
            try:
                labels, meta = parse_cinc_comments(_header_comments(item.locator, self.input_root))
            except OSError:
                labels, meta = {}, {}  # read() reports the unreadable header with its reason
            item.labels, item.meta = labels, meta
            yield item

    def read(self, item: SourceItem) -> ECGRecord:
        return read_wfdb(item.locator, item.record_id, item.patient_id, item.labels, item.meta,
                         root=self.input_root, max_seconds=self.max_seconds)


def looks_like_cinc(root: str) -> bool:
    """True when the first header found under ``root`` carries a ``# Dx:`` comment line."""
    from .wfdb_record import find_headers

    heads = find_headers(root)
    try:
        comments = _header_comments(heads[0]) if heads else []
    except OSError:
        return False
    return any(_COMMENT.match(c) and "dx" in c.lower() for c in comments)
