"""The ECG store: int16 shards, memory-mapped, plus a Parquet manifest with one row per record.

Layout of a store folder::

    store.json          format, leads, fs, n_samples, shards and their sizes, preprocessing; written last
    manifest.parquet    record_id, source, patient_id, fs_source, valid_length, gain, baseline,
                        labels (JSON), meta (JSON), split, checksum, shard, row
    shards/00000.npy    (n_i, 8, n_samples) int16, C order: one record is one contiguous 2*8*T byte block
    prepare_report.*    what prepare found, accepted and rejected (by reason), rejects.csv

A record's millivolts are ``(q - baseline) / gain``. Shards are opened with ``np.load(mmap_mode="r")``, so a
store of a million records (about 80 GB) is used without loading it: only the rows read are paged in.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from ecgfast import LEADS

from .preprocess import checksum
from .splits import SPLITS, check_patient_disjoint

FORMAT = "ecgfast-store"
VERSION = 1
MANIFEST_COLUMNS = ("record_id", "source", "patient_id", "fs_source", "valid_length", "gain", "baseline",
                    "labels", "meta", "split", "checksum", "shard", "row")


_UMASK = os.umask(0)
os.umask(_UMASK)


def give_usual_mode(path: str | os.PathLike) -> None:
    """chmod ``path`` to what the user's umask gives new files or folders: mkstemp, mkdtemp (and some writers,
    such as safetensors) create owner-only ones, which a store or checkpoint shared with a group must not be."""
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~_UMASK)


class StoreError(RuntimeError):
    """A store that is missing, incomplete, corrupt or inconsistent. The message says which file and what."""


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path in the same folder; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        give_usual_mode(tmp)  # mkstemp makes 0600 files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json_atomic(path: str | os.PathLike, obj: object) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_shard(path: str | os.PathLike, samples: np.ndarray) -> None:
    """Write an (n, 8, T) int16 shard as .npy, atomically."""
    if samples.dtype != np.int16 or samples.ndim != 3:
        raise ValueError(f"shard must be (n, 8, T) int16, got {samples.shape} {samples.dtype}")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(samples))


def shard_name(index: int) -> str:
    return f"shards/{index:05d}.npy"


class ECGStore:
    """A prepared store, opened read-only. Checks its manifest against its shards on open.

    Args:
        path: the store folder.
        verify: also recompute every record's checksum (reads the whole store; slow on big stores).

    Raises:
        StoreError: missing or unreadable files, shards whose shape or dtype disagrees with the manifest,
            duplicate record ids, a split that mixes patients, checksum mismatches (with ``verify``).

    Example::

        store = ECGStore("stores/ptbxl")
        x = store.read_mv(store.split_indices("train")[:32])   # (32, 8, 5000) float32 mV
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
        shards = []
        for entry in self.info["shards"]:
            p = self.path / entry["file"]
            try:
                mm = np.load(p, mmap_mode="r")
            except Exception as exc:
                raise StoreError(f"{p}: cannot open shard: {exc}") from exc
            want = (int(entry["n"]), len(LEADS), self.n_samples)
            if mm.dtype != np.int16 or mm.shape != want:
                raise StoreError(f"{p}: shard is {mm.shape} {mm.dtype}, store.json says {want} int16")
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
        check_patient_disjoint(m["patient_id"], m["split"], where=str(where))

    def __len__(self) -> int:
        return len(self.manifest)

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
        """Millivolts of records ``indices``: (B, 8, T) float32, ``(q - baseline) / gain``."""
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
        """(N,) patient id per record. Opaque: never log these."""
        return self.manifest["patient_id"].to_numpy()

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
