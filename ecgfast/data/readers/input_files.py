"""Open only what a source holds: regular files inside its input folder.

A broken or hostile corpus can name files that hang a reader (a FIFO or a device where a signal file should
be), that lie outside the input (a ``.mat`` symlinked elsewhere, a header naming ``../../x``, an absolute path
or ``..`` in an index CSV), or that claim more samples than any ECG has (a sparse file of 2 GB). Readers check
every file with :func:`check_input_file` before opening it, and index paths with :func:`index_path`.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath, PureWindowsPath

from ..record import RecordError, RejectReason


def input_root(source: str | os.PathLike) -> Path:
    """The folder a source's files must stay inside: the source folder itself, or the folder holding a source
    file or record (``data/r1`` for the record ``data/r1.hea``), with symlinks resolved."""
    p = Path(source)
    return p.resolve() if p.is_dir() else p.resolve().parent


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def check_input_file(path: str | os.PathLike, root: Path | None, record_id: str, what: str = "file") -> Path:
    """The real path of ``path``, once it is known to be a regular file inside ``root``.

    Args:
        path: the file as the source names it.
        root: the resolved input folder (:func:`input_root`); None accepts any location.
        record_id: for the message.
        what: what the file is, for the message ("header", "signal file").

    Raises:
        RecordError(UNREADABLE): the file does not exist (or is a dangling or looping symlink).
        RecordError(UNSAFE_FILE): it resolves outside ``root``, or is a FIFO, device, socket or folder (opening
            a FIFO would block the reader for ever).
    """
    p = Path(path)
    try:
        real = p.resolve(strict=True)
        mode = os.stat(real).st_mode
    except (OSError, RuntimeError) as exc:
        raise RecordError(RejectReason.UNREADABLE, f"record {record_id}: {what} {p} not found ({exc})") from exc
    if root is not None and not real.is_relative_to(root):
        raise RecordError(RejectReason.UNSAFE_FILE,
                          f"record {record_id}: {what} {p} resolves to {real}, outside the input folder {root} "
                          "(a symlink or a path leaving the input); not read")
    if not stat.S_ISREG(mode):
        raise RecordError(RejectReason.UNSAFE_FILE,
                          f"record {record_id}: {what} {p} is {_kind(mode)}, not a regular file; not read")
    return real


def index_path(root: str | os.PathLike, value: str) -> str:
    """``root/value`` for a path read from an index file (``record_list.csv``, ``ptbxl_database.csv``).

    Raises:
        ValueError: ``value`` is absolute (in POSIX or Windows form) or has a ``..`` component: an index names
            files inside its own folder.
    """
    text = value.strip()
    if PurePosixPath(text).is_absolute() or PureWindowsPath(text).is_absolute() or PureWindowsPath(text).drive:
        raise ValueError(f"path {text!r} is absolute; the index must name files relative to {root}")
    if ".." in PurePosixPath(text.replace("\\", "/")).parts:
        raise ValueError(f"path {text!r} climbs out with '..'; the index must name files inside {root}")
    return os.path.join(str(root), text)
