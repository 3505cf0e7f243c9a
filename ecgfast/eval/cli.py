"""``ecgfast-eval`` and ``ecgfast-embed``: the command lines of evaluation. Heavy modules load after the arguments
are read, so ``--help`` and argument errors answer at once."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

from .config import ARMS, BUDGETS, FROZEN_HEADS, VAL_SOURCES, EvalConfig

EXAMPLES = """examples:
  ecgfast-eval --demo --out runs/eval-demo                  # synthetic corpus: pretrain, then evaluate
  ecgfast-eval --recipe ptbxl --source ../shared/data/ecg/ptbxl-mini --out runs/ptbxl-mini    # the whole method
  ecgfast-eval --recipe ptbxl --ablation --source ../shared/data/ecg/ptbxl-mini --out runs/ptbxl-mini  # validation
  ecgfast-eval --recipe ptbxl-subset --source ../shared/data/ecg/ptbxl-subset --out runs/ptbxl   # z-scored ECGs
  ecgfast-eval --store stores/ptbxl --list-tasks            # the labels, with positives per split
  ecgfast-eval --store stores/ptbxl --checkpoint runs/mimic --task superclass:MI --out runs/mi
  ecgfast-eval --store stores/cinc --checkpoint runs/mimic --task dx:164889003 --arms random-features frozen --out r/af
  ecgfast-eval --store stores/k --checkpoint runs/mimic --task hyperk --balanced --paper --out runs/k
"""


def build_parser() -> argparse.ArgumentParser:
    """The ``ecgfast-eval`` parser."""
    cpu, paper, demo = BUDGETS["cpu"], BUDGETS["paper"], BUDGETS["demo"]
    p = argparse.ArgumentParser(
        prog="ecgfast-eval", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="The downstream protocol: random init, random-features (a linear probe on an untrained encoder), "
                    "frozen pretrained encoder (the same probe) and finetuned at 1-100 % of the training patients' "
                    "labels, AUROC on test patients with 95 % intervals, tables and a plot. Every end-to-end arm "
                    "gets the same step rule: at least --min-steps optimiser steps, validation every --eval-every "
                    "steps, the best step kept, a stop after --patience evaluations without improvement past the "
                    "floor, at most --max-steps (cells stopped there are flagged). Finished cells are kept in "
                    "--out/cells and skipped when the command runs again. Exit codes: 0 done, 2 bad input.")
    p.add_argument("--store", help="prepared ECG store with labels (not with --demo)")
    p.add_argument("--checkpoint", help="pretraining run folder or checkpoint folder (its config.json names the "
                   "model); without it only the random-init arm runs")
    p.add_argument("--task", action="append", dest="tasks", help="label name of the manifest (repeatable)")
    p.add_argument("--list-tasks", action="store_true", help="print the store's labels with their positive records "
                   "and patients per split, then exit")
    p.add_argument("--out", help="output folder (cells/, results.csv, summary.*, plot)")
    p.add_argument("--arms", nargs="+", choices=ARMS, help="default: all four with a checkpoint, else random")
    p.add_argument("--fractions", nargs="+", type=float,
                   help="percent of training patients with labels (default 1 5 10 50 100; --demo 1 10 100)")
    p.add_argument("--seeds", type=int, help=f"seeds per cell (default {cpu.seeds})")
    p.add_argument("--min-steps", type=int, help=f"floor: optimiser steps every end-to-end arm takes (default "
                   f"{cpu.min_steps}, --paper {paper.min_steps}, --demo {demo.min_steps})")
    p.add_argument("--eval-every", type=int, help=f"steps between validation AUROCs (default {cpu.eval_every}, "
                   f"--paper {paper.eval_every}, --demo {demo.eval_every})")
    p.add_argument("--patience", type=int, help=f"evaluations past the floor without a better validation AUROC "
                   f"before an arm stops (default {cpu.patience}, --paper {paper.patience}, --demo {demo.patience})")
    p.add_argument("--max-steps", type=int, help=f"cap every arm shares; cells stopped by it are flagged (default "
                   f"{cpu.max_steps}, --paper {paper.max_steps}, --demo {demo.max_steps})")
    p.add_argument("--batch-size", type=int, help=f"segments per step (default {cpu.batch_size}, --paper "
                   f"{paper.batch_size})")
    p.add_argument("--model", choices=("paper", "small", "tiny"),
                   help="preset for random init without a checkpoint (a checkpoint's config.json wins)")
    p.add_argument("--val-source", choices=VAL_SOURCES, default="carved", help="carved (default): validation "
                   "patients carved from each cell's labelled training patients; store: the store's val split")
    p.add_argument("--val-share", type=float, default=0.2, help="carved validation: share of each class (default 0.2)")
    p.add_argument("--segment", type=int, help="samples the encoder sees (default: 5 s at the store's rate)")
    p.add_argument("--balanced", action="store_true", help="class-balanced batches")
    p.add_argument("--frozen-head", choices=FROZEN_HEADS, default="probe", help="frozen and random-features arms: "
                   "probe (default: L2 logistic regression on standardised features, to convergence, penalty chosen "
                   "on validation) or adam (the paper's linear head, lr 0.02, under the step rule)")
    p.add_argument("--missing-as-negative", action=argparse.BooleanOptionalAction, default=None,
                   help="records without the label are negatives (default: yes for dx: and scp: labels)")
    p.add_argument("--bootstrap", type=int, default=1000, help="patient-bootstrap resamples (default 1000)")
    p.add_argument("--device", help="default: cuda if available else cpu")
    p.add_argument("--allow-store-mismatch", action="store_true", help="evaluate an encoder pretrained at another "
                   "sampling rate or unit than the store's (refused by default, naming both)")
    p.add_argument("--workers", type=int, default=1, help="cells run at once on a CPU, each in its own process "
                   "(default 1; 2 on a 2-core machine runs about 1.6x faster)")
    p.add_argument("--paper", action="store_true", help="paper-sized defaults (paper model, batch 64, "
                   f"{paper.min_steps} to {paper.max_steps} steps)")
    p.add_argument("--demo", action="store_true", help="synthetic corpus: pretrain (unless --checkpoint), evaluate "
                   "its tasks; minutes on a CPU")
    p.add_argument("--recipe", help="a whole experiment: prepare --source, pretrain, evaluate (ptbxl: a PTB-XL "
                   "folder; ptbxl-subset)")
    p.add_argument("--source", help="the data folder of --recipe")
    p.add_argument("--ablation", action="store_true", help="with --recipe: run its validation ablation and data-size "
                   "curve instead of its test evaluation (every variant pretrained and probed on the val split; the "
                   "test split is never read)")
    p.add_argument("--extra-source", help="with --recipe ... --ablation: a z-scored corpus (ptbxl-subset) whose "
                   "training split is extra unlabelled data for the data-size curve's z-scored point")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return p


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    """EvalConfig from parsed arguments (the demo's store and checkpoint already filled in)."""
    name = "paper" if args.paper else "demo" if args.demo else "cpu"
    budget = BUDGETS[name]
    pick = {f: getattr(args, f) if getattr(args, f) is not None else getattr(budget, f)
            for f in ("seeds", "min_steps", "eval_every", "patience", "max_steps", "batch_size", "model",
                      "fractions")}
    arms = tuple(args.arms) if args.arms else (ARMS if args.checkpoint else ("random",))
    note = "" if name == "paper" else (f"{name}-sized: the {pick['model']} model, {pick['min_steps']} to "
                                       f"{pick['max_steps']} steps, fractions "
                                       f"{', '.join(f'{f:g}' for f in pick['fractions'])} %")
    return EvalConfig(store=args.store, out=args.out, tasks=tuple(args.tasks or ()), checkpoint=args.checkpoint,
                      arms=arms, val_source=args.val_source, val_share=args.val_share, balanced=args.balanced,
                      frozen_head=args.frozen_head, missing_as_negative=args.missing_as_negative,
                      n_boot=args.bootstrap, device=args.device, progress=args.progress, budget_note=note,
                      segment=args.segment, workers=args.workers, allow_store_mismatch=args.allow_store_mismatch,
                      **{**pick, "fractions": tuple(float(f) for f in pick["fractions"])})


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ecgfast-eval``. Exit codes: 0 done, 2 bad input."""
    args = build_parser().parse_args(argv)
    import logging

    from ..data.splits import SplitError
    from ..data.store import ECGStore, StoreError
    from ..folder_lock import FolderBusyError, folder_lock
    from ..pretrain.checkpoint import CheckpointError
    from .demo import DEMO_TASKS, prepare_demo
    from .run import run_evaluation
    from .tasks import EvalError, format_task_counts, task_counts

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    stack = contextlib.ExitStack()
    try:
        if args.list_tasks:
            if not args.store:
                raise EvalError("--list-tasks needs --store")
            print(format_task_counts(task_counts(ECGStore(args.store))))
            return 0
        if not args.out:
            raise EvalError("--out is required")
        t0 = time.perf_counter()
        if args.recipe or args.demo:  # a whole job: settings checked first, then its folder held until it ends
            _check_early(args)
            Path(args.out).mkdir(parents=True, exist_ok=True)
            stack.enter_context(folder_lock(args.out, "ecgfast-eval"))
        if args.ablation and not args.recipe:
            raise EvalError("--ablation runs a recipe's validation ablation: name it with --recipe")
        if args.recipe:
            from .recipes import run_ablation, run_recipe

            if not args.source:
                raise EvalError("--recipe needs --source, the folder of its data")
            if args.ablation:
                paths = run_ablation(args.recipe, args.source, Path(args.out), args.device, args.progress,
                                     args.seeds, args.workers, args.extra_source)
                print(paths["ablation_md"].read_text())
                print(f"ecgfast-eval: ablation in {time.perf_counter() - t0:.0f} s; "
                      + ", ".join(str(p) for p in paths.values()))
                return 0
            cfg = run_recipe(args.recipe, args.source, Path(args.out), args.device, args.progress, args.seeds,
                             args.workers)
            args.out = cfg.out
            summary = run_evaluation(cfg)
            print((Path(cfg.out) / "summary.md").read_text())
            print(f"ecgfast-eval: {len(summary)} rows in {time.perf_counter() - t0:.0f} s; results in {cfg.out}")
            return 0
        if args.demo:
            if args.store:
                raise EvalError("--demo makes its own synthetic store: leave out --store")
            args.tasks = args.tasks or list(DEMO_TASKS)
            args.store, args.checkpoint = prepare_demo(Path(args.out), args.checkpoint, args.device, args.progress,
                                                       args.paper)
        elif not args.store:
            raise EvalError("--store is required (or --demo)")
        if not args.tasks:
            raise EvalError("name a task with --task; the store's labels with their positives per split:\n"
                            + format_task_counts(task_counts(ECGStore(args.store))))
        if not args.checkpoint and args.arms is None:
            print("ecgfast-eval: no --checkpoint: running the random-init arm only", file=sys.stderr)
        summary = run_evaluation(config_from_args(args))
    except (StoreError, SplitError, CheckpointError, FolderBusyError, ValueError, OSError) as exc:
        print(f"ecgfast-eval: error: {exc}", file=sys.stderr)  # EvalError is a ValueError
        return 2
    finally:
        stack.close()
    print((Path(args.out) / "summary.md").read_text())
    print(f"ecgfast-eval: {len(summary)} rows in {time.perf_counter() - t0:.0f} s; results in {args.out}")
    return 0


def _check_early(args: argparse.Namespace) -> None:
    """The evaluation settings given on the command line, checked before a whole job (--demo, --recipe) prepares
    or pretrains anything.

    Raises:
        EvalError: the first setting out of range.
    """
    from ..device import resolve_device
    from .tasks import EvalError

    resolve_device(args.device)  # a DeviceError is a ValueError: one line, exit 2
    probe = config_from_args(argparse.Namespace(**{**vars(args), "store": "-", "tasks": args.tasks or ["-"],
                                                   "checkpoint": args.checkpoint or "-"}))
    try:
        probe.check()
    except ValueError as exc:
        raise EvalError(str(exc)) from exc


def embed_main(argv: list[str] | None = None) -> int:
    """Entry point of ``ecgfast-embed``: frozen-encoder embeddings of a store's splits. Exit codes: 0, 2 bad input."""
    p = argparse.ArgumentParser(
        prog="ecgfast-embed", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Export frozen-encoder embeddings of a store's splits: <out>/<split>.npz with features "
                    "(N, segments, D) and store rows (N,). ecgfast-eval's frozen arm reuses them (the same --out "
                    "as its OUT/embeddings).",
        epilog="examples:\n  ecgfast-embed --store stores/ptbxl --checkpoint runs/mimic --out runs/eval/embeddings\n")
    p.add_argument("--store", required=True, help="prepared ECG store")
    p.add_argument("--checkpoint", required=True, help="pretraining run folder or checkpoint folder")
    p.add_argument("--out", required=True, help="folder for <split>.npz")
    p.add_argument("--splits", nargs="+", default=["train", "val", "test"], choices=("train", "val", "test"))
    p.add_argument("--batch-size", type=int, default=128, help="segments per forward pass")
    p.add_argument("--segment", type=int, help="samples the encoder sees (default: 5 s at the store's rate)")
    p.add_argument("--device", default=None, help="default: cuda if available else cpu")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    import torch

    from ..data.splits import SplitError
    from ..data.store import ECGStore, StoreError
    from ..pretrain.checkpoint import CheckpointError
    from .embed import load_encoder, split_embeddings

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        store = ECGStore(args.store)
        encoder, ckpt, _ = load_encoder(args.checkpoint, device)
        segment = args.segment or round(5 * store.fs)
        for split in args.splits:
            rows, feats = split_embeddings(encoder, store, ckpt, split, Path(args.out), segment, args.batch_size,
                                           device, args.progress)
            print(f"ecgfast-embed: {split}: {len(rows)} records -> {Path(args.out) / (split + '.npz')} "
                  f"{tuple(feats.shape)}")
    except (StoreError, SplitError, CheckpointError, ValueError, OSError) as exc:
        print(f"ecgfast-embed: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
