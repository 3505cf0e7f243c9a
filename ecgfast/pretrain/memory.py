"""Memory of a pretraining step as a number the engine knows: measured per ECG, predicted per step, a mode that fits.

Measured, not modelled. :func:`activation_memory` runs a training-mode forward and backward pass of the dual-stream
encoder on a tiny batch of 2, then 4 ECGs (two views each), on fake tensors (``FakeTensorMode``: shapes, dtypes and
storages without data, so the paper model at 2500 samples costs about a second on any machine, plus a one-time
start of about 2 s), and counts two things:

- saved bytes: under ``torch.autograd.graph.saved_tensors_hooks``, every tensor autograd keeps for backward, each
  storage once (a ReLU output that the next conv saves again, or a view of it, is one storage). The difference
  between the two batches is the exact cost of one more ECG; the rest does not grow with the batch (autocast's
  bf16 copies of the weights). A checkpointed block's input, which the checkpoint keeps outside autograd's hooks
  for its recomputation, is counted too.
- the peak: a dispatch mode follows every storage an op allocates until it is freed (:func:`measure_step_peak`'s
  bookkeeping on a CPU): saved activations plus backward's gradient buffers, the recomputed block (checkpoint) and
  the parameters' gradients, at the moment their sum is highest. It is linear in the batch from 2 ECGs on (at 1
  the peak may fall elsewhere). On real tensors the same bookkeeping gives the same bytes (tested).

Autocast runs as CPU autocast, whose bf16 rules for conv and linear are CUDA's; eager mode (``torch.compile``'s
partitioner may keep less, never more).

Three ways to hold a step (``--memory``):

- ``full``: every layer keeps its activations for backward: bytes ~ per-ECG x per-rank batch.
- ``checkpoint``: each residual block keeps its input only and recomputes the rest in backward, one block at a time
  (:meth:`~ecgfast.models.temporalnet.DualStreamTemporalNet.checkpoint_blocks`). About one more forward pass of
  the blocks.
- ``chunked``: GradCache (:mod:`ecgfast.pretrain.gradcache`): one chunk of ECGs is in the graph at a time; the whole
  batch holds only its samples, views, embeddings and their gradients. One more forward pass of everything.

:func:`predict_step_memory` turns a measurement into the step's peak on one rank: the measured peak for the ECGs in
the graph at once + the batch's inputs and embeddings + fp32 weights and Adam's two moments (12 bytes a parameter;
gradients are in the measured peak) + a stated allowance for what eager bookkeeping cannot see
(:data:`WORKSPACE_FRACTION` of the peak and :data:`WORKSPACE_FIXED` bytes: conv algorithm workspaces, cuBLAS
handles, the allocator's block rounding). :func:`plan_memory` picks the mode (and chunk) of a run and says, before
the first step, when the batch will not fit and which flag makes it fit.
"""

from __future__ import annotations

import math
import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..models.temporalnet import DualStreamTemporalNet, ResidualBlock, TemporalNetConfig, temporalnet_config

MODES = ("full", "checkpoint", "chunked")
PRECISIONS = ("fp32", "bf16")
N_VIEWS = 2  # views per ECG in a step (ecgfast.pretrain.views.N_VIEWS; not imported: that module loads the ops)
N_LEADS = 8
N_STREAMS = 2  # the dual-stream encoder's streams: embeddings per view
STATE_BYTES_PER_PARAMETER = 12  # fp32 weight and Adam's exp_avg and exp_avg_sq (the gradient is in the peak)
WORKSPACE_FRACTION = 0.05  # of the measured peak: conv algorithm workspaces, the allocator's block rounding
WORKSPACE_FIXED = 512 * 2**20  # bytes: cuBLAS/cuDNN handles and workspaces, the loss's blocks, small buffers
MEASURED_AT = (2, 4)  # ECGs of the two measured passes (linear from 2 on)
GiB = 2**30


@dataclass(frozen=True)
class ActivationMemory:
    """What one training step holds, per ECG (two views, every stream), measured for one setting.

    "In the graph at once" is the per-rank batch (``full``, ``checkpoint``) or one chunk (``chunked``, whose per-ECG
    figures are then ``full``'s).
    """

    model: str  # preset name, or "custom"
    precision: str  # "fp32" or "bf16" (autocast)
    segment: int  # samples per view
    mode: str  # full, checkpoint, chunked
    per_ecg: int  # saved bytes per ECG in the graph at once, at the end of forward
    fixed: int  # saved bytes that do not grow with the batch (bf16 copies of the weights under autocast)
    peak_per_ecg: int  # bytes per ECG in the graph at the step's peak (saved + gradient buffers + recomputation)
    peak_fixed: int  # bytes at the peak that do not grow with the batch (parameter gradients, weight copies)
    batch_per_ecg: int  # bytes per ECG of the whole per-rank batch: int16 samples, views, embeddings (+ gradients)
    n_parameters: int  # parameters of the dual-stream encoder with its projection heads

    def held(self, ecgs: int) -> int:
        """Saved bytes at the end of forward with ``ecgs`` ECGs in the graph at once."""
        return self.fixed + self.per_ecg * ecgs

    def peak(self, ecgs: int) -> int:
        """Measured peak bytes of forward + backward with ``ecgs`` ECGs in the graph at once."""
        return self.peak_fixed + self.peak_per_ecg * ecgs


@dataclass(frozen=True)
class StepMemory:
    """The predicted peak of one training step on one rank, by part (bytes)."""

    activations: int  # the measured forward + backward peak for the ECGs in the graph at once
    batch: int  # the per-rank batch's samples, views, embeddings and (chunked) embedding gradients
    states: int  # fp32 weights and Adam's two moments
    workspace: int  # the allowance (module docstring)
    rank_batch: int  # ECGs per rank
    chunk: int | None  # ECGs per chunk (chunked)

    @property
    def total(self) -> int:
        return self.activations + self.batch + self.states + self.workspace

    def describe(self) -> str:
        """One line: total and parts in GiB."""
        return (f"{self.total / GiB:.2f} GiB (activations and gradients {self.activations / GiB:.2f}, batch "
                f"{self.batch / GiB:.2f}, weights+Adam {self.states / GiB:.2f}, workspace {self.workspace / GiB:.2f})")


def _config_of(model: str | TemporalNetConfig) -> tuple[str, TemporalNetConfig]:
    return ("custom", model) if isinstance(model, TemporalNetConfig) else (model, temporalnet_config(model))


def _check(precision: str, segment: int, mode: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if mode not in MODES:
        raise ValueError(f"memory mode must be one of {MODES}, got {mode!r}")
    if segment < 4:
        raise ValueError(f"segment must be at least the stem's pool (4 samples), got {segment}")


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata  # one id per storage: views of one tensor share it


@lru_cache(maxsize=128)
def _measure(config: TemporalNetConfig, precision: str, segment: int, checkpointed: bool, n_ecgs: int
             ) -> tuple[int, int]:
    """(saved bytes at the end of forward, peak bytes of forward + backward) of ``n_ecgs`` ECGs, on fake tensors."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    kept: dict[int, int] = {}  # storage id -> bytes, everything kept for backward

    def keep(t: torch.Tensor) -> torch.Tensor:
        kept[_storage_key(t)] = t.untyped_storage().nbytes()
        return t

    def block_input(module: nn.Module, args: tuple) -> None:
        if module.checkpointed:  # a checkpoint keeps its input alive for the recomputation, outside autograd's hooks
            keep(args[0])

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    with FakeTensorMode():
        encoder = DualStreamTemporalNet(config).train().checkpoint_blocks(checkpointed)
        weights = {_storage_key(t) for t in [*encoder.parameters(), *encoder.buffers()]}
        for block in encoder.modules():
            if isinstance(block, ResidualBlock):
                block.register_forward_pre_hook(block_input)
        views = torch.zeros(N_VIEWS * n_ecgs, N_LEADS, segment, dtype=dtype)  # (2B, 8, T), the loop's input
        with _LiveBytes() as live, torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
                z = encoder.embed(views).float()  # (2B, streams, proj_dim), as the loop feeds the loss
            z.sum().backward()
    return sum(b for k, b in kept.items() if k not in weights), live.peak


def activation_memory(model: str | TemporalNetConfig, precision: str, segment: int, mode: str) -> ActivationMemory:
    """What one training step holds, per ECG, measured (module docstring).

    Args:
        model: a preset name ("paper", "small", "tiny") or a :class:`TemporalNetConfig`.
        precision: "fp32", or "bf16" (autocast, bf16 views: the loop's setting on a GPU).
        segment: samples per view (2500: 5 s at 500 Hz).
        mode: "full", "checkpoint" or "chunked".

    Example:
        >>> m = activation_memory("tiny", "fp32", 250, "full")
        >>> m.per_ecg > activation_memory("tiny", "fp32", 250, "checkpoint").per_ecg
        True

    Raises:
        ValueError: an unknown preset, precision or mode, or a segment shorter than the stem's pool.
    """
    name, config = _config_of(model)
    _check(precision, segment, mode)
    (a, (saved_a, peak_a)), (b, (saved_b, peak_b)) = (
        (n, _measure(config, precision, segment, mode == "checkpoint", n)) for n in MEASURED_AT)
    per_ecg, peak_per_ecg = (saved_b - saved_a) // (b - a), (peak_b - peak_a) // (b - a)  # exact: linear in ECGs
    views = N_VIEWS * N_LEADS * segment * (2 if precision == "bf16" else 4)
    samples = N_VIEWS * N_LEADS * segment * 2  # the loader's int16 batch: 8 leads of two segments
    embeddings = N_VIEWS * N_STREAMS * config.proj_dim * 4  # fp32 rows (view, ecg, stream) fed to the loss
    # chunked also holds the whole batch's embeddings' gradient and the loss's own row buffers (about 2 more)
    batch = samples + views + embeddings * (4 if mode == "chunked" else 1)
    n_parameters = sum(math.prod(shape) for shape in _parameter_shapes(config))
    return ActivationMemory(name, precision, segment, mode, per_ecg, saved_a - per_ecg * a, peak_per_ecg,
                            peak_a - peak_per_ecg * a, batch, n_parameters)


@lru_cache(maxsize=16)
def _parameter_shapes(config: TemporalNetConfig) -> tuple[torch.Size, ...]:
    with torch.device("meta"):
        return tuple(p.shape for p in DualStreamTemporalNet(config).parameters())


def predict_step_memory(memory: ActivationMemory, rank_batch: int, chunk: int | None = None) -> StepMemory:
    """The peak of one step with ``rank_batch`` ECGs on this rank (and ``chunk`` ECGs per chunk in chunked mode).

    Raises:
        ValueError: ``rank_batch`` < 1, or a chunked prediction without a chunk >= 1.
    """
    if rank_batch < 1:
        raise ValueError(f"rank_batch must be >= 1, got {rank_batch}")
    in_graph = rank_batch
    if memory.mode == "chunked":
        if chunk is None or chunk < 1:
            raise ValueError(f"chunked mode needs a chunk of >= 1 ECGs, got {chunk}")
        in_graph = min(chunk, rank_batch)
    activations = memory.peak(in_graph)
    return StepMemory(activations=activations, batch=memory.batch_per_ecg * rank_batch,
                      states=STATE_BYTES_PER_PARAMETER * memory.n_parameters,
                      workspace=round(WORKSPACE_FRACTION * activations) + WORKSPACE_FIXED, rank_batch=rank_batch,
                      chunk=in_graph if memory.mode == "chunked" else None)


def largest_chunk(memory: ActivationMemory, rank_batch: int, capacity: int) -> int:
    """The chunk for ``rank_batch`` ECGs in chunked mode: as few chunks as ``capacity`` bytes allow, of equal size
    (ceil(rank_batch / n) ECGs each); 1 when not even that fits (the caller warns)."""
    per_chunk_ecg = predict_step_memory(memory, rank_batch, 2).total - predict_step_memory(memory, rank_batch, 1).total
    room = capacity - predict_step_memory(memory, rank_batch, 1).total
    biggest = max(1, min(rank_batch, 1 + room // max(1, per_chunk_ecg)))
    n_chunks = math.ceil(rank_batch / biggest)
    return math.ceil(rank_batch / n_chunks)


def largest_batch(memory: ActivationMemory, capacity: int, world: int = 1, chunk: int | None = None) -> int:
    """The largest global batch (a multiple of ``world``) whose predicted per-rank peak fits ``capacity`` bytes;
    0 when not even one ECG per rank fits. Chunked mode keeps ``chunk`` ECGs per chunk."""
    def fits(rank_batch: int) -> bool:
        return predict_step_memory(memory, rank_batch, chunk).total <= capacity

    if not fits(1):
        return 0
    low, high = 1, 2
    while fits(high):
        low, high = high, high * 2
    while high - low > 1:  # the peak grows with the batch: bisect
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low * world


def device_capacity(device: torch.device) -> int:
    """Bytes this process can still use on ``device``: the GPU's free memory plus what this process's caching
    allocator already holds; on a CPU, the memory the kernel reports available."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device)
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):  # no sysconf: nothing to check against
        return 2**62


@dataclass(frozen=True)
class MemoryPlan:
    """The mode a run uses, its chunk, the prediction, and the lines the startup log prints."""

    mode: str
    chunk: int | None
    prediction: StepMemory
    capacity: int
    fits: bool
    lines: tuple[str, ...]


def plan_memory(model: str | TemporalNetConfig, precision: str, segment: int, rank_batch: int, requested: str,
                chunk: int | None, device: torch.device, capacity: int | None = None) -> MemoryPlan:
    """Choose the memory mode of a run and predict its peak, before the first step.

    ``requested`` "auto" picks ``full`` on a CPU; on a GPU the first of full, checkpoint, chunked whose predicted
    peak fits the device's free memory (chunked with the largest chunk that fits). An explicit mode is kept; when
    its prediction does not fit, the plan says so and names the flag that fits (``fits`` False: the caller warns).
    A chunked run without ``chunk`` takes the largest that fits ``capacity`` (default: :func:`device_capacity`).

    Raises:
        ValueError: an unknown mode, precision or preset.
    """
    if requested not in (*MODES, "auto"):
        raise ValueError(f"memory mode must be one of {(*MODES, 'auto')}, got {requested!r}")
    capacity = device_capacity(device) if capacity is None else capacity
    measured: dict[str, ActivationMemory] = {}  # measured when needed: a CPU run in full mode measures full only

    def memory_of(m: str) -> ActivationMemory:
        if m not in measured:
            measured[m] = activation_memory(model, precision, segment, m)
        return measured[m]

    def fitting(m: str) -> StepMemory:  # chunked with the largest chunk that fits
        return predict_step_memory(memory_of(m), rank_batch, largest_chunk(memory_of(m), rank_batch, capacity))

    def remedy() -> str | None:
        return next((m for m in MODES if fitting(m).total <= capacity), None)

    mode = requested if requested != "auto" else "full" if device.type != "cuda" else remedy() or "chunked"
    prediction = (predict_step_memory(memory_of(mode), rank_batch, min(chunk, rank_batch))
                  if mode == "chunked" and chunk else fitting(mode))
    fits = prediction.total <= capacity
    full, own = memory_of("full"), memory_of(mode)
    figure = f"{full.per_ecg / 1e6:.1f} MB saved for backward per ECG with --memory full"
    if mode == "checkpoint":
        figure += f", {own.per_ecg / 1e6:.1f} MB with checkpoint"
    if mode == "chunked":
        figure += f" (per ECG of a chunk), {own.batch_per_ecg / 1e3:.0f} kB per ECG of the batch with chunked"
    lines = [f"memory: {full.model} model, {precision}, {segment}-sample views: {figure}",
             f"memory: --memory {mode}{f' in chunks of {prediction.chunk} ECGs' if prediction.chunk else ''}"
             f"{' (chosen by auto)' if requested == 'auto' else ''}: predicted peak per rank at {rank_batch} ECGs "
             f"{prediction.describe()}"
             + (f"; {capacity / GiB:.1f} GiB free on {device}" if device.type == "cuda" else
                " (on a CPU: not checked against memory)")]
    if device.type == "cuda" and not fits:
        better = remedy()
        if better is None:
            flag = "nothing at this per-rank batch does: use a smaller --batch-size or more GPUs (torchrun)"
        else:
            flag = f"--memory {better}" + (f" --memory-chunk {fitting(better).chunk}" if better == "chunked" else "")
            flag += f" fits ({fitting(better).total / GiB:.1f} GiB)"
        lines.append(f"memory: the batch will not fit: predicted {prediction.total / GiB:.1f} GiB > "
                     f"{capacity / GiB:.1f} GiB free on {device}; {flag}")
    return MemoryPlan(mode, prediction.chunk, prediction, capacity, fits, tuple(lines))


class _LiveBytes(TorchDispatchMode):
    """Bytes of every storage that an op creates while active, until it is freed; the peak of their sum."""

    def __init__(self) -> None:
        super().__init__()
        self.live, self.peak, self.seen = 0, 0, set()

    def _free(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self.seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                if storage._cdata not in self.seen:  # a new storage (views and in-place results are not)
                    self.seen.add(storage._cdata)
                    self.live += storage.nbytes()
                    weakref.finalize(storage, self._free, storage._cdata, storage.nbytes())
        self.peak = max(self.peak, self.live)
        return out


def measure_step_peak(step: Callable[[], object], device: torch.device) -> int:
    """Measured peak bytes of ``step()`` above what was allocated when it started.

    On a GPU ``torch.cuda.max_memory_allocated``; on a CPU a dispatch mode that follows every storage an op
    allocates until it is freed (device-independent bookkeeping of the same allocations, slower than the step).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    with _LiveBytes() as live:
        step()
    return live.peak


__all__ = ["ActivationMemory", "MODES", "MemoryPlan", "PRECISIONS", "StepMemory", "activation_memory",
           "device_capacity", "largest_batch", "largest_chunk", "measure_step_peak", "plan_memory",
           "predict_step_memory"]
