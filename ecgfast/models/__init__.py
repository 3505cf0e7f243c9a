"""Encoders and heads: TemporalNet, the dual-stream model, the classifier (METHOD.md, "Encoder")."""

from .temporalnet import (
    LEAD_GROUPS,
    PRESETS,
    STREAM_LEADS,
    ClassifierHead,
    DualStreamTemporalNet,
    ECGClassifier,
    ResidualBlock,
    TemporalNet,
    TemporalNetConfig,
    count_parameters,
    temporalnet_config,
    temporalnet_macs,
)

__all__ = [
    "LEAD_GROUPS", "PRESETS", "STREAM_LEADS", "ClassifierHead", "DualStreamTemporalNet", "ECGClassifier",
    "ResidualBlock", "TemporalNet", "TemporalNetConfig", "count_parameters", "temporalnet_config",
    "temporalnet_macs",
]
