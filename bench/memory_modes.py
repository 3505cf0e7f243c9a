"""Memory of a pretraining step per ``--memory`` mode: what the engine predicts, and what one step really takes.

    python bench/memory_modes.py                      # this machine: CPU -> small preset, fp32, 16 ECGs
    python bench/memory_modes.py --model paper --precision bf16 --batch 64   # a GPU: the paper's step
    python bench/memory_modes.py --markdown bench/results/memory-modes-<date>.md

Two tables:

1. Engine figures (no step runs; fake tensors, seconds): saved bytes per ECG for every preset, precision and mode
   at 5 s of 500 Hz, and for the paper preset the predicted peak at the recipe's 512 and the largest global batch
   that fits on an 80 GB and a 141 GB GPU (one rank), as ``ecgfast-train`` computes them at startup.
2. Measured at one batch on this device, per mode: the step's peak memory (``torch.cuda.max_memory_allocated`` on
   a GPU; on a CPU the same allocations followed by ``ecgfast.pretrain.memory.measure_step_peak``), against the
   engine's prediction for the same step; time per step (median of ``--repeats``) and FLOPs counted by
   ``torch.utils.flop_counter.FlopCounterMode`` (recomputation included), both as ratios to ``full``.

The step here is the loop's step without data loading: encoder forward, loss over the whole batch, backward.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from ecgfast.models.temporalnet import DualStreamTemporalNet, temporalnet_config
from ecgfast.nn import MultiPositiveContrastiveLoss
from ecgfast.pretrain import memory
from ecgfast.pretrain.gradcache import ChunkedContrastiveStep
from ecgfast.pretrain.views import embedding_loss

GB = 10**9
CAPACITIES = {"80 GB": 80 * GB, "141 GB": 141 * GB}


def engine_table(segment: int = 2500) -> list[str]:
    """Markdown rows of the engine's figures for every preset, precision and mode."""
    lines = ["| preset | precision | mode | saved MB per ECG | ratio to full | predicted peak at 512 | "
             "largest batch on 80 GB | on 141 GB |", "|---|---|---|---|---|---|---|---|"]
    for preset in ("tiny", "small", "paper"):
        for precision in ("fp32", "bf16"):
            full = memory.activation_memory(preset, precision, segment, "full")
            for mode in memory.MODES:
                m = memory.activation_memory(preset, precision, segment, mode)
                if mode == "chunked":  # the whole batch's share; the chunk in the graph costs full's per ECG
                    saved, ratio = f"{m.batch_per_ecg / 1e6:.3f} + one chunk", "-"
                else:
                    saved, ratio = f"{m.per_ecg / 1e6:.1f}", f"{m.per_ecg / full.per_ecg:.2f}"
                cells = ["", "", ""]
                if preset == "paper":
                    chunk = memory.largest_chunk(m, 512, 80 * GB) if mode == "chunked" else None
                    peak = memory.predict_step_memory(m, 512, chunk)
                    cells[0] = f"{peak.total / GB:.1f} GB" + (f" (chunks of {chunk})" if chunk else "")
                    for i, cap in enumerate(CAPACITIES.values(), start=1):
                        c = memory.largest_chunk(m, 4096, cap) if mode == "chunked" else None
                        n = memory.largest_batch(m, cap, chunk=c)
                        cells[i] = f"{n:,}" + (f" (chunks of {c})" if c else "")
                lines.append(f"| {preset} | {precision} | {mode} | {saved} | {ratio} | " + " | ".join(cells) + " |")
    return lines


def make_step(model: str, precision: str, segment: int, batch: int, mode: str, chunk: int, device: torch.device):
    """One training step's forward + loss + backward in ``mode`` on a fixed random batch: a callable."""
    torch.manual_seed(0)
    encoder = DualStreamTemporalNet(temporalnet_config(model)).to(device).train()
    encoder.checkpoint_blocks(mode == "checkpoint")
    loss_fn = MultiPositiveContrastiveLoss()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    views = torch.randn(2, batch, 8, segment, device=device).to(dtype)
    ecg = torch.arange(batch, device=device)
    patient = ecg // 4
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    if mode == "chunked":
        cached = ChunkedContrastiveStep(encoder.embed, encoder, loss_fn, chunk, autocast)

        def step() -> None:
            cached.forward(views, ecg, patient)
            cached.backward()
    else:
        def step() -> None:
            with autocast:
                z = encoder.embed(views.flatten(0, 1))  # (2B, streams, proj_dim)
            embedding_loss(loss_fn, z, ecg, patient).backward()

    def run() -> None:
        encoder.zero_grad(set_to_none=True)  # every measured step allocates its gradients anew
        step()
    return run


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_mode(model: str, precision: str, segment: int, batch: int, mode: str, chunk: int, device: torch.device,
                 repeats: int) -> dict:
    """Peak bytes (measured and predicted), seconds per step (median) and FLOPs of one step in ``mode``."""
    run = make_step(model, precision, segment, batch, mode, chunk, device)
    run()  # warm-up: first-call allocations and kernel choices out of the measurement
    peak = memory.measure_step_peak(run, device)
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        run()
        _sync(device)
        times.append(time.perf_counter() - t)
    with FlopCounterMode(display=False) as flops:
        run()
    m = memory.activation_memory(model, precision, segment, mode)
    predicted = memory.predict_step_memory(m, batch, chunk if mode == "chunked" else None)
    # the step's own allocations: activations and gradients of the ECGs in the graph + the batch's tensors
    # (weights, Adam's moments and the workspace allowance are outside a step measured from its start)
    own = predicted.activations + predicted.batch
    return {"mode": mode, "peak": peak, "predicted": own, "seconds": statistics.median(times),
            "flops": flops.get_total_flops(), "saved_per_ecg": m.per_ecg}


def measured_table(rows: list[dict], header: str) -> list[str]:
    full = next(r for r in rows if r["mode"] == "full")
    lines = [header, "", "| mode | peak of one step | ratio to full | engine's prediction | prediction - measured | "
             "time per step | time ratio | FLOP ratio |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        diff = (r["predicted"] - r["peak"]) / r["peak"]
        lines.append(f"| {r['mode']} | {r['peak'] / 2**20:,.0f} MiB | {r['peak'] / full['peak']:.2f} | "
                     f"{r['predicted'] / 2**20:,.0f} MiB | {diff:+.1%} | {r['seconds'] * 1e3:,.0f} ms | "
                     f"{r['seconds'] / full['seconds']:.2f} | {r['flops'] / full['flops']:.2f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cuda = torch.cuda.is_available()
    p.add_argument("--model", default="paper" if cuda else "small", choices=("tiny", "small", "paper"))
    p.add_argument("--precision", default="bf16" if cuda else "fp32", choices=memory.PRECISIONS)
    p.add_argument("--segment", type=int, default=2500, help="samples per view (2500: 5 s at 500 Hz)")
    p.add_argument("--batch", type=int, default=64 if cuda else 16, help="ECGs in the measured step")
    p.add_argument("--chunk", type=int, default=None, help="ECGs per chunk in chunked mode (default: batch / 4)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--markdown", default=None, help="also write the tables to this Markdown file")
    args = p.parse_args(argv)
    device = torch.device("cuda" if cuda else "cpu")
    chunk = args.chunk or max(1, args.batch // 4)
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    command = "python bench/memory_modes.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [f"# Memory of a pretraining step per --memory mode ({datetime.date.today().isoformat()}, {name}, "
             f"torch {torch.__version__})", "", f"Command: `{command.strip()}`", "",
             "## The engine's figures (5 s at 500 Hz, two views per ECG; one rank)", "", *engine_table(),
             ""]
    print("\n".join(lines), flush=True)
    rows = [measure_mode(args.model, args.precision, args.segment, args.batch, mode, chunk, device, args.repeats)
            for mode in memory.MODES]
    table = measured_table(rows, f"## Measured: one step of the {args.model} preset, {args.precision}, {args.batch} "
                                 f"ECGs of {args.segment} samples, on {name} (chunked: chunks of {chunk})")
    print("\n".join(table))
    if args.markdown:
        Path(args.markdown).write_text("\n".join(lines + table) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
