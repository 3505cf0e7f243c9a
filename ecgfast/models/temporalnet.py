"""TemporalNet, the dual-stream encoder and the classifier heads, exactly as METHOD.md describes them.

One TemporalNet runs every lead through the same weights as a one-channel signal:

    (B, L, T) -> (B*L, 1, T) -> stem: conv k7 + BN + ReLU + max-pool 4        -> (B*L, 32, T/4)
              -> two parallel branches of 4 residual blocks, kernels 3 and 7   -> 2 x (B*L, 256, T/4)
              -> concat -> fusion: conv k3 + BN + Dropout + ReLU              -> (B*L, 512, T/4)
              -> global average pool                                          -> (B, L, 512) lead features

The dual-stream model holds two independent TemporalNets, one on leads {I, II, V5, V6} and one on
{V1, V2, V3, V4}; each averages its lead features into one stream feature, and the two streams are
interlead views of each other in pretraining. Nothing downsamples after the stem, so the encoder costs
about 1.77 GMAC per lead at T = 2500 (:func:`temporalnet_macs`): it is where the training time goes.

Memory hooks for pretraining (:mod:`ecgfast.pretrain.memory`): :meth:`DualStreamTemporalNet.checkpoint_blocks`
makes every residual block recompute its activations in backward instead of keeping them (activation
checkpointing), and every BatchNorm is a :class:`RecomputeSafeBatchNorm1d`, whose running statistics a recomputed
forward pass (:func:`running_stats_frozen`) leaves alone, so that they are updated once per step.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ecgfast import LEADS

from .dropout import CPUFastDropout

#: Leads of each stream, by name (METHOD.md): limb and lateral chest leads vs the anterior chest leads.
STREAM_LEADS: tuple[tuple[str, ...], ...] = (("I", "II", "V5", "V6"), ("V1", "V2", "V3", "V4"))
#: The same groups as indices into ecgfast's lead order (I, II, V1..V6): ((0, 1, 6, 7), (2, 3, 4, 5)).
LEAD_GROUPS: tuple[tuple[int, ...], ...] = tuple(tuple(LEADS.index(n) for n in g) for g in STREAM_LEADS)

MIN_CHANNELS = 8  # floor of a width-scaled channel count


@dataclass(frozen=True)
class TemporalNetConfig:
    """Hyperparameters of one TemporalNet. The defaults are the paper's network (METHOD.md)."""

    in_channels: int = 1  # channels of one lead's signal: leads are folded into the batch, so 1
    stem_channels: int = 32  # stem conv output channels
    stem_kernel: int = 7  # stem conv kernel (odd; padding kernel // 2 keeps the length)
    pool: int = 4  # stem max-pool size and stride: the only downsampling, T -> T // pool
    branch_channels: tuple[int, ...] = (64, 128, 256, 256)  # output channels of each residual block, in order
    kernels: tuple[int, ...] = (3, 7)  # conv kernel of each parallel branch (odd, 'same' padding)
    dropout: float = 0.5  # dropout probability, in the residual blocks and the fusion layer
    block_dropout: bool = True  # dropout after each block's 2nd BN (METHOD.md's bracketed "[-> Dropout 0.5]")
    embed_dim: int = 512  # fusion conv output channels = the per-lead feature width
    proj_hidden: int = 256  # projection head hidden width (not width-scaled)
    proj_dim: int = 128  # contrastive embedding width (not width-scaled)
    width: float = 1.0  # multiplier on every conv channel count (stem, blocks, fusion), floored at MIN_CHANNELS

    def __post_init__(self) -> None:
        if self.in_channels < 1 or self.pool < 1 or not self.branch_channels or not self.kernels:
            raise ValueError("in_channels and pool must be >= 1; branch_channels and kernels must be non-empty")
        if any(k < 1 or k % 2 == 0 for k in (self.stem_kernel, *self.kernels)):
            raise ValueError(f"kernels must be odd for 'same' padding, got stem {self.stem_kernel}, {self.kernels}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.width <= 0 or min(*self.branch_channels, self.embed_dim, self.proj_hidden, self.proj_dim) < 1:
            raise ValueError("width and every channel count must be > 0")

    def channels(self, c: int) -> int:
        """Channel count ``c`` after the width multiplier (unchanged at width 1)."""
        return c if self.width == 1.0 else max(MIN_CHANNELS, round(c * self.width))

    @property
    def block_channels(self) -> list[tuple[int, int]]:
        """(c_in, c_out) of each residual block of a branch, width applied: [(32, 64), (64, 128), ...]."""
        widths = [self.channels(self.stem_channels)] + [self.channels(c) for c in self.branch_channels]
        return list(zip(widths[:-1], widths[1:], strict=True))

    @property
    def feature_dim(self) -> int:
        """Width of a lead feature (the fusion conv output), width applied."""
        return self.channels(self.embed_dim)


PRESETS: dict[str, TemporalNetConfig] = {
    "paper": TemporalNetConfig(),  # METHOD.md: ~3.0 M parameters per stream, ~1.77 GMAC per lead at T=2500
    "small": TemporalNetConfig(width=0.25),  # channels 8 -> 16, 32, 64, 64; features 128
    "tiny": TemporalNetConfig(width=0.125, branch_channels=(64, 128, 256)),  # 8 -> 8, 16, 32; features 64
}


def temporalnet_config(name: str, **overrides) -> TemporalNetConfig:
    """A preset ("paper", "small", "tiny") with optional field overrides.

    Raises:
        ValueError: an unknown preset name.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown TemporalNet preset {name!r}; choose one of {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)


_stats_frozen = False  # True while a recomputed forward pass runs: BatchNorm leaves its running statistics alone


@contextmanager
def running_stats_frozen() -> Iterator[None]:
    """Within: every :class:`RecomputeSafeBatchNorm1d` in training mode normalises with its batch statistics as
    always but updates neither its running statistics nor its batch counter. For a forward pass that repeats one
    already counted (activation checkpointing's recomputation, GradCache's second pass), so that the running
    statistics move once per step. A plain module flag, not a thread-local: the autograd engine may run a
    checkpoint's recomputation on its own thread while the caller waits."""
    global _stats_frozen
    before, _stats_frozen = _stats_frozen, True
    try:
        yield
    finally:
        _stats_frozen = before


class RecomputeSafeBatchNorm1d(nn.BatchNorm1d):
    """``nn.BatchNorm1d`` (same parameters, buffers and output) that a recomputation does not count twice.

    Inside :func:`running_stats_frozen`, in training mode, the output is the one ``nn.BatchNorm1d`` gives (batch
    statistics, the same kernel) and the running statistics are updated on throw-away copies: the buffers and
    ``num_batches_tracked`` keep their values, and the op saves the same tensors for backward as the first pass
    (activation checkpointing compares their count).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (_stats_frozen and self.training and self.track_running_stats):
            return super().forward(x)
        momentum = 0.0 if self.momentum is None else self.momentum
        return F.batch_norm(x, self.running_mean.clone(), self.running_var.clone(), self.weight, self.bias, True,
                            momentum, self.eps)


def _recompute_contexts() -> tuple[AbstractContextManager, AbstractContextManager]:
    """Activation checkpointing's (forward, recomputation) contexts: BatchNorm counts the forward pass only."""
    return nullcontext(), running_stats_frozen()


class ResidualBlock(nn.Module):
    """conv(c_in->c_in) -> BN -> ReLU -> conv(c_in->c_out) -> BN [-> Dropout] -> + skip -> ReLU.

    Stride 1, no conv bias (BN follows every conv), 'same' padding: (N, c_in, T) -> (N, c_out, T).
    The skip is a 1x1 conv + BN where the channel count changes, the identity otherwise.

    With ``checkpointed`` set (and gradients on), the block keeps only its input for backward and recomputes the
    rest there (``torch.utils.checkpoint``, non-reentrant): the RNG state is restored so that dropout draws the
    same mask, and BatchNorm's running statistics move in the first pass only (:func:`running_stats_frozen`).
    Under ``torch.compile`` the compiler's partitioner does the recomputation, and the statistics' update is
    part of the forward graph, so it happens once there too.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, dropout: float):
        super().__init__()
        self.conv1 = nn.Conv1d(c_in, c_in, kernel, padding=kernel // 2, bias=False)
        self.bn1 = RecomputeSafeBatchNorm1d(c_in)
        self.conv2 = nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2, bias=False)
        self.bn2 = RecomputeSafeBatchNorm1d(c_out)
        self.dropout = CPUFastDropout(dropout) if dropout > 0 else nn.Identity()
        self.skip = (nn.Sequential(OrderedDict(conv=nn.Conv1d(c_in, c_out, 1, bias=False),
                                               bn=RecomputeSafeBatchNorm1d(c_out)))
                     if c_in != c_out else nn.Identity())
        self.checkpointed = False  # recompute this block's activations in backward (see the class docstring)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.checkpointed and torch.is_grad_enabled():
            # context_fn is eager-only; compiled, the partitioner recomputes and BN updates once by construction
            if torch.compiler.is_compiling():
                return checkpoint(self._forward, x, use_reentrant=False, preserve_rng_state=True)
            return checkpoint(self._forward, x, use_reentrant=False, preserve_rng_state=True,
                              context_fn=_recompute_contexts)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))  # (N, c_in, T)
        h = self.dropout(self.bn2(self.conv2(h)))  # (N, c_out, T)
        return torch.relu(h + self.skip(x))


class TemporalNet(nn.Module):
    """One TemporalNet: shared weights over leads, (B, L, T) signals -> (B, L, feature_dim) lead features.

    Example:
        >>> net = TemporalNet(temporalnet_config("tiny")).eval()
        >>> net(torch.randn(2, 4, 2500)).shape
        torch.Size([2, 4, 64])
    """

    def __init__(self, config: TemporalNetConfig):
        super().__init__()
        self.config = config
        self.feature_dim = config.feature_dim
        stem_out = config.channels(config.stem_channels)
        self.stem = nn.Sequential(OrderedDict(
            conv=nn.Conv1d(config.in_channels, stem_out, config.stem_kernel, padding=config.stem_kernel // 2),
            bn=RecomputeSafeBatchNorm1d(stem_out),
            relu=nn.ReLU(),
            pool=nn.MaxPool1d(config.pool),  # T -> T // pool, the only downsampling
        ))
        block_dropout = config.dropout if config.block_dropout else 0.0
        self.branches = nn.ModuleList(
            nn.Sequential(*(ResidualBlock(c_in, c_out, k, block_dropout) for c_in, c_out in config.block_channels))
            for k in config.kernels
        )
        fused = len(config.kernels) * config.block_channels[-1][1]  # concatenated branch outputs (512)
        # The fusion conv keeps its bias (METHOD.md says "no bias" only for the blocks); under BN it is redundant.
        # Dropout before ReLU as METHOD.md orders it: the two commute, so the order changes nothing.
        self.fusion = nn.Sequential(OrderedDict(
            conv=nn.Conv1d(fused, self.feature_dim, 3, padding=1),
            bn=RecomputeSafeBatchNorm1d(self.feature_dim),
            dropout=CPUFastDropout(config.dropout),
            relu=nn.ReLU(),
        ))
        # Projection head for pretraining. METHOD.md (and the authors' code) has no nonlinearity between the two
        # Linears, so the head is one affine map of rank <= proj_hidden; we follow it as published.
        self.projection = nn.Sequential(OrderedDict(
            hidden=nn.Linear(self.feature_dim, config.proj_hidden),
            out=nn.Linear(config.proj_hidden, config.proj_dim),
        ))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Lead features: (B, L, T) -> (B, L, feature_dim); with in_channels > 1, (B, L, in_channels, T).

        Raises:
            ValueError: a wrong rank, or fewer than ``pool`` samples.
        """
        expected = 3 if self.config.in_channels == 1 else 4
        if x.dim() != expected or x.shape[-1] < self.config.pool:
            raise ValueError(f"TemporalNet expects {'(B, L, T)' if expected == 3 else '(B, L, C, T)'} with "
                             f"T >= {self.config.pool}, got {tuple(x.shape)}")
        b, n_leads, t = x.shape[0], x.shape[1], x.shape[-1]
        h = self.stem(x.reshape(b * n_leads, self.config.in_channels, t))  # (B*L, C0, T // pool)
        h = torch.cat([branch(h) for branch in self.branches], dim=1)  # (B*L, n_branches * C_last, T // pool)
        h = self.fusion(h).mean(dim=-1)  # global average pool: (B*L, feature_dim)
        return h.view(b, n_leads, self.feature_dim)

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """Projection head: (..., feature_dim) -> (..., proj_dim). Not normalised (the loss does that)."""
        return self.projection(h)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Per-lead embeddings: (B, L, T) -> (B, L, proj_dim)."""
        return self.project(self(x))

    def checkpoint_blocks(self, enabled: bool = True) -> TemporalNet:
        """Activation checkpointing of every residual block (:class:`ResidualBlock`) on or off; returns self."""
        for block in self.modules():
            if isinstance(block, ResidualBlock):
                block.checkpointed = enabled
        return self


class DualStreamTemporalNet(nn.Module):
    """Independent TemporalNets on lead groups; each averages its lead features into one stream feature.

    With the default :data:`LEAD_GROUPS`, stream 0 sees I, II, V5, V6 and stream 1 sees V1..V4 of a
    (B, 8, T) input in mV; the streams are interlead views of each other. Any other grouping (one group of
    all 8 leads for a single stream, say) works the same way.

    Example:
        >>> enc = DualStreamTemporalNet(temporalnet_config("tiny")).eval()
        >>> x = torch.randn(2, 8, 2500)
        >>> enc(x).shape, enc.embed(x).shape
        (torch.Size([2, 2, 64]), torch.Size([2, 2, 128]))
    """

    def __init__(self, config: TemporalNetConfig, lead_groups: Sequence[Sequence[int]] = LEAD_GROUPS):
        super().__init__()
        self.lead_groups = tuple(tuple(int(i) for i in g) for g in lead_groups)
        if not self.lead_groups or any(not g or min(g) < 0 for g in self.lead_groups):
            raise ValueError(f"lead_groups must be non-empty groups of lead indices >= 0, got {lead_groups}")
        self.config = config
        self.feature_dim = config.feature_dim
        self.n_leads = 1 + max(max(g) for g in self.lead_groups)  # leads the input must have at least
        self.streams = nn.ModuleList(TemporalNet(config) for _ in self.lead_groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Stream features: (B, 8, T) -> (B, n_streams, feature_dim), each the mean of its leads' features.

        Raises:
            ValueError: not (B, L, T) with L covering every lead group.
        """
        if x.dim() != 3 or x.shape[1] < self.n_leads:
            raise ValueError(f"DualStreamTemporalNet expects (B, >={self.n_leads}, T), got {tuple(x.shape)}")
        return torch.stack([net(x[:, list(g)]).mean(dim=1) for net, g in zip(self.streams, self.lead_groups,
                                                                                strict=True)], dim=1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Stream embeddings for the contrastive loss: (B, 8, T) -> (B, n_streams, proj_dim), not normalised.

        Each stream has its own projection head. The head is affine, so projecting the mean lead feature
        equals averaging the projected lead embeddings (the authors' order) and costs L times less.
        """
        return self.project(self(x))

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """Stream features (B, n_streams, feature_dim) -> stream embeddings (B, n_streams, proj_dim), each stream
        through its own projection head: for a caller that needs both (the pretraining monitor)."""
        return torch.stack([net.project(h[:, i]) for i, net in enumerate(self.streams)], dim=1)

    def checkpoint_blocks(self, enabled: bool = True) -> DualStreamTemporalNet:
        """Activation checkpointing of every residual block of every stream on or off; returns self.

        Outputs and gradients are the plain ones, BatchNorm's running statistics move once per step; the blocks
        keep their inputs only (:mod:`ecgfast.pretrain.memory` measures what that saves).
        """
        for net in self.streams:
            net.checkpoint_blocks(enabled)
        return self


class ClassifierHead(nn.Module):
    """Mean over leads (TemporalNet) or streams (dual-stream) -> Linear: (B, N, D) -> (B, n_outputs) logits."""

    def __init__(self, feature_dim: int, n_outputs: int = 1):
        super().__init__()
        self.linear = nn.Linear(feature_dim, n_outputs)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear(h.mean(dim=1))


class ECGClassifier(nn.Module):
    """An encoder with a linear classifier head, for the downstream arms (random init, frozen, finetuned).

    ``forward`` returns logits (no sigmoid: train with ``BCEWithLogitsLoss``). The encoder's projection
    heads are pretraining-only: they are neither used nor returned by :meth:`backbone_parameters`.

    Example:
        >>> clf = ECGClassifier(DualStreamTemporalNet(temporalnet_config("tiny")))
        >>> opt = torch.optim.Adam(clf.parameter_groups(backbone_lr=1e-4, head_lr=0.02))
        >>> clf(torch.randn(2, 8, 2500)).shape
        torch.Size([2, 1])
    """

    def __init__(self, encoder: DualStreamTemporalNet | TemporalNet, n_outputs: int = 1):
        super().__init__()
        if n_outputs < 1:
            raise ValueError(f"n_outputs must be >= 1, got {n_outputs}")
        self.encoder = encoder
        self.head = ClassifierHead(encoder.feature_dim, n_outputs)
        self.encoder_frozen = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 8, T) in mV -> (B, n_outputs) logits."""
        return self.head(self.encoder(x))

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """Encoder parameters that the classifier uses (projection heads left out)."""
        for name, p in self.encoder.named_parameters():
            if "projection" not in name.split("."):
                yield p

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Classifier head parameters."""
        return self.head.parameters()

    def parameter_groups(self, backbone_lr: float, head_lr: float) -> list[dict]:
        """Optimizer parameter groups with their learning rates; no backbone group when the encoder is frozen."""
        groups = [{"params": list(self.head_parameters()), "lr": head_lr}]
        if not self.encoder_frozen:
            groups.insert(0, {"params": list(self.backbone_parameters()), "lr": backbone_lr})
        return groups

    def freeze_encoder(self) -> ECGClassifier:
        """Frozen arm: encoder parameters get no gradient and the encoder stays in eval mode (BN running
        statistics fixed, no dropout), even after ``train()``."""
        self.encoder_frozen = True
        self.encoder.requires_grad_(False)
        self.encoder.eval()
        return self

    def unfreeze_encoder(self) -> ECGClassifier:
        """Undo :meth:`freeze_encoder`; the encoder follows this module's train/eval mode again."""
        self.encoder_frozen = False
        self.encoder.requires_grad_(True)
        self.encoder.train(self.training)
        return self

    def train(self, mode: bool = True) -> ECGClassifier:
        super().train(mode)
        if self.encoder_frozen:
            self.encoder.eval()
        return self


def temporalnet_macs(config: TemporalNetConfig, n_samples: int = 2500) -> dict[str, int]:
    """Multiply-accumulates of one lead's forward pass through :meth:`TemporalNet.forward`, by part.

    Counts conv and Linear weights only (BN, ReLU, pooling and biases are O(activations), negligible);
    the projection head is left out (it runs once per stream, not per lead, in the dual-stream model).
    Keys: "stem", "branch_k{k}" for each branch kernel, "fusion", "total". FLOPs are 2 x MACs.
    """
    t_stem = n_samples  # 'same' padding: the stem conv keeps the length
    t = n_samples // config.pool  # every later layer runs at this length
    stem_out = config.channels(config.stem_channels)
    macs = {"stem": config.in_channels * stem_out * config.stem_kernel * t_stem}
    for k in config.kernels:
        per_step = 0
        for c_in, c_out in config.block_channels:
            per_step += c_in * c_in * k + c_in * c_out * k + (c_in * c_out if c_in != c_out else 0)
        macs[f"branch_k{k}"] = per_step * t
    fused = len(config.kernels) * config.block_channels[-1][1]
    macs["fusion"] = fused * config.feature_dim * 3 * t
    macs["total"] = sum(macs.values())
    return macs


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (trainable or not) of ``module``."""
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "LEAD_GROUPS", "PRESETS", "STREAM_LEADS", "ClassifierHead", "DualStreamTemporalNet", "ECGClassifier",
    "RecomputeSafeBatchNorm1d", "ResidualBlock", "TemporalNet", "TemporalNetConfig", "count_parameters",
    "running_stats_frozen", "temporalnet_config", "temporalnet_macs",
]
