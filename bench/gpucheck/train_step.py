"""Phase ``train_step``: the pretraining step of ``ecgfast.pretrain.loop`` at the paper's size, per ``--memory`` mode.

The step (``model`` preset, ``train_batch`` ECGs of ``record_samples`` int16 samples in pinned host memory, two views of
``segment`` samples each: the two halves, as ``--views intersegment`` makes them): copy to the device, the fused views
call, the dual-stream encoder (bf16 autocast on a GPU), the multi-positive loss over the 4 B stream embeddings with
ECG and patient ids, backward, gradient clipping, Adam (fused on a GPU). Per mode (full, checkpoint, chunked) whose
``plan_memory`` prediction fits the free memory: eager first, then compiled (``torch.compile``), the mode ``auto``
would choose first; a mode that does not fit is recorded skipped with the prediction.

Per run: first step (compile included) and the median of ``steps`` further steps, ECGs/s, MFU (the encoder's
forward + backward FLOPs, counted by ``torch.utils.flop_counter`` as the training loop's MFU counts them, recomputation
not counted, over the step time, against the datasheet bf16 peak and against the GEMM rate of ``loss_timing``), the
measured peak (the CUDA allocator's, weights and Adam included; on a CPU the step's own allocations, eager only)
against the prediction. Once: the time of the input copy, the views call and the loss (forward + backward) alone,
and their share of the eager full (else first measured) step.
"""

from __future__ import annotations

import torch

from ecgfast.models.temporalnet import DualStreamTemporalNet, temporalnet_config
from ecgfast.nn import MultiPositiveContrastiveLoss
from ecgfast.ops.configs import ContrastiveLossConfig, VCGAugmentConfig
from ecgfast.pretrain import memory
from ecgfast.pretrain.gradcache import ChunkedContrastiveStep
from ecgfast.pretrain.loop import ContrastivePretrainer
from ecgfast.pretrain.mfu import train_flops_per_view
from ecgfast.pretrain.views import embedding_loss, make_views

from .record import Context
from .timers import device_peaks, sync, time_call, wall


def make_batch(batch: int, samples: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """A loader batch as the torch path gives it: int16 samples (pinned on a GPU host), gain, baseline, ids."""
    gen = torch.Generator().manual_seed(0)
    q = torch.randint(-3000, 3000, (batch, 8, samples), generator=gen, dtype=torch.int16)
    gain, baseline = 200 + 800 * torch.rand(batch, generator=gen), torch.randn(batch, generator=gen)
    record = torch.arange(batch)
    tensors = (q, gain, baseline, record, record // 4)  # four ECGs per patient
    return tuple(t.pin_memory() for t in tensors) if device.type == "cuda" else tensors


class Step:
    """One pretraining step in ``mode`` on a fixed batch, as the loop runs it (module docstring)."""

    def __init__(self, ctx: Context, mode: str, chunk: int | None, compiled: bool, batch: tuple[torch.Tensor, ...]):
        device, sizes = ctx.device, ctx.sizes
        self.device, self.batch, self.segment = device, batch, sizes.segment
        self.bf16 = device.type == "cuda"
        torch.manual_seed(0)
        self.encoder = DualStreamTemporalNet(temporalnet_config(sizes.model)).to(device).train()
        self.encoder.checkpoint_blocks(mode == "checkpoint")
        model = ContrastivePretrainer(self.encoder)
        self.model = torch.compile(model) if compiled else model
        # bf16 training feeds the loss bf16 products, as the loop does (the loss's precision contract)
        self.loss_fn = MultiPositiveContrastiveLoss(config=ContrastiveLossConfig(
            temperature=0.1, weights=(1.0, 1.0), precision="bf16" if self.bf16 else None))
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16)
        self.chunked = (ChunkedContrastiveStep(self.model, self.encoder, self.loss_fn, chunk, self.autocast)
                        if mode == "chunked" else None)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, eps=1e-4, fused=device.type == "cuda")
        self.valid = torch.full((batch[0].shape[0],), batch[0].shape[-1]).numpy()
        self.offset = 0

    def views(self, samples: torch.Tensor, gain: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
        self.offset += 1
        return make_views(samples, gain, baseline, self.valid, self.segment, "intersegment", VCGAugmentConfig(), 0,
                          self.offset, torch.bfloat16 if self.bf16 else torch.float32)

    def __call__(self) -> None:
        samples, gain, baseline, record, patient = (t.to(self.device, non_blocking=True) for t in self.batch)
        views = self.views(samples, gain, baseline)
        if self.chunked is not None:
            self.chunked.forward(views, record, patient)
            self.chunked.backward()
        else:
            with self.autocast:
                z = self.model(views.flatten(0, 1))  # (2B, 2 streams, proj_dim)
            embedding_loss(self.loss_fn, z, record, patient).backward()
        torch.nn.utils.clip_grad_norm_(self.encoder.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def measure_parts(ctx: Context, step: Step) -> dict[str, float]:
    """Seconds of the input copy, the views call and the loss forward + backward, each alone."""
    device, reps = ctx.device, max(3, ctx.sizes.steps)
    on_device = [t.to(device) for t in step.batch]
    b = step.batch[0].shape[0]
    z = torch.randn(2 * b, 2, 128, device=device, requires_grad=True)
    return {"input_s": time_call(lambda: [t.to(device, non_blocking=True) for t in step.batch], device, reps),
            "views_s": time_call(lambda: step.views(*on_device[:3]), device, reps),
            "loss_s": time_call(lambda: embedding_loss(step.loss_fn, z, on_device[3], on_device[4]).backward(),
                                device, reps)}


def peak_bytes(step: Step) -> int:
    """The step's peak: the CUDA allocator's (everything allocated, weights and Adam included), or on a CPU what the
    step itself allocates (ecgfast.pretrain.memory.measure_step_peak)."""
    if step.device.type != "cuda":
        return memory.measure_step_peak(step, step.device)
    sync(step.device)
    torch.cuda.reset_peak_memory_stats(step.device)
    step()
    sync(step.device)
    return torch.cuda.max_memory_allocated(step.device)


def run(ctx: Context) -> dict:
    device, sizes = ctx.device, ctx.sizes
    precision = "bf16" if device.type == "cuda" else "fp32"
    batch = make_batch(sizes.train_batch, sizes.record_samples, device)
    capacity = memory.device_capacity(device)
    flops_per_ecg = 2 * train_flops_per_view(sizes.model, sizes.segment)  # two views per ECG
    plans = {m: memory.plan_memory(sizes.model, precision, sizes.segment, sizes.train_batch, m, None, device,
                                   capacity=capacity) for m in memory.MODES}
    auto = memory.plan_memory(sizes.model, precision, sizes.segment, sizes.train_batch, "auto", None, device,
                              capacity=capacity).mode
    order = [(m, False) for m in memory.MODES] + [(auto, True)] + [(m, True) for m in memory.MODES if m != auto]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    peak = device_peaks(name)
    gemm = ctx.state.get("gemm_tflops")
    parts, measured = None, 0
    for mode, compiled in order:
        label = f"{mode} {'compiled' if compiled else 'eager'}"
        plan = plans[mode]
        if not plan.fits:
            ctx.record(label, skipped=f"predicted {plan.prediction.total / 2**30:.1f} GiB > "
                                      f"{capacity / 2**30:.1f} GiB free")
            continue
        if ctx.out_of_time(60 if compiled else 10):
            ctx.record(label, skipped=f"{ctx.left():.0f} s left in the phase")
            continue
        step = Step(ctx, mode, plan.chunk, compiled, batch)
        first_s = wall(step, device)
        seconds = time_call(step, device, sizes.steps, warmup=1)
        if parts is None:
            parts = measure_parts(ctx, step)
            ctx.record("input + views + loss alone", **parts,
                       share_of_step=sum(parts.values()) / seconds, of=label)
        model_flops = flops_per_ecg * sizes.train_batch
        predicted = plan.prediction.total if device.type == "cuda" else (
            plan.prediction.activations + plan.prediction.batch)
        # on a CPU the peak comes from a dispatch mode, under which a compiled step runs eagerly: not measured there
        got = peak_bytes(step) if device.type == "cuda" or not compiled else None
        ctx.record(label, chunk=plan.chunk, first_step_s=first_s, step_s=seconds,
                   ecgs_per_s=sizes.train_batch / seconds, model_tflop=model_flops / 1e12,
                   tflops=model_flops / seconds / 1e12,
                   mfu_datasheet=model_flops / seconds / 1e12 / peak[0] if peak else None,
                   mfu_of_gemm=model_flops / seconds / 1e12 / gemm if gemm else None,
                   peak_gib=got / 2**30 if got else None, predicted_gib=predicted / 2**30,
                   prediction_error=predicted / got - 1 if got else None)
        measured += 1
        del step
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {"runs": measured, "auto_mode": auto, "gflop_per_ecg": flops_per_ecg / 1e9}
