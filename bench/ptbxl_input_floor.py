"""Which input preprocessing makes random features strong? `python bench/ptbxl_input_floor.py RUN OUT`.

RUN is the ``--out`` of ``ecgfast-eval --recipe ptbxl --ablation`` (with ``--extra-source``): its millivolt store,
its z-scored store (0.5-40 Hz band-pass, then z-scored per lead), the chosen millivolt encoder and the z-scored one.
This script prepares the two missing inputs (millivolts after the band-pass only; z-scored without the band-pass)
from the same PTB-XL folder and scores, on the val split only (fold 9; the test split is never read), the
``random-features`` probe (an untrained encoder, the same one per seed for every input: paired) and the ``frozen``
probe of the encoder pretrained on the matching unit, at 10 and 100 % of the labels, 5 seeds. Writes
``OUT/input-floor.csv`` and ``OUT/input-floor.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from ptbxl_mini_report import fmt_interval

from ecgfast.eval.ablation import validate_variant
from ecgfast.eval.recipes import RECIPES
from ecgfast.eval.report import seed_interval
from ecgfast.prepare import main as prepare_main

BASE_FLAGS = ("--rate", "100", "--fs", "100", "--split-by", "strat_fold", "--quiet")
# name -> (store under RUN, prepare flags when it must be made, the pretrained encoder of its unit under RUN)
INPUTS = {
    "mV": ("store", None, "ablation/no-vcg/pretrain"),
    "mV, 0.5-40 Hz band-pass": ("input-floor/store-bandpass", ("--bandpass", "0.5", "40"), "ablation/no-vcg/pretrain"),
    "z-scored, no band-pass": ("input-floor/store-zscore", ("--normalize", "zscore"), "ablation/z-source/pretrain"),
    "z-scored after the band-pass": ("zstore", None, "ablation/z-source/pretrain"),
}


def evaluate(run: Path, source: str, workers: int) -> pd.DataFrame:
    recipe = RECIPES["ptbxl"]
    frames = []
    for name, (store, flags, encoder) in INPUTS.items():
        path = run / store
        if not (path / "store.json").is_file():
            if flags is None:
                raise SystemExit(f"{path}: missing; run `ecgfast-eval --recipe ptbxl --ablation` with --extra-source")
            if prepare_main([source, "--out", str(path), *BASE_FLAGS, *flags]) != 0:
                raise SystemExit(f"ecgfast-prepare {source} -> {path} failed")
        out = run / "input-floor" / name.replace(",", "").replace(" ", "-")
        # the ablation's probe cells (random features and frozen, scored on val), with its feature cache
        results = validate_variant(run / encoder, path, out, recipe.tasks, recipe.ablation_evaluate, None, False,
                                   workers, run / "ablation" / "features")
        frames.append(results.assign(input=name, encoder=encoder.split("/")[1]))
    return pd.concat(frames, ignore_index=True)


def table(results: pd.DataFrame) -> str:
    """Per input and fraction: each probe's mean over tasks (interval over seeds), frozen minus random features, and
    random features minus those on plain millivolts (paired by seed: the same untrained encoder)."""
    cells = results[results["usable"].astype(bool)]
    per_seed = cells.pivot_table(index=["input", "fraction", "seed"], columns="arm", values="test_auroc",
                                 aggfunc="mean")  # mean over tasks
    lines = ["| input | encoder pretrained on | labels | random features | vs random features on mV | frozen | "
             "frozen - random features |", "|---|---|---|---|---|---|---|"]
    for name in INPUTS:
        encoder = results.loc[results["input"] == name, "encoder"].iloc[0]
        for fraction in sorted(cells["fraction"].unique()):
            here, plain = per_seed.loc[(name, fraction)], per_seed.loc[("mV", fraction)]
            rf, fz = here["random-features"], here["frozen"]
            lines.append(f"| {name} | {encoder} | {fraction:g} % | {fmt_interval(*seed_interval(rf))} | "
                         f"{fmt_interval(*seed_interval(rf - plain['random-features']), signed=True)} | "
                         f"{fmt_interval(*seed_interval(fz))} | {fmt_interval(*seed_interval(fz - rf), signed=True)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--source", default="../shared/data/ecg/ptbxl-mini", help="the PTB-XL folder RUN was made from")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    results = evaluate(args.run, args.source, args.workers)
    args.out.mkdir(parents=True, exist_ok=True)
    results.to_csv(args.out / "input-floor.csv", index=False)
    text = ("# Random features by input preprocessing (validation, fold 9)\n\nMean over the five superclasses of "
            "usable cells, 95 % t-interval over 5 seeds; differences paired by seed.\n\n" + table(results) + "\n")
    (args.out / "input-floor.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
