"""ecgfast: high-throughput contrastive self-supervised pretraining of ECG encoders.

- :mod:`ecgfast.data`: readers (WFDB, PhysioNet/CinC, PTB-XL, MIMIC-IV-ECG, CODE-15%, numpy), preprocessing,
  the int16 memory-mapped store, patient splits, the synthetic corpus, samplers, the torch and DALI loaders.
- :mod:`ecgfast.ops` / :mod:`ecgfast.nn`: the fused VCG augmentation and multi-positive contrastive loss.
- :mod:`ecgfast.models`: TemporalNet and the dual-stream model. :mod:`ecgfast.reference`: plain-torch oracles.
- CLIs: ``ecgfast-prepare`` (prepare.py), ``ecgfast-train`` (train.py), ``ecgfast-eval`` (evaluate.py),
  ``ecgfast-embed`` (embed.py).
"""

__version__ = "0.1.0"

#: Lead order inside ecgfast (METHOD.md): the 8 independent leads of the standard 12-lead ECG.
LEADS: tuple[str, ...] = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
