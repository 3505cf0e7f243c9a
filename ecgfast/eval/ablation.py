"""Settings chosen on validation: a recipe's pretraining variants and its data-size curve, each encoder scored by
a linear probe on the store's val split against the same probe on random features. The test split is never read.

Each variant changes one thing from the recipe (:class:`Variant`); its encoder is pretrained into
``<out>/ablation/<name>/pretrain`` (continued if interrupted, reused when finished) and evaluated into
``<out>/ablation/<name>/val`` with the arms ``random-features`` and ``frozen`` and ``score_split="val"``: the probe is
fitted on the labelled training patients (its penalty chosen on patients carved from them) and scored once on the
val split. Per variant and label fraction the table gives, over seeds (a seed draws the carved patients and the
random encoder; the pretraining seed stays the recipe's, so the interval leaves out what another pretraining seed
would change):

- ``val_auroc``: the frozen probe's validation AUROC, mean over tasks, with a Student-t interval over seeds;
- ``gain``: frozen minus random-features, paired by seed, mean over tasks, with its interval: what pretraining put
  into the representation;
- the pretraining monitor's probe AUROC at the end and at step 0 (its own quick probe on validation ECGs), the
  encoder's effective rank, pretraining steps and wall time.

A variant marked ``replicate`` repeats the recipe with another pretraining seed: the difference between it and the
recipe is what one pretraining run's luck moves the numbers by, the yardstick for every other row. It is never
chosen.

The data-size curve is the same measure for encoders pretrained on nested shares of the training patients
(``pretrain_share``), plotted against the number of pretraining ECGs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .config import EvalConfig
from .report import seed_interval

log = logging.getLogger("ecgfast.eval")

ABLATION_ARMS = ("random-features", "frozen")


@dataclass(frozen=True)
class Variant:
    """One pretraining variant of a recipe: its name, what it changes (in words) and the settings that do it."""

    name: str
    change: str
    pretrain: dict = field(default_factory=dict)  # TrainConfig settings on top of the recipe's (flat names)
    replicate: bool = False  # the recipe again with another pretraining seed: measures noise, never chosen


def pretrain_variant(base: dict, variant: Variant, store: Path, out: Path, device: str | None,
                     progress: bool) -> tuple[Path, float]:
    """Pretrain ``variant`` (continued if begun, reused if done) into ``out/<name>/pretrain``: (run, wall s)."""
    from ..pretrain.config import load_config
    from ..pretrain.loop import pretrain_until_done

    run = out / variant.name / "pretrain"
    config = load_config(overrides={**base, **variant.pretrain, "store": str(store), "out": str(run),
                                    "progress": progress, "device": device})
    t0 = time.perf_counter()
    log.info("variant %s (%s): pretraining", variant.name, variant.change)
    pretrain_until_done(config)
    return run, time.perf_counter() - t0


def validate_variant(run: Path, store: Path, out: Path, tasks: tuple[str, ...], settings: dict,
                     device: str | None, progress: bool, workers: int, feature_cache: Path) -> pd.DataFrame:
    """The probe cells of one encoder on the val split: results.csv of ``out`` (written by the evaluation)."""
    from .run import run_evaluation

    cfg = EvalConfig(store=str(store), out=str(out), tasks=tasks, checkpoint=str(run), arms=ABLATION_ARMS,
                     score_split="val", val_source="carved", feature_cache=str(feature_cache), device=device,
                     progress=progress, workers=workers, **settings)
    run_evaluation(cfg)
    return pd.read_csv(out / "results.csv")


def summarize_variant(results: pd.DataFrame) -> list[dict]:
    """Per label fraction: the frozen probe's mean validation AUROC over tasks and its gain over random features,
    each with a t-interval over seeds (only cells that can be judged count; how many seeds is said)."""
    rows = []
    cells = results[results["usable"].astype(bool)] if "usable" in results else results
    for fraction, block in cells.groupby("fraction", sort=True):
        wide = block.pivot_table(index=["seed", "task"], columns="arm", values="test_auroc")
        per_seed = wide.groupby(level="seed").mean()  # (seeds, arms): the mean over tasks of each seed
        frozen = per_seed.get("frozen", pd.Series(dtype=float))
        gain = per_seed["frozen"] - per_seed["random-features"] if "random-features" in per_seed else frozen * np.nan
        rf = per_seed.get("random-features", pd.Series(dtype=float))
        (m, lo, hi), (g, glo, ghi), (r, _, _) = seed_interval(frozen), seed_interval(gain), seed_interval(rf)
        rows.append({"fraction": float(fraction), "val_auroc": m, "val_lo": lo, "val_hi": hi,
                     "random_features_auroc": r, "gain": g, "gain_lo": glo, "gain_hi": ghi,
                     "n_seeds": int(frozen.notna().sum()), "n_tasks": int(block["task"].nunique())})
    return rows


def monitor_summary(run: Path) -> dict:
    """The pretraining monitor's first and last readings from ``run/metrics.csv``: mean probe AUROC over its
    labels and the effective rank (NaN where the monitor was off), and the steps trained."""
    metrics = pd.read_csv(run / "metrics.csv")
    probes = [c for c in metrics.columns if c.startswith("probe_")]
    watched = metrics.dropna(subset=["rankme"]) if "rankme" in metrics else metrics.iloc[:0]
    out = {"steps": int(pd.to_numeric(metrics["step"]).max())}
    for name, row in (("start", watched.head(1)), ("end", watched.tail(1))):
        out[f"monitor_probe_{name}"] = float(row[probes].mean(axis=1).iloc[0]) if len(row) and probes else np.nan
        out[f"rankme_{name}"] = float(row["rankme"].iloc[0]) if len(row) else np.nan
    return out


def pretraining_ecgs(run: Path) -> int:
    """How many ECGs the finished run's encoder was pretrained on (its provenance)."""
    from ..pretrain.checkpoint import find_checkpoint
    from ..pretrain.provenance import load_provenance

    prov = load_provenance(find_checkpoint(run))
    return int(sum(s["n_records"] for s in prov.info["sources"]))


def run_variants(base: dict, variants: tuple[Variant, ...], store: Path, out: Path, tasks: tuple[str, ...],
                 settings: dict, device: str | None = None, progress: bool = True, workers: int = 1,
                 table: Path | None = None) -> pd.DataFrame:
    """Pretrain and validate every variant; one row per (variant, fraction). Finished parts are reused, so an
    interrupted run continues. ``settings`` are the EvalConfig settings of the probe cells (seeds, fractions...).
    ``table``: a CSV rewritten after each variant, so that the rows finished so far are on disk."""
    rows = []
    cache = out / "features"  # shared by the variants: the random encoders' features are computed once
    for variant in variants:
        run, seconds = pretrain_variant(base, variant, store, out, device, progress)
        results = validate_variant(run, store, out / variant.name / "val", tasks, settings, device, progress,
                                   workers, cache)
        extra = {"variant": variant.name, "change": variant.change, "replicate": variant.replicate,
                 "pretrain_ecgs": pretraining_ecgs(run),
                 **monitor_summary(run), "pretrain_seconds_this_call": round(seconds, 1)}
        rows += [{**extra, **r} for r in summarize_variant(results)]
        if table is not None:
            pd.DataFrame(rows).to_csv(table, index=False)
    return pd.DataFrame(rows)


def best_variant(table: pd.DataFrame) -> str:
    """The variant with the highest validation AUROC, mean over its fractions (ties: the first listed); replicates
    (the recipe with another pretraining seed) are not candidates."""
    candidates = table[~table["replicate"].astype(bool)] if "replicate" in table else table
    means = candidates.groupby("variant", sort=False)["val_auroc"].mean()
    return str(means.idxmax())


def seed_spread(table: pd.DataFrame, base: str = "recipe") -> dict[float, float]:
    """Per label fraction, the largest absolute difference in validation AUROC between ``base`` and its
    replicates (other pretraining seeds): how far one pretraining run's luck moves a row. Empty without them."""
    if "replicate" not in table or base not in set(table["variant"]):
        return {}
    reps = table[table["replicate"].astype(bool)]
    ref = table[table["variant"] == base].set_index("fraction")["val_auroc"]
    spread: dict[float, float] = {}
    for _, r in reps.iterrows():
        if r["fraction"] in ref.index:
            d = abs(float(r["val_auroc"]) - float(ref[r["fraction"]]))
            spread[float(r["fraction"])] = max(d, spread.get(float(r["fraction"]), 0.0))
    return spread


def ablation_markdown(table: pd.DataFrame, title: str) -> str:
    """The ablation table for people: one row per variant and fraction, intervals over seeds."""
    lines = [f"# {title}", "", "Validation only (the store's val split; the test split was not read). val AUROC: the "
             "frozen linear probe, mean over tasks, 95 % t-interval over seeds; gain: frozen minus random features, "
             "paired by seed. Monitor: the pretraining monitor's own probe (mean over its labels) at the end, and at "
             "step 0.", "",
             "| variant | change | labels | val AUROC | gain over random features | monitor probe end (step 0) "
             "| rankme | steps |", "|---|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        lines.append(f"| {r['variant']} | {r['change']} | {r['fraction']:g} % | {_ci(r, 'val')} | "
                     f"{_signed_ci(r)} | {r['monitor_probe_end']:.3f} ({r['monitor_probe_start']:.3f}) | "
                     f"{r['rankme_end']:.1f} | {int(r['steps'])} |")
    best = best_variant(table)
    lines += ["", f"Best on validation (mean val AUROC over the fractions; replicates are not candidates): **{best}**."]
    spread = seed_spread(table)
    if spread:
        lines += ["", "Another pretraining seed of the recipe moves the validation AUROC by "
                  + ", ".join(f"{d:.3f} at {f:g} %" for f, d in sorted(spread.items()))
                  + ": a difference between rows smaller than that is within one pretraining run's luck."]
    return "\n".join(lines) + "\n"


def _ci(r: pd.Series, key: str) -> str:
    lo, hi = r[f"{key}_lo"], r[f"{key}_hi"]
    return f"{r[f'{key}_auroc']:.3f} [{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) else f"{r[f'{key}_auroc']:.3f}"


def _signed_ci(r: pd.Series) -> str:
    if not np.isfinite(r["gain"]):
        return "-"
    interval = f" [{r['gain_lo']:+.3f}, {r['gain_hi']:+.3f}]" if np.isfinite(r["gain_lo"]) else ""
    return f"{r['gain']:+.3f}{interval}"


def plot_curve(table: pd.DataFrame, path: Path, title: str, extra: pd.DataFrame | None = None) -> None:
    """Validation AUROC against pretraining ECGs: the frozen probe (with its interval) and random features;
    ``extra`` rows (the z-scored point) as separate markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for fraction, block in table.groupby("fraction"):
        block = block.sort_values("pretrain_ecgs")
        x = block["pretrain_ecgs"].to_numpy()
        yerr = np.vstack([block["val_auroc"] - block["val_lo"], block["val_hi"] - block["val_auroc"]])
        ax.errorbar(x, block["val_auroc"], yerr=np.nan_to_num(yerr), marker="o", capsize=3,
                    label=f"pretrained, {fraction:g} % labels")
        ax.plot(x, block["random_features_auroc"], linestyle="--", marker="x",
                label=f"random features, {fraction:g} % labels")
    for fraction, block in (extra.groupby("fraction") if extra is not None and len(extra) else []):
        block = block.sort_values("pretrain_ecgs")
        yerr = np.vstack([block["val_auroc"] - block["val_lo"], block["val_hi"] - block["val_auroc"]])
        ax.errorbar(block["pretrain_ecgs"], block["val_auroc"], yerr=np.nan_to_num(yerr), marker="s", capsize=3,
                    linestyle=":", label=f"z-scored, no VCG, {fraction:g} % labels")
        ax.plot(block["pretrain_ecgs"], block["random_features_auroc"], linestyle="none", marker="+",
                label=f"z-scored random features, {fraction:g} % labels")
    ax.set_xscale("log")
    ax.set_xlabel("pretraining ECGs")
    ax.set_ylabel("validation AUROC (mean over tasks)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["ABLATION_ARMS", "Variant", "ablation_markdown", "best_variant", "monitor_summary", "plot_curve",
           "pretrain_variant", "pretraining_ecgs", "run_variants", "seed_spread", "summarize_variant",
           "validate_variant"]
