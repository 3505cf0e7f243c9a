"""Chunked embedding for the contrastive loss (GradCache, Gao et al. 2021): a batch of any size in one chunk's memory.

A contrastive batch must not shrink (every row is a negative for every other), but the encoder's activations grow
with it. GradCache splits the step in two passes over chunks of ECGs:

1. embed every chunk without a graph (``torch.no_grad``), keep the embeddings of the whole batch (a few kB an ECG),
   compute the loss over the whole batch (every row against every row, the DDP gather included) and its gradient
   with respect to the embeddings: the loss is exact, and nothing of the encoder is kept;
2. for each chunk again, recompute its embeddings with a graph and backpropagate the cached embedding gradient of
   its rows: parameter gradients add up over chunks to the whole batch's gradient. Only one chunk's activations
   exist at a time.

Exactness. The RNG state (dropout) is saved before each chunk in pass 1 and restored before the same chunk in pass
2, so both passes draw the same masks; afterwards the state is where pass 1 left it. The loss and the gradients
equal those of the plain step whose forward pass runs the same chunks one after the other with a graph (tested
with the small and paper presets): GradCache changes memory and compute, not the result.

BatchNorm. Each chunk is normalised with its own batch statistics, as each GPU's share of the batch is under DDP
without SyncBatchNorm: with chunks of c ECGs, BatchNorm sees 2c views, as on a GPU holding c ECGs. So the result
depends on the chunk (``--memory-chunk``), not on the device; with one chunk it is the plain step. Pass 2 normalises
with the same chunk statistics but leaves the running statistics alone
(:func:`~ecgfast.models.temporalnet.running_stats_frozen`). The running statistics are updated once per step, in
pass 1: each chunk's update starts from the step's starting values and the step keeps the mean of the chunks'
results (for momentum m: (1 - m) * running + m * the mean over chunks of their batch statistics), and the batch
counter grows by one.

Under DDP every rank has the same number of chunks (the global batch splits evenly, and so do its chunks), pass 2
accumulates gradients locally (``no_sync``) and all-reduces them once, in the last chunk's backward.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

from ..models.temporalnet import running_stats_frozen
from .views import N_VIEWS, embedding_loss


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The CPU generator's state, and the CUDA generator's of ``device`` (dropout draws from the input's device)."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


class ChunkedContrastiveStep:
    """The forward and backward of one pretraining step in chunks of at most ``chunk`` ECGs (module docstring).

    Args:
        model: views (N, 8, T) -> embeddings (N, streams, proj_dim); the module the loop runs (plain, DDP or
            compiled).
        encoder: the module that holds the BatchNorm layers (the uncompiled, unwrapped encoder).
        loss_fn: the contrastive loss, ``loss_fn(z, ecg_row_ids, patient_row_ids)``.
        chunk: ECGs per chunk, >= 1; a batch of B ECGs runs in ceil(B / chunk) chunks of equal size (+-1).
        autocast: the autocast context of the encoder (None: none).
        ddp: the DistributedDataParallel wrapper inside ``model``, if any (its ``no_sync`` defers the all-reduce).

    Example:
        >>> from ecgfast.models.temporalnet import DualStreamTemporalNet, temporalnet_config
        >>> from ecgfast.nn import MultiPositiveContrastiveLoss
        >>> encoder = DualStreamTemporalNet(temporalnet_config("tiny")).train()
        >>> step = ChunkedContrastiveStep(encoder.embed, encoder, MultiPositiveContrastiveLoss(), chunk=2)
        >>> views = torch.randn(2, 5, 8, 64)  # 2 views of 5 ECGs: chunks of 2, 1 and 2 ECGs
        >>> loss = step.forward(views, torch.arange(5), torch.arange(5))  # the whole batch's loss; no graph kept
        >>> step.backward()  # parameter gradients of the whole batch, one chunk in the graph at a time
        >>> loss.shape, encoder.streams[0].stem.conv.weight.grad.shape
        (torch.Size([]), torch.Size([8, 1, 7]))

    Raises:
        ValueError: ``chunk`` < 1 (here); views not (2, B, 8, T) (in ``forward``); ``backward`` before ``forward``.
    """

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], encoder: nn.Module,
                 loss_fn: Callable[..., torch.Tensor], chunk: int,
                 autocast: AbstractContextManager | None = None, ddp: nn.Module | None = None) -> None:
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1 ECG, got {chunk}")
        self.model, self.loss_fn, self.chunk, self.ddp = model, loss_fn, chunk, ddp
        self.autocast = autocast if autocast is not None else nullcontext()
        norms = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                 and m.track_running_stats and m.running_mean is not None]
        self._stats = [t for m in norms for t in (m.running_mean, m.running_var)]  # averaged over chunks
        self._state = self._stats + [m.num_batches_tracked for m in norms]  # what each chunk starts from
        self._pending: tuple | None = None  # (views, chunk bounds, RNG states, embedding gradient, final RNG state)

    def bounds(self, batch: int) -> list[tuple[int, int]]:
        """[start, stop) of each chunk of a batch of ``batch`` ECGs: as few as ``chunk`` allows, sizes equal +-1."""
        n = math.ceil(batch / self.chunk)
        edges = [round(i * batch / n) for i in range(n + 1)]
        return list(zip(edges[:-1], edges[1:], strict=True))

    def forward(self, views: torch.Tensor, ecg_ids: torch.Tensor, patient_ids: torch.Tensor) -> torch.Tensor:
        """Pass 1: the loss of the whole batch (a detached scalar) and its gradient w.r.t. the embeddings (kept).

        ``views`` (2, B, 8, T) as :func:`~ecgfast.pretrain.views.make_views` gives them; ``ecg_ids``, ``patient_ids``
        (B,). Embedding rows are laid out (view, ecg, stream), as in the plain step.
        """
        if views.dim() != 4 or views.shape[0] != N_VIEWS:
            raise ValueError(f"views must be ({N_VIEWS}, B, 8, T), got {tuple(views.shape)}")
        device, batch = views.device, views.shape[1]
        bounds = self.bounds(batch)
        start = [t.clone() for t in self._state] if len(bounds) > 1 else []
        total = [torch.zeros_like(t) for t in self._stats] if len(bounds) > 1 else []
        states, parts = [], []
        with torch.no_grad():
            for i, (a, b) in enumerate(bounds):
                if i:
                    torch._foreach_copy_(self._state, start)  # every chunk updates from the step's statistics
                states.append(_rng_state(device))
                with self.autocast:
                    z = self.model(views[:, a:b].flatten(0, 1))  # (2c, streams, proj_dim)
                parts.append(z.float().unflatten(0, (N_VIEWS, b - a)))  # (2, c, streams, proj_dim)
                if total:
                    torch._foreach_add_(total, self._stats)
        if total:  # running statistics: the mean of the chunks' updates, applied once
            torch._foreach_mul_(total, 1.0 / len(bounds))
            torch._foreach_copy_(self._stats, total)
        z = torch.cat(parts, dim=1).requires_grad_()  # (2, B, streams, proj_dim), a leaf of the loss's graph only
        loss = embedding_loss(self.loss_fn, z, ecg_ids, patient_ids)
        # d loss / d z; under DDP the gather's backward returns the other ranks' terms to these rows
        if loss.requires_grad:  # into z only; not autograd.grad, which module hooks (a FLOP counter) refuse
            loss.backward(inputs=[z])
        grad = z.grad if z.grad is not None else torch.zeros_like(z)
        self._pending = (views, bounds, states, grad, _rng_state(device))
        return loss.detach()

    def backward(self) -> None:
        """Pass 2: recompute each chunk with a graph and backpropagate its rows' cached embedding gradients.

        Parameter gradients accumulate into ``.grad`` as one backward of the whole batch would leave them.
        """
        if self._pending is None:
            raise ValueError("ChunkedContrastiveStep.backward() needs a forward() first")
        views, bounds, states, grad, final = self._pending
        self._pending = None
        device = views.device
        with running_stats_frozen():
            for i, ((a, b), state) in enumerate(zip(bounds, states, strict=True)):
                _set_rng_state(state, device)  # the masks of pass 1
                last = i == len(bounds) - 1
                with self.ddp.no_sync() if self.ddp is not None and not last else nullcontext():
                    with self.autocast:
                        z = self.model(views[:, a:b].flatten(0, 1))  # (2c, streams, proj_dim)
                    z.float().unflatten(0, (N_VIEWS, b - a)).backward(grad[:, a:b])
        _set_rng_state(final, device)  # as if the batch had been embedded once

    def discard(self) -> None:
        """Drop what ``forward`` kept (a skipped step): the views and the embedding gradient."""
        self._pending = None


__all__ = ["ChunkedContrastiveStep"]
