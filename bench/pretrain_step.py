"""One pretraining step as ``ecgfast.pretrain.loop`` runs it, for the benchmarks: the fused views call on int16
samples, the dual-stream encoder (bf16 autocast on CUDA), the multi-positive loss, backward, clipping, Adam."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ecgfast.models.temporalnet import DualStreamTemporalNet, temporalnet_config
from ecgfast.nn import MultiPositiveContrastiveLoss
from ecgfast.ops.configs import VCGAugmentConfig
from ecgfast.pretrain.loop import ContrastivePretrainer
from ecgfast.pretrain.views import embedding_loss, make_views

SEGMENT = 2500


def make_pretrain_step(model_name: str, device: torch.device, compile_model: bool = False):
    """(model, views_of, loss_fn, step): ``views_of(samples, gain, baseline, offset)`` gives the (2, B, 8, 2500)
    views, ``step(batch, offset)`` runs a whole step on a loader batch (samples, gain, baseline, record, patient)."""
    torch.manual_seed(0)
    model = ContrastivePretrainer(DualStreamTemporalNet(temporalnet_config(model_name))).to(device)
    fwd = torch.compile(model) if compile_model else model
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, eps=1e-4)
    loss_fn = MultiPositiveContrastiveLoss(temperature=0.1, weights=(1.0, 1.0))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    view_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    def views_of(samples: torch.Tensor, gain: torch.Tensor, baseline: torch.Tensor, offset: int = 0) -> torch.Tensor:
        valid = np.full(samples.shape[0], samples.shape[-1])
        return make_views(samples.to(device, non_blocking=True), gain.to(device), baseline.to(device), valid,
                          SEGMENT, "intersegment", VCGAugmentConfig(), 0, offset, view_dtype)

    def step(batch: tuple[torch.Tensor, ...], offset: int = 0, model_fwd: Callable | None = None) -> None:
        samples, gain, baseline, record, patient = batch
        views = views_of(samples, gain, baseline, offset)
        with autocast:
            z = (model_fwd or fwd)(views.flatten(0, 1))  # (2B, streams, proj_dim)
        embedding_loss(loss_fn, z, record.to(device), patient.to(device)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return model, views_of, loss_fn, step
