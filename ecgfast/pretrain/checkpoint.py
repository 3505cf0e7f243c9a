"""Checkpoints: weights in safetensors, optimizer and loop state beside them, written atomically and durably.

A checkpoint is a folder ``checkpoints/ckpt-<step>/`` holding ``model.safetensors`` (the uncompiled, unwrapped
model's state dict), ``state.pt`` (optimizer, scheduler, loop position, RNG states; loaded with
``weights_only=True``), ``config.json`` (the run's settings) and ``provenance.json`` (which store and patients the
encoder was pretrained on: :mod:`ecgfast.pretrain.provenance`). It is written in a temporary folder, every file
fsync'ed, then renamed whole and the parent folder fsync'ed; ``latest`` (a text file naming it) is replaced the
same way. A crash or power cut at any point leaves the previous checkpoint intact.

Finding a checkpoint never trusts one file: :func:`find_checkpoint` scans ``ckpt-*`` newest first and takes the
first one whose files are all there and readable, saying when it skipped a damaged one. ``latest`` is a hint that
must name a folder of this run. A checkpoint whose weights or buffers hold NaN or Inf is never written.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..data.store import atomic_path, fsync_path, give_usual_mode, write_json_atomic

log = logging.getLogger("ecgfast.checkpoint")
FILES = ("model.safetensors", "state.pt", "config.json")
_NAME = re.compile(r"^ckpt-(\d{8,})$")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable, non-finite, or made for another model shape."""


def non_finite_tensors(model: torch.nn.Module) -> list[str]:
    """Names of the parameters and buffers of ``model`` that hold a NaN or an Inf (floating tensors only)."""
    return [name for name, t in model.state_dict().items()
            if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def save_checkpoint(run_dir: str | os.PathLike, step: int, model: torch.nn.Module, state: dict,
                    config: dict | None = None, provenance: dict | None = None, keep: int = 2) -> Path:
    """Write ``run_dir/checkpoints/ckpt-<step>`` atomically and point ``latest`` at it; keep the last ``keep``.

    Raises:
        CheckpointError: a parameter or buffer of ``model`` is not finite (named); nothing is written then.
    """
    bad = non_finite_tensors(model)
    if bad:
        raise CheckpointError(f"not writing checkpoint of step {step}: {len(bad)} tensor(s) hold NaN/Inf: "
                              f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"ckpt-{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(weights, str(tmp / "model.safetensors"))
        torch.save(state, tmp / "state.pt")
        write_json_atomic(tmp / "config.json", config or {})
        if provenance is not None:
            write_json_atomic(tmp / "provenance.json", provenance)
        for path in (*tmp.iterdir(), tmp):  # mkdtemp and safetensors make owner-only modes
            give_usual_mode(path)
            fsync_path(path)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_path(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    with atomic_path(root / "latest") as pointer:
        pointer.write_text(final.name + "\n")
    for old in _checkpoint_folders(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _checkpoint_folders(root: Path) -> list[Path]:
    """``ckpt-<step>`` folders of ``root``, oldest first (temporaries and other names ignored)."""
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if _NAME.match(p.name) and p.is_dir()), key=lambda p: p.name)


def check_checkpoint(path: Path) -> None:
    """Raise ``CheckpointError`` unless ``path`` holds every checkpoint file and its weights and state load."""
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise CheckpointError(f"{path}: missing {', '.join(missing)}")
    try:
        load_file(str(path / "model.safetensors"))
    except Exception as exc:
        raise CheckpointError(f"{path / 'model.safetensors'}: cannot read weights: {exc}") from exc
    load_state(path)


def find_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest intact checkpoint of a run, or None when the run has no checkpoint folder at all.

    Scans ``checkpoints/ckpt-*`` newest first, skipping (with a warning naming it and why) any that is
    incomplete or unreadable. ``latest``, where present, must name a folder inside this run's ``checkpoints/``.

    Raises:
        CheckpointError: ``latest`` points outside the run; checkpoint folders exist but none is intact.
    """
    root = Path(run_dir) / "checkpoints"
    pointer = root / "latest"
    if pointer.is_file():
        name = pointer.read_text().strip()
        if not _NAME.match(name):
            raise CheckpointError(f"{pointer}: names {name!r}, not a checkpoint folder of this run (ckpt-<step>); "
                                  "refusing to follow it")
    folders = _checkpoint_folders(root)
    problems = []
    for path in reversed(folders):
        try:
            check_checkpoint(path)
        except CheckpointError as exc:
            problems.append(str(exc))
            log.warning("skipping damaged checkpoint %s: %s", path.name, exc)
            continue
        if problems:
            log.warning("using %s, the newest intact checkpoint", path.name)
        return path
    if folders:
        raise CheckpointError(f"{root}: no intact checkpoint among {len(folders)}: " + "; ".join(problems[:3]))
    return None


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint folder from a run folder (its newest intact checkpoint) or a checkpoint folder.

    Raises:
        CheckpointError: nothing there, or no intact checkpoint.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint or run folder")
    if (path / "model.safetensors").is_file():
        check_checkpoint(path)
        return path
    ckpt = find_checkpoint(path)
    if ckpt is None:
        raise CheckpointError(f"{path}: neither a checkpoint folder (model.safetensors) nor a run folder with "
                              "checkpoints/ckpt-*")
    return ckpt


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
        raise CheckpointError(f"{file}: made for another model shape ({detail}); check --model")
    model.load_state_dict(weights, strict=strict)


def load_state(path: str | os.PathLike) -> dict:
    """The loop/optimizer state of a checkpoint folder, loaded with ``weights_only=True``."""
    file = Path(path) / "state.pt"
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{file}: cannot load state: {exc}") from exc


__all__ = ["CheckpointError", "check_checkpoint", "find_checkpoint", "load_state", "load_weights",
           "non_finite_tensors", "resolve_checkpoint", "save_checkpoint"]
