"""The GPU check: ecgfast's central claims measured in one command, inside a time budget, written as it goes.

    python bench/gpu_check.py --out DIR                    # on a GPU: the whole check, 480 s
    python bench/gpu_check.py --out DIR --budget-s 300     # less time: later phases skip, saying so
    python bench/gpu_check.py --smoke --out DIR            # toy sizes on a CPU (Triton interpreter, C++ ops), < 3 min

Phases, in order of value (sizes in bench/gpucheck/sizes.py, what each measures in its module's docstring):

  facts             GPU, driver, torch / Triton / CUDA versions, the extension's build flags and machine code
  loss_correctness  the Triton loss forward + backward vs float64: N 2..8192, d 16..256, bf16/fp16/fp32, view ids,
                    one and two id kinds, a row slice (DDP), bitwise determinism, every autotuner config
  vcg_correctness   the Triton and CUDA VCG ops vs float64 at T 2500 and 5000, windows and noise
  warmup            the loss's first calls at the timing sizes: compile and autotuning cost, configs chosen
  loss_timing       the loss at N 2048..65536, d 128: time, TFLOP/s, multiple of the 6 N^2 d floor at the bf16 GEMM
                    rate measured here, peak memory; vs the naive loss and the previous kernel
  vcg_timing        the VCG op's GB/s vs a device-to-device copy measured here
  train_step        the paper preset at batch 512, 2 views of 2500 samples: ECGs/s, MFU, the input + views + loss
                    share, peak memory vs plan_memory, per --memory mode that fits, eager and compiled
  dali              the DALI GPU path where DALI imports, else a line saying it is not installed
  gpu_tests         the test suite's CUDA cases (-m gpu) with the time left

Each phase has a share of the budget (the table below, plus what earlier phases left unused) and a minimum; with
less than its minimum left it is recorded as skipped. ``DIR/gpu_check.jsonl`` (JSON lines) and ``DIR/gpu_check.md``
(the summary) are complete after every record: a killed run returns what it measured. Exit status 0 when every
phase that ran passed (ok, partial or skipped), 1 when a check failed or a phase raised, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# (name, title, share of the budget, minimum seconds); the functions are bound in phases() after torch is imported
PHASE_TABLE = [
    ("facts", "build facts: device, driver, versions, the extension's build", 0.02, 1),
    ("loss_correctness", "the Triton loss, forward and backward, against float64", 0.22, 15),
    ("vcg_correctness", "the Triton and CUDA VCG ops against float64", 0.06, 5),
    ("warmup", "the loss's first calls: compile and autotuning", 0.12, 5),
    ("loss_timing", "the loss: time, TFLOP/s, floor multiple, memory, vs naive and the previous kernel", 0.10, 5),
    ("vcg_timing", "the VCG op's bandwidth against a device copy", 0.04, 3),
    ("train_step", "the pretraining step per memory mode, eager and compiled", 0.34, 20),
    ("dali", "the DALI input path", 0.04, 3),
    ("gpu_tests", "the test suite's CUDA cases", 0.06, 15),
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="Phases: " + ", ".join(
        f"{name} ({share:.0%})" for name, _, share, _ in PHASE_TABLE), formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="folder for gpu_check.jsonl and gpu_check.md")
    p.add_argument("--budget-s", type=float, default=None,
                   help="seconds for all phases (default 480; 170 with --smoke)")
    p.add_argument("--smoke", action="store_true", help="toy sizes (on a CPU: Triton interpreter, C++ ops)")
    p.add_argument("--only", default=None, help="comma-separated phases to run (default: all)")
    args = p.parse_args(argv)
    if args.budget_s is None:
        args.budget_s = 170.0 if args.smoke else 480.0
    if args.budget_s <= 0:
        p.error(f"--budget-s must be > 0, got {args.budget_s}")
    names = [name for name, *_ in PHASE_TABLE]
    args.only = names if args.only is None else [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(args.only) - set(names))
    if unknown:
        p.error(f"unknown phase(s) {unknown}; phases: {', '.join(names)}")
    return args


def phases(only: list[str]) -> list:
    from gpucheck import dali_check, facts, gpu_tests, loss_checks, loss_timing, train_step, vcg_checks, vcg_timing
    from gpucheck.record import Phase

    runs = {"facts": facts.run, "loss_correctness": loss_checks.run, "vcg_correctness": vcg_checks.run,
            "warmup": loss_timing.run_warmup, "loss_timing": loss_timing.run_timing, "vcg_timing": vcg_timing.run,
            "train_step": train_step.run, "dali": dali_check.run, "gpu_tests": gpu_tests.run}
    return [Phase(name, title, share, min_s, runs[name]) for name, title, share, min_s in PHASE_TABLE if name in only]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.monotonic()
    # before Triton is imported: without a GPU its kernels run in the interpreter (the smoke run); on a GPU the
    # autotuner's choices are cached on disk, so a second run on the same machine skips the benchmarking
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("TRITON_CACHE_AUTOTUNING", "1")
    sys.path.insert(0, str(HERE))
    from gpucheck import sizes
    from gpucheck.facts import device_name, versions
    from gpucheck.record import Context, Recorder, log_line, run_phases
    from gpucheck.summary import render

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    recorder = Recorder(args.out, render)
    command = "python bench/gpu_check.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    recorder.write("start", command=command, smoke=args.smoke, budget_s=args.budget_s, device=device_name(device),
                   versions=versions(), startup_s=round(time.monotonic() - t0, 2))
    ctx = Context(device=device, smoke=args.smoke, sizes=sizes.SMOKE if args.smoke else sizes.GPU,
                  recorder=recorder)
    try:
        status = run_phases(phases(args.only), ctx, args.budget_s - (time.monotonic() - t0), log=log_line)
    finally:
        recorder.close()
    log_line(f"gpu_check: {status}; {args.out / 'gpu_check.md'}")
    return 0 if status == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
