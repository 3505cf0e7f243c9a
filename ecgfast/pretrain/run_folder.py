"""The folder ``ecgfast-train`` writes: its marker, one writer at a time, what ``--overwrite`` may delete, and the
history of the run's starts and resumes.

A run folder carries :data:`MARKER` (written before anything else), and only a folder carrying it is a run:
``--overwrite`` deletes nothing elsewhere, and in a run folder only the entries ecgfast-train writes
(:data:`OWN_ENTRIES`); a file of yours beside them stays. Runs written before the marker existed are recognised
for ``--resume`` only (by an intact ``checkpoints/ckpt-*`` with its ``config.json``), never for ``--overwrite``.
While a run writes, it holds the folder's lock (:mod:`ecgfast.folder_lock`): a second ``ecgfast-train`` on the
same ``--out`` is refused at once. A fresh run that fails before writing anything removes the folder it created.
``history.jsonl`` gets one line per start or resume: the step, the time, and the settings changed on resume.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from ..data.store import fsync_path, write_json_atomic
from ..folder_lock import LOCK_NAME, folder_lock

log = logging.getLogger("ecgfast.train")
MARKER = ".ecgfast-train"
HISTORY = "history.jsonl"
#: every entry ecgfast-train writes into its run folder (temporaries of atomic writes are ``.<name>.*.tmp``)
OWN_ENTRIES = frozenset({MARKER, LOCK_NAME, HISTORY, "config.toml", "metrics.csv", "checkpoints", "tensorboard"})


class RunFolderError(ValueError):
    """``--out`` exists and holds a run (or anything else) that this command would overwrite, or cannot be a run."""


def is_run_folder(out: Path) -> bool:
    """True when ``out`` carries ecgfast-train's marker."""
    return (out / MARKER).is_file()


def _check_path(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--out {out} is a file, not a folder")
    blocking = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise RunFolderError(f"--out {out} lies inside {blocking}, which is a file")


def _foreign(out: Path) -> list[str]:
    """Entries of ``out`` that ecgfast-train does not write."""
    return sorted(p.name for p in out.iterdir() if p.name not in OWN_ENTRIES
                  and not (p.name.startswith(".") and p.name.endswith(".tmp")))


def _clear(out: Path) -> None:
    """Delete what ecgfast-train wrote into ``out`` (the marker and the lock file stay)."""
    for name in sorted(OWN_ENTRIES - {MARKER, LOCK_NAME}):
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    for p in out.iterdir():  # temporaries of atomic writes a killed run left
        if p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file():
            p.unlink()
    fsync_path(out)


@contextmanager
def claim_run_folder(out: str | os.PathLike, resume: bool, overwrite: bool) -> Iterator[Path]:
    """Make ``out`` this process's run folder for the block: checked, created, locked, marked, cleared for
    ``overwrite``. A folder this call created is removed again if the block fails before writing anything in it.

    Raises:
        RunFolderError: ``out`` is a file or lies inside one; it holds a run and neither ``resume`` nor
            ``overwrite`` is given; ``resume`` of a folder that is not a run; ``overwrite`` of a folder that is not
            ecgfast-train's (nothing is deleted then).
        FolderBusyError: another process is writing ``out``.
    """
    out = Path(out)
    _check_path(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        stack.enter_context(folder_lock(out, "ecgfast-train"))
        try:
            _admit(out, resume, overwrite)
            yield out
        except BaseException:
            if created and all(p.name in (LOCK_NAME, MARKER) for p in out.iterdir()):
                shutil.rmtree(out, ignore_errors=True)  # nothing of the run was written: leave no folder behind
            raise


def _admit(out: Path, resume: bool, overwrite: bool) -> None:
    """Under the lock: refuse, clear or accept the folder's contents, then mark it."""
    legacy = not is_run_folder(out) and (out / "checkpoints").is_dir() and any(
        (p / "config.json").is_file() for p in (out / "checkpoints").glob("ckpt-*"))
    contents = [p.name for p in out.iterdir() if p.name != LOCK_NAME]
    if resume:
        if not is_run_folder(out) and not legacy:
            what = "it is empty" if not contents else f"it is not an ecgfast-train run (no {MARKER})"
            raise RunFolderError(f"--resume: {out} holds no checkpoint to resume from ({what}); leave out --resume "
                                 "to start a new run there")
    elif contents:
        if not is_run_folder(out):
            raise RunFolderError(f"--out {out} is not empty and is not an ecgfast-train run (no {MARKER}): "
                                 f"refusing to {'delete it with --overwrite' if overwrite else 'write into it'}; "
                                 "choose another --out")
        if not overwrite:
            raise RunFolderError(f"--out {out} already holds a pretraining run: pass --resume to continue it, "
                                 "--overwrite to replace it, or choose another --out")
        foreign = _foreign(out)
        if foreign:
            raise RunFolderError(f"{out}: --overwrite refused: it holds {len(foreign)} file(s) or folder(s) "
                                 f"ecgfast-train did not write ({', '.join(foreign[:5])}); move them out first")
        _clear(out)
    if not is_run_folder(out):
        write_json_atomic(out / MARKER, {"made_by": "ecgfast-train"})


def record_history(out: Path, event: str, step: int, **details: object) -> None:
    """Append one line to ``history.jsonl``: ``event`` ("start", "resume") at ``step``, with ``details``."""
    line = json.dumps({"event": event, "step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **details},
                      sort_keys=True, default=str)
    with open(out / HISTORY, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


__all__ = ["HISTORY", "MARKER", "OWN_ENTRIES", "RunFolderError", "claim_run_folder", "is_run_folder",
           "record_history"]
