"""Dropout that is cheap on a CPU: the same layer as ``nn.Dropout``, with its mask drawn by ``rand_like``.

PyTorch's CPU dropout draws its mask with ``bernoulli_``, which costs about twice a uniform draw of the same size;
in the small TemporalNet presets on a CPU that was a third of a training step. Here, on a CPU tensor and in eager
mode, the mask is ``rand_like(x) >= p`` and kept values are scaled by ``1 / (1 - p)``: the same distribution as
``nn.Dropout`` (each element kept with probability 1 - p, an unbiased output), from another random stream. On
CUDA, under ``torch.compile`` and in eval mode it is ``nn.Dropout`` itself. State dict and repr are nn.Dropout's.
"""

from __future__ import annotations

import torch
from torch import nn


class CPUFastDropout(nn.Dropout):
    """``nn.Dropout(p)`` whose CPU mask comes from a uniform draw (module docstring). Shapes: any -> the same."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (not self.training or self.p == 0.0 or x.device.type != "cpu" or self.inplace
                or torch.compiler.is_compiling()):
            return super().forward(x)
        if self.p == 1.0:
            return x * 0.0
        keep = torch.rand_like(x) >= self.p  # kept with probability 1 - p
        return x * keep * (1.0 / (1.0 - self.p))


__all__ = ["CPUFastDropout"]
