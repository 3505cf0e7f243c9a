"""Pretraining configuration: one dataclass, loadable from TOML, overridable from the command line.

Defaults are the paper's recipe (METHOD.md, "Training recipe"); the embedded synthetic default overrides
the sizes so that it runs on a laptop CPU in minutes (:data:`SYNTHETIC_DEFAULTS`).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from dataclasses import dataclass
from pathlib import Path

import tomllib


@dataclass
class TrainConfig:
    # data
    store: str | None = None  # prepared store; None: make and use the synthetic corpus
    synthetic_patients: int = 200  # synthetic corpus size when store is None
    segment: int = 2500  # samples per view (5 s at 500 Hz); the intersegment views are adjacent halves
    views: str = "intersegment"  # "intersegment": the 2 halves of a 10 s ECG; "augment": 2 copies of 1 crop
    k_per_patient: int = 4  # ECGs of one patient kept together in a batch (patient-aware positives)
    workers: int = 2  # DataLoader worker processes reading the store
    loader: str = "auto"  # input path: "dali" (DALI pipeline), "torch" (DataLoader), "auto": DALI with a GPU
    # model
    model: str = "paper"  # TemporalNet preset: paper, small, tiny
    # augmentation (3KG)
    max_angle_deg: float = 45.0  # rotation angles ~ U(-a, a) per axis
    scale_low: float = 1.0  # per-axis scale ~ U(low, high), inverted with prob. invert_prob
    scale_high: float = 1.5  # upper end of the per-axis scale range
    invert_prob: float = 0.5  # probability that a drawn scale is replaced by its inverse
    mask_fraction: float = 0.5  # ZeroMask: this share of each lead zeroed, one wrapped block
    vcg_transform: str = "dower"  # "dower" or "kors"
    residual: bool = False  # keep non-dipolar content: x + D (S R - I) D_inv x
    noise_std: float = 0.0  # Gaussian noise, mV
    # loss
    temperature: float = 0.1
    patient_weight: float = 1.0  # weight of patient-level positives; 0 disables patient-aware positives
    # optimisation
    batch_size: int = 512  # ECGs per step on each rank
    epochs: int = 210
    max_steps: int | None = None  # stop after this many steps (overrides epochs for the schedule)
    lr: float = 1e-4
    adam_eps: float = 1e-4
    warmup_epochs: float = 50.0
    grad_clip: float = 1.0
    seed: int = 42
    # system
    compile: bool | None = None  # torch.compile (default: on with CUDA, where it pays)
    bf16: bool | None = None  # bf16 autocast (default: on with CUDA)
    device: str | None = None  # None: cuda if available else cpu
    out: str = "runs/pretrain"
    ckpt_every: int = 500  # steps between checkpoints (and one at the end)
    log_every: int = 10
    max_nonfinite: int = 20  # consecutive non-finite losses tolerated before the run stops
    progress: bool = True

    def __post_init__(self) -> None:
        if self.views not in ("intersegment", "augment"):
            raise ValueError(f"views must be 'intersegment' or 'augment', got {self.views!r}")
        if self.temperature <= 0 or self.lr <= 0 or self.batch_size < 2 or self.segment < 1:
            raise ValueError("temperature and lr must be > 0, batch_size >= 2, segment >= 1")


#: Allowed values of the string settings (the CLI offers them as choices).
CHOICES = {"views": ("intersegment", "augment"), "model": ("paper", "small", "tiny"),
           "vcg_transform": ("dower", "kors"), "loader": ("auto", "dali", "torch")}


def field_help() -> dict[str, str]:
    """{field: its trailing comment in TrainConfig's source}: one place documents each setting, CLI included."""
    source = inspect.getsource(TrainConfig)
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^\s+(\w+): [^=]+=[^#\n]*#(.*)$", source, re.M)}


#: The embedded default: a small model on a small synthetic corpus, minutes on a 2-core CPU.
SYNTHETIC_DEFAULTS = {"model": "tiny", "batch_size": 32, "epochs": 4, "warmup_epochs": 1.0, "lr": 1e-3,
                      "ckpt_every": 50, "log_every": 5, "workers": 1}


def load_config(path: str | Path | None = None, overrides: dict | None = None,
                base: dict | None = None) -> TrainConfig:
    """TrainConfig from defaults, then ``base``, then a TOML file, then ``overrides`` (None values ignored).

    Raises:
        ValueError: an unknown key (named) or a value of the wrong kind.
    """
    values: dict = dict(base or {})
    if path is not None:
        with open(path, "rb") as f:
            values.update(tomllib.load(f))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown}" + (f" in {path}" if path else ""))
    return TrainConfig(**values)


def to_toml(config: TrainConfig) -> str:
    """The resolved config as TOML (saved with every run)."""
    lines = []
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        if v is None:
            continue  # TOML has no null: absent means the default (auto)
        lines.append(f"{f.name} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


__all__ = ["TrainConfig", "SYNTHETIC_DEFAULTS", "load_config", "to_toml"]
