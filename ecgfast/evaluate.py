"""ecgfast-eval: the downstream protocol of METHOD.md, random init vs frozen vs finetuned at 1-100 % labels.

The grid is task x arm x label fraction x seed; each cell trains one classifier and scores it once on the
test patients. Everything is by patient:

- A fraction f samples f % of the labelled *training patients*, stratified by patient label (a patient's
  label is the max over their records) and nested: one permutation per class and seed, and f takes its
  first round(f % x n_class) patients, so the 1 % patients are inside the 5 % ones, and so on. A fraction
  that would hold no positive or no negative patient is an error naming it. The draw depends on the seed
  and the task only, so every arm of a seed sees the same patients (the gains are paired).
- The store's val split (its own patients) chooses the training step: the classifier is scored on it at
  ``evals`` evenly spaced steps (each epoch's end by default), the best val AUROC wins, ties go to the
  earlier step. The test split is scored once, with the chosen weights.
- A 10 s record is two 5 s halves (:mod:`ecgfast.embed`): for training each half is a sample with the
  record's label; a record's score is the mean of its halves' logits.
- Records without the label (NaN) are dropped and counted. Code-list labels (``dx:``, ``scp:``) list
  positives only, so for them a missing label is a negative (``--missing-as-negative`` forces either way;
  CODE-15's ``code:`` labels are written 0/1 when known, so missing stays unknown there).

Arms (METHOD.md): random init, all trainable, Adam lr 1e-3; frozen, a linear head (lr 0.02) on the
pretrained encoder in eval mode, trained on its cached features (identical to training through the frozen
encoder), or with ``--fast-frozen`` an L2 logistic regression on record embeddings whose penalty is chosen
on val; finetuned, backbone lr 1e-4 and head lr 0.02. BCE with logits. Every arm gets the same schedule,
``epochs`` passes over the labelled halves, except that a CPU budget cuts the arms that run the encoder
(random init, finetuned) at ``max_steps`` optimisation steps and scores val at ``evals`` points only; the
frozen head, on cached features, costs next to nothing and always trains its full epochs, scored on val
at each epoch's end, as a linear probe should.

Each finished cell is ``<out>/cells/<task>__<arm>__f<fraction>__s<seed>.json``; a rerun skips it. Scores
and reports: :mod:`ecgfast.eval_report`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import re
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .checkpoint import CheckpointError, load_weights
from .data.splits import SPLITS, SplitError
from .data.store import ECGStore, StoreError, write_json_atomic
from .embed import (
    SEGMENT,
    load_encoder,
    map_records,
    n_segments,
    record_segments,
    resolve_checkpoint,
    select_logistic_regression,
    split_embeddings,
)
from .eval_report import auroc, bootstrap_auroc, protocol_notes, write_reports
from .eval_tasks import EvalError, TaskData, load_task, patient_labels, sample_fraction_patients
from .models.temporalnet import ClassifierHead, DualStreamTemporalNet, ECGClassifier, temporalnet_config

log = logging.getLogger("ecgfast.eval")

ARMS = ("random", "frozen", "finetuned")
DEFAULT_FRACTIONS = (1.0, 5.0, 10.0, 50.0, 100.0)


@dataclass(frozen=True)
class Budget:
    """The sized defaults of a run; any command-line flag overrides its field."""

    seeds: int  # repetitions per (task, arm, fraction); seed s draws the labelled patients and the init
    epochs: int  # passes over the labelled training halves
    max_steps: int | None  # cap on optimisation steps of a random-init or finetuned cell (None: none)
    evals: int | None  # validation points per cell, evenly spaced (None: one per epoch)
    batch_size: int  # halves per step
    model: str  # TemporalNet preset of the random-init arm when no checkpoint names one
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS  # percent of the training patients with labels


BUDGETS = {
    "cpu": Budget(seeds=3, epochs=20, max_steps=60, evals=3, batch_size=32, model="tiny"),
    "paper": Budget(seeds=5, epochs=30, max_steps=None, evals=None, batch_size=64, model="paper"),
    # demo: 1000 synthetic patients, tiny model. Scoring val and test dominates a cell's cost on a CPU, so the
    # demo keeps 2 val points and 3 fractions; 16 steps of 16 halves make ~5 passes over the 1 % data.
    "demo": Budget(seeds=3, epochs=50, max_steps=16, evals=2, batch_size=16, model="tiny", fractions=(1, 10, 100)),
}
_CPU = BUDGETS["cpu"]


@dataclass
class EvalConfig:
    """One evaluation run. ``tasks`` are label names of the store's manifest; fractions are percentages."""

    store: str
    out: str
    tasks: tuple[str, ...]
    checkpoint: str | None = None  # pretraining run or checkpoint folder; None: random init only
    arms: tuple[str, ...] = ARMS
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    seeds: int = _CPU.seeds
    epochs: int = _CPU.epochs
    max_steps: int | None = _CPU.max_steps
    evals: int | None = _CPU.evals
    batch_size: int = _CPU.batch_size
    model: str = _CPU.model  # preset for random init without a checkpoint (a checkpoint's own preset wins)
    balanced: bool = False  # half positives, half negatives in every batch (the potassium task's setting)
    fast_frozen: bool = False  # frozen arm as logistic regression on embeddings instead of a trained head
    missing_as_negative: bool | None = None  # None: from the label prefix (dx:, scp:)
    lr_random: float = 1e-3
    lr_backbone: float = 1e-4
    lr_head: float = 0.02
    segment: int = SEGMENT
    n_boot: int = 1000  # patient-bootstrap resamples for the test interval
    eval_batch_size: int = 128  # segments per forward pass when scoring
    device: str | None = None
    progress: bool = True


# ---- one cell: train, choose the step on val, score test once ---------------------------------------------------

def _batches(y: np.ndarray, batch_size: int, balanced: bool, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Endless sample-index batches: shuffled passes, or half positives / half negatives per batch."""
    if not balanced:
        while True:
            perm = rng.permutation(len(y))
            yield from (perm[s:s + batch_size] for s in range(0, len(y), batch_size))
    streams = [np.flatnonzero(y == 1), np.flatnonzero(y == 0)]
    queues: list[list[int]] = [[], []]
    while True:
        batch = []
        for c, k in ((0, batch_size // 2), (1, batch_size - batch_size // 2)):
            while len(queues[c]) < k:  # each class cycles through its own reshuffled passes
                queues[c].extend(rng.permutation(streams[c]).tolist())
            batch += queues[c][:k]
            del queues[c][:k]
        yield np.asarray(batch)


def schedule(n_samples: int, batch_size: int, epochs: int, max_steps: int | None,
             evals: int | None) -> tuple[int, list[int]]:
    """(total steps, steps after which val is scored). Uncapped with ``evals`` None: each epoch's end."""
    total = epochs * math.ceil(n_samples / batch_size)
    total = min(total, max_steps) if max_steps else total
    k = min(evals or epochs, total)
    return total, sorted({round(total * (i + 1) / k) for i in range(k)})


def _fit_and_select(module: torch.nn.Module, optimizer: torch.optim.Optimizer, inputs, y: np.ndarray,
                    score_val, y_val: np.ndarray, cfg: EvalConfig, rng: np.random.Generator,
                    device: torch.device, max_steps: int | None, evals: int | None) -> dict:
    """Train ``module`` on samples (``inputs(idx)`` -> model input), keep the weights of the best val AUROC."""
    total, eval_steps = schedule(len(y), cfg.batch_size, cfg.epochs, max_steps, evals)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    target = torch.as_tensor(y, dtype=torch.float32, device=device)
    batches = _batches(y, cfg.batch_size, cfg.balanced, rng)
    history, best, best_state, best_step = [], -math.inf, None, 0
    for step in range(1, total + 1):
        module.train()
        idx = next(batches)
        loss = loss_fn(module(inputs(idx))[:, 0], target[idx])  # logits (b,) against the halves' labels
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step in eval_steps:
            module.eval()
            scores = score_val()
            val = auroc(y_val, scores) if np.isfinite(scores).all() else float("nan")
            history.append(val)
            if best_state is None or val > best:  # strict: ties keep the earlier step; NaN never wins
                best, best_step = (val if np.isfinite(val) else -math.inf), step
                best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    module.load_state_dict(best_state)
    module.eval()
    return {"steps": total, "eval_steps": eval_steps, "val_auroc": history, "best_step": best_step,
            "val_auroc_best": best if np.isfinite(best) else float("nan")}


class Evaluator:
    """Runs cells of one store; holds the store, the checkpoint and the frozen features (computed once)."""

    def __init__(self, cfg: EvalConfig):
        self.cfg = cfg
        self.store = ECGStore(cfg.store)  # refuses a store whose splits mix patients
        self.segments = n_segments(self.store.n_samples, cfg.segment)
        self.device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.ckpt, self.preset = (None, cfg.model)
        if cfg.checkpoint:
            self.ckpt, self.preset = resolve_checkpoint(cfg.checkpoint)
        needs = [a for a in cfg.arms if a != "random"]
        if needs and self.ckpt is None:
            raise EvalError(f"arm(s) {needs} need a pretrained encoder: pass --checkpoint (a pretraining run or "
                            "checkpoint folder), or run --arms random")
        self._features: dict[str, tuple[np.ndarray, np.ndarray]] | None = None

    def fingerprint(self, arm: str) -> dict:
        """The settings a cell's result depends on; a saved cell is reused only when they match."""
        c = self.cfg
        fp = {"store": str(Path(c.store).resolve()), "epochs": c.epochs, "batch_size": c.batch_size,
              "balanced": c.balanced, "segment": c.segment, "n_boot": c.n_boot, "preset": self.preset,
              "missing_as_negative": c.missing_as_negative}
        if arm != "frozen":  # the frozen head has neither a step cap nor sparse val points
            fp.update(max_steps=c.max_steps, evals=c.evals)
        if arm == "random":
            fp["lr"] = c.lr_random
        else:
            fp.update(checkpoint=str(self.ckpt.resolve()), lr_head=c.lr_head)
            fp.update(fast_frozen=c.fast_frozen) if arm == "frozen" else fp.update(lr_backbone=c.lr_backbone)
        return fp

    def features(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per split (rows, (N, S, D) features) of the frozen encoder, cached in ``<out>/embeddings``."""
        if self._features is None:
            encoder, ckpt, _ = load_encoder(self.ckpt, self.device)
            self._features = {s: split_embeddings(encoder, self.store, ckpt, s, Path(self.cfg.out) / "embeddings",
                                                  self.cfg.segment, self.cfg.eval_batch_size, self.device,
                                                  self.cfg.progress) for s in SPLITS}
        return self._features

    def run_cell(self, task: TaskData, arm: str, fraction: float, seed: int, patients: np.ndarray) -> dict:
        """Train and score one (task, arm, fraction, seed) cell on the training patients ``patients`` (codes).

        The seed fixes the initialisation, dropout and batch order; torch's global RNG is left as it was.
        """
        t0 = time.perf_counter()
        keep = np.isin(task.patients["train"], patients)
        rows, y_rec = task.rows["train"][keep], task.y["train"][keep]
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            rng = np.random.default_rng([seed, 2])
            cell = self._frozen if arm == "frozen" else self._end_to_end
            result, score_test = cell(task, arm, rows, y_rec, rng)
        y_test, finite = task.y["test"], bool(np.isfinite(score_test).all())  # a diverged model scores NaN
        lo, hi = (bootstrap_auroc(y_test, score_test, task.patients["test"], n_boot=self.cfg.n_boot, seed=seed)
                  if finite else (float("nan"),) * 2)
        _, train_lab = patient_labels(y_rec, task.patients["train"][keep])
        return {"task": task.name, "arm": arm, "fraction": fraction, "seed": seed, **result,
                "test_auroc": auroc(y_test, score_test) if finite else float("nan"), "test_lo": lo, "test_hi": hi,
                "n_train_patients": len(train_lab), "n_train_positive_patients": int(train_lab.sum()),
                "n_train_records": len(rows), "n_test_records": len(y_test),
                "n_test_patients": len(np.unique(task.patients["test"])),
                "seconds": round(time.perf_counter() - t0, 2), "settings": self.fingerprint(arm)}

    def _end_to_end(self, task: TaskData, arm: str, rows: np.ndarray, y_rec: np.ndarray,
                    rng: np.random.Generator) -> tuple[dict, np.ndarray]:
        """Random-init or finetuned arm: the whole classifier trains on the halves of records ``rows``."""
        cfg, n_seg = self.cfg, self.segments
        model = ECGClassifier(DualStreamTemporalNet(temporalnet_config(self.preset)))
        if arm == "finetuned":
            load_weights(model.encoder, self.ckpt)
            opt = torch.optim.Adam(model.parameter_groups(backbone_lr=cfg.lr_backbone, head_lr=cfg.lr_head))
        else:
            opt = torch.optim.Adam(model.parameters(), lr=cfg.lr_random)
        model.to(self.device)

        def inputs(idx: np.ndarray) -> torch.Tensor:  # sample i is half i % S of record i // S
            x = torch.from_numpy(self.store.read_mv(rows[idx // n_seg])).to(self.device)  # (b, 8, T) mV
            return record_segments(x, cfg.segment)[torch.arange(len(idx)), torch.from_numpy(idx % n_seg)]

        def score(split: str) -> np.ndarray:
            logits = map_records(lambda seg: model(seg)[:, 0], self.store, task.rows[split], cfg.segment,
                                 cfg.eval_batch_size, self.device)  # (N, S)
            return logits.mean(axis=1)  # a record's score: the mean of its halves' logits

        result = _fit_and_select(model, opt, inputs, np.repeat(y_rec, n_seg), lambda: score("val"), task.y["val"],
                                 cfg, rng, self.device, cfg.max_steps, cfg.evals)
        return {**result, "method": "end to end"}, score("test")

    def _frozen(self, task: TaskData, arm: str, rows: np.ndarray, y_rec: np.ndarray,
                rng: np.random.Generator) -> tuple[dict, np.ndarray]:
        """Frozen arm on the cached features: a linear head trained like the other arms, or (``fast_frozen``)
        a logistic regression on record embeddings."""
        cfg, n_seg = self.cfg, self.segments
        feats = {}  # split -> (N, S, D) frozen features of the task's records there
        for split, want in (("train", rows), ("val", task.rows["val"]), ("test", task.rows["test"])):
            have, f = self.features()[split]  # rows ascending, as split_indices returns them
            feats[split] = torch.from_numpy(f[np.searchsorted(have, want)]).to(self.device)
        if cfg.fast_frozen:
            x = {k: v.mean(dim=1).double().cpu().numpy() for k, v in feats.items()}  # (N, D): halves averaged
            lr = select_logistic_regression(x["train"], y_rec, x["val"], task.y["val"], cfg.balanced)
            return ({"method": "logistic regression on frozen embeddings", "l2": lr.l2, "val_auroc_best": lr.val_auroc,
                     "steps": 0}, lr.decision_function(x["test"]))
        d = feats["train"].shape[-1]
        head = ClassifierHead(d).to(self.device)  # (b, 1, D) -> (b, 1) logits: the classifier's linear head
        opt = torch.optim.Adam(head.parameters(), lr=cfg.lr_head)
        flat = feats["train"].reshape(-1, 1, d)  # (N*S, 1, D), sample i = half i % S of record i // S

        def score(split: str) -> np.ndarray:
            with torch.no_grad():
                f = feats[split]
                return head(f.reshape(-1, 1, d)).view(f.shape[0], n_seg).mean(1).cpu().numpy()

        # no step cap and val at every epoch's end: on cached features both cost next to nothing
        result = _fit_and_select(head, opt, lambda idx: flat[torch.from_numpy(idx)], np.repeat(y_rec, n_seg),
                                 lambda: score("val"), task.y["val"], cfg, rng, self.device, None, None)
        return {**result, "method": "linear head on cached frozen features"}, score("test")


def cell_path(out: str | Path, task: str, arm: str, fraction: float, seed: int) -> Path:
    """``<out>/cells/<task>__<arm>__f<fraction>__s<seed>.json``, the task name made file-safe."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", task)
    if safe != task:  # keep distinct names distinct after the substitution
        safe += f"-{zlib.crc32(task.encode()):08x}"
    return Path(out) / "cells" / f"{safe}__{arm}__f{fraction:g}__s{seed}.json"


# ---- the run: every cell not yet saved, then the reports ------------------------------------------------------

RESULT_COLUMNS = ("task", "arm", "fraction", "seed", "method", "test_auroc", "test_lo", "test_hi", "val_auroc_best",
                  "best_step", "steps", "l2", "n_train_patients", "n_train_positive_patients", "n_train_records",
                  "n_test_records", "n_test_patients", "seconds")


def _check_config(cfg: EvalConfig) -> None:
    if not cfg.tasks:
        raise EvalError("no task: name at least one label with --task")
    bad = sorted(set(cfg.arms) - set(ARMS))
    if bad or not cfg.arms or len(set(cfg.arms)) != len(cfg.arms):
        raise EvalError(f"arms must be distinct names among {ARMS}, got {list(cfg.arms)}")
    if cfg.seeds < 1 or cfg.epochs < 1 or cfg.batch_size < 2 or (cfg.max_steps is not None and cfg.max_steps < 1):
        raise EvalError(f"need seeds >= 1, epochs >= 1, batch size >= 2 and max steps >= 1 (or none), got "
                        f"{cfg.seeds}, {cfg.epochs}, {cfg.batch_size}, {cfg.max_steps}")
    if (cfg.evals is not None and cfg.evals < 1) or cfg.n_boot < 1:
        raise EvalError(f"need evals >= 1 and n_boot >= 1, got {cfg.evals}, {cfg.n_boot}")
    if not cfg.fractions or len(set(cfg.fractions)) != len(cfg.fractions):
        raise EvalError(f"fractions must be distinct percentages, got {list(cfg.fractions)}")


def _load_cell(path: Path, want: dict) -> dict:
    rec = json.loads(path.read_text())
    diff = sorted(k for k in set(want) | set(rec.get("settings", {})) if rec.get("settings", {}).get(k) != want.get(k))
    if diff:
        raise EvalError(f"{path}: saved with other settings (differs in {diff}); use another --out, or delete the "
                        "cells to recompute them")
    return rec


def run_evaluation(cfg: EvalConfig) -> pd.DataFrame:
    """Run every cell of ``cfg`` not already saved in ``cfg.out``, then write the reports there.

    Returns the summary (one row per task, fraction and arm; see :func:`ecgfast.eval_report.summarize`).

    Raises:
        EvalError: bad settings, tasks or fractions (all checked before any training).
        StoreError / SplitError: a missing store, or one whose splits mix patients.
        CheckpointError: a checkpoint that is missing or made for another model.
    """
    _check_config(cfg)
    ev = Evaluator(cfg)
    out = Path(cfg.out)
    tasks = {name: load_task(ev.store, name, cfg.missing_as_negative) for name in cfg.tasks}
    draws = {}  # (task, fraction, seed) -> training patient codes; drawn first so that errors come before work
    for name, task in tasks.items():
        codes, labels = patient_labels(task.y["train"], task.patients["train"])
        for seed in range(cfg.seeds):
            for f, idx in sample_fraction_patients(labels, cfg.fractions, seed, name).items():
                draws[name, f, seed] = codes[idx]
    grid = [(t, a, float(f), s) for t in cfg.tasks for a in cfg.arms for f in cfg.fractions for s in range(cfg.seeds)]
    done = {key: _load_cell(cell_path(out, *key), ev.fingerprint(key[1])) for key in grid
            if cell_path(out, *key).is_file()}
    pending = [key for key in grid if key not in done]
    log.info("%d cells: %d saved, %d to run", len(grid), len(done), len(pending))
    (out / "cells").mkdir(parents=True, exist_ok=True)
    for key in tqdm(pending, desc="eval cells", unit="cell", disable=not cfg.progress):
        task, arm, f, seed = key
        done[key] = ev.run_cell(tasks[task], arm, f, seed, draws[task, f, seed])
        write_json_atomic(cell_path(out, *key), done[key])
    results = pd.DataFrame([{c: done[key].get(c, np.nan) for c in RESULT_COLUMNS} for key in grid])
    header = {"settings": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "progress"},
              "preset": ev.preset, "checkpoint": str(ev.ckpt) if ev.ckpt else None,
              "tasks": {name: t.describe() for name, t in tasks.items()}}
    header["notes"] = protocol_notes(header["settings"], header["tasks"])
    return write_reports(results, out, header)


# ---- the demo ---------------------------------------------------------------------------------------------------

DEMO_TASKS = ("low_ef", "hyperk")
DEMO_PATIENTS = {"cpu": 1000, "paper": 5000}  # 1000: ~800 training patients, so 1 % still holds both classes
DEMO_CORPUS_SEED = 42
DEMO_PRETRAIN_STEPS = 100  # CPU demo: ~1.1 epochs of the 1000-patient corpus at SYNTHETIC_DEFAULTS' batch 32


def prepare_demo(out: Path, checkpoint: str | None, device: str | None, progress: bool,
                 paper: bool = False) -> tuple[str, str]:
    """(store, checkpoint) of the demo: the synthetic corpus, pretrained on its train split unless given.

    The CPU demo pretrains with SYNTHETIC_DEFAULTS for DEMO_PRETRAIN_STEPS steps; ``paper`` uses the
    authors' recipe (TrainConfig's defaults: the paper model, batch 512, 210 epochs) on a larger corpus.
    A finished pretraining run in ``out/pretrain`` is reused.
    """
    try:
        from .checkpoint import latest_checkpoint, load_state
        from .config import SYNTHETIC_DEFAULTS, load_config
        from .train import pretrain, synthetic_store
    except ImportError as exc:
        raise EvalError(f"the demo pretrains with ecgfast.train, which cannot be imported here ({exc})") from exc
    store = synthetic_store(DEMO_PATIENTS["paper" if paper else "cpu"], DEMO_CORPUS_SEED)
    if checkpoint:
        return str(store), checkpoint
    run = out / "pretrain"
    overrides = {"store": str(store), "out": str(run), "progress": progress, "device": device,
                 "seed": DEMO_CORPUS_SEED, "max_steps": None if paper else DEMO_PRETRAIN_STEPS}
    config = load_config(overrides=overrides, base=None if paper else SYNTHETIC_DEFAULTS)
    ckpt = latest_checkpoint(run)
    if ckpt is None or config.max_steps is None or int(load_state(ckpt)["step"]) < config.max_steps:
        log.info("demo: pretraining %s on %s", config.model, store)
        pretrain(config, resume=True)
    return str(store), str(run)


# ---- CLI ----------------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ecgfast-eval",
        description="The downstream protocol: random init vs frozen vs finetuned pretrained encoder at 1-100 % of "
                    "the training patients' labels, AUROC on test patients with 95 % intervals, tables and a plot. "
                    "Finished cells are saved in --out/cells and skipped when the command runs again.",
        epilog="examples:\n"
               "  ecgfast-eval --demo --out runs/eval-demo                  # synthetic corpus, pretrain, evaluate\n"
               "  ecgfast-eval --store stores/ptbxl --checkpoint runs/mimic --task superclass:MI --out runs/mi\n"
               "  ecgfast-eval --store stores/cinc --checkpoint runs/mimic --task dx:164889003 --fast-frozen "
               "--arms frozen --out runs/af\n"
               "  ecgfast-eval --store stores/k --checkpoint runs/mimic --task hyperk --balanced --paper --out runs/k\n"
               "  ecgfast-eval --store stores/ptbxl --task superclass:HYP --arms random --seeds 2 --out runs/r",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", help="prepared ECG store with labels (not with --demo)")
    p.add_argument("--checkpoint", help="pretraining run folder or checkpoint folder (its config.json names the "
                   "model); without it only the random-init arm runs")
    p.add_argument("--task", action="append", dest="tasks", help="label name of the manifest (repeatable)")
    p.add_argument("--out", required=True, help="output folder (cells/, results.csv, summary.*, plot)")
    p.add_argument("--arms", nargs="+", choices=ARMS, help="default: all three with a checkpoint, else random")
    p.add_argument("--fractions", nargs="+", type=float,
                   help="percent of training patients with labels (default 1 5 10 50 100; --demo 1 10 100)")
    p.add_argument("--seeds", type=int, help="seeds per cell (default 3 on CPU and with --demo, 5 with --paper)")
    p.add_argument("--epochs", type=int, help="passes over the labelled halves (default 20, --paper 30)")
    p.add_argument("--max-steps", type=int, help="cap on optimisation steps of a random-init or finetuned cell, "
                   "0 for none (default 60 on CPU, 16 with --demo, none with --paper)")
    p.add_argument("--evals", type=int, help="validation points per cell (default 3 on CPU; --paper: every epoch)")
    p.add_argument("--batch-size", type=int, help="halves per step (default 32, --paper 64)")
    p.add_argument("--model", choices=("paper", "small", "tiny"),
                   help="preset for random init without a checkpoint (a checkpoint's config.json wins)")
    p.add_argument("--balanced", action="store_true", help="class-balanced batches")
    p.add_argument("--fast-frozen", action="store_true", help="frozen arm: logistic regression on embeddings")
    p.add_argument("--missing-as-negative", action=argparse.BooleanOptionalAction, default=None,
                   help="records without the label are negatives (default: yes for dx: and scp: labels)")
    p.add_argument("--bootstrap", type=int, default=1000, help="patient-bootstrap resamples (default 1000)")
    p.add_argument("--device", help="default: cuda if available else cpu")
    p.add_argument("--paper", action="store_true", help="paper-sized defaults (5 seeds, no step cap, paper model)")
    p.add_argument("--demo", action="store_true", help="synthetic corpus: pretrain (unless --checkpoint), evaluate "
                   "low_ef and hyperk; minutes on a CPU")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return p


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    """EvalConfig from parsed arguments (the demo's store and checkpoint already filled in)."""
    budget = BUDGETS["paper" if args.paper else "demo" if args.demo else "cpu"]
    pick = {f: getattr(args, f) if getattr(args, f) is not None else getattr(budget, f)
            for f in ("seeds", "epochs", "max_steps", "evals", "batch_size", "model", "fractions")}
    pick["max_steps"] = pick["max_steps"] or None  # 0: no cap
    arms = tuple(args.arms) if args.arms else (ARMS if args.checkpoint else ("random",))
    return EvalConfig(store=args.store, out=args.out, tasks=tuple(args.tasks or ()), checkpoint=args.checkpoint,
                      arms=arms, balanced=args.balanced,
                      fast_frozen=args.fast_frozen, missing_as_negative=args.missing_as_negative,
                      n_boot=args.bootstrap, device=args.device, progress=args.progress,
                      **{**pick, "fractions": tuple(pick["fractions"])})


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ecgfast-eval``. Exit codes: 0 done, 2 bad input."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        if args.demo:
            if args.store:
                raise EvalError("--demo makes its own synthetic store: leave out --store")
            args.tasks = args.tasks or list(DEMO_TASKS)
            args.store, args.checkpoint = prepare_demo(Path(args.out), args.checkpoint, args.device, args.progress,
                                                       args.paper)
        elif not args.store:
            raise EvalError("--store is required (or --demo)")
        if not args.tasks:
            names = ECGStore(args.store).label_names()
            raise EvalError("name a task with --task; labels of the store: " + (", ".join(names[:30]) or "none"))
        if not args.checkpoint and args.arms is None:
            print("ecgfast-eval: no --checkpoint: running the random-init arm only", file=sys.stderr)
        t0 = time.perf_counter()
        summary = run_evaluation(config_from_args(args))
    except (StoreError, SplitError, CheckpointError, ValueError, FileNotFoundError) as exc:  # EvalError: ValueError
        print(f"ecgfast-eval: error: {exc}", file=sys.stderr)
        return 2
    print((Path(args.out) / "summary.md").read_text())
    print(f"ecgfast-eval: {len(summary)} rows in {time.perf_counter() - t0:.0f} s; results in {args.out}")
    return 0


__all__ = ["ARMS", "BUDGETS", "DEFAULT_FRACTIONS", "EvalConfig", "EvalError", "Evaluator", "TaskData", "cell_path",
           "load_task", "main", "patient_labels", "prepare_demo", "run_evaluation", "sample_fraction_patients",
           "schedule"]


if __name__ == "__main__":
    sys.exit(main())
