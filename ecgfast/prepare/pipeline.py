"""The prepare pipeline: ECG collections in, one checked memory-mapped store out (``ecgfast-prepare``).

The run is planned first: every source's records are enumerated (no signal read), patient ids are cleaned and
scoped by source (:mod:`ecgfast.data.patients`), duplicate record ids are rejected, and the list is cut into
shards of ``shard_size`` records. Worker processes (which die with this one) then read, check and preprocess one
shard each and write it atomically (``shards/NNNNN.npy`` then its part file ``.parts/NNNNN.json``, each fsync'ed
before its rename). An interrupted run resumes: shards whose part file exists are not redone, temporaries a
killed run left are removed, and a plan that differs from the interrupted one (other sources, settings) is
refused instead of mixed in. Finally the manifest gets its patient-level splits, ``store.json`` is written last
(a store without it is incomplete and ECGStore refuses to open it), and ``.parts/`` is removed.

The output folder is guarded by :mod:`ecgfast.data.store_folder`: prepare writes only into a folder it made,
``--overwrite`` deletes only what prepare wrote, and no source may lie inside the output or around it.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ecgfast import LEADS

from ..data import store_folder
from ..data.patients import clean_patient_id, patient_keys, source_names
from ..data.prepare_report import PrepareReport, write_report
from ..data.preprocess import PreprocessConfig, preprocess
from ..data.readers.base import Reader, SourceItem
from ..data.record import RecordError, RejectReason
from ..data.splits import check_patient_disjoint, column_splits, hash_splits
from ..data.store import FORMAT, VERSION, StoreError, atomic_path, shard_name, write_json_atomic, write_shard
from ..data.worker_lifetime import die_with_parent

log = logging.getLogger("ecgfast.prepare")

SPLIT_METHODS = ("auto", "hash", "strat_fold", "column")


@dataclass(frozen=True)
class SplitConfig:
    """How records get their split.

    Attributes:
        method: "hash" of (seed, patient id) with ``fractions``; "column": from the meta value ``column`` of each
            record (fold numbers, ``val_folds``/``test_folds`` and the rest train; or the words train/val/test);
            "strat_fold": "column" on PTB-XL's ``strat_fold``; "auto" (default): the sources' own split column
            where they all name the same one (the ptbxl-subset layout: ``strat_fold``), else "hash".
    """

    method: str = "auto"
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    val_folds: tuple[int, ...] = (9,)
    test_folds: tuple[int, ...] = (10,)
    column: str = "strat_fold"
    given: frozenset[str] = frozenset()  # settings the user set ("fractions", "seed", "folds"): refused if unused

    def __post_init__(self) -> None:
        if self.method not in SPLIT_METHODS:
            raise ValueError(f"unknown split method {self.method!r}; use one of {SPLIT_METHODS}")
        if len(self.fractions) != 3 or not all(math.isfinite(f) and f >= 0 for f in self.fractions) \
                or not math.isclose(sum(self.fractions), 1.0, abs_tol=1e-6) or self.fractions[0] <= 0:
            raise ValueError(f"split fractions (train, val, test) must be >= 0, sum to 1 and give train a share, "
                             f"got {list(self.fractions)}")
        if set(self.val_folds) & set(self.test_folds):
            raise ValueError(f"folds {sorted(set(self.val_folds) & set(self.test_folds))} are both val and test folds")

    def resolve(self, readers: Sequence[Reader]) -> SplitConfig:
        """This config with "auto" and "strat_fold" turned into "hash" or "column".

        Raises:
            ValueError: a setting the user gave that the resolved method ignores (fractions or a split seed for a
                column split, folds for a hash split): silently unused, it would make another split than asked.
        """
        if self.method == "strat_fold":
            resolved = dataclasses.replace(self, method="column", column="strat_fold")
        elif self.method != "auto":
            resolved = self
        else:
            columns = {getattr(r, "default_split_column", None) for r in readers}
            resolved = (dataclasses.replace(self, method="column", column=columns.pop())
                        if len(columns) == 1 and None not in columns else dataclasses.replace(self, method="hash"))
        unused = {"column": ("fractions", "seed"), "hash": ("folds",)}[resolved.method]
        ignored = [name for name in unused if name in self.given]
        if ignored:
            flags = ", ".join({"fractions": "--split-fractions", "seed": "--split-seed",
                               "folds": "--val-folds/--test-folds"}[n] for n in ignored)
            how = (f"comes from the column {resolved.column!r}" if resolved.method == "column"
                   else "is a hash of patient ids (--split-by hash)")
            raise ValueError(f"{flags} would be ignored: this split {how}; leave {flags} out, or choose "
                             f"--split-by {'hash' if resolved.method == 'column' else 'strat_fold'}")
        return resolved


# ---- planning ----------------------------------------------------------------------------------------------

Planned = tuple[int, SourceItem, str]  # (reader index, item, patient namespace)


def plan_items(readers: Sequence[Reader], patient_map: dict[str, str] | None = None
               ) -> tuple[list[Planned], list[dict]]:
    """Enumerate all readers' items; returns (kept (reader index, item, patient namespace), duplicate-id rejects).

    Patient ids are cleaned (:func:`~ecgfast.data.patients.clean_patient_id`); an id from ``patient_map`` has
    the empty namespace (one id space across sources), any other the name of its source.
    """
    names = source_names([r.format_name for r in readers])
    seen: dict[str, tuple[int, str]] = {}
    kept, dupes = [], []
    for ri, reader in enumerate(readers):
        for item in reader.items():
            mapped = clean_patient_id(patient_map.get(item.record_id)) if patient_map else None
            item.patient_id = mapped or clean_patient_id(item.patient_id)
            if item.record_id in seen:
                other, where = seen[item.record_id]
                dupes.append({"record_id": item.record_id, "input": names[ri], "source": reader.redact(item.locator),
                              "reason": RejectReason.DUPLICATE_ID.value,
                              "message": f"record {item.record_id}: id already taken by "
                                         f"{names[other]}:{readers[other].redact(where)}"})
                continue
            seen[item.record_id] = (ri, item.locator)
            kept.append((ri, item, "" if mapped else names[ri]))
    return kept, dupes


def _fingerprint(items: list[Planned], readers: Sequence[Reader], config: PreprocessConfig, shard_size: int) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps([r.describe() for r in readers] + [config.to_dict(), shard_size], default=str).encode())
    for ri, it, ns in items:
        h.update(f"{ri}\x00{it.record_id}\x00{it.locator}\x00{ns}\x00{it.patient_id}\n".encode())
    return h.hexdigest()


def _store_units(readers: Sequence[Reader], config: PreprocessConfig) -> PreprocessConfig:
    """``config`` with the units the readers yield; a store holds one unit, so readers must agree (unless the
    config z-scores every record: the store is then "z" whatever its sources yield)."""
    if config.normalize == "zscore":
        return dataclasses.replace(config, units="z")
    units = {getattr(r, "signal_units", "mV") for r in readers} or {config.units}
    if len(units) > 1:
        raise ValueError(f"the sources yield different units ({', '.join(sorted(units))}); a store holds one: "
                         "prepare normalised and millivolt sources into separate stores")
    return dataclasses.replace(config, units=units.pop())


# ---- the work of one shard (runs in a worker process) -------------------------------------------------------

_WORKER: dict = {}


def _init_worker(readers: Sequence[Reader], config: PreprocessConfig, parent_pid: int | None = None) -> None:
    """Worker set-up: die with the parent (when it is another process), and private copies of the readers that
    read at most the store's length."""
    if parent_pid is not None:
        die_with_parent(parent_pid)
    own = []
    for reader in readers:
        reader = copy.copy(reader)
        reader.max_seconds = config.seconds
        own.append(reader)
    _WORKER["readers"], _WORKER["config"] = own, config
    _WORKER["names"] = source_names([r.format_name for r in readers])


def _reject(ri: int, item: SourceItem, reason: str, message: str) -> dict:
    reader = _WORKER["readers"][ri]
    return {"record_id": item.record_id, "input": _WORKER["names"][ri], "source": reader.redact(item.locator),
            "reason": reason, "message": reader.redact(message)}


def _process_shard(out: str, shard: int, items: list[Planned]) -> dict:
    """Read, check and preprocess ``items``; write shard ``shard`` and its part file. Returns the part."""
    readers, config = _WORKER["readers"], _WORKER["config"]
    samples, rows, rejects = [], [], []
    for ri, item, ns in items:
        try:
            rec = readers[ri].read(item)
            prep = preprocess(rec, config)
        except RecordError as exc:
            rejects.append(_reject(ri, item, exc.reason.value, exc.message))
            continue
        except Exception as exc:  # a reader bug or an unforeseen file: reject, never crash the run
            rejects.append(_reject(ri, item, RejectReason.UNREADABLE.value,
                                   f"record {item.record_id}: {type(exc).__name__}: {exc}"))
            continue
        rows.append({"record_id": rec.record_id, "source": rec.source,
                     "patient_id": clean_patient_id(rec.patient_id) or rec.record_id, "patient_ns": ns,
                     "fs_source": float(rec.fs), "valid_length": prep.valid_length, "gain": prep.gain,
                     "baseline": prep.baseline, "labels": json.dumps(rec.labels, sort_keys=True),
                     "meta": json.dumps(rec.meta, sort_keys=True, default=str), "checksum": prep.checksum,
                     "shard": shard, "row": len(samples)})
        samples.append(prep.samples)
    block = np.stack(samples) if samples else np.zeros((0, len(LEADS), config.n_samples), np.int16)
    size = write_shard(Path(out) / shard_name(shard), block)
    part = {"shard": shard, "n": len(rows), "bytes": size, "rows": rows, "rejects": rejects}
    write_json_atomic(Path(out) / ".parts" / f"{shard:05d}.json", part)  # written last: marks the shard done
    return {"shard": shard, "n": len(rows), "n_items": len(items)}


# ---- the whole run -------------------------------------------------------------------------------------------

def prepare_store(readers: Sequence[Reader], out: str | os.PathLike, config: PreprocessConfig | None = None,
                  split: SplitConfig | None = None, workers: int | None = None, shard_size: int = 1024,
                  patient_map: dict[str, str] | None = None, overwrite: bool = False,
                  progress: bool = True) -> PrepareReport:
    """Build (or resume building) a store at ``out`` from ``readers``.

    Args:
        readers: the sources; record ids must be unique across them (later duplicates are rejected). They must
            yield one unit (``Reader.signal_units``), which becomes the store's (``config.units`` is set from it).
        out: the store folder: new, empty, or made by an earlier prepare run (see :mod:`~ecgfast.data.store_folder`).
        config: preprocessing (rate, length, filters, checks); default 500 Hz, 10 s.
        split: how splits are made; default "auto": the sources' split column, else a hash of patient ids, 80/10/10.
        workers: processes (default: CPU count); 1 runs in this process.
        shard_size: records per shard (and per unit of parallel work).
        patient_map: record id -> patient id, for sources that do not carry patient ids; these ids are one id
            space across all sources (see :mod:`ecgfast.data.patients`).
        overwrite: delete what an earlier prepare run wrote at ``out`` first (never a folder prepare did not make,
            never a file prepare did not write).

    Returns:
        PrepareReport, also written next to the store (prepare_report.json/.md, rejects.csv).

    Raises:
        StoreError: ``out`` holds a finished store (and not ``overwrite``), another run's unfinished parts, files
            that are not prepare's, a source (or lies inside one), or another prepare is writing it.
        ValueError: sources of different units; bad ``shard_size``.
        SplitError: a split column that would put one patient in two splits.
    """
    t0 = time.perf_counter()
    readers = list(readers)
    config = _store_units(readers, config or PreprocessConfig())
    split = (split or SplitConfig()).resolve(readers)
    out = Path(out)
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    store_folder.check_not_nested(out, [p for r in readers for p in r.input_paths()])
    items, dupes = plan_items(readers, patient_map)
    fingerprint = _fingerprint(items, readers, config, shard_size)
    plan_path = out / ".parts" / "plan.json"
    store_folder.claim(out)
    with store_folder.exclusive(out):
        if overwrite:
            store_folder.clear_for_overwrite(out)
        if (out / "store.json").exists():
            store_folder.finish(out)  # a finished run killed before it removed .parts/
            raise StoreError(f"{out}: a finished store is already there; pass --overwrite to rebuild it")
        if not plan_path.exists() and any((out / n).exists() for n in ("shards", "manifest.parquet")):
            raise StoreError(f"{out}: holds parts of a store but no store.json and no unfinished run to resume "
                             "(damaged?); pass --overwrite to rebuild it")
        if plan_path.exists() and json.loads(plan_path.read_text()).get("fingerprint") != fingerprint:
            raise StoreError(f"{out}: holds an unfinished run with other sources or settings; "
                             "pass --overwrite to discard it, or re-run with the same arguments to resume")
        stale = store_folder.remove_temporaries(out)
        if stale:
            log.info("prepare: removed %d temporary file(s) an interrupted run left", stale)
        write_json_atomic(plan_path, {"fingerprint": fingerprint, "n_items": len(items), "shard_size": shard_size})
        report, n_shards = _run(readers, out, items, config, workers, shard_size, progress)
        return _finalize(out, n_shards, report, dupes, config, split, t0)


def _run(readers: list[Reader], out: Path, items: list[Planned], config: PreprocessConfig, workers: int | None,
         shard_size: int, progress: bool) -> tuple[PrepareReport, int]:
    chunks = [items[i:i + shard_size] for i in range(0, len(items), shard_size)]
    todo = [s for s in range(len(chunks)) if not (out / ".parts" / f"{s:05d}.json").exists()]
    report = PrepareReport(resumed_shards=len(chunks) - len(todo))
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    log.info("prepare: %d records in %d shards (%d already done), %d worker(s)", len(items), len(chunks),
             report.resumed_shards, workers)
    bar = tqdm(total=len(items), initial=sum(len(chunks[s]) for s in range(len(chunks)) if s not in todo),
               unit="rec", desc="prepare", disable=not progress)
    if workers == 1:
        _init_worker(readers, config)
        for s in todo:
            bar.update(_process_shard(str(out), s, chunks[s])["n_items"])
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker,
                                 initargs=(readers, config, os.getpid())) as pool:
            futures = [pool.submit(_process_shard, str(out), s, chunks[s]) for s in todo]
            for fut in as_completed(futures):
                bar.update(fut.result()["n_items"])
    bar.close()
    return report, len(chunks)


def _finalize(out: Path, n_shards: int, report: PrepareReport, dupes: list[dict], config: PreprocessConfig,
              split: SplitConfig, t0: float) -> PrepareReport:
    parts = [json.loads((out / ".parts" / f"{s:05d}.json").read_text()) for s in range(n_shards)]
    rows = [r for p in parts for r in p["rows"]]
    rejects = [r for p in parts for r in p["rejects"]] + dupes
    manifest = pd.DataFrame(rows, columns=["record_id", "source", "patient_id", "patient_ns", "fs_source",
                                           "valid_length", "gain", "baseline", "labels", "meta", "checksum", "shard",
                                           "row"])
    manifest = manifest.astype({"patient_id": str, "patient_ns": str, "valid_length": "int64", "gain": "float32",
                                "baseline": "int64", "shard": "int64", "row": "int64", "fs_source": "float64"})
    manifest.insert(manifest.columns.get_loc("checksum"), "split", _splits(manifest, split))
    keys = patient_keys(manifest["patient_id"], manifest["patient_ns"])
    check_patient_disjoint(keys, manifest["split"], where=f"{out} (split {split.method})")
    with atomic_path(out / "manifest.parquet") as tmp:
        manifest.to_parquet(tmp, index=False)

    report.found = len(rows) + len(rejects)
    report.accepted, report.rejected = len(rows), len(rejects)
    report.by_reason = dict(Counter(r["reason"] for r in rejects))
    report.rejects = rejects
    report.splits = {k: int(v) for k, v in manifest["split"].value_counts().items()}
    report.units = config.units
    report.seconds = time.perf_counter() - t0
    write_report(out, report, manifest, keys)
    _warn_unknown_patients(manifest, split)
    info = {"format": FORMAT, "version": VERSION, "leads": list(LEADS), "fs": config.fs,
            "n_samples": config.n_samples, "dtype": "int16", "units": config.units, "n_records": len(manifest),
            "shards": [{"file": shard_name(p["shard"]), "n": p["n"], "bytes": p["bytes"]} for p in parts],
            "preprocess": config.to_dict(),
            "split": {k: v for k, v in dataclasses.asdict(split).items() if k != "given"},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_json_atomic(out / "store.json", info)  # last: the store is complete
    store_folder.finish(out)
    return report


def _splits(manifest: pd.DataFrame, split: SplitConfig) -> np.ndarray:
    if len(manifest) == 0:
        return np.array([], dtype=object)
    if split.method == "hash":  # the id as given: adding a source never moves a patient (see the README)
        return hash_splits(manifest["patient_id"], split.fractions, split.seed)
    keys = patient_keys(manifest["patient_id"], manifest["patient_ns"])
    values = [json.loads(m).get(split.column) for m in manifest["meta"]]
    return column_splits(keys, values, split.val_folds, split.test_folds)


def _warn_unknown_patients(manifest: pd.DataFrame, split: SplitConfig) -> None:
    unknown = sum(json.loads(m).get("patient_id_known") is False for m in manifest["meta"])
    if unknown and split.method == "hash":
        log.warning("prepare: %d records have no patient id and are each their own patient; if some share a "
                    "patient, a hash split can put that patient in two splits: pass --patients, or split by a "
                    "patient-disjoint column (--split-column)", unknown)
