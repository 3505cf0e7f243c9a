"""Phase ``gpu_tests``: the test suite's CUDA cases (``-m gpu``: the op tests parametrised over devices,
tests/devices.py) with what is left of the budget, in a subprocess that is stopped at the phase's deadline.

On a GPU the cases run and the phase reports passed / failed / skipped counts (those finished before the deadline
when it stops them), and the failures' ids. Without a GPU it only collects them (``--collect-only``): the count
proves the CUDA cases exist as test cases, which CPU CI skips with a reason.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from .record import Context

ROOT = Path(__file__).resolve().parents[2]
TEST_FILES = ("tests/test_contrastive_loss_op.py", "tests/test_vcg_augment_op.py")


def run(ctx: Context) -> dict:
    files = [str(ROOT / f) for f in TEST_FILES]
    if not all(Path(f).is_file() for f in files):
        return {"status": "skipped", "reason": f"the tests are not beside the check ({ROOT / 'tests'})"}
    base = [sys.executable, "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider", *files]
    if ctx.device.type != "cuda":
        out = subprocess.run([*base, "--collect-only", "-q"], capture_output=True, text=True, cwd=ROOT,
                             timeout=max(10.0, ctx.left()))
        found = re.search(r"(\d+)(?:/\d+)? tests? collected", out.stdout)
        count = int(found.group(1)) if found else 0
        ctx.record("collected", gpu_cases=count, ok=out.returncode == 0 and count > 0)
        return {"status": "skipped", "reason": f"no CUDA device: {count} gpu-marked cases collected, not run"}
    log = Path(ctx.recorder.out) / "gpu_tests.log"
    with open(log, "w", encoding="utf-8") as f:
        proc = subprocess.Popen([*base, "-v", "-rfE"], stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            rc = proc.wait(timeout=max(5.0, ctx.left()))
            stopped = False
        except subprocess.TimeoutExpired:
            proc.kill()
            rc, stopped = proc.wait(), True
    text = log.read_text(encoding="utf-8", errors="replace")
    counts = {k: len(re.findall(rf" {k.upper()}\b", text)) for k in ("passed", "failed", "skipped", "error")}
    failed = sorted(set(re.findall(r"^(\S+::\S+) (?:FAILED|ERROR)", text, re.MULTILINE)))[:20]
    ctx.record("pytest -m gpu", returncode=rc, stopped_at_deadline=stopped, **counts, failed_ids=failed or None,
               ok=counts["failed"] == 0 and counts["error"] == 0 and (stopped or rc == 0))
    return {"status": "partial", "reason": "stopped at the deadline"} if stopped else {}
