"""The demo of ``ecgfast-eval --demo``: the synthetic corpus, pretrained on its train split, then evaluated.

The CPU demo pretrains the tiny model with the embedded default's settings for :data:`DEMO_PRETRAIN_STEPS` steps
on a corpus of :data:`DEMO_PATIENTS` patients at 100 Hz (the embedded default's rate); ``paper`` uses the authors'
recipe (the paper model, batch 512, 210 epochs: a GPU job) on a larger corpus at 500 Hz. A finished pretraining
run in ``<out>/pretrain`` is reused and an interrupted one continued, so rerunning the command continues it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .tasks import EvalError

log = logging.getLogger("ecgfast.eval")

DEMO_TASKS = ("low_ef", "hyperk", "af")
DEMO_PATIENTS = {"cpu": 400, "paper": 5000}  # 400: ~320 training patients, 25 of them with af
DEMO_FS = {"cpu": 100.0, "paper": 500.0}
DEMO_CORPUS_SEED = 42
DEMO_PRETRAIN_STEPS = 150  # CPU demo: ~4 epochs of the 400-patient corpus at the embedded default's batch 32


def prepare_demo(out: Path, checkpoint: str | None, device: str | None, progress: bool,
                 paper: bool = False) -> tuple[str, str]:
    """(store, checkpoint) of the demo: the synthetic corpus, pretrained on its train split unless given."""
    try:
        from ..pretrain.config import SYNTHETIC_DEFAULTS, load_config
        from ..pretrain.corpus import synthetic_store
        from ..pretrain.loop import pretrain_until_done
    except ImportError as exc:
        raise EvalError(f"the demo pretrains with ecgfast.pretrain, which cannot be imported here ({exc})") from exc
    size = "paper" if paper else "cpu"
    store = synthetic_store(DEMO_PATIENTS[size], DEMO_CORPUS_SEED, DEMO_FS[size])
    if checkpoint:
        return str(store), checkpoint
    run = out / "pretrain"
    overrides = {"store": str(store), "out": str(run), "progress": progress, "device": device,
                 "seed": DEMO_CORPUS_SEED, "max_steps": None if paper else DEMO_PRETRAIN_STEPS,
                 "ckpt_every": 1000}
    config = load_config(overrides=overrides, base=None if paper else SYNTHETIC_DEFAULTS)
    log.info("demo: pretraining %s on %s (continued if begun, reused if done)", config.model, store)
    pretrain_until_done(config)
    return str(store), str(run)


__all__ = ["DEMO_TASKS", "prepare_demo"]
