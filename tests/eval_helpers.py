"""The small world the evaluation tests run in: an 80-patient synthetic store at 100 Hz (half train, a quarter each
val and test; 5 s segments of 500 samples, five times cheaper than 500 Hz), and a tiny-preset "pretrained"
checkpoint that is a randomly initialised encoder (the protocol, not the pretraining, is under test)."""

from __future__ import annotations

from pathlib import Path

import torch

from ecgfast.data.preprocess import PreprocessConfig
from ecgfast.data.synthetic import SyntheticReader
from ecgfast.models.temporalnet import DualStreamTemporalNet, temporalnet_config
from ecgfast.prepare import SplitConfig, prepare_store
from ecgfast.pretrain.checkpoint import save_checkpoint

SEGMENT = 500  # 5 s at the test store's 100 Hz
CHECKPOINT_SEED = 1234  # not a seed any cell uses: the "pretrained" weights differ from every random-init arm's


def make_eval_store(path: Path) -> Path:
    """80 synthetic patients, seed 10, at 100 Hz: half of them train, a quarter each val and test."""
    prepare_store([SyntheticReader(n_patients=80, seed=10)], path, PreprocessConfig(fs=100.0),
                  split=SplitConfig(fractions=(0.5, 0.25, 0.25)), workers=1, progress=False)
    return path


def encoder_checkpoint(run: Path, provenance: dict | None, preset: str = "tiny") -> Path:
    """A checkpoint folder holding an untrained encoder of ``preset``, as ecgfast-train would save it."""
    torch.manual_seed(CHECKPOINT_SEED)
    save_checkpoint(run, 0, DualStreamTemporalNet(temporalnet_config(preset)), {}, config={"model": preset},
                    provenance=provenance)
    return run
