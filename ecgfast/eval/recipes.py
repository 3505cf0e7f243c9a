"""Whole experiments in one command: prepare a corpus, pretrain on its training patients, evaluate every arm.

``ecgfast-eval --recipe ptbxl-subset --source ../shared/data/ecg/ptbxl-subset --out runs/ptbxl`` runs the
first result on real ECGs: 1,819 PTB-XL ECGs (12 leads, 10 s), PTB-XL's ``strat_fold`` as patient-disjoint splits
(folds 1-8 train, 9 validation, 10 test), pretraining without labels on the training folds, then random init vs
random features vs frozen vs finetuned at 1, 5, 10, 50 and 100 % of the training patients' labels for five
diagnostic labels, five seeds. Every choice below was fixed before any test score was seen; none was tuned on
fold 10. The step rule's values (below) were set from the cost of a step, not from any score.

Sized for a 2-core CPU, and said so in the report's header:

- 100 Hz, the rate the subset is distributed at: it was band-passed to 0.5-40 Hz before it was published, so
  500 Hz samples would carry nothing more and cost five times the compute. A 5 s segment is 500 samples.
- The tiny TemporalNet preset (two streams of 75 k parameters), pretrained for 15 epochs (about 6 minutes).
- The CPU step rule for every end-to-end arm: batch 32, at least 200 steps, validation every 25, patience 4
  evaluations past the floor, at most 1,000 steps (a step of the tiny model at 100 Hz takes about 0.2 s on a core,
  so a cell takes 40 s to about 4 minutes); the frozen and random-features arms are probes trained to convergence
  (seconds). Five tasks x five seeds x five fractions x four arms: 500 cells, two at a time (``--workers 2``).
- No VCG rotation or scaling: the subset is z-scored per lead, so the millivolt ratios between leads that the
  Dower matrices assume are gone (``ecgfast-train`` refuses spatial augmentation on such a store). ZeroMask,
  intersegment and interlead views remain. Each ECG is its own patient (PTB-XL's patient ids are not in the
  subset), so there are no patient-aware positives; the folds still keep a patient's ECGs together.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from .config import EvalConfig
from .tasks import EvalError

log = logging.getLogger("ecgfast.eval")


@dataclass(frozen=True)
class Recipe:
    """One experiment: how to prepare its store, pretrain, and evaluate."""

    name: str
    prepare_args: tuple[str, ...]  # ecgfast-prepare flags after SOURCE and --out
    pretrain: dict = field(default_factory=dict)  # TrainConfig settings (flat names)
    tasks: tuple[str, ...] = ()
    evaluate: dict = field(default_factory=dict)  # EvalConfig settings
    note: str = ""  # what the recipe cut to fit its machine, for the report's header


RECIPES = {
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


def run_recipe(name: str, source: str, out: Path, device: str | None = None, progress: bool = True,
               seeds: int | None = None, workers: int = 1) -> EvalConfig:
    """Prepare ``source`` into ``out/store`` (kept if done), pretrain into ``out/pretrain`` (resumed if begun), and
    return the EvalConfig of the evaluation into ``out/eval``.

    Raises:
        EvalError: an unknown recipe, or a step that fails (its message says which).
    """
    if name not in RECIPES:
        raise EvalError(f"unknown recipe {name!r}; recipes: {sorted(RECIPES)}")
    recipe = RECIPES[name]
    from ..prepare import main as prepare_main
    from ..pretrain.config import load_config
    from ..pretrain.loop import pretrain_until_done

    store = out / "store"
    if not (store / "store.json").is_file():
        log.info("recipe %s: preparing %s", name, source)
        if prepare_main([source, "--out", str(store), *recipe.prepare_args]) != 0:
            raise EvalError(f"recipe {name}: ecgfast-prepare of {source} failed (its message is above)")
    run = out / "pretrain"
    config = load_config(overrides={**recipe.pretrain, "store": str(store), "out": str(run), "progress": progress,
                                    "device": device})
    log.info("recipe %s: pretraining %s on %s (continued if begun, reused if done)", name, config.model, store)
    pretrain_until_done(config)
    settings = {**recipe.evaluate, **({"seeds": seeds} if seeds else {})}
    return EvalConfig(store=str(store), out=str(out / "eval"), tasks=recipe.tasks, checkpoint=str(run),
                      device=device, progress=progress, budget_note=recipe.note, workers=workers, **settings)


__all__ = ["RECIPES", "Recipe", "run_recipe"]
