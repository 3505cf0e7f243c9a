"""What an encoder was pretrained on, so that evaluation can refuse to score patients it has already seen.

A checkpoint carries ``provenance.json``: the pretraining store's fingerprint (a hash of its records, their
checksums and splits), the splits read, how many records and patients they hold, and one SHA-256 of the sorted
patient ids (never the ids). :func:`leakage_check` compares that with the evaluation store:

- same store (same fingerprint): the patients pretraining saw are known exactly (the splits it read); scoring
  any of them as a test patient is refused;
- another store whose full patient set, or test patient set, hashes to what pretraining saw: pretraining saw
  the test patients; refused;
- otherwise (an encoder pretrained elsewhere, or no provenance): overlap cannot be known, and the report says so.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np

from ..data.store import ECGStore

PROVENANCE_VERSION = 1


def store_fingerprint(store: ECGStore) -> str:
    """SHA-256 (hex, 16 chars) of the store's records: record id, sample checksum and split, in manifest order."""
    m = store.manifest
    h = hashlib.sha256()
    for rid, chk, split in zip(m["record_id"].astype(str), m["checksum"].astype(str), m["split"].astype(str),
                               strict=True):
        h.update(f"{rid}\t{chk}\t{split}\n".encode())
    return h.hexdigest()[:16]


def patient_set_hash(patient_ids: Iterable[str]) -> str:
    """SHA-256 (hex) of the sorted distinct patient ids: equal sets, equal hashes; the ids cannot be read back."""
    h = hashlib.sha256()
    for pid in sorted({str(p) for p in patient_ids}):
        h.update(pid.encode() + b"\n")
    return h.hexdigest()


def pretraining_provenance(store: ECGStore, splits: Sequence[str], rows: np.ndarray) -> dict:
    """The provenance record of pretraining on store rows ``rows`` (of ``splits``)."""
    patients = np.asarray(store.patient_ids)[rows]
    return {"version": PROVENANCE_VERSION, "store_fingerprint": store_fingerprint(store), "splits": list(splits),
            "n_records": int(len(rows)), "n_patients": int(len(np.unique(patients))),
            "patients_sha256": patient_set_hash(patients)}


def leakage_check(provenance: dict | None, store: ECGStore, test_rows: np.ndarray) -> tuple[str, str]:
    """(status, sentence for the report): status "clean", "unknown" or "leak".

    "leak" means the encoder was pretrained on some of ``test_rows``' patients; the caller refuses to score.
    """
    if not provenance:
        return "unknown", ("the checkpoint carries no record of its pretraining data (made elsewhere or by an "
                           "older ecgfast): overlap with the test patients cannot be checked")
    test_patients = set(np.asarray(store.patient_ids)[test_rows].astype(str))
    if provenance.get("store_fingerprint") == store_fingerprint(store):
        seen_rows = np.concatenate([store.split_indices(s) for s in provenance.get("splits", [])] or [np.zeros(0, int)])
        seen = set(np.asarray(store.patient_ids)[seen_rows].astype(str))
        overlap = len(seen & test_patients)
        if overlap:
            return "leak", (f"the encoder was pretrained on splits {provenance['splits']} of this store, which hold "
                            f"{overlap} of the {len(test_patients)} test patients")
        return "clean", (f"pretrained on splits {provenance['splits']} of this store ({provenance['n_patients']} "
                         f"patients): no test patient among them")
    digest = provenance.get("patients_sha256")
    if digest in (patient_set_hash(store.patient_ids), patient_set_hash(test_patients)):
        return "leak", ("the encoder was pretrained on a corpus with exactly this store's patients, test patients "
                        "included")
    return "unknown", (f"pretrained on another store ({provenance.get('n_patients', '?')} patients, fingerprint "
                       f"{provenance.get('store_fingerprint', '?')}): overlap with the test patients cannot be checked")


__all__ = ["leakage_check", "patient_set_hash", "pretraining_provenance", "store_fingerprint"]
