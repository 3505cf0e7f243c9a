"""ecgfast: high-throughput contrastive self-supervised pretraining of ECG encoders.

The data layer lives in :mod:`ecgfast.data`: readers for WFDB, PhysioNet/CinC, PTB-XL, MIMIC-IV-ECG,
CODE-15% and numpy arrays; preprocessing; the int16 memory-mapped store; the synthetic corpus.
"""

__version__ = "0.1.0"

#: Lead order inside ecgfast (METHOD.md): the 8 independent leads of the standard 12-lead ECG.
LEADS: tuple[str, ...] = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
