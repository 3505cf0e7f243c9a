"""A reader whose reads take time and leave a trace, for tests that kill ecgfast-prepare mid-run."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from ecgfast.data.readers.base import Reader, SourceItem
from ecgfast.data.record import ECGRecord


class SlowReader(Reader):
    """``n`` records of noise; each read sleeps ``delay`` seconds and touches ``<pid_dir>/<pid>`` first, so a
    test knows which processes are reading. ``describe`` ignores the delay: runs with other delays resume."""

    format_name = "slow"

    def __init__(self, n: int, delay: float, pid_dir: str):
        self.n, self.delay, self.pid_dir = n, delay, pid_dir

    def items(self):
        for i in range(self.n):
            yield SourceItem(f"s{i:03d}", str(i), patient_id=f"p{i}")

    def read(self, item: SourceItem) -> ECGRecord:
        Path(self.pid_dir, str(os.getpid())).touch()
        time.sleep(self.delay)
        x = np.random.default_rng(int(item.locator)).standard_normal((8, 5000)).astype(np.float32)
        return ECGRecord(item.record_id, item.patient_id, x, 500.0, f"slow:{item.locator}")
