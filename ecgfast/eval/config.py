"""The settings of one evaluation run, and the budget rule every arm of a cell shares (METHOD.md "Downstream protocol").

The budget rule, in optimiser steps (DESIGN.md "Contracts: Evaluation"). An end-to-end arm (random init, finetuned)
trains at least ``min_steps`` steps whatever its label fraction, scores validation AUROC every ``eval_every`` steps,
keeps the weights of the best one (ties: the earlier step), and after the floor stops once ``patience`` evaluations
in a row bring no improvement; ``max_steps`` caps every arm alike, and a cell that reaches it was still improving
and is flagged in the report. The floor is what a budget in epochs lacked: at 1 % of the labels an epoch is one
step, so a cap of a few epochs left such a cell with a few steps. The frozen and random-features arms are a linear
probe on cached features trained to convergence (:mod:`ecgfast.eval.probe`; ``frozen_head="adam"``: the paper's
linear head, lr 0.02, under the same step rule). A CPU-sized run cuts cost for every arm alike (fewer seeds or
fractions, a smaller model), and the report says so in its header.

Imports nothing heavy (no torch): ``ecgfast-eval --help`` is built from here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

ARMS = ("random", "random-features", "frozen", "finetuned")
END_TO_END_ARMS = ("random", "finetuned")  # the whole classifier trains, under the step rule
FEATURE_ARMS = ("random-features", "frozen")  # a linear probe on an encoder's cached features
CHECKPOINT_ARMS = ("frozen", "finetuned")  # need a pretrained encoder
GAINS = {"frozen": "random-features", "finetuned": "random"}  # arm -> its control: what the gain is measured against
FROZEN_HEADS = ("probe", "adam")
DEFAULT_FRACTIONS = (1.0, 5.0, 10.0, 50.0, 100.0)
VAL_SOURCES = ("carved", "store")


@dataclass(frozen=True)
class Budget:
    """The sized defaults of a run; any command-line flag overrides its field."""

    seeds: int  # repetitions per (task, arm, fraction); seed s draws the labelled patients and the init
    min_steps: int  # floor: optimiser steps every end-to-end arm takes, whatever its label fraction
    eval_every: int  # steps between validation AUROCs
    patience: int  # evaluations after the floor without a better validation AUROC before an arm stops
    max_steps: int  # cap every arm shares; a cell stopped by it is flagged
    batch_size: int  # segments per step
    model: str  # TemporalNet preset of the random-init arm when no checkpoint names one
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS  # percent of the training patients with labels


BUDGETS = {
    # the tiny model at 100 Hz on a CPU core: a step of 32 segments ~0.2 s, so a cell takes 40 s to a few minutes
    "cpu": Budget(seeds=5, min_steps=200, eval_every=25, patience=4, max_steps=2000, batch_size=32, model="tiny"),
    "paper": Budget(seeds=5, min_steps=500, eval_every=50, patience=10, max_steps=20000, batch_size=64,
                    model="paper"),
    # demo: the synthetic corpus at 100 Hz, tiny model, 3 fractions; the same floor as the CPU default, a lower cap
    "demo": Budget(seeds=5, min_steps=200, eval_every=25, patience=4, max_steps=1000, batch_size=32, model="tiny",
                   fractions=(1.0, 10.0, 100.0)),
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
    min_steps: int = _CPU.min_steps
    eval_every: int = _CPU.eval_every
    patience: int = _CPU.patience
    max_steps: int = _CPU.max_steps
    batch_size: int = _CPU.batch_size
    model: str = _CPU.model  # preset for random init without a checkpoint (a checkpoint's own preset wins)
    val_source: str = "carved"  # "carved": from the labelled training patients; "store": the store's val split
    val_share: float = 0.2  # carved validation: this share (at most 0.5) of each class's labelled patients, at least 1
    balanced: bool = False  # half positives, half negatives in every batch (the potassium task's setting)
    frozen_head: str = "probe"  # frozen and random-features arms: "probe" (L2 logistic regression), "adam" (lr_head)
    missing_as_negative: bool | None = None  # None: from the label prefix (dx:, scp:)
    lr_random: float = 1e-3
    lr_backbone: float = 1e-4
    lr_head: float = 0.02
    segment: int | None = None  # samples the encoder sees; None: 5 s at the store's rate (2500 at 500 Hz)
    n_boot: int = 1000  # patient-bootstrap resamples for the test interval
    eval_batch_size: int = 128  # segments per forward pass when scoring
    budget_note: str = ""  # what a sized run cut, for the report's header (e.g. "demo: 3 fractions")
    workers: int = 1  # cells run at once on a CPU, each in its own process with cores // workers threads
    allow_store_mismatch: bool = False  # evaluate an encoder pretrained at another rate or unit than the store's
    score_split: str = "test"  # split scored once at the end; "val" chooses settings without reading test records
    feature_cache: str | None = None  # folder of cached encoder features (keyed by content); None: <out>/embeddings
    device: str | None = None
    progress: bool = True

    def check(self) -> None:
        """Raise ``ValueError`` naming the first setting out of range."""
        if not self.tasks:
            raise ValueError("no task: name at least one label with --task")
        bad = sorted(set(self.arms) - set(ARMS))
        if bad or not self.arms or len(set(self.arms)) != len(self.arms):
            raise ValueError(f"arms must be distinct names among {ARMS}, got {list(self.arms)}")
        for name in ("seeds", "min_steps", "eval_every", "patience", "max_steps", "n_boot", "eval_batch_size",
                     "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps < self.min_steps:
            raise ValueError(f"max_steps ({self.max_steps}) must be >= min_steps ({self.min_steps}): the cap "
                             "cannot sit below the floor")
        if self.eval_every > self.min_steps:
            raise ValueError(f"eval_every ({self.eval_every}) must be <= min_steps ({self.min_steps}), or the floor "
                             "would pass without a validation point")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2, got {self.batch_size}")
        if self.frozen_head not in FROZEN_HEADS:
            raise ValueError(f"frozen_head must be one of {FROZEN_HEADS}, got {self.frozen_head!r}")
        if self.val_source not in VAL_SOURCES:
            raise ValueError(f"val_source must be one of {VAL_SOURCES}, got {self.val_source!r}")
        if self.score_split not in ("test", "val"):
            raise ValueError(f"score_split must be test or val, got {self.score_split!r}")
        if self.score_split == "val" and self.val_source != "carved":
            raise ValueError("score_split val scores the store's val split: validation must then be carved from the "
                             "training patients (val_source carved)")
        if not 0 < self.val_share <= 0.5:
            raise ValueError(f"val_share must be in (0, 0.5]: validation may take at most half of each class's "
                             f"labelled patients, got {self.val_share}")
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        if self.workers > cores:
            raise ValueError(f"workers ({self.workers}) must be at most the {cores} cores this process may use: each "
                             "runs cells with its share of them")
        if not self.fractions or len(set(self.fractions)) != len(self.fractions):
            raise ValueError(f"fractions must be distinct percentages, got {list(self.fractions)}")
        if any(not 0 < f <= 100 for f in self.fractions):
            raise ValueError(f"fractions must be percentages in (0, 100], got {list(self.fractions)}")


__all__ = ["ARMS", "BUDGETS", "Budget", "CHECKPOINT_ARMS", "DEFAULT_FRACTIONS", "END_TO_END_ARMS", "EvalConfig",
           "FEATURE_ARMS", "FROZEN_HEADS", "GAINS", "VAL_SOURCES"]
