"""Contrastive pretraining of the dual-stream TemporalNet: one lean loop (nanoGPT's shape).

One step: a patient-aware batch of int16 ECGs -> one fused augmentation call (crop both views from the valid part,
decode to mV, VCG rotation/scaling, ZeroMask, noise; :mod:`ecgfast.pretrain.views`) -> dual-stream encoder (bf16
autocast on GPU, torch.compile where it pays) -> 4 embeddings per ECG -> multi-positive loss with ECG and patient
ids, gathered across ranks under DDP -> Adam, warm-up then cosine, clipping at 1.0. The loader's workers read the
next batches while the step runs.

Batch size is the recipe's global batch: ``batch_size`` ECGs per step over all ranks, ``batch_size / world`` on
each, and every row of every rank is a negative for every other (the loss gathers them). A step whose loss is not
finite is skipped on every rank together and leaves no trace in the model: BatchNorm statistics updated by its
forward pass are restored. Multi-GPU and multi-node: run the same command under ``torchrun``.

Memory (``--memory``, :mod:`ecgfast.pretrain.memory`): before the first step the loop measures what one ECG costs
for this model, precision and segment, predicts the step's peak and logs it; ``checkpoint`` recomputes each
residual block in backward, ``chunked`` runs the step as GradCache (:mod:`ecgfast.pretrain.gradcache`), ``auto``
takes the first that fits the GPU. Host synchronisations: one per step (the finite check, which decides the skip
before backward runs; on a CPU it costs nothing), and under DDP the loss's exchange of per-rank row counts; the
logged gradient norms are read every ``log_every`` steps.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import time
from contextlib import ExitStack, nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..data.loader import make_input
from ..data.sampler import PatientBatchSampler
from ..data.store import ECGStore, atomic_path
from ..data.windows import usable
from ..device import resolve_device
from ..models.temporalnet import DualStreamTemporalNet, temporalnet_config
from ..nn import MultiPositiveContrastiveLoss
from .checkpoint import (
    STATE_KEYS,
    CheckpointError,
    find_checkpoint,
    load_state,
    load_weights,
    remove_stale_temporaries,
    save_checkpoint,
)
from .config import TrainConfig, to_dict, to_toml
from .corpus import synthetic_store
from .gradcache import ChunkedContrastiveStep
from .memory import device_capacity, plan_memory
from .mfu import device_peak_tflops, mfu, train_flops_per_view
from .monitor import PretrainMonitor
from .provenance import Provenance, load_provenance, merge, pretraining_provenance, store_fingerprint
from .resume import check_resume
from .run_folder import RunFolderError, claim_run_folder, is_run_folder, record_history
from .views import embedding_loss, make_views

log = logging.getLogger("ecgfast.train")


class NonFiniteLossError(RuntimeError):
    """The loss stayed NaN/Inf for more consecutive steps than ``max_nonfinite``."""


class ContrastivePretrainer(torch.nn.Module):
    """Views (N, 8, T) -> projected stream embeddings (N, 2, proj_dim). The module DDP wraps and compiles."""

    def __init__(self, encoder: DualStreamTemporalNet):
        super().__init__()
        self.encoder = encoder

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        return self.encoder.embed(views)


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if world > 1:
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    return 0, 1, 0


def pretrain(config: TrainConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """Run pretraining as configured. Returns a summary: losses per step, steps, checkpoint, ECGs/s, MFU.

    Rank 0 holds the run folder's lock for the whole run (:mod:`ecgfast.pretrain.run_folder`).

    Raises:
        DeviceError: a device that does not exist (before any folder is created).
        StoreError / SplitError: missing, corrupt or patient-mixing store.
        CheckpointError: ``resume`` with no intact checkpoint, or one of another model shape.
        ResumeError: ``resume`` with settings or a store that change what the run trains on (named).
        RunFolderError: ``out`` holds a run and neither ``resume`` nor ``overwrite`` is given, or is not a run.
        FolderBusyError: another process is writing ``out``.
        CheckpointWriteError: a checkpoint could not be written (disk full...): the previous one is intact.
        ValueError: an impossible batch for the sampler or the world size, or bad settings.
        NonFiniteLossError: the loss kept being NaN/Inf.
    """
    owns_group = not (dist.is_available() and dist.is_initialized())  # a group made here is destroyed here
    rank, world, local_rank = _distributed()
    device = resolve_device(config.device, local_rank)
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} is the global batch and must split evenly over the "
                         f"{world} ranks")
    with ExitStack() as stack:
        if rank == 0:  # the one writer of the run folder, locked until the run ends
            stack.enter_context(claim_run_folder(Path(config.out), resume, overwrite))
            remove_stale_temporaries(config.out)
        return _pretrain(config, resume, device, rank, world, local_rank, owns_group)


def _pretrain(config: TrainConfig, resume: bool, device: torch.device, rank: int, world: int, local_rank: int,
              owns_group: bool) -> dict:
    """The run itself, in a run folder that rank 0 holds."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    use_bf16 = config.bf16 if config.bf16 is not None else device.type == "cuda"
    use_compile = config.compile if config.compile is not None else device.type == "cuda"
    precision = "bf16" if use_bf16 else "fp32"
    rank_batch = config.batch_size // world
    torch.manual_seed(config.seed + rank)
    out = Path(config.out)

    # data: the train split only, records that hold a segment; validation and test patients are never seen here
    if not config.store and rank == 0:
        synthetic_store(config.synthetic_patients, config.seed, config.synthetic_fs)  # rank 0 makes it, others wait
    if world > 1:
        dist.barrier()
    store = ECGStore(config.store or synthetic_store(config.synthetic_patients, config.seed, config.synthetic_fs))
    if store.units != "mV" and config.augment.spatial:
        raise ValueError(f"{store.path} holds {store.units!r} signals, not millivolts: the VCG rotation and "
                         "scaling assume mV with the leads' true ratios; pass --no-spatial (ZeroMask, intersegment "
                         "and interlead views remain)")
    segment = config.segment or round(5 * store.fs)  # 5 s, the encoder's window in METHOD.md
    if segment > store.n_samples:
        raise ValueError(f"segment {segment} samples is longer than {store.path}'s records ({store.n_samples} "
                         f"samples at {store.fs:g} Hz)")
    train_rows = store.split_indices("train")
    ok = usable(store.valid_length[train_rows], segment)
    if not ok.all() and rank == 0:
        log.info("%d of %d train records hold fewer than %d valid samples (one view): left out of pretraining",
                 int((~ok).sum()), len(ok), segment)
    train_rows = patient_share(store.patient_ids, train_rows[ok], config.pretrain_share, config.seed)
    if config.pretrain_share < 1 and rank == 0:
        log.info("pretrain_share %g: %d train records of %d patients", config.pretrain_share, len(train_rows),
                 len(np.unique(store.patient_ids[train_rows])))
    patient_codes = np.unique(store.patient_ids, return_inverse=True)[1]
    sampler = PatientBatchSampler(store.patient_ids[train_rows], rank_batch, config.k_per_patient,
                                  seed=config.seed, rank=rank, world_size=world, indices=train_rows)

    # resume: the newest intact checkpoint, and only with the settings and store the run was begun with
    ckpt, state, provenance, changes = None, None, None, {}
    if resume:
        ckpt = find_checkpoint(out, STATE_KEYS)
        if ckpt is None:
            raise CheckpointError(f"--resume: {out} holds no checkpoint to resume from (checkpoints/ckpt-*); "
                                  "leave out --resume to start a new run")
        state = load_state(ckpt)
        try:
            saved = json.loads((ckpt / "config.json").read_text())
            previous = load_provenance(ckpt)
        except ValueError as exc:
            raise CheckpointError(f"{ckpt}: {exc}") from exc
        fingerprint = store_fingerprint(store)
        changes = check_resume(saved, to_dict(config), state.get("precision"), precision, previous, fingerprint)
        salt = previous.salt if isinstance(previous, Provenance) else None
        provenance = merge(previous if isinstance(previous, Provenance) else None,
                           pretraining_provenance(store, ["train"], train_rows, salt))
    else:
        provenance = pretraining_provenance(store, ["train"], train_rows)
    loader = make_input(store, sampler, patient_codes, backend=config.loader, device=device, workers=config.workers)

    # memory: measured per ECG, predicted for this step, the mode chosen before the first step (ecgfast.pretrain.memory)
    capacity = torch.tensor([device_capacity(device)], dtype=torch.int64, device=device)
    if world > 1:  # every rank must choose the same mode and chunk: plan for the least free memory of any rank
        dist.all_reduce(capacity, op=dist.ReduceOp.MIN)
    plan = plan_memory(config.model, precision, segment, rank_batch, config.memory, config.memory_chunk, device,
                       capacity=int(capacity))
    if rank == 0:
        log.info("batch: %d ECGs per step over %d rank%s: %d per rank", config.batch_size, world,
                 "s" * (world > 1), rank_batch)
        for line in plan.lines:
            (log.info if plan.fits or device.type != "cuda" else log.warning)(line)
    encoder = DualStreamTemporalNet(temporalnet_config(config.model)).to(device)
    encoder.checkpoint_blocks(plan.mode == "checkpoint")
    model: torch.nn.Module = ContrastivePretrainer(encoder)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda"
                                                          else None)
    step_model = torch.compile(model) if use_compile else model
    # bf16 training feeds the loss bf16 products (tensor cores; fp32 accumulation, see the loss's precision contract)
    loss_config = (dataclasses.replace(config.loss, precision="bf16")
                   if use_bf16 and config.loss.precision is None else config.loss)
    loss_fn = MultiPositiveContrastiveLoss(config=loss_config)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()
    chunked = (ChunkedContrastiveStep(step_model, encoder, loss_fn, plan.chunk, autocast,
                                      ddp=model if world > 1 else None) if plan.mode == "chunked" else None)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, eps=config.adam_eps,
                                 fused=device.type == "cuda")  # one kernel for all parameters where it exists
    steps_per_epoch = len(sampler)
    total_steps = config.max_steps or config.epochs * steps_per_epoch
    warmup_steps = max(1, min(total_steps, round(config.warmup_epochs * steps_per_epoch)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup_steps, total_steps))
    buffers = list(encoder.buffers())  # BatchNorm running statistics and batch counters
    float_buffers = [b for b in buffers if b.is_floating_point()]

    step, position, nonfinite, skipped = 0, 0, 0, 0  # position: batches consumed, skipped ones included
    if ckpt is not None:
        load_weights(encoder, ckpt)
        try:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["torch_rng"])
            if device.type == "cuda" and "cuda_rng" in state:
                torch.cuda.set_rng_state(state["cuda_rng"])
            step, position, skipped = int(state["step"]), int(state["position"]), int(state["skipped"])
        except (KeyError, ValueError, TypeError, RuntimeError) as exc:
            raise CheckpointError(f"{ckpt / 'state.pt'}: does not fit this run's optimizer or loop: {exc}") from exc
        if rank == 0:
            log.info("resumed from %s at step %d%s", ckpt.name, step, "; changed: " + ", ".join(
                f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items()) if changes else "")

    if rank == 0:
        with atomic_path(out / "config.toml") as tmp:
            tmp.write_text(to_toml(config))
        record_history(out, "resume" if ckpt is not None else "start", step, precision=precision,
                       changed={k: list(v) for k, v in changes.items()})
    view_dtype = torch.bfloat16 if use_bf16 else torch.float32
    # is it learning? validation ECGs measured at step 0, every monitor_every steps and at the end (rank 0 only)
    monitor = PretrainMonitor.for_run(store, config, segment, device, autocast, view_dtype) if rank == 0 else None
    metrics = (_MetricsLog(out / "metrics.csv", truncate_after=step if ckpt is not None else 0,
                           extra=monitor.fields if monitor is not None else ()) if rank == 0 else None)
    first = monitor.start(encoder, step, out / "metrics.csv") if monitor is not None else None
    if first is not None:
        metrics.write(**first)
    # MFU: the encoder's forward + backward FLOPs per view against one device's peak x ranks (ecgfast.pretrain.mfu)
    peak = device_peak_tflops(device, use_bf16, config.peak_tflops)
    flops_per_view = train_flops_per_view(config.model, segment) if peak is not None else 0
    if rank == 0 and peak is not None:
        log.info("MFU: %.3g GFLOP of encoder forward + backward per view, against %g TFLOP/s per device (%s)",
                 flops_per_view / 1e9, *peak)
    elif rank == 0:
        log.info("MFU: not logged (no peak known for this %s device; --peak-tflops sets one)", device.type)
    bar = tqdm(total=total_steps, initial=step, desc="pretrain", unit="step", disable=rank != 0 or not config.progress)
    losses: list[float] = []
    first_step = step + 1  # the first step of this process measures throughput, whatever log_every is
    t_last, ecgs_since, ecgs_per_s, utilisation = time.perf_counter(), 0, None, None

    def save() -> Path | None:
        if rank != 0:
            return None
        state = {"step": step, "position": position, "skipped": skipped, "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(), "precision": precision,
                 "total_steps": total_steps}
        if device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state()
        return save_checkpoint(out, step, encoder, state, config=to_dict(config), provenance=provenance)

    model.train()
    while step < total_steps:
        epoch, start_batch = divmod(position, steps_per_epoch)
        sampler.set_epoch(epoch, start_batch)
        for samples, gain, baseline, record, patient in loader:
            offset = position * world + rank  # this rank's randomness for this batch, the same after a resume
            position += 1
            valid = store.valid_length[record.cpu().numpy()]
            views = make_views(samples.to(device, non_blocking=True), gain.to(device), baseline.to(device), valid,
                               segment, config.views, config.augment, config.seed, offset, view_dtype)
            b = views.shape[1]  # views: (views per ECG, ECGs of this rank, 8, segment)
            saved = [t.detach().clone() for t in buffers]  # a skipped step must leave BatchNorm as it was
            if chunked is not None:  # pass 1 of GradCache: the whole batch's loss, no encoder graph kept
                loss = chunked.forward(views, record.to(device), patient.to(device))
            else:
                with autocast:
                    z = step_model(views.flatten(0, 1))  # (2B, 2 streams, proj_dim)
                loss = embedding_loss(loss_fn, z, record.to(device), patient.to(device))

            # the step counts only if its loss and the BatchNorm statistics its forward updated are finite (a huge
            # input can give running_var = inf under a finite loss); on device, so the step synchronises once
            stats = torch.stack(torch._foreach_norm(float_buffers)).sum() if float_buffers else loss.new_zeros(())
            flag = (torch.isfinite(loss.detach()) & torch.isfinite(stats)).float()
            if world > 1:  # every rank must skip together, or DDP's gradient all-reduce would hang
                dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            loss_value = torch.where(flag > 0, loss.detach().float(), torch.full_like(flag, float("nan")))
            value = loss_value.item()  # the step's one host synchronisation
            if not math.isfinite(value):
                nonfinite, skipped = nonfinite + 1, skipped + 1
                if chunked is not None:
                    chunked.discard()
                with torch.no_grad():
                    for t, s in zip(buffers, saved, strict=True):
                        t.copy_(s)
                optimizer.zero_grad(set_to_none=True)
                if metrics is not None:  # written at once, after the pending rows of earlier steps
                    metrics.write(step=step, epoch=epoch, loss=value, lr=None, grad_norm=None, ecgs_per_s=None,
                                  skipped=skipped)
                if nonfinite > config.max_nonfinite:
                    raise NonFiniteLossError(f"loss or BatchNorm statistics were NaN/Inf for {nonfinite} consecutive "
                                             f"steps (step {step}); lower --lr, check the store for corrupt records, "
                                             "or disable bf16")
                continue  # the step is skipped, not counted
            nonfinite = 0
            chunked.backward() if chunked is not None else loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            ecgs_since += b * world
            losses.append(value)
            measured = measured_mfu = None
            logging_step = step == first_step or step % config.log_every == 0 or step == total_steps
            if logging_step:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                now = time.perf_counter()
                measured = ecgs_per_s = ecgs_since / (now - t_last)
                if peak is not None:
                    measured_mfu = utilisation = mfu(measured, views.shape[0], flops_per_view, world, peak[0])
                t_last, ecgs_since = now, 0
            watched = monitor.maybe(encoder, step, total_steps) if monitor is not None else {}
            t_last += watched.get("monitor_s", 0.0)  # the monitor's time is not training throughput
            if metrics is not None:  # grad_norm stays on the device until the row is written: no sync here
                metrics.write(step=step, epoch=epoch, loss=value, lr=scheduler.get_last_lr()[0],
                              grad_norm=grad_norm.detach(), ecgs_per_s=measured, mfu=measured_mfu, skipped=skipped,
                              defer=True,
                              **watched)
                if logging_step:
                    metrics.flush()
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}", **({"ecg_s": f"{ecgs_per_s:.1f}"} if ecgs_per_s else {}),
                            **({"mfu": f"{utilisation:.1%}"} if utilisation is not None else {}))
            if step % config.ckpt_every == 0 and step < total_steps:
                if metrics is not None:
                    metrics.flush()
                save()
            if step >= total_steps:
                break
    bar.close()
    final = save() if losses or ckpt is None else ckpt  # a resume of a finished run trains and rewrites nothing
    if metrics is not None:
        metrics.close()
    if world > 1:
        dist.barrier()
        del model, step_model  # DDP's reducer holds gloo/NCCL work: release it while the group is alive
        if owns_group:
            dist.destroy_process_group()  # an undestroyed group can abort the process at exit
    return {"losses": losses, "steps": step, "skipped": skipped, "checkpoint": str(final) if final else None,
            "ecgs_per_s": ecgs_per_s, "mfu": utilisation, "steps_per_epoch": steps_per_epoch, "rank_batch": rank_batch,
            "monitor": monitor.report_lines() if monitor is not None else []}


def patient_share(patient_ids: np.ndarray, rows: np.ndarray, share: float, seed: int) -> np.ndarray:
    """The records of ``rows`` (ascending) whose patients fall in the first ``share`` of a seeded permutation of
    their patients: whole patients, and nested (the 25 % patients are inside the 50 % ones) for one seed."""
    if share >= 1:
        return rows
    patients = np.unique(np.asarray(patient_ids)[rows])
    order = np.random.default_rng([seed, 7_340_033]).permutation(len(patients))  # the data-size curve's draw
    kept = patients[order[:max(1, round(share * len(patients)))]]
    return rows[np.isin(np.asarray(patient_ids)[rows], kept)]


def pretrain_until_done(config: TrainConfig) -> Path:
    """Pretrain into ``config.out`` until the run is finished, whatever an interrupted earlier run of the same
    settings left there: resume from its newest intact checkpoint, start over a run killed before its first
    checkpoint, return at once when it is finished. For jobs that pretrain as one of their steps (the demo, the
    recipes), so that rerunning the same command continues. Returns the run folder.

    Raises:
        What :func:`pretrain` raises; a folder that is not an ecgfast-train run is refused, never deleted.
    """
    run = Path(config.out)
    ckpt = find_checkpoint(run, STATE_KEYS) if (run / "checkpoints").is_dir() else None
    if ckpt is not None:
        state = load_state(ckpt)
        if "total_steps" in state and int(state["step"]) >= int(state["total_steps"]):
            saved = json.loads((ckpt / "config.json").read_text())
            check_resume(saved, to_dict(config), None, "", None, "")  # a finished run of other settings is refused
            return run
        pretrain(config, resume=True)
    else:
        pretrain(config, overwrite=is_run_folder(run))  # a run killed before its first checkpoint starts over
    return run


def _read_metrics(path: Path, up_to_step: int) -> list[dict]:
    """The rows of ``path`` up to ``up_to_step``. Rows that do not parse (the last line of a process killed while
    writing it, or a damaged file) are dropped with a warning that counts them, never a traceback."""
    kept, bad = [], 0
    try:
        with open(path, newline="", errors="replace") as f:
            for row in csv.DictReader(f):
                try:
                    step = int(row["step"])
                    float(row["loss"] if row["loss"] != "" else row["rankme"])  # the monitor's step-0 row: no loss
                except (KeyError, TypeError, ValueError):
                    bad += 1
                    continue
                if step <= up_to_step:
                    kept.append(row)
    except (OSError, csv.Error) as exc:
        log.warning("%s: unreadable (%s): its rows before the resume are lost", path, exc)
        return []
    if bad:
        log.warning("%s: %d damaged row(s) dropped (a process killed while writing, or an edited file)", path, bad)
    return kept


class _MetricsLog:
    """metrics.csv (and TensorBoard where installed). On resume, rows after the checkpoint's step are dropped.

    One row per step, and one per skipped (non-finite) batch with its loss and the running count of skips; the
    ``extra`` columns (the monitor's) are filled on the steps that measure them, and a row of step 0 holds the
    monitor's values before training (no loss);
    ``ecgs_per_s`` is filled on the steps where throughput is measured (the first, then every ``log_every``), and
    ``mfu`` beside it where the device's peak is known (:mod:`ecgfast.pretrain.mfu`).
    A row written with ``defer`` may hold device tensors (the gradient norm): it is kept until :meth:`flush`, which
    reads them all at once, so that logging synchronises with the device every ``log_every`` steps, not every step.
    """

    FIELDS = ("step", "epoch", "loss", "lr", "grad_norm", "ecgs_per_s", "mfu", "skipped")

    def __init__(self, path: Path, truncate_after: int, extra: tuple[str, ...] = ()):
        rows = _read_metrics(path, truncate_after) if truncate_after > 0 and path.exists() else []
        self.extra = tuple(extra)
        fields = self.FIELDS + self.extra
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:  # a kill here leaves the old file whole
            writer = csv.DictWriter(f, fieldnames=fields, restval="", extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        self.file = open(path, "a", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=fields, restval="", extrasaction="ignore")
        self.pending: list[dict] = []
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(path.parent / "tensorboard"))
        except Exception:  # tensorboard not installed: CSV only
            self.tb = None

    def write(self, defer: bool = False, **row) -> None:
        self.pending.append(row)
        if not defer:
            self.flush()

    def flush(self) -> None:
        """Write the pending rows (tensors read here, one synchronisation for all of them)."""
        if not self.pending:
            return
        tensors = [v for row in self.pending for v in row.values() if isinstance(v, torch.Tensor)]
        values = iter(torch.stack(tensors).float().tolist()) if tensors else iter(())
        for row in self.pending:
            row = {k: next(values) if isinstance(v, torch.Tensor) else v for k, v in row.items()}
            self.writer.writerow({k: "" if v is None else v for k, v in row.items()})
            if self.tb is not None:
                for k in ("loss", "lr", "grad_norm", "ecgs_per_s", "mfu", *self.extra):
                    if isinstance(row.get(k), float) and math.isfinite(row[k]):
                        self.tb.add_scalar(f"pretrain/{k}", row[k], row["step"])
        self.pending.clear()
        self.file.flush()

    def close(self) -> None:
        self.flush()
        self.file.close()
        if self.tb is not None:
            self.tb.close()


__all__ = ["ContrastivePretrainer", "NonFiniteLossError", "RunFolderError", "lr_factor", "pretrain",
           "patient_share", "pretrain_until_done"]
