"""``ecgfast-train``: the command line of pretraining. Flags are made from the config classes, one per setting.

Heavy modules (torch, the data layer) load only after the arguments are read, so ``--help`` and argument errors
answer at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import logging
import signal
import sys
import types
import typing
from pathlib import Path

from ..ops.configs import ContrastiveLossConfig, VCGAugmentConfig
from .config import (
    CHOICES,
    PAPER_SAVED_MB_PER_ECG,
    SYNTHETIC_DEFAULTS,
    ConfigError,
    TrainConfig,
    field_help,
    leaf_fields,
    load_config,
)

EXIT_OK, EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_NO_SPACE = 0, 2, 3, 4
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _add_flag(p: argparse.ArgumentParser, name: str, annotation: object, default: object, text: str) -> None:
    flag = "--" + name.replace("_", "-")
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    kind = args[0] if typing.get_origin(annotation) in (typing.Union, types.UnionType) else annotation
    if kind is bool:
        p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        return
    shown = f" (default {list(default) if isinstance(default, tuple) else default!r})"
    if typing.get_origin(kind) is tuple:
        inner = typing.get_args(kind)
        nargs = "+" if len(inner) == 2 and inner[1] is Ellipsis else len(inner)
        p.add_argument(flag, type=float, nargs=nargs, default=None, help=text + shown)
        return
    p.add_argument(flag, type=kind, default=None, choices=CHOICES.get(name), help=text + shown)


def build_parser() -> argparse.ArgumentParser:
    """The ``ecgfast-train`` parser: one flag per setting of :class:`~ecgfast.pretrain.config.TrainConfig`."""
    p = argparse.ArgumentParser(
        prog="ecgfast-train",
        description="Contrastive pretraining of a dual-stream TemporalNet on an ECG store; defaults are the paper's "
                    "recipe. With no --store it makes a synthetic corpus and pretrains a tiny model on it (minutes on "
                    "a laptop CPU): then " + ", ".join(f"{k}={v}" for k, v in SYNTHETIC_DEFAULTS.items()) +
                    " replace the defaults shown below (flags still override). --resume continues the run in --out "
                    "with its own settings (its config.toml); flags may change only its length, logging and system "
                    "settings. Exit codes: 0 done, 2 bad input (settings, store, run folder, checkpoint), 3 the loss "
                    "kept diverging, 4 the disk is full (the last checkpoint stays intact).",
        epilog="examples:\n  ecgfast-train\n  ecgfast-train --store stores/mimic --out runs/mimic\n"
               "  torchrun --nproc_per_node 8 -m ecgfast.pretrain --store stores/mimic --out runs/mimic\n"
               "  ecgfast-train --config runs/mimic/config.toml --lr 3e-4 --out runs/mimic-lr3e-4\n"
               "  ecgfast-train --store stores/mimic --out runs/mimic --resume\n"
               "  ecgfast-train --store stores/mimic --out runs/mimic --batch-size 4096 --memory chunked\n\n"
               "memory: the paper model keeps {full:.0f} MB per ECG for backward (bf16, 5 s at 500 Hz, two views), "
               "{ckpt:.0f} MB with --memory checkpoint;\n--memory chunked keeps one chunk in the graph. The startup "
               "log gives the figure and the predicted peak for your settings.".format(
                   full=PAPER_SAVED_MB_PER_ECG["full"], ckpt=PAPER_SAVED_MB_PER_ECG["checkpoint"]),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="TOML file of settings ([augment] and [loss] tables for those); flags override it")
    p.add_argument("--resume", action="store_true", help="continue from the newest intact checkpoint in --out, with "
                   "the run's settings (flags may change only max-steps, epochs, logging, checkpoints, workers, "
                   "device, memory, compile)")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    classes = {None: TrainConfig, "augment": VCGAugmentConfig, "loss": ContrastiveLossConfig}
    helps = {section: field_help(cls) for section, cls in classes.items()}
    hints = {section: typing.get_type_hints(cls) for section, cls in classes.items()}
    for section, f in leaf_fields():
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if section is not None:
            default = getattr(getattr(TrainConfig(), section), f.name)
        text = helps[section].get(f.name, "") + (f" [{section}]" if section else "")
        _add_flag(p, f.name, hints[section][f.name], default, text)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ecgfast-train``. Exit codes: 0 done, 2 bad input, 3 loss kept diverging, 4 disk full."""
    args = vars(build_parser().parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config_path, resume, overwrite = args.pop("config"), args.pop("resume"), args.pop("overwrite")
    try:
        if resume and config_path is None:  # the run's own settings, then the flags given now
            saved = Path(args.get("out") or TrainConfig.out) / "config.toml"
            config_path = str(saved) if saved.is_file() else None
        base = SYNTHETIC_DEFAULTS if not (args.get("store") or _store_in(config_path)) else None
        config = load_config(config_path, overrides=args, base=base)
    except (ConfigError, OSError) as exc:
        print(f"ecgfast-train: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT

    from ..data.splits import SplitError
    from ..data.store import StoreError
    from ..folder_lock import FolderBusyError
    from .checkpoint import CheckpointError
    from .loop import NonFiniteLossError, pretrain

    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)  # cleanup code runs; the last checkpoint stays whole
    try:
        summary = pretrain(config, resume=resume, overwrite=overwrite)
    except (StoreError, SplitError, CheckpointError, FolderBusyError, ValueError) as exc:
        print(f"ecgfast-train: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        print(f"ecgfast-train: error: {exc}", file=sys.stderr)
        return EXIT_NO_SPACE if exc.errno in _NO_SPACE else EXIT_BAD_INPUT
    except NonFiniteLossError as exc:
        print(f"ecgfast-train: stopped: {exc}", file=sys.stderr)
        return EXIT_DIVERGED
    finally:
        signal.signal(signal.SIGTERM, previous)
    if summary["checkpoint"]:
        losses = summary["losses"]
        rate = f", {summary['ecgs_per_s']:.1f} ECGs/s" if summary["ecgs_per_s"] else ""
        rate += f" (MFU {summary['mfu']:.1%})" if summary.get("mfu") is not None else ""
        what = (f"loss {losses[0]:.4f} -> {losses[-1]:.4f}" if losses else "nothing left to train")
        print(f"ecgfast-train: {summary['steps']} steps, {what}{rate}; checkpoint {summary['checkpoint']}")
        for line in summary["monitor"]:  # is it learning: the probes and the effective rank now vs at step 0
            print(f"ecgfast-train: {line}")
    return EXIT_OK


def _stop_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM (a scheduler's stop, torchrun's teardown) as an exception, so that temporaries are removed."""
    raise SystemExit(128 + signum)


def _store_in(config_path: str | None) -> bool:
    if not config_path:
        return False
    import tomllib

    try:
        with open(config_path, "rb") as f:
            return bool(tomllib.load(f).get("store"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{config_path}: not valid TOML (UTF-8 text): {exc}") from exc


if __name__ == "__main__":
    sys.exit(main())
