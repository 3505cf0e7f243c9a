"""The folder ecgfast-prepare writes: its marker, what ``--overwrite`` may delete, one run at a time, no leftovers.

prepare marks a folder as its own with ``.ecgfast-prepare`` before it writes anything else there. ``--overwrite``
empties only a marked folder (or a store written before the marker existed: a ``store.json`` of format
ecgfast-store, or an unfinished run's ``.parts/plan.json``), and in it only the entries prepare writes: a file
of yours inside it stops the overwrite, it is never deleted. A folder that holds one of the sources, or lies
inside one, is never an output. While a run writes, it holds an exclusive lock on the marker, so a second run
on the same folder is refused instead of interleaving with it (and so removing the first run's temporaries).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from .store import FORMAT, StoreError, fsync_path, write_json_atomic

MARKER = ".ecgfast-prepare"
#: every entry prepare writes into its folder
OWN_ENTRIES = frozenset({MARKER, "store.json", "manifest.parquet", "shards", ".parts", "prepare_report.json",
                         "prepare_report.md", "rejects.csv"})
#: the temporaries of :func:`~ecgfast.data.store.atomic_path` (``.<name>.<random>.tmp``)
_TEMPORARY = re.compile(r"^\..+\.tmp$")


def _own(name: str) -> bool:
    return name in OWN_ENTRIES or bool(_TEMPORARY.match(name))


def is_marked(out: Path) -> bool:
    """True when ``out`` carries prepare's marker, or is a store or unfinished run made before markers existed."""
    if (out / MARKER).is_file() or (out / ".parts" / "plan.json").is_file():
        return True
    try:
        return json.loads((out / "store.json").read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_not_nested(out: str | os.PathLike, inputs: Sequence[str | os.PathLike]) -> None:
    """Refuse an output folder that holds an input, or lies inside an input folder.

    Raises:
        StoreError: naming both paths.
    """
    out_real = Path(out).resolve()
    for source in inputs:
        real = Path(source).resolve()
        if real == out_real or real.is_relative_to(out_real):
            raise StoreError(f"source {source} is inside --out {out}: a failed run or --overwrite could destroy "
                             "it; choose an --out outside your data")
        if real.is_dir() and out_real.is_relative_to(real):
            raise StoreError(f"--out {out} is inside source {source}: the store would be written into the data it "
                             "reads; choose an --out outside it")


def claim(out: Path) -> None:
    """Create ``out`` (or accept it when it is empty or already prepare's) and mark it.

    Raises:
        StoreError: ``out`` is a file, or a non-empty folder prepare did not make.
    """
    if out.exists() and not out.is_dir():
        raise StoreError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not is_marked(out):
        raise StoreError(f"{out}: exists, is not empty and was not made by ecgfast-prepare (no {MARKER}); "
                         "choose another --out (--overwrite deletes only folders ecgfast-prepare made)")
    out.mkdir(parents=True, exist_ok=True)
    if not (out / MARKER).is_file():
        write_json_atomic(out / MARKER, {"made_by": "ecgfast-prepare", "format": FORMAT})


@contextmanager
def exclusive(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out``'s marker for the block (where ``fcntl`` exists: POSIX).

    Raises:
        StoreError: another process holds it: another ecgfast-prepare is writing this folder.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here
        yield
        return
    fd = os.open(out / MARKER, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise StoreError(f"{out}: another ecgfast-prepare is writing this folder; wait for it or stop it") from exc
        yield
    finally:
        os.close(fd)  # releases the lock


def clear_for_overwrite(out: Path) -> None:
    """Delete what prepare wrote into ``out`` (keeping the marker), for ``--overwrite``.

    Raises:
        StoreError: ``out`` holds entries prepare does not write (named, up to five): nothing is deleted.
    """
    foreign = sorted(p.name for p in out.iterdir() if not _own(p.name))
    if foreign:
        raise StoreError(f"{out}: --overwrite refused: it holds {len(foreign)} file(s) or folder(s) ecgfast-prepare "
                         f"did not write ({', '.join(foreign[:5])}); move them out first")
    for p in out.iterdir():
        if p.name == MARKER:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    fsync_path(out)


def remove_temporaries(out: Path) -> int:
    """Delete the temporaries a killed run left (``.<name>.<random>.tmp`` in ``out``, ``shards/``, ``.parts/``).

    Call it only while holding :func:`exclusive`: a running writer's temporaries look the same.
    Returns how many were removed.
    """
    removed = 0
    for folder in (out, out / "shards", out / ".parts"):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if _TEMPORARY.match(p.name) and p.is_file():
                p.unlink()
                removed += 1
    return removed


def finish(out: Path) -> None:
    """After ``store.json`` is in place: remove ``.parts/`` (it holds a plain copy of the patient ids)."""
    parts = out / ".parts"
    if parts.is_dir():
        shutil.rmtree(parts)
        fsync_path(out)
