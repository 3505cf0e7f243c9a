"""Worker processes that die with the process that started them.

``ProcessPoolExecutor`` workers outlive a parent killed with SIGKILL: nothing runs in the parent to stop them,
and they go on reading and writing into the store folder. A worker calls :func:`die_with_parent` first. On Linux
the kernel then sends it SIGKILL when its parent dies (``prctl(PR_SET_PDEATHSIG)``, through ctypes); on every
platform a daemon thread polls ``os.getppid()`` and ends the worker once its parent has changed (it was
re-parented to init or a subreaper), which also covers systems without prctl.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
#: how often the portable fallback looks at the parent pid
POLL_SECONDS = 1.0


def set_parent_death_signal() -> bool:
    """Ask Linux to SIGKILL this process when its parent dies; False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent_pid: int, poll_seconds: float) -> None:
    while True:
        time.sleep(poll_seconds)
        if os.getppid() != parent_pid:
            os._exit(1)  # no cleanup: the parent that owned this work is gone


def die_with_parent(parent_pid: int, poll_seconds: float = POLL_SECONDS, use_prctl: bool = True) -> None:
    """Make this process end when ``parent_pid`` (its parent) dies.

    Args:
        parent_pid: the parent's pid, taken in the parent (``os.getpid()``) and passed down, so that a parent
            that died before this call is noticed too.
        poll_seconds: period of the portable fallback.
        use_prctl: also use Linux's parent-death signal (tests turn it off to exercise the fallback alone).
    """
    if use_prctl:
        set_parent_death_signal()
    if os.getppid() != parent_pid:  # the parent died before the death signal was armed
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid, poll_seconds), daemon=True,
                     name="ecgfast-parent-watch").start()
