"""What the pretraining monitor costs: the share of a pretraining run's time spent measuring validation ECGs.

    python bench/monitor_overhead.py                        # the embedded default: synthetic corpus, tiny model
    python bench/monitor_overhead.py --recipe ptbxl-subset --store runs/ptbxl/store --max-steps 60
    python bench/monitor_overhead.py --repeats 3 --markdown bench/results/monitor-overhead-<date>.md
    python bench/monitor_overhead.py --threads 1           # on a machine shared with other work (see below)

For each setting the same pretraining runs with the monitor at its defaults (``monitor_every``, ``monitor_ecgs`` of
:class:`ecgfast.pretrain.config.TrainConfig`) and with ``monitor_every 0``, alternately, ``--repeats`` times each.
Two estimates of the share, which should agree:

- from the monitored runs alone: the monitor's own seconds (``monitor_s`` in metrics.csv, summed) over the rest of
  the run; on a machine shared with other work this is the steadier one, both parts being timed under the same load;
- the difference of the median wall times, on minus off, over off.

On a CPU shared with other processes, torch's threads spin-wait for busy cores and a training step slows far more
than the monitor's single-threaded probe fits: ``--threads 1`` times both parts with one thread, so that a load
slows them alike. The table gives the load average while it ran.

``--max-steps`` shortens a run; the share is then also extrapolated to the run's full length (its epochs), from the
measured seconds per step and per measurement and the number of measurements the default cadence makes there
(step 0, every ``monitor_every`` steps, the end).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from ecgfast.eval.recipes import RECIPES
from ecgfast.pretrain.config import SYNTHETIC_DEFAULTS, TrainConfig, load_config
from ecgfast.pretrain.loop import pretrain


def _run(overrides: dict, base: dict | None, out: Path) -> tuple[float, list[float], int, int, float]:
    """(wall seconds, the monitor's seconds per measurement, steps, steps of the full run, seconds per training step
    as the loop measures them) of one pretraining run."""
    config = load_config(overrides={**overrides, "out": str(out), "progress": False}, base=base)
    t0 = time.perf_counter()
    summary = pretrain(config, overwrite=True)
    wall = time.perf_counter() - t0
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    spent = [float(r["monitor_s"]) for r in rows if r.get("monitor_s")]
    rates = [float(r["ecgs_per_s"]) for r in rows if r["ecgs_per_s"] and r["step"] != "1"]  # step 1: warm-up
    full = config.epochs * summary["steps_per_epoch"]
    return wall, spent, summary["steps"], full, config.batch_size / statistics.median(rates)


def measure(name: str, overrides: dict, base: dict | None, repeats: int) -> dict:
    """Alternate monitored and unmonitored runs of one setting; the two estimates of the share and the extrapolation."""
    walls: dict[str, list[float]] = {"on": [], "off": []}
    spent: list[list[float]] = []
    step_s: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            for mode in ("off", "on"):
                extra = {"monitor_every": 0} if mode == "off" else {}
                wall, s, steps, full, per_step = _run({**overrides, **extra}, base, Path(tmp) / f"{mode}{r}")
                walls[mode].append(wall)
                if mode == "on":
                    spent.append(s)
                else:
                    step_s.append(per_step)
    every = TrainConfig().monitor_every if "monitor_every" not in overrides else overrides["monitor_every"]
    own = statistics.median(sum(s) / (w - sum(s)) for s, w in zip(spent, walls["on"], strict=True))
    diff = (statistics.median(walls["on"]) - statistics.median(walls["off"])) / statistics.median(walls["off"])
    per_step = statistics.median(step_s)  # training only: start-up left out, which lowers the share in a full run
    per_measure = statistics.median(x for s in spent for x in s)
    n_full = 1 + (full - 1) // every + 1 if every else 0  # step 0, every `every` steps, the end
    return {"name": name, "steps": steps, "full": full, "every": every, "measures": len(spent[0]),
            "wall_off": statistics.median(walls["off"]), "wall_on": statistics.median(walls["on"]),
            "per_step": per_step, "per_measure": per_measure, "own": own, "diff": diff,
            "extrapolated": n_full * per_measure / (full * per_step) if steps < full else own}


def markdown(rows: list[dict], command: str, repeats: int) -> str:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [f"# The pretraining monitor's cost ({datetime.date.today()}, {device}, torch {torch.__version__}, "
             f"{torch.get_num_threads()} thread(s))", "",
             f"Command: `{command}`; median of {repeats} runs each with the monitor at its defaults and off, "
             f"alternately. Load average at the end (1 / 5 / 15 min): {load} on {os.cpu_count()} cores.", "",
             "| run | steps | full run | measurements (every) | wall off | wall on | per step | per measurement | "
             "share: own seconds | share: on - off | share of the full run |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['steps']} | {r['full']} | {r['measures']} ({r['every']}) | "
                     f"{r['wall_off']:.1f} s | {r['wall_on']:.1f} s | {r['per_step']:.3f} s | "
                     f"{r['per_measure']:.2f} s | {100 * r['own']:.1f} % | {100 * r['diff']:+.1f} % | "
                     f"{100 * r['extrapolated']:.1f} % |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", choices=sorted(RECIPES), help="the pretraining settings of a recipe (needs --store)")
    p.add_argument("--store", help="a prepared store (default: the embedded synthetic corpus)")
    p.add_argument("--max-steps", type=int, help="shorten each run (the share is extrapolated to the full run)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--markdown", help="also write the table to this file")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.recipe:
        if not args.store:
            p.error("--recipe needs --store, the recipe's prepared store")
        overrides, base, name = {**RECIPES[args.recipe].pretrain, "store": args.store}, None, args.recipe
    else:
        overrides, base, name = ({"store": args.store} if args.store else {}), (None if args.store else
                                                                                SYNTHETIC_DEFAULTS), "embedded default"
    if args.max_steps:
        overrides["max_steps"] = args.max_steps
    rows = [measure(name, overrides, base, args.repeats)]
    text = markdown(rows, "python bench/monitor_overhead.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                    args.repeats)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
