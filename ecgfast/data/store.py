"""The ECG store: int16 shards, memory-mapped, plus a Parquet manifest with one row per record.

Layout of a store folder::

    store.json          format, leads, fs, n_samples, units, shards (records and bytes), preprocessing;
                        written last
    manifest.parquet    record_id, source, patient_id, patient_ns, fs_source, valid_length, gain, baseline,
                        labels (JSON), meta (JSON), split, checksum, shard, row
    shards/00000.npy    (n_i, 8, n_samples) int16, C order: one record is one contiguous 2*8*T byte block
    prepare_report.*    what prepare found, accepted and rejected (by reason), rejects.csv

A record's values are ``(q - baseline) / gain`` in the store's unit (``store.json`` ``units``): millivolts,
or ``z`` for normalised signals (each lead in standard deviations). Shards are opened with
``np.load(mmap_mode="r")``, so a store of a million records (about 80 GB) is used without loading it: only the
rows read are paged in.

Durability: every file is written under a temporary name, fsync'ed, renamed into place, and its folder
fsync'ed, so a power cut leaves either the old file or the complete new one; ``ECGStore`` compares each shard's
size on disk with ``store.json`` when it opens a store (cheap) and every record's checksum with ``verify``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from ecgfast import LEADS

from .patients import patient_keys
from .preprocess import checksum
from .record import SIGNAL_UNITS
from .splits import SPLITS, check_patient_disjoint

FORMAT = "ecgfast-store"
VERSION = 1
MANIFEST_COLUMNS = ("record_id", "source", "patient_id", "fs_source", "valid_length", "gain", "baseline",
                    "labels", "meta", "split", "checksum", "shard", "row")
#: units a store can hold: millivolts, or "z" (normalised: each lead in standard deviations, no physical unit)
STORE_UNITS = SIGNAL_UNITS


_UMASK = os.umask(0)
os.umask(_UMASK)


def give_usual_mode(path: str | os.PathLike) -> None:
    """chmod ``path`` to what the user's umask gives new files or folders: mkstemp, mkdtemp (and some writers,
    such as safetensors) create owner-only ones, which a store or checkpoint shared with a group must not be."""
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~_UMASK)


class StoreError(RuntimeError):
    """A store that is missing, incomplete, corrupt or inconsistent. The message says which file and what."""


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's data, or a folder's entries, to the disk (``os.fsync``).

    A folder must be fsync'ed after a rename into it, or the rename can be lost in a power cut. Where a folder
    cannot be opened or fsync'ed (Windows, some network filesystems) that step is skipped: nothing better exists.
    """
    is_dir = os.path.isdir(path)
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if is_dir else 0))
    except OSError:
        if is_dir:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not is_dir:
            raise
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path in the same folder; if the block succeeds, make it durable and rename it onto
    ``path``: fsync the file, ``os.replace``, fsync the folder. A crash or power cut at any point leaves either
    the old ``path`` or the complete new one, never a half-written or zero-length file under the final name.
    The temporary (``.<name>.<random>.tmp``) is removed when the block fails. An ``OSError`` of the disk (full,
    read-only, quota) is raised again as one that names ``path``: a write error carries no file name of its own."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        yield Path(tmp)
        give_usual_mode(tmp)  # mkstemp makes 0600 files
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    except OSError as exc:
        if exc.filename is not None or exc.errno is None:
            raise
        raise OSError(exc.errno, f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def write_json_atomic(path: str | os.PathLike, obj: object) -> None:
    """Write ``obj`` as indented JSON to ``path`` through :func:`atomic_path` (fsync'ed, renamed)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_shard(path: str | os.PathLike, samples: np.ndarray) -> int:
    """Write an (n, 8, T) int16 shard as .npy through :func:`atomic_path`; returns its size in bytes."""
    if samples.dtype != np.int16 or samples.ndim != 3:
        raise ValueError(f"shard must be (n, 8, T) int16, got {samples.shape} {samples.dtype}")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(samples))
        size = os.path.getsize(tmp)
    return size


def shard_name(index: int) -> str:
    return f"shards/{index:05d}.npy"


def _label_problem(text: object) -> str:
    """What is wrong with one manifest ``labels`` cell, or "" when nothing is."""
    if not isinstance(text, str):
        return "not JSON text"
    try:
        labels = json.loads(text)
    except ValueError:
        return "not valid JSON"
    if not isinstance(labels, dict):
        return "not a JSON object"
    for name, value in labels.items():
        ok = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)
                               and (value in (0, 1) or value != value))  # value != value: NaN, unknown
        if not ok:
            return f"label {name!r} is {value!r}"
    return ""


class ECGStore:
    """A prepared store, opened read-only. Checks its manifest against its shards on open.

    Args:
        path: the store folder.
        verify: also recompute every record's checksum (reads the whole store; slow on big stores).

    Raises:
        StoreError: missing or unreadable files, shards whose size, shape or dtype disagrees with store.json,
            duplicate record ids, a split that mixes patients, checksum mismatches (with ``verify``).

    Attributes:
        fs, n_samples, leads: the store's rate, record length and lead order.
        units: "mV" (millivolts) or "z" (normalised signals: each lead in standard deviations); what
            :meth:`read_mv` returns. Stores written before units were recorded are "mV".

    Example::

        store = ECGStore("stores/ptbxl")
        x = store.read_mv(store.split_indices("train")[:32])   # (32, 8, 5000) float32, in store.units
    """

    def __init__(self, path: str | os.PathLike, verify: bool = False):
        self.path = Path(path)
        info_path = self.path / "store.json"
        if not info_path.is_file():
            hint = " (prepare did not finish: run it again to resume)" if (self.path / ".parts").is_dir() else ""
            raise StoreError(f"{self.path}: not an ecgfast store, {info_path.name} not found{hint}")
        try:
            self.info = json.loads(info_path.read_text())
        except (OSError, ValueError) as exc:
            raise StoreError(f"{info_path}: unreadable: {exc}") from exc
        if self.info.get("format") != FORMAT or self.info.get("version") != VERSION:
            raise StoreError(f"{info_path}: format {self.info.get('format')!r} v{self.info.get('version')!r}, "
                             f"expected {FORMAT!r} v{VERSION}")
        self.fs = float(self.info["fs"])
        self.n_samples = int(self.info["n_samples"])
        self.leads = tuple(self.info["leads"])
        if self.leads != LEADS:
            raise StoreError(f"{info_path}: leads {self.leads}, expected {LEADS}")
        self.units = str(self.info.get("units", "mV"))
        if self.units not in STORE_UNITS:
            raise StoreError(f"{info_path}: units {self.units!r}, expected one of {STORE_UNITS}")
        try:
            self.manifest = pd.read_parquet(self.path / "manifest.parquet")
        except Exception as exc:
            raise StoreError(f"{self.path / 'manifest.parquet'}: unreadable: {exc}") from exc
        self._shards = self._open_shards()
        self._check_manifest()
        # Hot columns as numpy arrays, so batch reads do not touch pandas.
        self._shard_of = self.manifest["shard"].to_numpy(np.int64)
        self._row_of = self.manifest["row"].to_numpy(np.int64)
        self.gain = self.manifest["gain"].to_numpy(np.float32)
        self.baseline = self.manifest["baseline"].to_numpy(np.float32)
        self.valid_length = self.manifest["valid_length"].to_numpy(np.int64)
        if verify:
            self.verify()

    def _open_shards(self) -> list[np.ndarray]:
        """Memory-map every shard after comparing its size on disk with store.json (a stat per shard: cheap).

        A shard cut short or grown (a power cut before its data reached the disk, a copy that stopped, bytes
        appended) is refused here; a shard of the right size with other bytes is what ``verify`` catches.
        """
        shards = []
        for entry in self.info["shards"]:
            p = self.path / entry["file"]
            try:
                size = os.stat(p).st_size
            except OSError as exc:
                raise StoreError(f"{p}: cannot open shard: {exc}") from exc
            if "bytes" in entry and size != int(entry["bytes"]):
                raise StoreError(f"{p}: shard has {size} bytes on disk, store.json says {int(entry['bytes'])} "
                                 "(cut short or altered after prepare wrote it; re-run ecgfast-prepare --overwrite)")
            try:
                mm = np.load(p, mmap_mode="r")
            except Exception as exc:
                raise StoreError(f"{p}: cannot open shard: {exc}") from exc
            want = (int(entry["n"]), len(LEADS), self.n_samples)
            if mm.dtype != np.int16 or mm.shape != want:
                raise StoreError(f"{p}: shard is {mm.shape} {mm.dtype}, store.json says {want} int16")
            if size != mm.offset + mm.nbytes:  # stores written before store.json kept sizes
                raise StoreError(f"{p}: shard has {size} bytes on disk, its {mm.shape} int16 samples need "
                                 f"{mm.offset + mm.nbytes}")
            shards.append(mm)
        return shards

    def _check_manifest(self) -> None:
        m, where = self.manifest, self.path / "manifest.parquet"
        missing = [c for c in MANIFEST_COLUMNS if c not in m.columns]
        if missing:
            raise StoreError(f"{where}: missing column(s) {missing}")
        if len(m) != int(self.info["n_records"]):
            raise StoreError(f"{where}: {len(m)} rows, store.json says {self.info['n_records']} records")
        if m["record_id"].duplicated().any():
            raise StoreError(f"{where}: {int(m['record_id'].duplicated().sum())} duplicate record ids")
        sizes = np.array([s.shape[0] for s in self._shards])
        shard, row = m["shard"].to_numpy(), m["row"].to_numpy()
        if len(m) and ((shard < 0) | (shard >= len(sizes))).any():
            raise StoreError(f"{where}: shard index out of range")
        if len(m) and ((row < 0) | (row >= sizes[shard])).any():
            raise StoreError(f"{where}: row index beyond its shard's size")
        if len(m) != sizes.sum() or pd.Series(shard * (1 << 32) + row).duplicated().any():
            raise StoreError(f"{where}: manifest rows do not map one-to-one onto the {sizes.sum()} shard rows")
        self._check_values()
        self._patient_keys = patient_keys(m["patient_id"], m["patient_ns"] if "patient_ns" in m.columns else None)
        check_patient_disjoint(self._patient_keys, m["split"], where=str(where))

    def _check_values(self) -> None:
        """Refuse manifest values no prepare run writes (an edited or damaged manifest): vectorised over the
        numeric columns, and over the distinct label strings (few, whatever the store's size).

        Raises:
            StoreError: naming the column, the first offending record and how many there are.
        """
        m, where = self.manifest, self.path / "manifest.parquet"

        def refuse(column: str, bad: np.ndarray, rule: str) -> None:
            if bad.any():
                first = int(np.flatnonzero(bad)[0])
                raise StoreError(f"{where}: column {column!r}, record {m['record_id'].iat[first]!r}: "
                                 f"{m[column].iat[first]!r} ({int(bad.sum())} record(s) break the rule: {rule})")

        def numbers(column: str) -> np.ndarray:
            values = pd.to_numeric(m[column], errors="coerce").to_numpy(np.float64)
            refuse(column, np.isnan(values) & m[column].notna().to_numpy(), "a number")
            return values

        gain, baseline = numbers("gain"), numbers("baseline")
        refuse("gain", ~(np.isfinite(gain) & (gain > 0)), "a finite number > 0: adc units per unit")
        refuse("baseline", ~(np.isfinite(baseline) & (np.abs(baseline) <= 32768)), "a finite int16 adc value")
        valid = numbers("valid_length")
        refuse("valid_length", ~((valid >= 1) & (valid <= self.n_samples) & (valid == np.round(valid))),
               f"an integer in [1, {self.n_samples}], the store's record length")
        fs_source = numbers("fs_source")
        refuse("fs_source", ~(np.isfinite(fs_source) & (fs_source > 0)), "a finite rate > 0 Hz")
        if m["split"].isna().any() or not m["split"].isin(SPLITS).all():
            refuse("split", ~m["split"].isin(SPLITS).to_numpy(), f"one of {SPLITS}")
        labels = m["labels"]
        for text in pd.unique(labels):
            problem = _label_problem(text)
            if problem:
                refuse("labels", (labels == text).to_numpy() if isinstance(text, str) else labels.isna().to_numpy(),
                       f"a JSON object of labels 0 or 1 (or null, NaN: unknown); {problem}")

    def __len__(self) -> int:
        return len(self.manifest)

    def fingerprint(self) -> str:
        """SHA-256 (hex, 16 chars) of the store's content: every record's id, sample checksum and split, in
        manifest order. Equal for copies of a store, different after ``ecgfast-prepare --overwrite`` changed any
        record or split. Computed once per opened store (about a second per million records)."""
        if getattr(self, "_fingerprint", None) is None:
            m = self.manifest
            h = hashlib.sha256()
            for rid, chk, split in zip(m["record_id"].astype(str), m["checksum"].astype(str), m["split"].astype(str),
                                       strict=True):
                h.update(f"{rid}\t{chk}\t{split}\n".encode())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def __getstate__(self) -> dict:
        # Pickling a np.memmap copies its data: send the path and reopen in the receiving process instead.
        return {"path": str(self.path)}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])

    def read(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Raw int16 samples of records ``indices`` (manifest row numbers): (B, 8, T), in the order given."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        out = np.empty((idx.size, len(LEADS), self.n_samples), dtype=np.int16)
        shard, row = self._shard_of[idx], self._row_of[idx]
        for s in np.unique(shard):
            sel = np.nonzero(shard == s)[0]
            order = np.argsort(row[sel], kind="stable")  # ascending rows: sequential page access
            out[sel[order]] = self._shards[s][row[sel][order]]
        return out

    def read_mv(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Values of records ``indices``: (B, 8, T) float32, ``(q - baseline) / gain``, in :attr:`units`
        (millivolts for an "mV" store; standard deviations for a "z" store)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        q = self.read(idx).astype(np.float32)
        q -= self.baseline[idx, None, None]
        q /= self.gain[idx, None, None]
        return q

    def split_indices(self, split: str) -> np.ndarray:
        """Manifest row numbers of one split ("train", "val" or "test")."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return np.nonzero(self.manifest["split"].to_numpy() == split)[0]

    @property
    def patient_ids(self) -> np.ndarray:
        """(N,) patient key per record: records are one patient exactly when their keys are equal.

        The key is the manifest's ``patient_id`` scoped by its source, ``"<patient_ns>:<patient_id>"``
        (``"ptbxl:15709"``), or the id alone for ids given by ``--patients`` (empty namespace) and for stores
        written before namespaces existed. See :mod:`ecgfast.data.patients`. Opaque: never log these.
        """
        return self._patient_keys

    def label_names(self) -> list[str]:
        """Every label name that appears in at least one record, sorted."""
        names: set[str] = set()
        for s in self.manifest["labels"]:
            names.update(json.loads(s))
        return sorted(names)

    def label(self, name: str, fill: float = np.nan) -> np.ndarray:
        """(N,) float values of label ``name``; records without it get ``fill`` (NaN: unknown).

        Code-list labels (CinC ``dx:<code>``, PTB-XL ``scp:<code>``) list positives only: use ``fill=0``.
        """
        return np.array([json.loads(s).get(name, fill) for s in self.manifest["labels"]], dtype=np.float64)

    def verify(self) -> None:
        """Recompute every record's checksum; raise StoreError naming the first mismatching records."""
        bad: list[str] = []
        for i in range(len(self)):
            s, r = self._shard_of[i], self._row_of[i]
            if checksum(self._shards[s][r]) != self.manifest["checksum"].iat[i]:
                bad.append(str(self.manifest["record_id"].iat[i]))
        if bad:
            raise StoreError(f"{self.path}: {len(bad)} record(s) fail their checksum, e.g. {bad[:5]}")
