"""The evaluation run: every (task, arm, fraction, seed) cell not yet saved, then the reports over all of them.

Each finished cell is ``<out>/cells/<task>__<arm>__f<fraction>__s<seed>.json``; a rerun skips it. On a CPU,
``workers`` > 1 runs cells side by side in worker processes (which die with this one), each with its share of the
cores: the small encoders of a CPU run use two single-threaded processes about 1.6 times better than one process
with two threads. A cell's result does not depend on which worker ran it, up to float rounding of the thread
count. The reports
(results.csv, summary.*, the plot) cover every finished cell in the folder made with the same settings, so running
again with other fractions or tasks adds to the tables instead of replacing them; a cell saved with other settings
is an error that names it. Before any training, the encoder's pretraining data is checked against the test
patients (:mod:`ecgfast.pretrain.provenance`): an encoder that saw them is refused.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import re
import sys
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..data.store import write_json_atomic
from ..folder_lock import folder_lock
from ..pretrain.provenance import Provenance, leakage_check, load_provenance
from .config import EvalConfig
from .protocol import CONTENT_KEYS, PATH_OF_CONTENT, Evaluator
from .report import protocol_notes, write_reports
from .tasks import EvalError, load_task, patient_labels, sample_fractions

log = logging.getLogger("ecgfast.eval")

RESULT_COLUMNS = ("task", "arm", "fraction", "seed", "method", "test_auroc", "test_lo", "test_hi", "val_auroc_best",
                  "steps", "best_step", "stopped_by", "l2", "usable", "unusable_reason", "val_auroc_levels",
                  "n_train_patients", "n_train_positive_patients", "n_val_patients", "n_val_positive_patients",
                  "n_train_records", "n_test_records", "n_test_patients", "scored_on", "seconds")
_CELL = re.compile(r"^(?P<task>.+)__(?P<arm>random-features|random|frozen|finetuned)__f(?P<f>[0-9.e+-]+)"
                   r"__s(?P<seed>\d+)\.json$")


def cell_path(out: str | Path, task: str, arm: str, fraction: float, seed: int) -> Path:
    """``<out>/cells/<task>__<arm>__f<fraction>__s<seed>.json``, the task name made file-safe."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", task)
    if safe != task:  # keep distinct names distinct after the substitution
        safe += f"-{zlib.crc32(task.encode()):08x}"
    return Path(out) / "cells" / f"{safe}__{arm}__f{fraction:g}__s{seed}.json"


def _read_cell(path: Path) -> dict | None:
    """A saved cell, or None (with a warning) when its file is damaged: it is then computed again."""
    try:
        rec = json.loads(path.read_text())
        key = (str(rec["task"]), str(rec["arm"]), float(rec["fraction"]), int(rec["seed"]))
        if not isinstance(rec.get("settings"), dict) or key[1] != _CELL.match(path.name)["arm"]:
            raise ValueError("no settings, or another arm than its name says")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s: damaged cell (%s): computed again", path, exc)
        return None
    return rec


def _saved_cells(out: Path, ev: Evaluator) -> dict[tuple, dict]:
    """Every cell in ``out/cells`` that this run can reuse: (task, arm, fraction, seed) -> record.

    Cells are matched by the content of the store and the checkpoint, not by their paths: a cell made from the same
    content at another path (the run folder moved or copied elsewhere) is reused. A cell made from other content at
    the same path (rewritten by ``--overwrite``) is stale: it is left out, so that it is computed again and replaced,
    and the log says how many.

    Raises:
        EvalError: a cell saved with other settings, or from another store or checkpoint (other content at another
            path), named: use another ``--out``, or delete the cells.
    """
    found, stale, moved = {}, 0, 0
    for path in sorted((out / "cells").glob("*.json")) if (out / "cells").is_dir() else []:
        if not _CELL.match(path.name):
            continue
        rec = _read_cell(path)
        if rec is None:
            continue
        want, have = ev.fingerprint(rec["arm"]), rec["settings"]
        diff = {k for k in set(want) | set(have) if have.get(k) != want.get(k)}
        same_content_elsewhere = {p for p, c in PATH_OF_CONTENT.items() if p in diff and c not in diff}
        diff -= same_content_elsewhere
        if diff and diff <= set(CONTENT_KEYS):
            stale += 1
            continue
        if diff:
            raise EvalError(f"{path}: saved with other settings (differs in {sorted(diff)}); use another --out, or "
                            "delete the cells to recompute them")
        moved += bool(same_content_elsewhere)
        found[(rec["task"], rec["arm"], float(rec["fraction"]), int(rec["seed"]))] = rec
    if stale:
        log.warning("%s: %d cell(s) were computed from other contents of the store or checkpoint (rewritten since): "
                    "computing them again", out / "cells", stale)
    if moved:
        log.info("%s: %d cell(s) were made from the same store and checkpoint content at other paths (moved): "
                 "reused", out / "cells", moved)
    return found


_WORKER: Evaluator | None = None  # the evaluator of a worker process


def _start_worker(cfg: EvalConfig, threads: int, parent_pid: int) -> None:
    """Worker initializer: die with the parent, take this worker's share of the cores, open the store."""
    global _WORKER
    import torch

    from ..data.worker_lifetime import die_with_parent

    die_with_parent(parent_pid)
    torch.set_num_threads(threads)
    _WORKER = Evaluator(cfg)


def _worker_cell(*args) -> dict:
    return _WORKER.run_cell(*args)


def _run_cells(ev: Evaluator, cfg: EvalConfig, pending: list[tuple], tasks: dict, draws: dict, out: Path,
               done: dict) -> None:
    """Run ``pending`` cells (in ``cfg.workers`` processes on a CPU), saving each as it finishes."""
    with _bar(len(pending), cfg.progress) as bar:
        if cfg.workers == 1 or ev.device.type != "cpu" or len(pending) < 2:
            for key in pending:
                task, arm, f, seed = key
                done[key] = ev.run_cell(tasks[task], arm, f, seed, *draws[task, f, seed])
                write_json_atomic(cell_path(out, *key), done[key])
                bar.update(1)
            return
        if any(key[1] == "frozen" for key in pending):
            ev.features()  # the frozen features once, here; the workers read them from the cache
        for seed in sorted({key[3] for key in pending if key[1] == "random-features"}):
            ev.features(seed)  # and each seed's untrained encoder's, once
        threads = max(1, (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
                      // cfg.workers)
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch thread pools
        with ProcessPoolExecutor(cfg.workers, mp_context=context, initializer=_start_worker,
                                 initargs=(cfg, threads, os.getpid())) as pool:
            futures = {pool.submit(_worker_cell, tasks[key[0]], key[1], key[2], key[3],
                                   *draws[key[0], key[2], key[3]]): key for key in pending}
            for future in as_completed(futures):
                key = futures[future]
                done[key] = future.result()
                write_json_atomic(cell_path(out, *key), done[key])
                bar.update(1)


def _bar(total: int, enabled: bool) -> tqdm:
    """One bar over the cells, with an ETA; on a terminal only, so that log files get no escape codes."""
    return tqdm(total=total, desc="eval cells", unit="cell", disable=not (enabled and sys.stderr.isatty()))


def run_evaluation(cfg: EvalConfig) -> pd.DataFrame:
    """Run every cell of ``cfg`` not already saved in ``cfg.out``, then write the reports there.

    Returns the summary (one row per task, fraction and arm; see :func:`ecgfast.eval.report.summarize`).

    Raises:
        EvalError: bad settings, tasks or fractions (all checked before any training), or an encoder pretrained on
            test patients.
        StoreError / SplitError: a missing store, or one whose splits mix patients.
        CheckpointError: a checkpoint that is missing or made for another model.
    """
    try:
        cfg.check()
    except ValueError as exc:
        raise EvalError(str(exc)) from exc
    ev = Evaluator(cfg)
    cfg = ev.cfg  # with the segment resolved from the store
    out = Path(cfg.out)
    tasks = {name: load_task(ev.store, name, cfg.missing_as_negative, cfg.segment) for name in cfg.tasks}
    extra = []
    if ev.ckpt is not None:
        try:
            provenance = load_provenance(ev.ckpt)  # v2 keyed hashes, a v1 dict, or None (made elsewhere)
        except ValueError as exc:
            raise EvalError(f"cannot check what the encoder was pretrained on: {exc}") from exc
        test_rows = np.unique(np.concatenate([t.rows[cfg.score_split] for t in tasks.values()]))
        status, sentence = leakage_check(provenance, ev.store, test_rows)
        if status == "leak":
            raise EvalError(f"refusing to evaluate: {sentence}. Pretrain on the train split only "
                            "(ecgfast-train reads only it), or evaluate on other patients")
        extra.append(f"Pretraining data: {sentence}.")
        extra.append(_check_domain(provenance, ev, cfg.allow_store_mismatch))
    if cfg.score_split == "val":
        extra.append("Scored on the store's val split, to choose settings: the test split was not read, and these "
                     "numbers are not test results.")
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out, "ecgfast-eval"):  # one writer of the cells and reports at a time
        return _evaluate(ev, cfg, out, tasks, extra)


def _check_domain(provenance: object, ev: Evaluator, allowed: bool) -> str:
    """The report's sentence on the pretraining stores' rate and unit against the evaluation store's.

    Raises:
        EvalError: another rate or unit (both named), unless ``allowed``.
    """
    if not isinstance(provenance, Provenance):
        return ("Pretraining rate and unit: not recorded in the checkpoint (made elsewhere or by an older ecgfast): "
                "not checked.")
    store = ev.store
    other = [s for s in provenance.info["sources"] if (float(s["fs"]), s["units"]) != (store.fs, store.units)]
    if not other:
        return f"Pretraining rate and unit: {store.fs:g} Hz, {store.units}, as this store's."
    seen = "; ".join(sorted({f"{float(s['fs']):g} Hz {s['units']}" for s in other}))
    if not allowed:
        raise EvalError(f"the encoder was pretrained on {seen} signals, this store holds {store.fs:g} Hz "
                        f"{store.units}: its filters and amplitudes would not mean what they meant. Prepare the store "
                        "at the pretraining rate and unit, or pass --allow-store-mismatch to evaluate anyway")
    return (f"Pretraining rate and unit: {seen}, this store {store.fs:g} Hz {store.units}: evaluated anyway "
            "(--allow-store-mismatch).")


def _evaluate(ev: Evaluator, cfg: EvalConfig, out: Path, tasks: dict, extra: list[str]) -> pd.DataFrame:
    """The cells and the reports, under the folder's lock."""
    carve = cfg.val_share if cfg.val_source == "carved" else None
    draws = {}  # (task, fraction, seed) -> (training patient codes, FractionDraw); drawn before any work
    for name, task in tasks.items():
        codes, labels = patient_labels(task.y["train"], task.patients["train"])
        for seed in range(cfg.seeds):
            for f, draw in sample_fractions(labels, cfg.fractions, seed, name, carve).items():
                draws[name, f, seed] = (codes, draw)
    grid = [(t, a, float(f), s) for t in cfg.tasks for a in cfg.arms for f in cfg.fractions for s in range(cfg.seeds)]
    done = _saved_cells(out, ev)
    pending = [key for key in grid if key not in done]
    log.info("%d cells: %d saved, %d to run", len(grid), len(grid) - len(pending), len(pending))
    (out / "cells").mkdir(parents=True, exist_ok=True)
    _run_cells(ev, cfg, pending, tasks, draws, out, done)
    results = pd.DataFrame([{c: done[key].get(c, np.nan) for c in RESULT_COLUMNS} for key in sorted(done)])
    seen_tasks = {**{k[0]: None for k in done}}
    described = {name: tasks[name].describe() if name in tasks else
                 load_task(ev.store, name, cfg.missing_as_negative, cfg.segment).describe() for name in seen_tasks}
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "progress"}
    header = {"settings": settings, "preset": ev.preset, "checkpoint": str(ev.ckpt) if ev.ckpt else None,
              "tasks": described, "cells": {"this_run": len(pending), "in_folder": len(done)}}
    header["notes"] = protocol_notes(settings, described, extra)
    return write_reports(results, out, header)


__all__ = ["RESULT_COLUMNS", "cell_path", "run_evaluation"]
