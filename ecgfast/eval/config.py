"""The settings of one evaluation run, and the budget rule every arm of a cell shares (METHOD.md "Downstream protocol").

The budget rule: each arm trains for at most ``epochs`` passes over its own labelled training data, scores
validation at the end of every epoch, keeps the weights of the best validation AUROC (ties: the earlier epoch),
stops early after ``patience`` epochs without improvement, and scores the test patients once. No arm has a cap
that another lacks; a CPU-sized run cuts cost for every arm alike (fewer epochs, seeds or fractions, a smaller
model), and the report says so in its header.

Imports nothing heavy (no torch): ``ecgfast-eval --help`` is built from here.
"""

from __future__ import annotations

from dataclasses import dataclass

ARMS = ("random", "frozen", "finetuned")
DEFAULT_FRACTIONS = (1.0, 5.0, 10.0, 50.0, 100.0)
VAL_SOURCES = ("carved", "store")


@dataclass(frozen=True)
class Budget:
    """The sized defaults of a run; any command-line flag overrides its field."""

    seeds: int  # repetitions per (task, arm, fraction); seed s draws the labelled patients and the init
    epochs: int  # most passes over an arm's labelled training halves
    patience: int  # epochs without a better validation AUROC before stopping (every arm)
    batch_size: int  # halves per step
    model: str  # TemporalNet preset of the random-init arm when no checkpoint names one
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS  # percent of the training patients with labels


BUDGETS = {
    "cpu": Budget(seeds=5, epochs=20, patience=5, batch_size=32, model="tiny"),
    "paper": Budget(seeds=5, epochs=30, patience=10, batch_size=64, model="paper"),
    # demo: the synthetic corpus at 100 Hz, tiny model, 3 fractions: every arm at most 4 epochs, patience 2
    "demo": Budget(seeds=5, epochs=4, patience=2, batch_size=64, model="tiny", fractions=(1.0, 10.0, 100.0)),
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
    patience: int = _CPU.patience
    batch_size: int = _CPU.batch_size
    model: str = _CPU.model  # preset for random init without a checkpoint (a checkpoint's own preset wins)
    val_source: str = "carved"  # "carved": from the labelled training patients; "store": the store's val split
    val_share: float = 0.2  # carved validation: this share of each class of the labelled patients (at least 1)
    balanced: bool = False  # half positives, half negatives in every batch (the potassium task's setting)
    fast_frozen: bool = False  # frozen arm as logistic regression on embeddings instead of a trained head
    missing_as_negative: bool | None = None  # None: from the label prefix (dx:, scp:)
    lr_random: float = 1e-3
    lr_backbone: float = 1e-4
    lr_head: float = 0.02
    segment: int | None = None  # samples the encoder sees; None: 5 s at the store's rate (2500 at 500 Hz)
    n_boot: int = 1000  # patient-bootstrap resamples for the test interval
    eval_batch_size: int = 128  # segments per forward pass when scoring
    budget_note: str = ""  # what a sized run cut, for the report's header (e.g. "demo: 3 fractions, 8 epochs")
    workers: int = 1  # cells run at once on a CPU, each in its own process with cores // workers threads
    device: str | None = None
    progress: bool = True

    def check(self) -> None:
        """Raise ``ValueError`` naming the first setting out of range."""
        if not self.tasks:
            raise ValueError("no task: name at least one label with --task")
        bad = sorted(set(self.arms) - set(ARMS))
        if bad or not self.arms or len(set(self.arms)) != len(self.arms):
            raise ValueError(f"arms must be distinct names among {ARMS}, got {list(self.arms)}")
        for name in ("seeds", "epochs", "patience", "n_boot", "eval_batch_size", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2, got {self.batch_size}")
        if self.val_source not in VAL_SOURCES:
            raise ValueError(f"val_source must be one of {VAL_SOURCES}, got {self.val_source!r}")
        if not 0 < self.val_share < 1:
            raise ValueError(f"val_share must be in (0, 1), got {self.val_share}")
        if not self.fractions or len(set(self.fractions)) != len(self.fractions):
            raise ValueError(f"fractions must be distinct percentages, got {list(self.fractions)}")
        if any(not 0 < f <= 100 for f in self.fractions):
            raise ValueError(f"fractions must be percentages in (0, 100], got {list(self.fractions)}")


__all__ = ["ARMS", "BUDGETS", "Budget", "DEFAULT_FRACTIONS", "EvalConfig", "VAL_SOURCES"]
