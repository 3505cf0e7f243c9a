"""Whole experiments in one command: prepare a corpus, pretrain on its training patients, evaluate every arm; and
the validation ablation that chose the recipe's settings.

``ptbxl``: the whole method on real millivolt ECGs, on any PTB-XL folder (the full dataset, or the 1,987-record
``ptbxl-mini`` slice shipped beside the repository, on which it is sized for a 2-core CPU):

- prepared from PTB-XL's own layout at 100 Hz (``records100/``; the full dataset's 500 Hz files would cost five
  times the compute on a CPU), split by ``strat_fold`` (1-8 train, 9 validation, 10 test);
- pretrained on folds 1-8 without labels: VCG rotation and scaling (the records are in millivolts), ZeroMask,
  intersegment and interlead views, patient positives (K = 4 ECGs of a patient per batch);
- evaluated on the five diagnostic superclasses with the four arms at 1, 5, 10, 50 and 100 % of the training
  patients' labels, five seeds, under the step rule, and the test fold scored once;
- its pretraining settings are the best variant of its validation ablation (``--ablation``: one change from the
  recipe's base per variant, each encoder's linear probe scored on fold 9 against random features; fold 10 is
  never read), chosen before the test run. :data:`RECIPES` records which one it was (``chosen``).

``ptbxl-subset``: the first result on real ECGs: the 1,819 z-scored PTB-XL ECGs shipped beside the repository
(no millivolts, so no VCG rotation; no patient ids, so no patient positives), the same protocol.

Every choice was fixed before any test score was seen; none was tuned on fold 10.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .ablation import Variant
from .config import EvalConfig
from .tasks import EvalError

log = logging.getLogger("ecgfast.eval")


@dataclass(frozen=True)
class Recipe:
    """One experiment: how to prepare its store, pretrain, and evaluate; optionally the validation ablation that
    chose its pretraining settings (the base, one variant per change, the chosen one) and its data-size curve."""

    name: str
    prepare_args: tuple[str, ...]  # ecgfast-prepare flags after SOURCE and --out
    pretrain: dict = field(default_factory=dict)  # TrainConfig settings (flat names): the base, before the ablation
    tasks: tuple[str, ...] = ()
    evaluate: dict = field(default_factory=dict)  # EvalConfig settings
    note: str = ""  # what the recipe cut to fit its machine, for the report's header
    variants: tuple[Variant, ...] = ()  # the validation ablation: one change from ``pretrain`` each
    chosen: str | None = None  # the variant the ablation found best on validation: the test run pretrains it
    curve_shares: tuple[float, ...] = ()  # the data-size curve: shares of the training patients (1.0: the chosen)
    zscore_args: tuple[str, ...] = ()  # prepare flags of the curve's z-scored point (with --extra-source)
    ablation_evaluate: dict = field(default_factory=dict)  # EvalConfig settings of the ablation's probe cells

    def final_pretrain(self) -> dict:
        """The pretraining settings of the test run: the base with the chosen variant's change."""
        if self.chosen is None:
            return dict(self.pretrain)
        return {**self.pretrain, **{v.name: v for v in self.variants}[self.chosen].pretrain}


SUPERCLASS_TASKS = tuple(f"superclass:{c}" for c in ("NORM", "MI", "STTC", "CD", "HYP"))
PTBXL_BASE = {"model": "tiny", "batch_size": 64, "epochs": 30, "warmup_epochs": 2.0, "lr": 1e-3, "seed": 42,
              "views": "intersegment", "spatial": True, "k_per_patient": 4, "workers": 1, "ckpt_every": 100,
              "log_every": 23}
PTBXL_VARIANTS = (
    Variant("recipe", "none: the base recipe"),
    Variant("recipe-seed-43", "none, pretraining seed 43 instead of 42 (the noise of one pretraining run)",
            {"seed": 43}, replicate=True),
    Variant("no-vcg", "VCG rotation and scaling off (ZeroMask only)", {"spatial": False}),
    Variant("k1", "patient positives off (K = 1)", {"k_per_patient": 1}),
    Variant("augment-views", "two augmented copies of one crop instead of two adjacent segments", {"views": "augment"}),
    Variant("tau-0.2", "temperature 0.2 instead of 0.1", {"temperature": 0.2}),
    Variant("epochs-15", "15 pretraining epochs instead of 30", {"epochs": 15}),
    Variant("epochs-60", "60 pretraining epochs instead of 30", {"epochs": 60}),
    Variant("small", "the small model instead of tiny", {"model": "small"}),
)

RECIPES = {
    "ptbxl": Recipe(
        name="ptbxl",
        prepare_args=("--rate", "100", "--fs", "100", "--split-by", "strat_fold", "--quiet"),
        pretrain=PTBXL_BASE,
        tasks=SUPERCLASS_TASKS,
        evaluate={"segment": 500, "seeds": 5, "min_steps": 200, "eval_every": 25, "patience": 4, "max_steps": 1000,
                  "batch_size": 32, "model": "tiny", "fractions": (1.0, 5.0, 10.0, 50.0, 100.0)},
        note="CPU recipe: PTB-XL at 100 Hz, the tiny model pretrained on folds 1-8 (settings chosen on fold 9 by "
             "--ablation), 200 to 1,000 steps per end-to-end arm",
        variants=PTBXL_VARIANTS,
        # chosen on fold 9 before any test run (bench/results/ptbxl-mini-cpu-2026-12-05/ablation.md): VCG rotation and
        # scaling off, ZeroMask + intersegment views + patient positives kept
        chosen="no-vcg",
        curve_shares=(0.25, 0.5, 1.0),
        zscore_args=("--rate", "100", "--fs", "100", "--split-by", "strat_fold", "--bandpass", "0.5", "40",
                     "--normalize", "zscore", "--quiet"),
        ablation_evaluate={"segment": 500, "seeds": 5, "fractions": (10.0, 100.0), "model": "tiny"}),
    "ptbxl-subset": Recipe(
        name="ptbxl-subset",
        prepare_args=("--fs", "100", "--quiet"),
        pretrain={"model": "tiny", "segment": 500, "views": "intersegment", "spatial": False, "batch_size": 64,
                  "k_per_patient": 1, "epochs": 15, "warmup_epochs": 1.0, "lr": 1e-3, "ckpt_every": 100,
                  "log_every": 22, "workers": 1, "seed": 42},
        tasks=("MI", "NORM", "CD", "STTC", "AFIB"),
        evaluate={"segment": 500, "seeds": 5, "min_steps": 200, "eval_every": 25, "patience": 4, "max_steps": 1000,
                  "batch_size": 32, "model": "tiny", "fractions": (1.0, 5.0, 10.0, 50.0, 100.0)},
        note="CPU recipe: 100 Hz (the subset's own rate), the tiny model pretrained 15 epochs on folds 1-8 "
             "without VCG rotation (z-scored leads), 200 to 1,000 steps per end-to-end arm"),
}


def _recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise EvalError(f"unknown recipe {name!r}; recipes: {sorted(RECIPES)}")
    return RECIPES[name]


def prepare_recipe_store(recipe: Recipe, source: str, out: Path) -> Path:
    """Prepare ``source`` into ``out/store`` as the recipe says (kept when done, continued when interrupted)."""
    from ..prepare import main as prepare_main

    store = out / "store"
    if not (store / "store.json").is_file():
        log.info("recipe %s: preparing %s", recipe.name, source)
        if prepare_main([source, "--out", str(store), *recipe.prepare_args]) != 0:
            raise EvalError(f"recipe {recipe.name}: ecgfast-prepare of {source} failed (its message is above)")
    return store


def run_recipe(name: str, source: str, out: Path, device: str | None = None, progress: bool = True,
               seeds: int | None = None, workers: int = 1) -> EvalConfig:
    """Prepare ``source`` into ``out/store`` (kept if done), pretrain the recipe's final settings into
    ``out/pretrain`` (continued if begun, reused if done), and return the EvalConfig of the test evaluation into
    ``out/eval``.

    Raises:
        EvalError: an unknown recipe, or a step that fails (its message says which).
    """
    recipe = _recipe(name)
    from ..pretrain.config import load_config
    from ..pretrain.loop import pretrain_until_done

    store = prepare_recipe_store(recipe, source, out)
    run = out / "pretrain"
    overrides = {**recipe.final_pretrain(), "store": str(store), "progress": progress, "device": device}
    ablated = out / "ablation" / str(recipe.chosen) / "pretrain"
    if recipe.chosen and _finished_with(ablated, load_config(overrides={**overrides, "out": str(ablated)})):
        run = ablated  # the chosen variant's encoder, already pretrained with these very settings by --ablation
        log.info("recipe %s: the encoder of the chosen variant %r (%s)", name, recipe.chosen, run)
    else:
        config = load_config(overrides={**overrides, "out": str(run)})
        log.info("recipe %s: pretraining %s on %s (continued if begun, reused if done)", name, config.model, store)
        pretrain_until_done(config)
    settings = {**recipe.evaluate, **({"seeds": seeds} if seeds else {})}
    note = recipe.note + (f"; pretraining settings: variant {recipe.chosen!r} of the validation ablation"
                          if recipe.chosen else "")
    return EvalConfig(store=str(store), out=str(out / "eval"), tasks=recipe.tasks, checkpoint=str(run),
                      device=device, progress=progress, budget_note=note, workers=workers, **settings)


def _finished_with(run: Path, config) -> bool:
    """True when ``run`` is a finished pretraining run whose settings would train what ``config`` trains."""
    import json

    from ..pretrain.checkpoint import STATE_KEYS, CheckpointError, find_checkpoint, load_state
    from ..pretrain.config import to_dict
    from ..pretrain.resume import ResumeError, check_resume

    try:
        ckpt = find_checkpoint(run, STATE_KEYS) if (run / "checkpoints").is_dir() else None
        if ckpt is None:
            return False
        state = load_state(ckpt)
        check_resume(json.loads((ckpt / "config.json").read_text()), to_dict(config), None, "", None, "")
    except (CheckpointError, ResumeError, OSError, ValueError):
        return False
    return "total_steps" in state and int(state["step"]) >= int(state["total_steps"])


def run_ablation(name: str, source: str, out: Path, device: str | None = None, progress: bool = True,
                 seeds: int | None = None, workers: int = 1, extra_source: str | None = None) -> dict[str, Path]:
    """The recipe's validation ablation and data-size curve (:mod:`ecgfast.eval.ablation`) into ``out``: every
    variant pretrained and probed on the val split, the best one chosen, then the chosen settings pretrained on
    nested shares of the training patients. With ``extra_source`` (a z-scored corpus such as ptbxl-subset), the
    curve gains a separate z-scored point: the chosen settings without VCG rotation, pretrained on the z-scored
    ``source`` alone and on ``source`` + ``extra_source`` (its training split as extra unlabelled ECGs), each
    probed on ``source``'s labelled val records. Writes ``ablation.csv``/``.md``, ``curve.csv``/``.png``,
    ``zcurve.csv`` and ``chosen.json``; never reads a test split. Returns those paths.

    Raises:
        EvalError: an unknown recipe, one without variants, or a step that fails.
    """
    import json

    from .ablation import ablation_markdown, best_variant, plot_curve, run_variants

    recipe = _recipe(name)
    if not recipe.variants:
        raise EvalError(f"recipe {name!r} has no validation ablation")
    store = prepare_recipe_store(recipe, source, out)
    settings = {**recipe.ablation_evaluate, **({"seeds": seeds} if seeds else {})}
    folder = out / "ablation"
    paths = {"ablation_csv": out / "ablation.csv", "ablation_md": out / "ablation.md", "chosen": out / "chosen.json"}
    table = run_variants(recipe.pretrain, recipe.variants, store, folder, recipe.tasks, settings, device, progress,
                         workers, table=paths["ablation_csv"])
    best = best_variant(table)
    paths["ablation_md"].write_text(ablation_markdown(table, f"Validation ablation of recipe {name}"))
    paths["chosen"].write_text(json.dumps({"recipe": name, "chosen": best, "in_code": recipe.chosen}, indent=2))
    if recipe.chosen is not None and recipe.chosen != best:
        log.warning("recipe %s: the ablation finds %r best on validation, the recipe pretrains %r", name, best,
                    recipe.chosen)
    if recipe.curve_shares:
        chosen = {v.name: v for v in recipe.variants}[best]
        shares = tuple(Variant(chosen.name if p == 1 else f"{chosen.name}-share-{p:g}",
                               f"{chosen.change}; {p:.0%} of the training patients",
                               {**chosen.pretrain, **({"pretrain_share": p} if p < 1 else {})})
                       for p in recipe.curve_shares)
        paths["curve_csv"], paths["curve_png"] = out / "curve.csv", out / "curve.png"
        curve = run_variants(recipe.pretrain, shares, store, folder, recipe.tasks, settings, device, progress,
                             workers, table=paths["curve_csv"])
        zcurve = None
        if extra_source and recipe.zscore_args:
            paths["zcurve_csv"] = out / "zcurve.csv"
            zcurve = _zscored_point(recipe, chosen, source, extra_source, out, settings, device, progress, workers,
                                    paths["zcurve_csv"])
        plot_curve(curve, paths["curve_png"], f"{name}: validation AUROC against pretraining data", extra=zcurve)
    return paths


def _zscored_point(recipe: Recipe, chosen: Variant, source: str, extra: str, out: Path, settings: dict,
                   device: str | None, progress: bool, workers: int, table: Path) -> pd.DataFrame:
    """The curve's z-scored point: the chosen settings without VCG on z-scored ``source``, and on ``source`` +
    ``extra``; both probed on ``source``'s labelled val records (the extra corpus carries other label names)."""
    from ..prepare import main as prepare_main
    from .ablation import run_variants

    rows = []
    change = {**chosen.pretrain, "spatial": False}  # z-scored leads: no millivolts, no VCG rotation
    for label, sources in (("z-scored", [source]), ("z-scored + extra", [source, extra])):
        store = out / ("zstore" if len(sources) == 1 else "zstore-extra")
        if not (store / "store.json").is_file():
            if prepare_main([*sources, "--out", str(store), *recipe.zscore_args]) != 0:
                raise EvalError(f"recipe {recipe.name}: ecgfast-prepare of {', '.join(sources)} failed")
        name = "z-" + ("source" if len(sources) == 1 else "source-extra")
        variant = Variant(name, f"{chosen.change}; {label}, no VCG", change)
        rows.append(run_variants(recipe.pretrain, (variant,), store, out / "ablation", recipe.tasks, settings,
                                 device, progress, workers))
        pd.concat(rows).to_csv(table, index=False)
    return pd.concat(rows, ignore_index=True)


__all__ = ["RECIPES", "Recipe", "prepare_recipe_store", "run_ablation", "run_recipe"]
