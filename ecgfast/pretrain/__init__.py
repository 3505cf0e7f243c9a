"""Pretraining, in the order a step runs: views of a batch (:mod:`.views`), the loop (:mod:`.loop`), checkpoints
(:mod:`.checkpoint`) with what they were trained on (:mod:`.provenance`), the settings (:mod:`.config`), the
embedded corpus (:mod:`.corpus`) and the ``ecgfast-train`` command line (:mod:`.cli`).

``python -m ecgfast.pretrain`` is ``ecgfast-train`` (the form ``torchrun`` runs). Names below load on first use,
so that the command line answers ``--help`` without importing torch.
"""

from ..lazy import lazy_exports

_EXPORTS = {"TrainConfig": "config", "load_config": "config", "pretrain": "loop", "synthetic_store": "corpus",
            "find_checkpoint": "checkpoint", "load_weights": "checkpoint", "save_checkpoint": "checkpoint"}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
