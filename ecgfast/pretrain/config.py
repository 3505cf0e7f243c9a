"""Pretraining configuration: one dataclass, loadable from TOML, overridable from the command line.

Defaults are the paper's recipe (METHOD.md, "Training recipe"); the embedded synthetic default overrides the
sizes so that it runs on a laptop CPU in minutes (:data:`SYNTHETIC_DEFAULTS`). The augmentation and the loss
carry their ops' own config classes (``[augment]`` and ``[loss]`` tables in TOML). Every value from a file or
the command line is checked for its type and range before anything runs; errors name the key and the file.

Imports nothing heavy (no torch): ``ecgfast-train --help`` is built from here.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from ..ops.configs import LOSS_PRECISIONS, ContrastiveLossConfig, VCGAugmentConfig


class ConfigError(ValueError):
    """A configuration value of the wrong type or out of range, or an unknown key."""


#: Allowed values of the string settings (the CLI offers them as choices).
CHOICES: dict[str, tuple[str, ...]] = {
    "views": ("intersegment", "augment"), "model": ("paper", "small", "tiny"), "loader": ("auto", "dali", "torch"),
    "transform": ("dower", "kors"), "reduction": ("mean", "sum", "none"),
    "memory": ("auto", "full", "checkpoint", "chunked"), "precision": LOSS_PRECISIONS}


@dataclass
class TrainConfig:
    # data
    store: str | None = None  # prepared store; None: make and use the synthetic corpus
    synthetic_patients: int = 200  # synthetic corpus size when store is None
    synthetic_fs: float = 100.0  # synthetic store's rate, Hz: 100 is five times cheaper than 500 on a laptop CPU
    segment: int | None = None  # samples per view; unset: 5 s at the store's rate (2500 at 500 Hz)
    views: str = "intersegment"  # "intersegment": two adjacent segments of an ECG; "augment": 2 copies of 1 crop
    k_per_patient: int = 4  # ECGs of one patient kept together in a batch (patient-aware positives)
    pretrain_share: float = 1.0  # share of the train split's patients pretraining reads (seeded, nested: 0.25 in 0.5)
    workers: int = 2  # DataLoader worker processes reading the store
    loader: str = "auto"  # input path: "dali" (DALI pipeline), "torch" (DataLoader), "auto": DALI with a GPU
    # model
    model: str = "paper"  # TemporalNet preset: paper, small, tiny
    # augmentation (3KG) and loss: the fused ops' own configs, [augment] and [loss] in TOML
    augment: VCGAugmentConfig = field(default_factory=VCGAugmentConfig)
    loss: ContrastiveLossConfig = field(default_factory=lambda: ContrastiveLossConfig(weights=(1.0, 1.0)))
    # optimisation
    batch_size: int = 512  # ECGs per step over all ranks (the recipe's global batch), split evenly over DDP ranks
    epochs: int = 210  # passes over the train split
    max_steps: int | None = None  # stop after this many steps (the schedule then spans them); unset: epochs
    lr: float = 1e-4  # Adam learning rate after warm-up
    adam_eps: float = 1e-4  # Adam epsilon (the authors' value)
    warmup_epochs: float = 50.0  # linear warm-up, then cosine decay to 0
    grad_clip: float = 1.0  # gradient norm clipping
    seed: int = 42  # seeds the sampler, the augmentation and the initialisation
    # system
    compile: bool | None = None  # torch.compile (default: on with CUDA, where it pays)
    bf16: bool | None = None  # bf16 autocast (default: on with CUDA)
    device: str | None = None  # None: cuda if available else cpu
    memory: str = "auto"  # full, checkpoint (blocks recompute in backward), chunked (GradCache); auto: what fits
    memory_chunk: int | None = None  # ECGs per chunk in chunked mode (BatchNorm sees a chunk); unset: largest fitting
    out: str = "runs/pretrain"  # run folder: config.toml, metrics.csv, checkpoints/
    ckpt_every: int = 500  # steps between checkpoints (and one at the end)
    log_every: int = 10  # steps between throughput measurements (ecgs_per_s in metrics.csv and the progress bar)
    monitor_every: int = 1000  # steps between validation measures (rankme, probe AUROCs), also at 0 and end; 0: off
    monitor_ecgs: int = 512  # validation ECGs the monitor embeds (a fixed sample; all of them when fewer)
    peak_tflops: float | None = None  # one device's peak TFLOP/s for MFU; unset: the GPU's datasheet (none on a CPU)
    max_nonfinite: int = 20  # consecutive non-finite losses tolerated before the run stops
    progress: bool = True  # progress bar

    def __post_init__(self) -> None:
        for name, choices in CHOICES.items():
            if name in TrainConfig.__dataclass_fields__ and getattr(self, name) not in choices:
                raise ConfigError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        positive_ints = ("synthetic_patients", "segment", "k_per_patient", "epochs", "ckpt_every", "log_every",
                         "memory_chunk")
        for name in positive_ints:
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1 (or unset for the epochs' steps), got {self.max_steps}")
        if self.batch_size < 2:
            raise ConfigError(f"batch_size must be >= 2 (a contrastive batch needs negatives), got {self.batch_size}")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed must be in [0, 2**32), got {self.seed}")
        if self.workers < 0 or self.max_nonfinite < 0:
            raise ConfigError(f"workers and max_nonfinite must be >= 0, got {self.workers}, {self.max_nonfinite}")
        if not 0 < self.pretrain_share <= 1:
            raise ConfigError(f"pretrain_share must be in (0, 1], got {self.pretrain_share}")
        if self.monitor_every < 0:
            raise ConfigError(f"monitor_every must be >= 0 (0 turns the monitor off), got {self.monitor_every}")
        if self.monitor_ecgs < 2:
            raise ConfigError(f"monitor_ecgs must be >= 2 (uniformity needs pairs), got {self.monitor_ecgs}")
        if self.peak_tflops is not None and not 0 < self.peak_tflops < math.inf:
            raise ConfigError(f"peak_tflops must be a finite number > 0 (or unset), got {self.peak_tflops}")
        for name in ("lr", "adam_eps", "grad_clip"):
            if not 0 < getattr(self, name) < math.inf:
                raise ConfigError(f"{name} must be a finite number > 0, got {getattr(self, name)}")
        if not 50.0 <= self.synthetic_fs <= 1000.0:
            raise ConfigError(f"synthetic_fs must be in [50, 1000] Hz, got {self.synthetic_fs}")
        if not 0 <= self.warmup_epochs < math.inf:
            raise ConfigError(f"warmup_epochs must be a finite number >= 0, got {self.warmup_epochs}")
        if self.loss.weights is not None and len(self.loss.weights) != 2:
            raise ConfigError(f"loss weights are (ECG, patient): two numbers, got {list(self.loss.weights)}")


#: The embedded default: a small model on a small synthetic corpus, minutes on a 2-core CPU.
SYNTHETIC_DEFAULTS: dict[str, object] = {"model": "tiny", "batch_size": 32, "epochs": 4, "warmup_epochs": 1.0,
                                         "lr": 1e-3, "ckpt_every": 50, "log_every": 5, "workers": 1}

#: Saved-for-backward MB per ECG of the paper preset, bf16, 5 s at 500 Hz (two views), by ``--memory`` mode, as
#: ``ecgfast.pretrain.memory.activation_memory`` measures them (tests/test_memory.py checks them): for --help, which
#: must not import torch. A chunked step holds one chunk at full's cost per ECG, and ~56 kB per ECG of the batch.
PAPER_SAVED_MB_PER_ECG: dict[str, float] = {"full": 171.0, "checkpoint": 62.2}

#: The nested config classes and the TOML table each one is read from.
SECTIONS: dict[str, type] = {"augment": VCGAugmentConfig, "loss": ContrastiveLossConfig}


def field_help(cls: type = TrainConfig) -> dict[str, str]:
    """{field: its trailing comment in ``cls``'s source}: one place documents each setting, CLI help included."""
    source = inspect.getsource(cls)
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^\s+(\w+): [^=]+=[^#\n]*#(.*)$", source, re.M)}


def leaf_fields() -> list[tuple[str | None, dataclasses.Field]]:
    """Every setting as (section or None, field): TrainConfig's own, then those of [augment] and [loss]."""
    own = [(None, f) for f in dataclasses.fields(TrainConfig) if f.name not in SECTIONS]
    return own + [(s, f) for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


def _types(cls: type) -> dict[str, object]:
    return typing.get_type_hints(cls)


def check_value(value: object, annotation: object, key: str, where: str = "") -> object:
    """``value`` as the type ``annotation`` asks (an int for a float, a list for a tuple), or a ``ConfigError``.

    Strict where TOML and the CLI could confuse a user: a bool is not a number, a string is never a bool
    (``compile = "no"`` is an error, not true), a float is not an int.
    """
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    place = f"{key}{' in ' + where if where else ''}"
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return check_value(value, inner[0], key, where)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{place}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{place}: expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise ConfigError(f"{place}: expected a finite number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{place}: expected a string, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{place}: expected a list, got {value!r}")
        variadic = len(args) == 2 and args[1] is Ellipsis
        if not variadic and len(value) != len(args):
            raise ConfigError(f"{place}: expected {len(args)} values, got {list(value)}")
        kinds = [args[0]] * len(value) if variadic else list(args)
        return tuple(check_value(v, k, key, where) for v, k in zip(value, kinds, strict=True))
    raise ConfigError(f"{place}: unsupported setting type {annotation}")  # a programming error, said plainly


def load_config(path: str | Path | None = None, overrides: dict | None = None,
                base: dict | None = None) -> TrainConfig:
    """TrainConfig from defaults, then ``base``, then a TOML file, then ``overrides`` (None values ignored).

    ``base`` and ``overrides`` are flat (``{"lr": 1e-3, "noise_std": 0.1}``: a leaf name finds its section);
    the file has ``[augment]`` and ``[loss]`` tables for those sections.

    Raises:
        ConfigError: an unknown key (named), a value of the wrong type or out of range, unreadable TOML.
        FileNotFoundError: no file at ``path``.
    """
    top: dict = {}
    nested: dict[str, dict] = {s: {} for s in SECTIONS}
    sections_of = {f.name: s for s, f in leaf_fields() if s is not None}
    own_types, where = _types(TrainConfig), str(path) if path else ""

    def put(key: str, value: object, section: str | None, origin: str) -> None:
        if section is None and key in sections_of:
            section = sections_of[key]
        if section is None:
            if key not in own_types or key in SECTIONS:
                raise ConfigError(f"unknown config key {key!r}{' in ' + origin if origin else ''}")
            top[key] = check_value(value, own_types[key], key, origin)
        else:
            hints = _types(SECTIONS[section])
            if key not in hints:
                raise ConfigError(f"unknown key {key!r} in [{section}]{' of ' + origin if origin else ''}")
            nested[section][key] = check_value(value, hints[key], f"{section}.{key}", origin)

    for key, value in (base or {}).items():
        put(key, value, None, "")
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML (UTF-8 text): {exc}") from exc
        for key, value in data.items():
            if key in SECTIONS:
                if not isinstance(value, dict):
                    raise ConfigError(f"{key} in {path}: expected a [{key}] table")
                for k, v in value.items():
                    put(k, v, key, where)
            else:
                put(key, value, None, where)
    for key, value in (overrides or {}).items():
        if value is not None:
            put(key, value, None, "the command line")
    try:
        sections = {s: dataclasses.replace(getattr(TrainConfig(), s), **nested[s]) for s in SECTIONS}
        return TrainConfig(**top, **sections)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:  # a section's own range check
        raise ConfigError(f"{exc}{' (in ' + where + ')' if where else ''}") from exc


def to_dict(config: TrainConfig) -> dict:
    """The config as plain data (tuples as lists, None left out), sections as nested dicts: TOML's shape."""
    def plain(obj: object) -> dict:
        out = {}
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if dataclasses.is_dataclass(v):
                out[f.name] = plain(v)
            elif v is not None:
                out[f.name] = list(v) if isinstance(v, tuple) else v
        return out
    return plain(config)


def to_toml(config: TrainConfig) -> str:
    """The resolved config as TOML (saved with every run; ``--config`` reads it back)."""
    import tomli_w

    return tomli_w.dumps(to_dict(config))


__all__ = ["CHOICES", "ConfigError", "PAPER_SAVED_MB_PER_ECG", "SYNTHETIC_DEFAULTS", "TrainConfig", "check_value",
           "field_help", "leaf_fields", "load_config", "to_dict", "to_toml"]
