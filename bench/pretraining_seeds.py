"""Is a pretraining gain more than one run's luck? `python bench/pretraining_seeds.py SEED=EVAL ... --out OUT`.

Each EVAL is the ``--out`` folder of an ``ecgfast-eval`` run (it holds ``results.csv``) whose encoder was pretrained
with the same settings but pretraining seed SEED, evaluated with the same settings (the same tasks, fractions, eval
seeds, ``frozen`` and ``random-features`` arms at least). The random-features arm does not depend on pretraining
(an untrained encoder per eval seed), so its cells must agree across the runs: the script checks that and refuses
runs that were evaluated otherwise. Writes ``OUT/pretraining_seeds.md``: per pretraining seed and label fraction,
frozen minus random features on the mean over the judged tasks (each eval seed's mean over its usable tasks, a
Student-t interval over eval seeds, as ``tables.md``), then per task (the mean over usable eval seeds).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from ptbxl_mini_report import fmt_interval

from ecgfast.eval.report import seed_interval

KEY = ["task", "fraction", "seed"]


def load_runs(runs: dict[int, Path]) -> dict[int, pd.DataFrame]:
    """results.csv of each run, after checking that their random-features cells agree (same evaluation)."""
    tables = {p: pd.read_csv(folder / "results.csv") for p, folder in runs.items()}
    control = None
    for p, t in tables.items():
        missing = {"frozen", "random-features"} - set(t["arm"])
        if missing:
            raise SystemExit(f"{runs[p]}: no {sorted(missing)} cells; evaluate with --arms random-features frozen")
        rf = t[t["arm"] == "random-features"].set_index(KEY)["test_auroc"].sort_index()
        if control is None:
            control = (p, rf)
        elif not rf.index.equals(control[1].index) or not np.allclose(rf, control[1], rtol=0, atol=1e-9):
            raise SystemExit(f"{runs[p]}: its random-features cells differ from those of pretraining seed "
                             f"{control[0]}: the runs were not evaluated with the same settings")
    return tables


def gains(results: pd.DataFrame) -> pd.DataFrame:
    """Usable cells as (task, fraction, seed) rows with frozen, random-features and their difference ``gain``."""
    cells = results[results["usable"].astype(bool)] if "usable" in results else results
    wide = cells.pivot_table(index=KEY, columns="arm", values="test_auroc")[["frozen", "random-features"]]
    return wide.assign(gain=wide["frozen"] - wide["random-features"]).dropna()


def seed_table(tables: dict[int, pd.DataFrame]) -> str:
    """Per pretraining seed and fraction: the mean over judged tasks of frozen, random features and the gain."""
    lines = ["| pretraining seed | labels | tasks judged | frozen | random-features | frozen - random-features |",
             "|---|---|---|---|---|---|"]
    for p, t in tables.items():
        for fraction, block in gains(t).groupby(level="fraction", sort=True):
            per_seed = block.groupby(level="seed").mean()  # each eval seed: the mean over its usable tasks
            tasks = ", ".join(sorted({name.split(":")[-1] for name in block.index.get_level_values("task")}))
            lines.append(f"| {p} | {fraction:g} % | {tasks} | {fmt_interval(*seed_interval(per_seed['frozen']))} | "
                         f"{fmt_interval(*seed_interval(per_seed['random-features']))} | "
                         f"{fmt_interval(*seed_interval(per_seed['gain']), signed=True)} |")
    return "\n".join(lines)


def task_table(tables: dict[int, pd.DataFrame]) -> str:
    """Per (task, fraction): the gain of each pretraining seed (mean over usable eval seeds)."""
    per = {p: gains(t).groupby(level=["task", "fraction"])["gain"].mean() for p, t in tables.items()}
    index = sorted(set().union(*(s.index for s in per.values())))
    lines = ["| task | labels | " + " | ".join(f"seed {p}" for p in per) + " |", "|---" * (len(per) + 2) + "|"]
    for task, fraction in index:
        vals = [f"{s[(task, fraction)]:+.3f}" if (task, fraction) in s.index else "-" for s in per.values()]
        lines.append(f"| {task.split(':')[-1]} | {fraction:g} % | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", metavar="SEED=EVAL", help="pretraining seed = ecgfast-eval --out folder")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    runs = {}
    for item in args.runs:
        seed, sep, folder = item.partition("=")
        if not sep or not seed.strip().isdigit():
            p.error(f"{item!r}: expected SEED=EVAL_FOLDER")
        runs[int(seed)] = Path(folder)
    tables = load_runs(runs)
    text = "\n".join([
        "## Frozen minus random features per pretraining seed (test fold)", "",
        "Each eval seed's mean over its usable tasks, then a 95 % t-interval over eval seeds; the random-features "
        "cells are the same in every run (checked).", "", seed_table(tables), "",
        "## Per task: frozen minus random features (mean over usable eval seeds)", "", task_table(tables), ""])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pretraining_seeds.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
