"""One writer per folder: an OS lock on a lock file inside it, which the kernel releases when its process ends.

Run folders of ``ecgfast-train`` and evaluation folders of ``ecgfast-eval`` hold :data:`LOCK_NAME` while a process
writes them. The lock is a POSIX record lock (``fcntl.lockf``: advisory, exclusive, non-blocking): a second writer
is refused at once with a one-line error instead of interleaving its rows, cells or checkpoints with the first
one's. A process killed with ``kill -9`` holds nothing afterwards, so a rerun never finds a stale lock to clear by
hand. Record locks belong to the process, not to its open file: the DataLoader workers it forked do not inherit
them (with ``flock`` a worker outliving its killed parent by a moment would still hold the folder). Within one
process the lock is re-entrant (``ecgfast-eval --demo`` holds its folder, then evaluates into it). The lock file is
never deleted (deleting it while another process opens it would let two writers in) and holds the writer's pid,
for the message only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = ".ecgfast.lock"
_HELD: dict[str, int] = {}  # lock file -> how many nested holders in this process (record locks are per process)


class FolderBusyError(RuntimeError):
    """Another process holds the folder's lock: it is writing there now."""


@contextmanager
def folder_lock(folder: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold the exclusive lock of ``folder`` (which must exist) for the block.

    Args:
        folder: the folder to write.
        what: the kind of writer, for the message ("ecgfast-train", "ecgfast-eval").

    Raises:
        FolderBusyError: another process holds the lock (its pid named when it wrote one).
    """
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform (Windows): one writer is the user's care
        yield
        return
    path = Path(folder) / LOCK_NAME
    key = str(path.resolve())
    if key in _HELD:  # this process holds it already: nested use
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:  # EACCES or EAGAIN: held by another process
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            pid = f" (pid {holder})" if holder.isdigit() else ""
            raise FolderBusyError(f"{folder}: another {what}{pid} is writing this folder; wait for it to finish or "
                                  "stop it") from exc
        _HELD[key] = 1
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            del _HELD[key]
    finally:
        os.close(fd)  # releases the lock


__all__ = ["FolderBusyError", "LOCK_NAME", "folder_lock"]
