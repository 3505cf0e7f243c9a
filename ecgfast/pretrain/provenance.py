"""What an encoder was pretrained on, so that evaluation can refuse to score patients or records it has seen.

Every checkpoint carries its :class:`Provenance`:

- ``provenance.json``: the stores read (each one's content fingerprint, splits, counts, sampling rate, unit and
  record length), a random per-run salt, and how the keys below were made. Never an id.
- ``pretrained_on.npz``: two sorted arrays of 64-bit keyed hashes: one per distinct patient key (the manifest's
  ``"<namespace>:<patient_id>"``) and one per distinct record checksum (the hash of its int16 samples) pretraining
  read. Each is the first 8 bytes of BLAKE2b keyed with the run's salt (``person`` tells the two kinds apart).
  Cost: at most 16 bytes per pretraining ECG (16 MB per checkpoint at a million ECGs); hashing a million ids
  takes about a second.

:func:`leakage_check` hashes the evaluation's test patients and test records with the checkpoint's salt and
refuses any intersection, saying how many: so the same data re-split (another split rule, another store folder)
cannot slip test patients past it. A false match needs a 64-bit collision: about 5e-9 for a million pretraining
keys against a hundred thousand test keys. The salt makes keys of two runs unlinkable and defeats precomputed
tables; it does not hide ids from someone who holds the checkpoint and can enumerate candidate ids (small
integer ids can be tried one by one), so a checkpoint is shared as the data it was trained on would be.

A resumed run keeps its salt and accumulates: its provenance lists every store it ever read and its keys are the
union of all of them (:func:`merge`). Checkpoints of older ecgfast (provenance version 1: one store fingerprint and
one SHA-256 of the patient set) are still checked by that weaker rule.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.store import ECGStore

PROVENANCE_VERSION = 2
JSON_NAME = "provenance.json"
KEYS_NAME = "pretrained_on.npz"
KEY_SCHEME = "blake2b-64 keyed with the run's salt"


def store_fingerprint(store: ECGStore) -> str:
    """SHA-256 (hex, 16 chars) of the store's records: record id, sample checksum and split, in manifest order."""
    return store.fingerprint()


def keyed_hashes(values: Iterable[str], salt: str, kind: str) -> np.ndarray:
    """Sorted distinct uint64 keyed hashes of ``values`` (``kind``: "patient" or "record" keeps them apart)."""
    key, person = bytes.fromhex(salt), kind.encode()[:16]
    out = np.fromiter((int.from_bytes(hashlib.blake2b(str(v).encode(), digest_size=8, key=key, person=person)
                                      .digest(), "little") for v in set(map(str, values))), dtype=np.uint64)
    return np.sort(out)


@dataclass
class Provenance:
    """The pretraining data of a checkpoint: ``info`` (JSON-able, no ids) and the two key arrays (uint64, sorted)."""

    info: dict
    patient_keys: np.ndarray
    record_keys: np.ndarray

    @property
    def salt(self) -> str:
        return self.info["salt"]

    def save(self, folder: Path) -> None:
        """Write ``provenance.json`` and ``pretrained_on.npz`` into ``folder`` (a checkpoint's temporary folder)."""
        (folder / JSON_NAME).write_text(json.dumps(self.info, indent=2, sort_keys=True) + "\n")
        with open(folder / KEYS_NAME, "wb") as f:
            np.savez(f, patients=self.patient_keys, records=self.record_keys)


def source_of(store: ECGStore, splits: Sequence[str], rows: np.ndarray) -> dict:
    """One store's entry in a provenance: what was read from it, by content, without ids."""
    return {"store_fingerprint": store_fingerprint(store), "splits": list(splits), "n_records": int(len(rows)),
            "n_patients": int(len(np.unique(np.asarray(store.patient_ids)[rows]))), "fs": store.fs,
            "units": store.units, "n_samples": store.n_samples}


def pretraining_provenance(store: ECGStore, splits: Sequence[str], rows: np.ndarray,
                           salt: str | None = None) -> Provenance:
    """The provenance of pretraining on store rows ``rows`` (of ``splits``); a new salt unless one is given."""
    salt = salt or secrets.token_hex(16)
    patients = np.asarray(store.patient_ids)[rows]
    checksums = store.manifest["checksum"].to_numpy()[rows]
    info = {"version": PROVENANCE_VERSION, "salt": salt, "key_scheme": KEY_SCHEME,
            "sources": [source_of(store, splits, rows)]}
    return Provenance(info, keyed_hashes(patients, salt, "patient"), keyed_hashes(checksums, salt, "record"))


def merge(previous: Provenance | None, current: Provenance) -> Provenance:
    """``current`` with everything ``previous`` (the same run's earlier checkpoint) read: sources and keys unite.

    Raises:
        ValueError: the two were hashed with different salts (not one run).
    """
    if previous is None:
        return current
    if previous.salt != current.salt:
        raise ValueError("provenances of two runs (different salts) cannot be merged")
    sources = list(previous.info["sources"])
    sources += [s for s in current.info["sources"] if s not in sources]
    return Provenance({**current.info, "sources": sources},
                      np.union1d(previous.patient_keys, current.patient_keys).astype(np.uint64),
                      np.union1d(previous.record_keys, current.record_keys).astype(np.uint64))


def load_provenance(ckpt: str | Path) -> Provenance | dict | None:
    """A checkpoint folder's provenance: a :class:`Provenance`, the dict of a version-1 checkpoint, or None.

    Raises:
        ValueError: ``provenance.json`` or ``pretrained_on.npz`` is unreadable or inconsistent (named).
    """
    folder = Path(ckpt)
    file = folder / JSON_NAME
    if not file.is_file():
        return None
    try:
        info = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{file}: unreadable: {exc}") from exc
    if not isinstance(info, dict):
        raise ValueError(f"{file}: not a provenance record")
    if info.get("version", 1) < 2:
        return info
    try:
        with np.load(folder / KEYS_NAME, allow_pickle=False) as z:
            return Provenance(info, z["patients"].astype(np.uint64), z["records"].astype(np.uint64))
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{folder / KEYS_NAME}: unreadable pretraining keys: {exc}") from exc


def leakage_check(provenance: Provenance | dict | None, store: ECGStore, test_rows: np.ndarray) -> tuple[str, str]:
    """(status, sentence for the report): status "clean", "unknown" or "leak".

    "leak" means the encoder was pretrained on some of ``test_rows``' patients or records; the caller refuses to
    score. The sentence gives counts, never ids.
    """
    if provenance is None:
        return "unknown", ("the checkpoint carries no record of its pretraining data (made elsewhere or by an "
                           "older ecgfast): overlap with the test patients cannot be checked")
    if isinstance(provenance, dict):
        return _leakage_check_v1(provenance, store, test_rows)
    test_patients = np.asarray(store.patient_ids)[test_rows]
    test_checksums = store.manifest["checksum"].to_numpy()[test_rows]
    p_test = keyed_hashes(test_patients, provenance.salt, "patient")
    r_test = keyed_hashes(test_checksums, provenance.salt, "record")
    p_seen = int(np.isin(p_test, provenance.patient_keys).sum())
    r_seen = int(np.isin(r_test, provenance.record_keys).sum())
    pretrained = (f"{len(provenance.patient_keys)} patients and {len(provenance.record_keys)} records of "
                  f"{len(provenance.info['sources'])} store(s)")
    if p_seen or r_seen:
        return "leak", (f"the encoder was pretrained on {p_seen} of the {len(p_test)} test patients and {r_seen} of "
                        f"the {len(r_test)} test records (keyed hashes of patient keys and record checksums)")
    return "clean", (f"pretrained on {pretrained}: none of the {len(p_test)} test patients or {len(r_test)} test "
                     "records among them (checked by keyed hashes)")


def _leakage_check_v1(provenance: dict, store: ECGStore, test_rows: np.ndarray) -> tuple[str, str]:
    """The rule of version-1 provenance (one store fingerprint, one hash of the whole patient set)."""
    test_patients = set(np.asarray(store.patient_ids)[test_rows].astype(str))
    if provenance.get("store_fingerprint") == store_fingerprint(store):
        seen_rows = np.concatenate([store.split_indices(s) for s in provenance.get("splits", [])] or [np.zeros(0, int)])
        overlap = len(set(np.asarray(store.patient_ids)[seen_rows].astype(str)) & test_patients)
        if overlap:
            return "leak", (f"the encoder was pretrained on splits {provenance['splits']} of this store, which hold "
                            f"{overlap} of the {len(test_patients)} test patients")
        return "clean", (f"pretrained on splits {provenance['splits']} of this store ({provenance['n_patients']} "
                         "patients): no test patient among them")
    digest = provenance.get("patients_sha256")
    if digest in (_patient_set_hash(store.patient_ids), _patient_set_hash(test_patients)):
        return "leak", ("the encoder was pretrained on a corpus with exactly this store's patients, test patients "
                        "included")
    return "unknown", (f"pretrained on another store by an older ecgfast ({provenance.get('n_patients', '?')} "
                       "patients, no keyed hashes): overlap with the test patients cannot be checked")


def _patient_set_hash(patient_ids: Iterable[str]) -> str:
    h = hashlib.sha256()
    for pid in sorted({str(p) for p in patient_ids}):
        h.update(pid.encode() + b"\n")
    return h.hexdigest()


__all__ = ["JSON_NAME", "KEYS_NAME", "PROVENANCE_VERSION", "Provenance", "keyed_hashes", "leakage_check",
           "load_provenance", "merge", "pretraining_provenance", "source_of", "store_fingerprint"]
