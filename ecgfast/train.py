"""ecgfast-train: contrastive pretraining of the dual-stream TemporalNet, one lean loop.

One step: a patient-aware batch of int16 ECGs -> decode to mV on the device -> two views per ECG
(intersegment halves, or two copies of a crop) -> VCG rotation/scaling + ZeroMask, independently per
view -> dual-stream encoder (bf16 autocast on GPU, torch.compile where it pays) -> 4 embeddings per ECG
-> multi-positive loss with ECG and patient ids (gathered across ranks under DDP) -> Adam, warm-up then
cosine, clipping at 1.0. The DataLoader's workers read the next batches while the step runs.

Multi-GPU and multi-node: run the same command under ``torchrun``; DDP does the rest.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import logging
import math
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .augment import ECGAugment
from .checkpoint import CheckpointError, latest_checkpoint, load_state, load_weights, save_checkpoint
from .config import CHOICES, SYNTHETIC_DEFAULTS, TrainConfig, field_help, load_config, to_toml
from .data.loader import decode, make_input
from .data.sampler import PatientBatchSampler
from .data.splits import SplitError
from .data.store import ECGStore, StoreError
from .loss import MultiPositiveContrastiveLoss
from .models.temporalnet import DualStreamTemporalNet, temporalnet_config
from .views import make_views, row_ids

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


def synthetic_store(n_patients: int, seed: int) -> Path:
    """The embedded default corpus, made once and cached (``$ECGFAST_CACHE`` or ~/.cache/ecgfast)."""
    from .data.synthetic import SyntheticReader
    from .prepare import prepare_store

    root = Path(os.environ.get("ECGFAST_CACHE", Path.home() / ".cache" / "ecgfast"))
    path = root / f"synthetic-p{n_patients}-s{seed}"
    if not (path / "store.json").exists():
        log.info("making the synthetic corpus (%d patients) at %s", n_patients, path)
        prepare_store([SyntheticReader(n_patients=n_patients, seed=seed)], path, workers=min(4, os.cpu_count() or 1),
                      progress=False)
    return path


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


def pretrain(config: TrainConfig, resume: bool = False) -> dict:
    """Run pretraining as configured. Returns a summary: losses per step, steps, checkpoint, ECGs/s.

    Raises:
        StoreError / SplitError: missing, corrupt or patient-mixing store.
        CheckpointError: ``resume`` from a checkpoint of another model shape.
        ValueError: an impossible batch for the sampler, or bad settings.
        NonFiniteLossError: the loss kept being NaN/Inf.
    """
    owns_group = not (dist.is_available() and dist.is_initialized())  # a group made here is destroyed here
    rank, world, local_rank = _distributed()
    device = torch.device(config.device or (f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    use_bf16 = config.bf16 if config.bf16 is not None else device.type == "cuda"
    use_compile = config.compile if config.compile is not None else device.type == "cuda"
    torch.manual_seed(config.seed + rank)
    out = Path(config.out)

    # data: the train split only; validation and test patients are never seen here
    if not config.store and rank == 0:
        synthetic_store(config.synthetic_patients, config.seed)  # rank 0 makes it; the others wait, then open it
    if world > 1:
        dist.barrier()
    store = ECGStore(config.store if config.store else synthetic_store(config.synthetic_patients, config.seed))
    train_rows = store.split_indices("train")
    patient_codes = np.unique(store.patient_ids, return_inverse=True)[1]
    sampler = PatientBatchSampler(store.patient_ids[train_rows], config.batch_size, config.k_per_patient,
                                  seed=config.seed, rank=rank, world_size=world, indices=train_rows)
    loader = make_input(store, sampler, patient_codes, backend=config.loader, device=device, workers=config.workers)

    encoder = DualStreamTemporalNet(temporalnet_config(config.model)).to(device)
    model: torch.nn.Module = ContrastivePretrainer(encoder)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda"
                                                          else None)
    step_model = torch.compile(model) if use_compile else model
    augment = ECGAugment(max_angle_deg=config.max_angle_deg, scale_range=(config.scale_low, config.scale_high),
                         invert_prob=config.invert_prob, mask_fraction=config.mask_fraction,
                         transform=config.vcg_transform, residual=config.residual, noise_std=config.noise_std,
                         backend="auto")  # the fused op (Triton/CUDA on GPU, C++ on CPU) where built
    loss_fn = MultiPositiveContrastiveLoss(temperature=config.temperature, weights=(1.0, config.patient_weight))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, eps=config.adam_eps)
    steps_per_epoch = len(sampler)
    total_steps = config.max_steps or config.epochs * steps_per_epoch
    warmup_steps = max(1, min(total_steps, round(config.warmup_epochs * steps_per_epoch)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup_steps, total_steps))
    generator = torch.Generator().manual_seed(config.seed * 1000 + rank)  # augmentation and crops, on the CPU

    step, position, nonfinite, skipped = 0, 0, 0, 0  # position: batches consumed, skipped ones included
    if resume and (ckpt := latest_checkpoint(out)) is not None:
        load_weights(encoder, ckpt)
        state = load_state(ckpt)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"])
        step, position, skipped = int(state["step"]), int(state["position"]), int(state["skipped"])
        log.info("resumed from %s at step %d", ckpt.name, step)
    elif resume:
        log.info("nothing to resume in %s: starting fresh", out)

    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.toml").write_text(to_toml(config))
    metrics = _MetricsLog(out / "metrics.csv", truncate_after=step) if rank == 0 else None
    bar = tqdm(total=total_steps, initial=step, desc="pretrain", unit="step", disable=rank != 0 or not config.progress)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()
    losses: list[float] = []
    t_last, ecgs_since = time.perf_counter(), 0
    ecgs_per_s = float("nan")

    def save() -> Path | None:
        if rank != 0:
            return None
        state = {"step": step, "position": position, "skipped": skipped, "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "generator": generator.get_state(),
                 "torch_rng": torch.get_rng_state()}
        if device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state()
        return save_checkpoint(out, step, encoder, state, config=dataclasses.asdict(config))

    model.train()
    while step < total_steps:
        epoch, start_batch = divmod(position, steps_per_epoch)
        sampler.set_epoch(epoch, start_batch)
        for samples, gain, baseline, record, patient in loader:
            position += 1
            x = decode(samples.to(device, non_blocking=True), gain.to(device), baseline.to(device))  # (B, 8, T) mV
            views = make_views(x, config.views, config.segment, generator)  # (2, B, 8, segment)
            n_views, b = views.shape[:2]
            views = augment(views.flatten(0, 1), generator)  # independent parameters per view and ECG
            with autocast:
                z = step_model(views)  # (2B, 2 streams, proj_dim)
            z = z.float().flatten(0, 1)  # rows (view, ecg, stream)
            ecg_ids = row_ids(record.to(device), n_views, z.shape[0] // (n_views * b))
            patient_ids = row_ids(patient.to(device), n_views, z.shape[0] // (n_views * b))
            loss = loss_fn(z, ecg_ids, patient_ids)

            finite = torch.isfinite(loss.detach()).float()
            if world > 1:  # every rank must skip together, or DDP's gradient all-reduce would hang
                dist.all_reduce(finite, op=dist.ReduceOp.MIN)
            if finite.item() < 1:
                nonfinite, skipped = nonfinite + 1, skipped + 1
                optimizer.zero_grad(set_to_none=True)
                if nonfinite > config.max_nonfinite:
                    raise NonFiniteLossError(f"loss was NaN/Inf for {nonfinite} consecutive steps (step {step}); "
                                             "lower --lr, check the store for corrupt records, or disable bf16")
                continue  # the step is skipped, not counted
            nonfinite = 0
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            ecgs_since += b * world
            loss_value = loss.item()  # synchronises: the timing below is of finished work
            losses.append(loss_value)
            if step % config.log_every == 0 or step == total_steps:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                now = time.perf_counter()
                ecgs_per_s, t_last, ecgs_since = ecgs_since / (now - t_last), now, 0
            if metrics is not None:
                metrics.write(step=step, epoch=epoch, loss=loss_value, lr=scheduler.get_last_lr()[0],
                              grad_norm=float(grad_norm), ecgs_per_s=ecgs_per_s, skipped=skipped)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", ecg_s=f"{ecgs_per_s:.0f}")
            if step % config.ckpt_every == 0 and step < total_steps:
                save()
            if step >= total_steps:
                break
    bar.close()
    final = save()
    if metrics is not None:
        metrics.close()
    if world > 1:
        dist.barrier()
        del model, step_model  # DDP's reducer holds gloo/NCCL work: release it while the group is alive
        if owns_group:
            dist.destroy_process_group()  # an undestroyed group can abort the process at exit
    return {"losses": losses, "steps": step, "skipped": skipped, "checkpoint": str(final) if final else None,
            "ecgs_per_s": ecgs_per_s, "steps_per_epoch": steps_per_epoch}


class _MetricsLog:
    """metrics.csv (and TensorBoard where installed). On resume, rows after the checkpoint's step are dropped."""

    FIELDS = ("step", "epoch", "loss", "lr", "grad_norm", "ecgs_per_s", "skipped")

    def __init__(self, path: Path, truncate_after: int):
        rows = []
        if truncate_after > 0 and path.exists():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= truncate_after]
        self.file = open(path, "w", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=self.FIELDS)
        self.writer.writeheader()
        self.writer.writerows(rows)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(path.parent / "tensorboard"))
        except Exception:  # tensorboard not installed: CSV only
            self.tb = None

    def write(self, **row) -> None:
        self.writer.writerow(row)
        self.file.flush()
        if self.tb is not None:
            for k in ("loss", "lr", "grad_norm", "ecgs_per_s"):
                self.tb.add_scalar(f"pretrain/{k}", row[k], row["step"])

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


# ---- CLI -----------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ecgfast-train",
        description="Contrastive pretraining of a dual-stream TemporalNet on an ECG store; defaults are the paper's "
                    "recipe. With no --store it makes a synthetic corpus and pretrains a tiny model on it (minutes on "
                    "a laptop CPU): then " + ", ".join(f"{k}={v}" for k, v in SYNTHETIC_DEFAULTS.items()) +
                    " replace the defaults shown below (flags still override).",
        epilog="examples:\n  ecgfast-train\n  ecgfast-train --store stores/mimic --out runs/mimic\n"
               "  torchrun --nproc_per_node 8 -m ecgfast.train --store stores/mimic --out runs/mimic\n"
               "  ecgfast-train --config my.toml --lr 3e-4 --resume",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="TOML file of TrainConfig keys; command-line flags override it")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    helps = field_help()
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind, text = str(f.type), helps.get(f.name, "")
        if "bool" in kind:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            typ = int if kind.startswith("int") else float if kind.startswith("float") else str
            p.add_argument(flag, type=typ, default=None, choices=CHOICES.get(f.name),
                           help=f"{text} (default {f.default!r})".strip())
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ecgfast-train``. Exit codes: 0 done, 2 bad input, 3 loss kept diverging."""
    args = vars(build_parser().parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config_path, resume = args.pop("config"), args.pop("resume")
    try:
        base = SYNTHETIC_DEFAULTS if not (args.get("store") or _store_in(config_path)) else None
        config = load_config(config_path, overrides=args, base=base)
        summary = pretrain(config, resume=resume)
    except (StoreError, SplitError, CheckpointError, ValueError, FileNotFoundError) as exc:
        print(f"ecgfast-train: error: {exc}", file=sys.stderr)
        return 2
    except NonFiniteLossError as exc:
        print(f"ecgfast-train: stopped: {exc}", file=sys.stderr)
        return 3
    if summary["checkpoint"]:
        losses = summary["losses"] or [float("nan")]
        print(f"ecgfast-train: {summary['steps']} steps, loss {losses[0]:.4f} -> {losses[-1]:.4f}, "
              f"{summary['ecgs_per_s']:.1f} ECGs/s; checkpoint {summary['checkpoint']}")
    return 0


def _store_in(config_path: str | None) -> bool:
    if not config_path:
        return False
    import tomllib

    with open(config_path, "rb") as f:
        return bool(tomllib.load(f).get("store"))


if __name__ == "__main__":
    sys.exit(main())
