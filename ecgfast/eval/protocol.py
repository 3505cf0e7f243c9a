"""One cell of the downstream protocol: (task, arm, label fraction, seed) -> a classifier trained under the budget
rule of :mod:`ecgfast.eval.config`, its epoch chosen on validation, the test patients scored once.

Arms (METHOD.md): random init, all trainable, Adam lr 1e-3; frozen, a linear head (lr 0.02) on the pretrained
encoder in eval mode, trained on its cached features (identical to training through the frozen encoder), or with
``fast_frozen`` an L2 logistic regression on record embeddings (:mod:`ecgfast.eval.probe`); finetuned, backbone
lr 1e-4 and head lr 0.02. BCE with logits. An epoch shows every training record once, through one of its S segments
drawn at random; a record's score is the mean of its S segments' logits.
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
from ..models.temporalnet import ClassifierHead, DualStreamTemporalNet, ECGClassifier, temporalnet_config
from ..pretrain.checkpoint import load_weights
from .config import EvalConfig
from .embed import checkpoint_preset, load_encoder, map_records, n_segments, record_segments, split_embeddings
from .probe import select_probe
from .report import auroc, bootstrap_auroc
from .tasks import EvalError, FractionDraw, TaskData, patient_labels


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
    """The budget rule on records with labels ``y`` (N,), each of ``n_seg`` segments: at most ``cfg.epochs``
    epochs, each showing every record once through one of its segments drawn at random (sample ``r * n_seg + s``
    is segment s of record r: what ``inputs`` takes), validation AUROC after each epoch, the best epoch's weights
    kept (ties: the earlier; NaN never wins), early stop after ``cfg.patience`` epochs without a better one.
    ``module`` ends in eval mode with the chosen weights."""
    steps_per_epoch = math.ceil(len(y) / cfg.batch_size)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    target = torch.as_tensor(y, dtype=torch.float32, device=device)
    stream = batches(y, cfg.batch_size, cfg.balanced, rng)
    history: list[float] = []
    best, best_state, best_epoch, since = -math.inf, None, 0, 0
    for epoch in range(1, cfg.epochs + 1):
        module.train()
        for _ in range(steps_per_epoch):
            rec = next(stream)  # (b,) records, then one segment of each at random
            idx = rec * n_seg + rng.integers(0, n_seg, size=len(rec))
            loss = loss_fn(module(inputs(idx))[:, 0], target[rec])  # logits (b,) against the records' labels
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        module.eval()
        scores = score_val()
        val = auroc(y_val, scores) if np.isfinite(scores).all() else float("nan")
        history.append(val)
        if best_state is None or val > best:  # strict: ties keep the earlier epoch
            best, best_epoch, since = (val if np.isfinite(val) else -math.inf), epoch, 0
            best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        else:
            since += 1
            if since >= cfg.patience:
                break
    module.load_state_dict(best_state)
    module.eval()
    return {"epochs_run": len(history), "steps_per_epoch": steps_per_epoch, "val_auroc": history,
            "best_epoch": best_epoch, "val_auroc_best": best if np.isfinite(best) else float("nan")}


class Evaluator:
    """Runs cells on one store; holds the store, the checkpoint and the frozen features (computed once)."""

    def __init__(self, cfg: EvalConfig):
        self.store = ECGStore(cfg.store)  # refuses a store whose splits mix patients
        if cfg.segment is None:  # 5 s, the encoder's window in METHOD.md, at the store's rate
            cfg = dataclasses.replace(cfg, segment=round(5 * self.store.fs))
        self.cfg = cfg
        self.segments = n_segments(self.store.n_samples, cfg.segment)
        self.device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.ckpt, self.preset = (None, cfg.model)
        if cfg.checkpoint:
            self.ckpt, self.preset = checkpoint_preset(cfg.checkpoint)
        needs = [a for a in cfg.arms if a != "random"]
        if needs and self.ckpt is None:
            raise EvalError(f"arm(s) {needs} need a pretrained encoder: pass --checkpoint (a pretraining run or "
                            "checkpoint folder), or run --arms random")
        self._features: dict[str, tuple[np.ndarray, np.ndarray]] | None = None

    def fingerprint(self, arm: str) -> dict:
        """The settings a cell's result depends on; a saved cell is reused only when they match."""
        c = self.cfg
        fp = {"store": str(Path(c.store).resolve()), "epochs": c.epochs, "patience": c.patience,
              "batch_size": c.batch_size, "balanced": c.balanced, "segment": c.segment, "n_boot": c.n_boot,
              "preset": self.preset, "missing_as_negative": c.missing_as_negative, "val_source": c.val_source,
              "val_share": c.val_share, "protocol": 3}  # not the worker count: it does not change what is computed
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

    def run_cell(self, task: TaskData, arm: str, fraction: float, seed: int, codes: np.ndarray,
                 draw: FractionDraw) -> dict:
        """Train and score one (task, arm, fraction, seed) cell. ``codes`` are the task's training patient codes,
        ``draw`` indexes them: the cell's training patients and (carved) validation patients.

        The seed fixes the initialisation, dropout and batch order; torch's global RNG is left as it was.
        """
        t0 = time.perf_counter()
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
            cell = self._frozen if arm == "frozen" else self._end_to_end
            result, score_test = cell(arm, rows, y_rec, val_rows, y_val, task.rows["test"], rng)
        y_test, finite = task.y["test"], bool(np.isfinite(score_test).all())  # a diverged model scores NaN
        lo, hi = (bootstrap_auroc(y_test, score_test, task.patients["test"], n_boot=self.cfg.n_boot, seed=seed)
                  if finite else (float("nan"),) * 2)
        _, train_lab = patient_labels(y_rec, task.patients["train"][train_keep])
        _, val_lab = patient_labels(y_val, val_patients)
        return {"task": task.name, "arm": arm, "fraction": fraction, "seed": seed, **result,
                "test_auroc": auroc(y_test, score_test) if finite else float("nan"), "test_lo": lo, "test_hi": hi,
                "n_train_patients": len(train_lab), "n_train_positive_patients": int(train_lab.sum()),
                "n_val_patients": len(val_lab), "n_val_positive_patients": int(val_lab.sum()),
                "n_train_records": len(rows), "n_test_records": len(y_test),
                "n_test_patients": len(np.unique(task.patients["test"])),
                "seconds": round(time.perf_counter() - t0, 2), "settings": self.fingerprint(arm)}

    def _end_to_end(self, arm: str, rows: np.ndarray, y_rec: np.ndarray, val_rows: np.ndarray, y_val: np.ndarray,
                    test_rows: np.ndarray, rng: np.random.Generator) -> tuple[dict, np.ndarray]:
        """Random-init or finetuned arm: the whole classifier trains on the segments of records ``rows``."""
        cfg, n_seg, store = self.cfg, self.segments, self.store
        model = ECGClassifier(DualStreamTemporalNet(temporalnet_config(self.preset)))
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

    def _frozen(self, arm: str, rows: np.ndarray, y_rec: np.ndarray, val_rows: np.ndarray, y_val: np.ndarray,
                test_rows: np.ndarray, rng: np.random.Generator) -> tuple[dict, np.ndarray]:
        """Frozen arm on the cached features: a linear head trained under the same rule as the other arms, or
        (``fast_frozen``) a logistic regression on record embeddings."""
        cfg, n_seg = self.cfg, self.segments
        have = self.features()  # split -> (rows ascending, (N, S, D) features)
        all_rows = np.concatenate([have[s][0] for s in SPLITS])
        all_feats = np.concatenate([have[s][1] for s in SPLITS])
        order = np.argsort(all_rows)
        feats = {}
        for name, want in (("train", rows), ("val", val_rows), ("test", test_rows)):
            pos = order[np.searchsorted(all_rows[order], want)]
            feats[name] = torch.from_numpy(all_feats[pos]).to(self.device)
        if cfg.fast_frozen:
            x = {k: v.mean(dim=1).double().cpu().numpy() for k, v in feats.items()}  # (N, D): segments averaged
            probe = select_probe(x["train"], y_rec, x["val"], y_val, cfg.balanced)
            return ({"method": "logistic regression on frozen embeddings", "l2": probe.l2,
                     "val_auroc_best": probe.val_auroc, "epochs_run": 0}, probe.decision_function(x["test"]))
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
        return {**result, "method": "linear head on cached frozen features"}, score("test")


__all__ = ["Evaluator", "batches", "fit_with_early_stopping"]
