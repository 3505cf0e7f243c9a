"""Checkpoints: weights in safetensors, optimizer and loop state beside them, written atomically.

A checkpoint is a folder ``ckpt-<step>/`` holding ``model.safetensors`` (the uncompiled, unwrapped model's
state dict) and ``state.pt`` (optimizer, scheduler, loop position, RNG states; loaded with
``weights_only=True``). It is written under a temporary name and renamed whole, then ``latest`` (a text file
naming it) is replaced atomically: a crash at any point leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .data.store import atomic_path, give_usual_mode, write_json_atomic


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable, or made for another model shape."""


def save_checkpoint(run_dir: str | os.PathLike, step: int, model: torch.nn.Module, state: dict,
                    config: dict | None = None, keep: int = 2) -> Path:
    """Write ``run_dir/checkpoints/ckpt-<step>`` atomically and point ``latest`` at it; keep the last ``keep``."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"ckpt-{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(weights, str(tmp / "model.safetensors"))
        torch.save(state, tmp / "state.pt")
        if config is not None:
            write_json_atomic(tmp / "config.json", config)
        for path in (*tmp.iterdir(), tmp):  # mkdtemp and safetensors make owner-only modes
            give_usual_mode(path)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    with atomic_path(root / "latest") as pointer:
        pointer.write_text(final.name + "\n")
    for old in sorted(root.glob("ckpt-*"))[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint ``latest`` points at, or None when the run has none."""
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    if not (path / "model.safetensors").is_file():
        raise CheckpointError(f"{pointer}: points at {path.name}, which has no model.safetensors")
    return path


def load_weights(model: torch.nn.Module, path: str | os.PathLike, strict: bool = True) -> None:
    """Load ``model.safetensors`` (a checkpoint folder or the file) into ``model``.

    Raises:
        CheckpointError: unreadable file, or tensors whose names or shapes do not match the model.
    """
    path = Path(path)
    file = path / "model.safetensors" if path.is_dir() else path
    try:
        weights = load_file(str(file))
    except Exception as exc:
        raise CheckpointError(f"{file}: cannot read weights: {exc}") from exc
    own = model.state_dict()
    wrong = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
             for k, v in weights.items() if k in own and own[k].shape != v.shape]
    missing, unexpected = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
    if wrong or (strict and (missing or unexpected)):
        detail = "; ".join(wrong[:3] + ([f"missing {missing[:3]}"] if missing else [])
                           + ([f"unexpected {unexpected[:3]}"] if unexpected else []))
        raise CheckpointError(f"{file}: made for another model shape ({detail}); check --model/--width")
    model.load_state_dict(weights, strict=strict)


def load_state(path: str | os.PathLike) -> dict:
    """The loop/optimizer state of a checkpoint folder, loaded with ``weights_only=True``."""
    file = Path(path) / "state.pt"
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{file}: cannot load state: {exc}") from exc
