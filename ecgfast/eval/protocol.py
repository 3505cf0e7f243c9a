"""One cell of the downstream protocol: (task, arm, label fraction, seed) -> a classifier trained under the budget
rule of :mod:`ecgfast.eval.config`, chosen on validation, the test patients scored once.

Arms (METHOD.md, DESIGN.md "Contracts: Evaluation"):

- random init: the whole classifier trains from the weights ``torch.manual_seed(seed)`` gives, Adam lr 1e-3;
- finetuned: the pretrained encoder with a new head, backbone lr 1e-4, head lr 0.02;
- frozen: a linear probe on the pretrained encoder's cached features (eval mode), trained to convergence
  (:mod:`ecgfast.eval.probe`), its L2 penalty chosen on the cell's validation patients; ``frozen_head="adam"``
  trains the paper's linear head (lr 0.02) on the cached segment features under the step rule instead;
- random-features: the same probe on the untrained encoder of the same architecture that the random-init arm of the
  seed starts from (:func:`ecgfast.eval.embed.random_encoder`). Its features are computed once per seed and cached
  beside the frozen ones: one fixed random encoder for every seed would hide the spread that the choice of
  initialisation adds, which the random-init arm's interval includes; and a seed's pair (random-features, frozen)
  then differs only by pretraining. ``frozen - random-features`` is what pretraining put into the representation.

End-to-end arms use BCE with logits; a step shows a batch of records, each through one of its S segments drawn at
random; a record's score is the mean of its S segments' logits. The probes see a record as the mean of its segments'
features (the head is linear, so the two agree).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from ..data.splits import SPLITS
from ..data.store import ECGStore
from ..data.windows import segment_starts
from ..device import resolve_device
from ..models.temporalnet import ClassifierHead, DualStreamTemporalNet, ECGClassifier, temporalnet_config
from ..pretrain.checkpoint import load_weights, weights_sha256
from .config import CHECKPOINT_ARMS, END_TO_END_ARMS, EvalConfig
from .embed import (
    checkpoint_preset,
    load_encoder,
    map_records,
    n_segments,
    random_encoder,
    record_segments,
    split_embeddings,
)
from .probe import L2_GRID, MAX_ITER, select_probe
from .report import auroc, bootstrap_auroc
from .tasks import EvalError, FractionDraw, TaskData, judge_cell, patient_labels

PROTOCOL = 4  # version of what a cell computes; saved cells of another version are not reused
# a cell's path keys and the content read from each. The path is informative only: the same content at another path
# (a run folder moved, copied to another machine) is the same cell; other content at another path is another store or
# checkpoint (refused); other content at the same path was rewritten since (stale: recomputed).
PATH_OF_CONTENT = {"store": "store_content", "checkpoint": "checkpoint_weights"}
CONTENT_KEYS = tuple(PATH_OF_CONTENT.values())


def batches(y: np.ndarray, batch_size: int, balanced: bool, rng: np.random.Generator) -> Iterator[np.ndarray]:
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


def fit_with_early_stopping(module: torch.nn.Module, optimizer: torch.optim.Optimizer,
                            inputs: Callable[[np.ndarray], torch.Tensor], y: np.ndarray, n_seg: int,
                            score_val: Callable[[], np.ndarray], y_val: np.ndarray, cfg: EvalConfig,
                            rng: np.random.Generator, device: torch.device) -> dict:
    """The step rule on records with labels ``y`` (N,), each of ``n_seg`` segments (sample ``r * n_seg + s`` is
    segment s of record r: what ``inputs`` takes; a step draws one segment of each record of its batch).

    Validation AUROC every ``cfg.eval_every`` steps (and at the cap); the best step's weights are kept (ties: the
    earlier; NaN never wins). Evaluations up to ``cfg.min_steps`` never count against patience; after the floor,
    ``cfg.patience`` evaluations in a row without a better AUROC stop the arm (``stopped_by`` "patience"), else it
    stops at ``cfg.max_steps`` ("cap": it was still improving, or had not yet run out of patience). ``module`` ends in
    eval mode with the chosen weights.
    """
    loss_fn = torch.nn.BCEWithLogitsLoss()
    target = torch.as_tensor(y, dtype=torch.float32, device=device)
    stream = batches(y, cfg.batch_size, cfg.balanced, rng)
    val_steps: list[int] = []
    history: list[float] = []
    best, best_state, best_step, since, step, stopped_by = -math.inf, None, 0, 0, 0, "cap"
    module.train()
    while step < cfg.max_steps:
        rec = next(stream)  # (b,) records, then one segment of each at random
        idx = rec * n_seg + rng.integers(0, n_seg, size=len(rec))
        loss = loss_fn(module(inputs(idx))[:, 0], target[rec])  # logits (b,) against the records' labels
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        if step % cfg.eval_every and step < cfg.max_steps:
            continue
        module.eval()
        scores = score_val()
        module.train()
        val = auroc(y_val, scores) if np.isfinite(scores).all() else float("nan")
        val_steps.append(step)
        history.append(val)
        if best_state is None or val > best:  # strict: ties keep the earlier step
            best, best_step, since = (val if np.isfinite(val) else -math.inf), step, 0
            best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        elif step > cfg.min_steps:  # patience counts only after the floor
            since += 1
            if since >= cfg.patience:
                stopped_by = "patience"
                break
    module.load_state_dict(best_state)
    module.eval()
    return {"steps": step, "best_step": best_step, "stopped_by": stopped_by, "val_steps": val_steps,
            "val_auroc": history, "val_auroc_best": best if np.isfinite(best) else float("nan")}


class Evaluator:
    """Runs cells on one store; holds the store, the checkpoint and the cached features (computed once per encoder)."""

    def __init__(self, cfg: EvalConfig):
        self.store = ECGStore(cfg.store)  # refuses a store whose splits mix patients
        if cfg.segment is None:  # 5 s, the encoder's window in METHOD.md, at the store's rate
            cfg = dataclasses.replace(cfg, segment=round(5 * self.store.fs))
        self.cfg = cfg
        self.segments = n_segments(self.store.n_samples, cfg.segment)
        try:
            self.device = resolve_device(cfg.device)
        except ValueError as exc:
            raise EvalError(str(exc)) from exc
        self.ckpt, self.preset = (None, cfg.model)
        self.weights = None  # the checkpoint's weights hash: cells and cached features are keyed by content
        if cfg.checkpoint:
            self.ckpt, self.preset = checkpoint_preset(cfg.checkpoint)  # random arms take its architecture too
            self.weights = weights_sha256(self.ckpt)
        needs = [a for a in cfg.arms if a in CHECKPOINT_ARMS]
        if needs and self.ckpt is None:
            raise EvalError(f"arm(s) {needs} need a pretrained encoder: pass --checkpoint (a pretraining run or "
                            "checkpoint folder), or run --arms random random-features")
        self._features: dict[int | None, dict[str, tuple[np.ndarray, np.ndarray]]] = {}

    def fingerprint(self, arm: str) -> dict:
        """The settings a cell's result depends on; a saved cell is reused only when they match. The keys of
        :data:`CONTENT_KEYS` are the content of the store and the checkpoint (not their paths)."""
        c = self.cfg
        fp = {"store": str(Path(c.store).resolve()), "store_content": self.store.fingerprint(), "segment": c.segment,
              "n_boot": c.n_boot, "preset": self.preset,
              "missing_as_negative": c.missing_as_negative, "val_source": c.val_source, "val_share": c.val_share,
              "balanced": c.balanced, "protocol": PROTOCOL,
              "score_split": c.score_split}  # not the worker count: it does not change what is computed
        steps = {"min_steps": c.min_steps, "eval_every": c.eval_every, "patience": c.patience,
                 "max_steps": c.max_steps, "batch_size": c.batch_size}
        if arm in END_TO_END_ARMS:
            fp.update(steps)
            fp.update(lr=c.lr_random) if arm == "random" else fp.update(lr_backbone=c.lr_backbone, lr_head=c.lr_head)
        else:
            fp["frozen_head"] = c.frozen_head
            fp.update({"l2_grid": list(L2_GRID), "max_iter": MAX_ITER} if c.frozen_head == "probe"
                      else {**steps, "lr_head": c.lr_head})
            if arm == "random-features":
                fp["encoder"] = "untrained, torch.manual_seed(seed)"
        if arm in CHECKPOINT_ARMS:
            # None without --checkpoint: a saved cell of this arm then differs, and is named, not reused
            fp.update(checkpoint=str(self.ckpt.resolve()) if self.ckpt else None, checkpoint_weights=self.weights)
        return fp

    def features(self, seed: int | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per split (rows, (N, S, D) features) of the pretrained encoder (``seed`` None) or of the untrained encoder
        of ``seed`` (the random-features arm), cached in ``<out>/embeddings`` or ``feature_cache`` (one pass per
        encoder and segment; files keyed by content, so a cache may be shared by runs). Only the splits the run
        reads are embedded: the test split not at all when ``score_split`` is "val"."""
        if seed not in self._features:
            folder = Path(self.cfg.feature_cache or Path(self.cfg.out) / "embeddings")
            if seed is None:
                encoder, ckpt, _ = load_encoder(self.ckpt, self.device)
                source = None
            else:
                encoder, ckpt = random_encoder(self.preset, seed, self.device), None
                source = {"random_init": self.preset, "seed": seed, "torch": torch.__version__.split("+")[0]}
                folder = folder / f"random-init-{self.preset}-s{seed}"
            self._features[seed] = {s: split_embeddings(encoder, self.store, ckpt, s, folder, self.cfg.segment,
                                                        self.cfg.eval_batch_size, self.device, self.cfg.progress,
                                                        source=source) for s in self.splits_read}
        return self._features[seed]

    @property
    def splits_read(self) -> tuple[str, ...]:
        """The store splits this run reads records of: train, the scored split, and val where it validates."""
        wanted = {"train", self.cfg.score_split} | ({"val"} if self.cfg.val_source == "store" else set())
        return tuple(s for s in SPLITS if s in wanted)

    def run_cell(self, task: TaskData, arm: str, fraction: float, seed: int, codes: np.ndarray,
                 draw: FractionDraw) -> dict:
        """Train and score one (task, arm, fraction, seed) cell. ``codes`` are the task's training patient codes,
        ``draw`` indexes them: the cell's training patients and (carved) validation patients.

        The seed fixes the initialisation, dropout and batch order; torch's global RNG is left as it was.
        """
        t0 = time.perf_counter()
        scored = self.cfg.score_split  # "test", or "val" when choosing settings (the test split is never read then)
        train_keep = np.isin(task.patients["train"], codes[draw.train])
        rows, y_rec = task.rows["train"][train_keep], task.y["train"][train_keep]
        if self.cfg.val_source == "carved":
            val_keep = np.isin(task.patients["train"], codes[draw.val])
            val_rows, y_val, val_patients = (task.rows["train"][val_keep], task.y["train"][val_keep],
                                             task.patients["train"][val_keep])
        else:
            val_rows, y_val, val_patients = task.rows["val"], task.y["val"], task.patients["val"]
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            rng = np.random.default_rng([seed, 2])
            cell = self._end_to_end if arm in END_TO_END_ARMS else self._on_features
            result, score_test = cell(arm, seed, rows, y_rec, val_rows, y_val, task.rows[scored], rng)
        y_test, finite = task.y[scored], bool(np.isfinite(score_test).all())  # a diverged model scores NaN
        lo, hi = (bootstrap_auroc(y_test, score_test, task.patients[scored], n_boot=self.cfg.n_boot, seed=seed)
                  if finite else (float("nan"),) * 2)
        _, train_lab = patient_labels(y_rec, task.patients["train"][train_keep])
        _, val_lab = patient_labels(y_val, val_patients)
        usable, why, levels = judge_cell(train_lab, val_lab, y_val)  # counts only: the same for every arm
        return {"task": task.name, "arm": arm, "fraction": fraction, "seed": seed, **result,
                "test_auroc": auroc(y_test, score_test) if finite else float("nan"), "test_lo": lo, "test_hi": hi,
                "usable": usable, "unusable_reason": why, "val_auroc_levels": levels,
                "n_train_patients": len(train_lab), "n_train_positive_patients": int(train_lab.sum()),
                "n_val_patients": len(val_lab), "n_val_positive_patients": int(val_lab.sum()),
                "n_train_records": len(rows), "n_test_records": len(y_test),
                "n_test_patients": len(np.unique(task.patients[scored])), "scored_on": scored,
                "seconds": round(time.perf_counter() - t0, 2), "settings": self.fingerprint(arm)}

    def _end_to_end(self, arm: str, seed: int, rows: np.ndarray, y_rec: np.ndarray, val_rows: np.ndarray,
                    y_val: np.ndarray, test_rows: np.ndarray, rng: np.random.Generator) -> tuple[dict, np.ndarray]:
        """Random-init or finetuned arm: the whole classifier trains on the segments of records ``rows``."""
        cfg, n_seg, store = self.cfg, self.segments, self.store
        model = ECGClassifier(DualStreamTemporalNet(temporalnet_config(self.preset)))  # encoder first: random_encoder
        if arm == "finetuned":
            load_weights(model.encoder, self.ckpt)
            opt = torch.optim.Adam(model.parameter_groups(backbone_lr=cfg.lr_backbone, head_lr=cfg.lr_head))
        else:
            opt = torch.optim.Adam(model.parameters(), lr=cfg.lr_random)
        model.to(self.device)
        starts = segment_starts(store.valid_length[rows], n_seg, cfg.segment)  # (N, S), the valid part only

        def inputs(idx: np.ndarray) -> torch.Tensor:  # sample i is segment i % S of record i // S
            rec, seg = idx // n_seg, idx % n_seg
            x = torch.from_numpy(store.read_mv(rows[rec])).to(self.device)  # (b, 8, T) mV
            return record_segments(x, starts[rec, seg][:, None], cfg.segment)[:, 0]

        def score(split_rows: np.ndarray) -> np.ndarray:
            logits = map_records(lambda seg: model(seg)[:, 0], store, split_rows, cfg.segment, cfg.eval_batch_size,
                                 self.device)  # (N, S)
            return logits.mean(axis=1)  # a record's score: the mean of its segments' logits

        result = fit_with_early_stopping(model, opt, inputs, y_rec, n_seg, lambda: score(val_rows), y_val, cfg, rng,
                                         self.device)
        return {**result, "method": "end to end"}, score(test_rows)

    def _on_features(self, arm: str, seed: int, rows: np.ndarray, y_rec: np.ndarray, val_rows: np.ndarray,
                     y_val: np.ndarray, test_rows: np.ndarray, rng: np.random.Generator) -> tuple[dict, np.ndarray]:
        """Frozen or random-features arm on cached features: the probe, or (``frozen_head="adam"``) a linear head
        trained under the step rule."""
        cfg, n_seg = self.cfg, self.segments
        have = self.features(seed if arm == "random-features" else None)  # split -> (rows ascending, (N, S, D))
        all_rows = np.concatenate([v[0] for v in have.values()])
        all_feats = np.concatenate([v[1] for v in have.values()])
        order = np.argsort(all_rows)
        feats = {}
        for name, want in (("train", rows), ("val", val_rows), ("test", test_rows)):
            pos = order[np.searchsorted(all_rows[order], want)]
            feats[name] = torch.from_numpy(all_feats[pos]).to(self.device)
        encoder = "an untrained encoder's" if arm == "random-features" else "the pretrained encoder's"
        if cfg.frozen_head == "probe":
            x = {k: v.mean(dim=1).double().cpu().numpy() for k, v in feats.items()}  # (N, D): segments averaged
            probe = select_probe(x["train"], y_rec, x["val"], y_val, cfg.balanced)
            return ({"method": f"logistic regression on {encoder} features", "l2": probe.l2,
                     "val_auroc_best": probe.val_auroc, "steps": probe.n_iter,
                     "stopped_by": "converged" if probe.converged else "cap"}, probe.decision_function(x["test"]))
        d = feats["train"].shape[-1]
        head = ClassifierHead(d).to(self.device)  # (b, 1, D) -> (b, 1) logits: the classifier's linear head
        opt = torch.optim.Adam(head.parameters(), lr=cfg.lr_head)
        flat = feats["train"].reshape(-1, 1, d)  # (N*S, 1, D), sample i = segment i % S of record i // S

        def score(name: str) -> np.ndarray:
            with torch.no_grad():
                f = feats[name]
                return head(f.reshape(-1, 1, d)).view(f.shape[0], n_seg).mean(1).cpu().numpy()

        result = fit_with_early_stopping(head, opt, lambda idx: flat[torch.from_numpy(idx)], y_rec, n_seg,
                                         lambda: score("val"), y_val, cfg, rng, self.device)
        return {**result, "method": f"linear head (Adam) on {encoder} cached features"}, score("test")


__all__ = ["PROTOCOL", "Evaluator", "batches", "fit_with_early_stopping"]
