"""ecgfast-prepare: ECG collections in, one checked memory-mapped store out.

The run is planned first: every source's records are enumerated (no signal read), duplicate record ids
are rejected, and the list is cut into shards of ``shard_size`` records. Worker processes then read,
check and preprocess one shard each and write it atomically (``shards/NNNNN.npy`` then its part file
``.parts/NNNNN.json``). An interrupted run resumes: shards whose part file exists are not redone, and a
plan that differs from the interrupted one (other sources, settings) is refused instead of mixed in.
Finally the manifest gets its patient-level splits and ``store.json`` is written last: a store without
it is incomplete and ECGStore refuses to open it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ecgfast import LEADS

from .data.preprocess import PreprocessConfig, preprocess
from .data.readers.base import Reader, SourceItem
from .data.record import RecordError, RejectReason
from .data.splits import fold_splits, hash_splits
from .data.store import FORMAT, VERSION, StoreError, shard_name, write_json_atomic, write_shard

log = logging.getLogger("ecgfast.prepare")


@dataclass(frozen=True)
class SplitConfig:
    """How records get their split: ``hash`` of (seed, patient id) with fractions, or PTB-XL ``strat_fold``."""

    method: str = "hash"
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    val_folds: tuple[int, ...] = (9,)
    test_folds: tuple[int, ...] = (10,)


@dataclass
class PrepareReport:
    """found == accepted + rejected; ``by_reason`` counts rejects; ``rejects`` lists (record_id, reason, message)."""

    found: int = 0
    accepted: int = 0
    rejected: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    rejects: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    resumed_shards: int = 0

    def summary(self) -> str:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.by_reason.items())) or "none"
        return (f"found {self.found} records: {self.accepted} accepted, {self.rejected} rejected ({reasons}); "
                f"{self.seconds:.1f} s")


# ---- planning ----------------------------------------------------------------------------------------------

def plan_items(readers: Sequence[Reader], patient_map: dict[str, str] | None = None
               ) -> tuple[list[tuple[int, SourceItem]], list[dict]]:
    """Enumerate all readers' items; returns (kept (reader index, item) pairs, duplicate-id rejects)."""
    seen: dict[str, str] = {}
    kept, dupes = [], []
    for ri, reader in enumerate(readers):
        for item in reader.items():
            if patient_map and item.record_id in patient_map:
                item.patient_id = patient_map[item.record_id]
            if item.record_id in seen:
                dupes.append({"record_id": item.record_id, "source": item.locator,
                              "reason": RejectReason.DUPLICATE_ID.value,
                              "message": f"record {item.record_id}: id already taken by {seen[item.record_id]}"})
                continue
            seen[item.record_id] = item.locator
            kept.append((ri, item))
    return kept, dupes


def _fingerprint(items: list[tuple[int, SourceItem]], readers: Sequence[Reader], config: PreprocessConfig,
                 shard_size: int) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps([r.describe() for r in readers] + [config.to_dict(), shard_size], default=str).encode())
    for ri, it in items:
        h.update(f"{ri}\x00{it.record_id}\x00{it.locator}\x00{it.patient_id}\n".encode())
    return h.hexdigest()


# ---- the work of one shard (runs in a worker process) -------------------------------------------------------

_WORKER: dict = {}


def _init_worker(readers: Sequence[Reader], config: PreprocessConfig) -> None:
    _WORKER["readers"], _WORKER["config"] = readers, config


def _process_shard(out: str, shard: int, items: list[tuple[int, SourceItem]]) -> dict:
    """Read, check and preprocess ``items``; write shard ``shard`` and its part file. Returns the part."""
    readers, config = _WORKER["readers"], _WORKER["config"]
    samples, rows, rejects = [], [], []
    for ri, item in items:
        try:
            rec = readers[ri].read(item)
            prep = preprocess(rec, config)
        except RecordError as exc:
            rejects.append({"record_id": item.record_id, "source": item.locator, "reason": exc.reason.value,
                            "message": exc.message})
            continue
        except Exception as exc:  # a reader bug or an unforeseen file: reject, never crash the run
            rejects.append({"record_id": item.record_id, "source": item.locator,
                            "reason": RejectReason.UNREADABLE.value,
                            "message": f"record {item.record_id}: {type(exc).__name__}: {exc}"})
            continue
        rows.append({"record_id": rec.record_id, "source": rec.source, "patient_id": str(rec.patient_id),
                     "fs_source": float(rec.fs), "valid_length": prep.valid_length, "gain": prep.gain,
                     "baseline": prep.baseline, "labels": json.dumps(rec.labels, sort_keys=True),
                     "meta": json.dumps(rec.meta, sort_keys=True, default=str), "checksum": prep.checksum,
                     "shard": shard, "row": len(samples)})
        samples.append(prep.samples)
    block = np.stack(samples) if samples else np.zeros((0, len(LEADS), config.n_samples), np.int16)
    write_shard(Path(out) / shard_name(shard), block)
    part = {"shard": shard, "n": len(rows), "rows": rows, "rejects": rejects}
    write_json_atomic(Path(out) / ".parts" / f"{shard:05d}.json", part)  # written last: marks the shard done
    return {"shard": shard, "n": len(rows), "n_items": len(items)}


# ---- the whole run -------------------------------------------------------------------------------------------

def prepare_store(readers: Sequence[Reader], out: str | os.PathLike, config: PreprocessConfig | None = None,
                  split: SplitConfig | None = None, workers: int | None = None, shard_size: int = 1024,
                  patient_map: dict[str, str] | None = None, overwrite: bool = False,
                  progress: bool = True) -> PrepareReport:
    """Build (or resume building) a store at ``out`` from ``readers``.

    Args:
        readers: the sources; record ids must be unique across them (later duplicates are rejected).
        out: the store folder.
        config: preprocessing (rate, length, filters, checks); default 500 Hz, 10 s.
        split: how splits are made; default: hash of patient id, 80/10/10.
        workers: processes (default: CPU count); 1 runs in this process.
        shard_size: records per shard (and per unit of parallel work).
        patient_map: record id -> patient id, for sources that do not carry patient ids.
        overwrite: delete an existing store or unfinished run at ``out`` first.

    Returns:
        PrepareReport, also written next to the store (prepare_report.json/.md, rejects.csv).

    Raises:
        StoreError: ``out`` holds a finished store or another run's unfinished parts (and not ``overwrite``).
    """
    t0 = time.perf_counter()
    config, split = config or PreprocessConfig(), split or SplitConfig()
    out = Path(out)
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    items, dupes = plan_items(readers, patient_map)
    fingerprint = _fingerprint(items, readers, config, shard_size)
    plan_path = out / ".parts" / "plan.json"
    if overwrite and out.exists():
        shutil.rmtree(out)
    if (out / "store.json").exists():
        raise StoreError(f"{out}: a finished store is already there; pass --overwrite to rebuild it")
    if plan_path.exists() and json.loads(plan_path.read_text()).get("fingerprint") != fingerprint:
        raise StoreError(f"{out}: holds an unfinished run with other sources or settings; "
                         "pass --overwrite to discard it, or re-run with the same arguments to resume")
    if out.exists() and any(p for p in out.iterdir() if p.name != ".parts"):
        if not plan_path.exists():
            raise StoreError(f"{out}: exists and is not an unfinished ecgfast store; choose another --out")
    write_json_atomic(plan_path, {"fingerprint": fingerprint, "n_items": len(items), "shard_size": shard_size})

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
                                 initargs=(list(readers), config)) as pool:
            futures = [pool.submit(_process_shard, str(out), s, chunks[s]) for s in todo]
            for fut in as_completed(futures):
                bar.update(fut.result()["n_items"])
    bar.close()
    return _finalize(out, len(chunks), dupes, config, split, report, t0)


def _finalize(out: Path, n_shards: int, dupes: list[dict], config: PreprocessConfig, split: SplitConfig,
              report: PrepareReport, t0: float) -> PrepareReport:
    parts = [json.loads((out / ".parts" / f"{s:05d}.json").read_text()) for s in range(n_shards)]
    rows = [r for p in parts for r in p["rows"]]
    rejects = [r for p in parts for r in p["rejects"]] + dupes
    manifest = pd.DataFrame(rows, columns=["record_id", "source", "patient_id", "fs_source", "valid_length", "gain",
                                           "baseline", "labels", "meta", "checksum", "shard", "row"])
    manifest = manifest.astype({"valid_length": "int64", "gain": "float32", "baseline": "int64", "shard": "int64",
                                "row": "int64", "fs_source": "float64"})
    manifest.insert(manifest.columns.get_loc("checksum"), "split", _splits(manifest, split))
    manifest.to_parquet(out / "manifest.parquet.tmp", index=False)
    os.replace(out / "manifest.parquet.tmp", out / "manifest.parquet")

    report.found = len(rows) + len(rejects)
    report.accepted, report.rejected = len(rows), len(rejects)
    report.by_reason = dict(Counter(r["reason"] for r in rejects))
    report.rejects = rejects
    report.seconds = time.perf_counter() - t0
    _write_report(out, report, manifest)
    info = {"format": FORMAT, "version": VERSION, "leads": list(LEADS), "fs": config.fs,
            "n_samples": config.n_samples, "dtype": "int16", "n_records": len(manifest),
            "shards": [{"file": shard_name(p["shard"]), "n": p["n"]} for p in parts],
            "preprocess": config.to_dict(), "split": split.__dict__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_json_atomic(out / "store.json", info)  # last: the store is complete
    return report


def _splits(manifest: pd.DataFrame, split: SplitConfig) -> np.ndarray:
    if len(manifest) == 0:
        return np.array([], dtype=object)
    if split.method == "hash":
        return hash_splits(manifest["patient_id"], split.fractions, split.seed)
    if split.method == "strat_fold":
        folds = [json.loads(m).get("strat_fold") for m in manifest["meta"]]
        return fold_splits(manifest["patient_id"], folds, split.val_folds, split.test_folds)
    raise ValueError(f"unknown split method {split.method!r}; use 'hash' or 'strat_fold'")


def _write_report(out: Path, report: PrepareReport, manifest: pd.DataFrame) -> None:
    """prepare_report.json (counts), prepare_report.md (for people), rejects.csv (one row per reject)."""
    counts = {k: v for k, v in report.__dict__.items() if k != "rejects"}
    counts["splits"] = {k: int(v) for k, v in manifest["split"].value_counts().items()} if len(manifest) else {}
    counts["patients"] = int(manifest["patient_id"].nunique()) if len(manifest) else 0
    write_json_atomic(out / "prepare_report.json", counts)
    lines = ["# ecgfast-prepare report", "", f"- found: {report.found}", f"- accepted: {report.accepted}",
             f"- rejected: {report.rejected}", f"- patients: {counts['patients']}",
             f"- splits: {counts['splits']}", "", "| reason | records |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(report.by_reason.items())]
    lines += ["", "Each rejected record, with what was wrong: rejects.csv"]
    (out / "prepare_report.md").write_text("\n".join(lines) + "\n")
    pd.DataFrame(report.rejects, columns=["record_id", "source", "reason", "message"]).to_csv(
        out / "rejects.csv", index=False)


# ---- CLI -----------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from .data.sources import FORMATS

    p = argparse.ArgumentParser(
        prog="ecgfast-prepare",
        description="Read ECG collections (WFDB, CinC, PTB-XL, MIMIC-IV-ECG, CODE-15%, .npy, synthetic), check "
                    "and preprocess every record, and write one memory-mapped int16 store with a manifest.",
        epilog="examples:\n  ecgfast-prepare /data/ptb-xl --out stores/ptbxl --split-by strat_fold\n"
               "  ecgfast-prepare /data/cinc2021/georgia /data/cinc2021/cpsc --out stores/cinc --workers 8\n"
               "  ecgfast-prepare synthetic:500 --out stores/synthetic",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="folder, record, .npy file, or synthetic[:N_PATIENTS]")
    p.add_argument("--out", required=True, help="the store folder to write")
    p.add_argument("--format", default="auto", choices=FORMATS, help="source format (default: detect)")
    p.add_argument("--fs", type=float, default=500.0, help="store sampling rate, Hz (default 500)")
    p.add_argument("--seconds", type=float, default=10.0, help="store record length, s (default 10)")
    p.add_argument("--min-seconds", type=float, default=5.0, help="reject records shorter than this (default 5)")
    p.add_argument("--bandpass", type=float, nargs=2, metavar=("LOW", "HIGH"), help="zero-phase band-pass, Hz")
    p.add_argument("--notch", type=float, help="zero-phase powerline notch at this frequency, Hz (50 or 60)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--shard-size", type=int, default=1024, help="records per shard (default 1024)")
    p.add_argument("--split-by", choices=("hash", "strat_fold"), default="hash",
                   help="hash of patient id (default) or PTB-XL strat_fold (9 val, 10 test)")
    p.add_argument("--split-fractions", type=float, nargs=3, default=(0.8, 0.1, 0.1), metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--patients", help="CSV with columns record_id, patient_id for sources without patient ids")
    p.add_argument("--rate", type=int, choices=(100, 500), help="PTB-XL: which files to read (default 500 Hz)")
    p.add_argument("--patient-ids", help=".npy source: a .npy or .txt with one patient id per record")
    p.add_argument("--array-fs", type=float, help=".npy source: its sampling rate, Hz")
    p.add_argument("--array-leads", help=".npy source: comma-separated lead names of its L axis (default I,II,V1..V6)")
    p.add_argument("--seed", type=int, default=0, help="synthetic source: generator seed")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store or unfinished run at --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ecgfast-prepare``. Exit codes: 0 done, 1 no record accepted, 2 bad arguments or input."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    from .data.sources import open_source, read_patient_map

    try:
        patient_map = read_patient_map(args.patients) if args.patients else None
        options = {"rate": args.rate, "patient_ids": args.patient_ids, "fs": args.array_fs, "seed": args.seed,
                   "lead_names": args.array_leads.split(",") if args.array_leads else None}
        readers = [open_source(s, args.format, patient_map=patient_map, **options) for s in args.sources]
        config = PreprocessConfig(fs=args.fs, seconds=args.seconds, min_seconds=args.min_seconds,
                                  bandpass=tuple(args.bandpass) if args.bandpass else None, notch=args.notch)
        split = SplitConfig(method=args.split_by, fractions=tuple(args.split_fractions), seed=args.split_seed)
        report = prepare_store(readers, args.out, config, split, workers=args.workers, shard_size=args.shard_size,
                               patient_map=patient_map, overwrite=args.overwrite, progress=not args.quiet)
    except (FileNotFoundError, ValueError, StoreError, ImportError) as exc:
        print(f"ecgfast-prepare: error: {exc}", file=sys.stderr)
        return 2
    print(f"ecgfast-prepare: {report.summary()}; report in {Path(args.out) / 'prepare_report.md'}")
    return 0 if report.accepted else 1


if __name__ == "__main__":
    sys.exit(main())
