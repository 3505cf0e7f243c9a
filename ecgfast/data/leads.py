"""Map a source's lead names onto ecgfast's 8 leads (I, II, V1..V6). Nothing missing is derived."""

from __future__ import annotations

import re
from collections.abc import Sequence

from ecgfast import LEADS

from .record import RecordError, RejectReason

# Spellings seen in public corpora, after normalisation (upper case, no spaces, "LEAD" prefix dropped).
# MLI/MLII are the modified limb leads of Holter-style records: the same electrode axis as I/II.
_ALIASES = {
    "I": "I", "DI": "I", "D1": "I", "MLI": "I", "L1": "I",
    "II": "II", "DII": "II", "D2": "II", "MLII": "II", "L2": "II",
    **{f"V{i}": f"V{i}" for i in range(1, 7)},
    **{f"C{i}": f"V{i}" for i in range(1, 7)},  # European chest-lead naming
}


def normalise_lead_name(name: str) -> str:
    """Canonical form of a lead name: ``" lead ii "`` -> ``"II"``, ``"v1"`` -> ``"V1"``, ``"aVR"`` -> ``"AVR"``."""
    s = re.sub(r"[\s_\-]", "", str(name)).upper()
    if s.startswith("LEAD") and len(s) > 4:
        s = s[4:]
    return _ALIASES.get(s, s)


def lead_indices(names: Sequence[str], record_id: str) -> list[int]:
    """Indices into ``names`` of I, II, V1..V6, in that order.

    Raises:
        RecordError(MISSING_LEADS): a needed lead is absent (named in the message).
        RecordError(HEADER_MISMATCH): a needed lead appears twice, so which one to use is ambiguous.
    """
    canon = [normalise_lead_name(n) for n in names]
    out: list[int] = []
    missing: list[str] = []
    for lead in LEADS:
        hits = [i for i, c in enumerate(canon) if c == lead]
        if not hits:
            missing.append(lead)
        elif len(hits) > 1:
            raise RecordError(RejectReason.HEADER_MISMATCH,
                              f"record {record_id}: lead {lead} appears {len(hits)} times in {list(names)}")
        else:
            out.append(hits[0])
    if missing:
        raise RecordError(RejectReason.MISSING_LEADS,
                          f"record {record_id}: missing lead(s) {', '.join(missing)}; has {list(names)}")
    return out
