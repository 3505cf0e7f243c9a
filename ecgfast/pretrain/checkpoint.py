"""Checkpoints: weights in safetensors, optimizer and loop state beside them, written atomically and durably.

A checkpoint is a folder ``checkpoints/ckpt-<step>/`` holding ``model.safetensors`` (the uncompiled, unwrapped
model's state dict), ``state.pt`` (optimizer, scheduler, loop position, RNG states; loaded with
``weights_only=True``), ``config.json`` (the run's settings), and ``provenance.json`` with ``pretrained_on.npz``
(which stores, patients and records the encoder was pretrained on, as keyed hashes:
:mod:`ecgfast.pretrain.provenance`). It is written in a temporary folder (``.ckpt-<step>.<random>``), every file
fsync'ed, then renamed whole and the parent folder fsync'ed; ``latest`` (a text file naming it) is replaced the
same way. A crash, power cut or full disk at any point leaves the previous checkpoint intact; the temporaries a
killed writer leaves are removed by the next run (:func:`remove_stale_temporaries`, under the run's lock).

Finding a checkpoint never trusts one file: :func:`find_checkpoint` scans ``ckpt-*`` newest first and takes the
first one whose files are all there, readable, finite and complete (the loop's state keys), saying when it skipped
a damaged one. ``latest`` is a hint that must name a folder of this run, and a ``ckpt-*`` that resolves outside the
run (a symlink into another run) is refused. A checkpoint whose weights or buffers hold NaN or Inf is never
written, and never loaded.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..data.store import atomic_path, fsync_path, give_usual_mode, write_json_atomic
from .provenance import Provenance

log = logging.getLogger("ecgfast.checkpoint")
FILES = ("model.safetensors", "state.pt", "config.json")
#: keys a pretraining checkpoint's state.pt must hold for --resume
STATE_KEYS = ("step", "position", "skipped", "optimizer", "scheduler", "torch_rng")
_NAME = re.compile(r"^ckpt-(\d{8,})$")
_TEMPORARY = re.compile(r"^\.(ckpt-\d{8,}\..+|latest\..+\.tmp)$")  # mkdtemp folders, atomic_path files


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable, non-finite, or made for another model shape."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, read-only, permissions); the previous one is intact."""


def non_finite_tensors(model: torch.nn.Module) -> list[str]:
    """Names of the parameters and buffers of ``model`` that hold a NaN or an Inf (floating tensors only)."""
    return [name for name, t in model.state_dict().items()
            if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def save_checkpoint(run_dir: str | os.PathLike, step: int, model: torch.nn.Module, state: dict,
                    config: dict | None = None, provenance: Provenance | None = None, keep: int = 2) -> Path:
    """Write ``run_dir/checkpoints/ckpt-<step>`` atomically and point ``latest`` at it; keep the last ``keep``.

    Raises:
        CheckpointError: a parameter or buffer of ``model`` is not finite (named); nothing is written then.
        CheckpointWriteError: the disk refused a write (full, read-only): the path and the reason are named, no
            temporary is left, and the previous checkpoint is untouched.
    """
    bad = non_finite_tensors(model)
    if bad:
        raise CheckpointError(f"not writing checkpoint of step {step}: {len(bad)} tensor(s) hold NaN/Inf: "
                              f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")
    root = Path(run_dir) / "checkpoints"
    final = root / f"ckpt-{step:08d}"
    tmp = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
        weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(weights, str(tmp / "model.safetensors"))
        torch.save(state, tmp / "state.pt")
        write_json_atomic(tmp / "config.json", config or {})
        if provenance is not None:
            provenance.save(tmp)
        for path in (*tmp.iterdir(), tmp):  # mkdtemp and safetensors make owner-only modes
            give_usual_mode(path)
            fsync_path(path)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_path(root)
        with atomic_path(root / "latest") as pointer:
            pointer.write_text(final.name + "\n")
    except OSError as exc:  # ENOSPC, EROFS, EACCES...: say where and why, in one line
        raise CheckpointWriteError(exc.errno, f"cannot write checkpoint {final}: {exc.strerror or exc}") from exc
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    for old in _checkpoint_folders(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _checkpoint_folders(root: Path) -> list[Path]:
    """``ckpt-<step>`` folders of ``root``, oldest first (temporaries and other names ignored).

    Raises:
        CheckpointError: a ``ckpt-*`` entry resolves outside ``root`` (a symlink into another run).
    """
    if not root.is_dir():
        return []
    found = sorted((p for p in root.iterdir() if _NAME.match(p.name) and p.is_dir()), key=lambda p: p.name)
    real_root = root.resolve()
    for p in found:
        if p.is_symlink() or p.resolve().parent != real_root:
            raise CheckpointError(f"{p}: resolves to {p.resolve()}, outside this run's checkpoints: refusing to "
                                  "read it (remove the link)")
    return found


def remove_stale_temporaries(run_dir: str | os.PathLike) -> int:
    """Delete the temporaries a killed checkpoint writer left in ``run_dir/checkpoints``; returns how many.

    Call it only while holding the run folder's lock: a running writer's temporaries look the same.
    """
    root = Path(run_dir) / "checkpoints"
    removed = 0
    for p in root.iterdir() if root.is_dir() else []:
        if _TEMPORARY.match(p.name) and not p.is_symlink():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            removed += 1
    if removed:
        log.info("removed %d unfinished checkpoint temporar%s left by a stopped run", removed,
                 "y" if removed == 1 else "ies")
    return removed


def _read_weights(file: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, all finite.

    Raises:
        CheckpointError: unreadable, or tensors holding NaN/Inf (named).
    """
    try:
        weights = load_file(str(file))
    except Exception as exc:
        raise CheckpointError(f"{file}: cannot read weights: {exc}") from exc
    bad = [k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{file}: {len(bad)} tensor(s) hold NaN/Inf: {', '.join(bad[:5])}"
                              f"{' ...' if len(bad) > 5 else ''}")
    return weights


def check_checkpoint(path: Path, state_keys: tuple[str, ...] = ()) -> None:
    """Raise ``CheckpointError`` unless ``path`` holds every checkpoint file, its weights load and are finite,
    and its state loads with ``state_keys`` in it (:data:`STATE_KEYS` for a resume)."""
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise CheckpointError(f"{path}: missing {', '.join(missing)}")
    _read_weights(path / "model.safetensors")
    state = load_state(path)
    absent = [k for k in state_keys if k not in state]
    if absent:
        raise CheckpointError(f"{path / 'state.pt'}: missing {', '.join(absent)} (not a pretraining checkpoint of "
                              "this ecgfast, or damaged)")


def find_checkpoint(run_dir: str | os.PathLike, state_keys: tuple[str, ...] = ()) -> Path | None:
    """The newest intact checkpoint of a run, or None when the run has no checkpoint folder at all.

    Scans ``checkpoints/ckpt-*`` newest first, skipping (with a warning naming it and why) any that is
    incomplete, unreadable, non-finite or whose state lacks ``state_keys``. ``latest``, where present, must name a
    folder inside this run's ``checkpoints/``.

    Raises:
        CheckpointError: ``latest`` points outside the run; a ``ckpt-*`` resolves outside it; checkpoint folders
            exist but none is intact.
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
            check_checkpoint(path, state_keys)
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
        CheckpointError: unreadable file, tensors holding NaN/Inf (named), or tensors whose names or shapes do not
            match the model.
    """
    path = Path(path)
    file = path / "model.safetensors" if path.is_dir() else path
    weights = _read_weights(file)
    own = model.state_dict()
    wrong = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
             for k, v in weights.items() if k in own and own[k].shape != v.shape]
    missing, unexpected = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
    if wrong or (strict and (missing or unexpected)):
        detail = "; ".join(wrong[:3] + ([f"missing {missing[:3]}"] if missing else [])
                           + ([f"unexpected {unexpected[:3]}"] if unexpected else []))
        raise CheckpointError(f"{file}: made for another model shape ({detail}); check --model")
    model.load_state_dict(weights, strict=strict)


def weights_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex, 16 chars) of a checkpoint folder's ``model.safetensors``: what evaluation keys its cells and
    cached features by, so that a checkpoint rewritten under the same path (``--overwrite``) is never taken for the
    old one."""
    h = hashlib.sha256()
    with open(Path(path) / "model.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def load_state(path: str | os.PathLike) -> dict:
    """The loop/optimizer state of a checkpoint folder, loaded with ``weights_only=True``."""
    file = Path(path) / "state.pt"
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{file}: cannot load state: {exc}") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{file}: holds a {type(state).__name__}, not the loop's state (a dict)")
    return state


__all__ = ["CheckpointError", "CheckpointWriteError", "STATE_KEYS", "check_checkpoint", "find_checkpoint",
           "load_state", "load_weights", "non_finite_tensors", "remove_stale_temporaries", "resolve_checkpoint",
           "save_checkpoint", "weights_sha256"]
