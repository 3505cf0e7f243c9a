"""The recorded PTB-XL experiments, as tables for people: `python bench/ptbxl_mini_report.py RUN OUT`.

RUN is the ``--out`` of ``ecgfast-eval --recipe ptbxl`` (and of ``--ablation``) or of ``--recipe ptbxl-subset``; OUT
a folder under bench/results/.
Copies the run's reports (summary, results, plot, ablation, curve) into OUT and writes ``tables.md``:

- per label fraction, the mean over the tasks of each arm's test AUROC and of the two gains, with a Student-t
  interval over seeds (each seed's mean over its usable tasks first; paired by seed for the gains);
- the ablation at 10 and 100 % of the labels, and the data-size curve, from the validation-only runs;
- per task, on validation, each variant's frozen probe against random features (paired by seed): the tasks on
  which pretraining put something into the representation, and those on which it did not.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from ecgfast.eval.config import ARMS, GAINS
from ecgfast.eval.recipes import SUPERCLASS_TASKS as TASKS
from ecgfast.eval.report import seed_interval


def fmt_interval(m: float, lo: float, hi: float, signed: bool = False) -> str:
    f = "{:+.3f}" if signed else "{:.3f}"
    if not np.isfinite(m):
        return "-"
    return f.format(m) + (f" [{f.format(lo)}, {f.format(hi)}]" if np.isfinite(lo) else "")


def fraction_table(results: pd.DataFrame) -> str:
    """Mean over tasks per (fraction, arm), interval over seeds; the gains paired by seed."""
    cells = results[results["usable"].astype(bool)] if "usable" in results else results
    lines = ["| labels | " + " | ".join(ARMS) + " | frozen - random-features | finetuned - random | cells at cap |",
             "|---" * (len(ARMS) + 4) + "|"]
    for fraction, block in cells.groupby("fraction", sort=True):
        per_seed = block.pivot_table(index=["seed", "task"], columns="arm", values="test_auroc").groupby("seed").mean()
        row = [f"{fraction:g} %"]
        for arm in ARMS:
            row.append(fmt_interval(*seed_interval(per_seed[arm])) if arm in per_seed else "-")
        for arm, control in GAINS.items():
            ok = arm in per_seed and control in per_seed
            row.append(fmt_interval(*seed_interval(per_seed[arm] - per_seed[control]), signed=True) if ok else "-")
        all_cells = results[results["fraction"] == fraction]
        row.append(f"{int((all_cells['stopped_by'] == 'cap').sum())} of {len(all_cells)}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def per_task_table(run: Path, variants: list[str]) -> str:
    """Per variant and task, frozen minus random features on validation (mean over seeds, 95 % t-interval, paired
    by seed) at each label fraction the ablation evaluated; read from each variant's own ``val/results.csv``."""
    lines = ["| variant | labels | " + " | ".join(t.split(":")[-1] for t in TASKS) + " | tasks above 0 |",
             "|---" * (len(TASKS) + 3) + "|"]
    for variant in variants:
        path = run / "ablation" / variant / "val" / "results.csv"
        if not path.is_file():
            continue
        r = pd.read_csv(path)
        for fraction, block in r.groupby("fraction", sort=True):
            wide = block.pivot_table(index=["task", "seed"], columns="arm", values="test_auroc")
            row, above = [variant, f"{fraction:g} %"], 0
            for task in TASKS:
                if task not in wide.index.get_level_values(0) or "frozen" not in wide or "random-features" not in wide:
                    row.append("-")
                    continue
                diff = wide.loc[task, "frozen"] - wide.loc[task, "random-features"]
                m, lo, hi = seed_interval(diff)
                above += bool(np.isfinite(lo) and lo > 0)
                row.append(fmt_interval(m, lo, hi, signed=True))
            row.append(f"{above} of {len(TASKS)}")
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("out", type=Path)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    parts = []
    ev = args.run / "eval"
    if (ev / "results.csv").is_file():
        for name in ("results.csv", "summary.md", "summary.json", "auroc_vs_fraction.png"):
            if (ev / name).is_file():
                shutil.copy(ev / name, args.out / name)
        results = pd.read_csv(ev / "results.csv")
        tasks = ", ".join(t.split(":")[-1] for t in dict.fromkeys(results["task"]))
        parts += [f"## Test AUROC, mean over the tasks ({tasks})", "",
                  "95 % t-interval over seeds (each seed: the mean over its usable tasks); gains paired by seed.", "",
                  fraction_table(results), ""]
    for name in ("ablation.csv", "ablation.md", "curve.csv", "curve.png", "zcurve.csv", "chosen.json"):
        if (args.run / name).is_file():
            shutil.copy(args.run / name, args.out / name)
    if (args.run / "ablation.md").is_file():
        parts += [(args.run / "ablation.md").read_text().replace("# ", "## ", 1), ""]
        variants = list(dict.fromkeys(pd.read_csv(args.run / "ablation.csv")["variant"]))
        parts += ["## Per task on validation: frozen minus random features", "",
                  "Mean over seeds with a 95 % t-interval, paired by seed; \"tasks above 0\": interval above 0.", "",
                  per_task_table(args.run, variants), ""]
    for name, title in (("curve.csv", "Data-size curve"), ("zcurve.csv", "Z-scored point")):
        if (args.run / name).is_file():
            t = pd.read_csv(args.run / name)
            parts += [f"## {title} (validation)", "", "| variant | pretraining ECGs | labels | val AUROC | random "
                      "features | gain |", "|---|---|---|---|---|---|"]
            for _, r in t.iterrows():
                parts.append(f"| {r['variant']} | {int(r['pretrain_ecgs'])} | {r['fraction']:g} % | "
                             f"{fmt_interval(r['val_auroc'], r['val_lo'], r['val_hi'])} | "
                             f"{r['random_features_auroc']:.3f} | "
                             f"{fmt_interval(r['gain'], r['gain_lo'], r['gain_hi'], signed=True)} |")
            parts.append("")
    (args.out / "tables.md").write_text("\n".join(parts) + "\n")
    print((args.out / "tables.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
