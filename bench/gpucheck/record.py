"""What the GPU check writes as it goes, and the budgeted run of its phases.

Two files in ``--out``, both complete after every record, so that a run killed at any moment returns what it had
measured: ``gpu_check.jsonl`` (one JSON object a line, appended, flushed and fsync'ed: a ``start`` line, then per
phase ``phase_start``, its ``result`` lines and ``phase_end``, and a final ``end``) and ``gpu_check.md`` (the
Markdown summary of the same records, rewritten through a temporary file and a rename).

Budget: each phase gets its share of ``--budget-s`` plus what earlier phases left unused, capped by what remains; a
phase whose minimum exceeds what remains is recorded ``skipped`` with the reason. A phase checks
:meth:`Context.out_of_time` between its cases and stops early (``partial``); one that overruns its allowance by
:data:`GRACE_S` is stopped by SIGALRM (``timeout``). SIGTERM (the shell's ``timeout``) ends the run with the phase
in flight recorded ``interrupted``. Statuses: ok, fail (a result outside its rule), partial, timeout, error (an
exception, its message recorded), skipped, interrupted.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

GRACE_S = 15.0  # past its allowance a phase is stopped by SIGALRM (kernels are not interruptible sooner)
JSONL, SUMMARY = "gpu_check.jsonl", "gpu_check.md"


class PhaseTimeout(BaseException):
    """Raised by SIGALRM in a phase that overran its allowance (a BaseException: phases catch Exception)."""


class Interrupted(BaseException):
    """Raised by SIGTERM: the run is being stopped from outside."""


@dataclass(frozen=True)
class Phase:
    """One phase: ``run(ctx)`` records its results and returns a summary dict (``status`` optional)."""

    name: str
    title: str  # one line for the summary
    share: float  # of the whole budget
    min_s: float  # below this much remaining budget the phase is skipped
    run: Callable[[Context], dict]


@dataclass
class Context:
    """What a phase gets: the device, sizes, shared state of earlier phases, its deadline and a recorder."""

    device: object  # torch.device
    smoke: bool
    sizes: object  # gpucheck.sizes.Sizes
    recorder: Recorder
    state: dict = field(default_factory=dict)  # phases leave measurements for later ones (the GEMM rate)
    phase: str = ""
    deadline: float = math.inf  # time.monotonic() by which the phase should be done

    def left(self) -> float:
        """Seconds left in this phase's allowance."""
        return self.deadline - time.monotonic()

    def out_of_time(self, need_s: float = 0.0) -> bool:
        """Whether less than ``need_s`` seconds are left (a phase asks before each case and stops if so)."""
        return self.left() < need_s

    def results(self) -> list[dict]:
        """The result lines this phase has recorded so far."""
        return [r for r in self.recorder.records if r["kind"] == "result" and r["phase"] == self.phase]

    def record(self, case: str, **fields) -> dict:
        """One result line of this phase; ``ok=False`` marks a result outside its rule (the phase fails)."""
        return self.recorder.write("result", phase=self.phase, case=case, **fields)


class Recorder:
    """Appends JSON lines to ``out/gpu_check.jsonl`` and keeps ``out/gpu_check.md`` in step with them."""

    def __init__(self, out: Path, render: Callable[[list[dict]], str]):
        self.out, self.render, self.records = out, render, []
        out.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(out / JSONL, "a", encoding="utf-8")  # noqa: SIM115 (open for the whole run)

    def write(self, kind: str, **fields) -> dict:
        rec = {"kind": kind, "time": round(time.time(), 3), **fields}
        self.records.append(rec)
        self._jsonl.write(json.dumps(rec, default=_jsonable) + "\n")
        self._jsonl.flush()
        os.fsync(self._jsonl.fileno())
        tmp = self.out / (SUMMARY + ".tmp")
        tmp.write_text(self.render(self.records), encoding="utf-8")
        os.replace(tmp, self.out / SUMMARY)
        return rec

    def close(self) -> None:
        self._jsonl.close()


def _jsonable(value: object) -> object:
    """JSON for what json cannot write (tensors' numbers, dtypes, paths): a float or its str."""
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(value)


def _on_alarm(signum, frame) -> None:
    raise PhaseTimeout


def _on_term(signum, frame) -> None:
    raise Interrupted


def phase_status(summary: dict, results: list[dict]) -> str:
    """A phase's status from its summary and results: fail if any result has ok False, else the summary's status
    (partial when it stopped early), else ok."""
    if any(r.get("ok") is False for r in results):
        return "fail"
    return summary.get("status", "ok")


def run_phases(phases: list[Phase], ctx: Context, budget_s: float, log: Callable[[str], None] = print) -> str:
    """Run ``phases`` in order inside ``budget_s`` seconds (module docstring); returns the overall status: ok, or
    the worst of fail / error / timeout / interrupted seen."""
    start = time.monotonic()
    bank = 0.0  # time earlier phases left unused
    worst = "ok"
    old_term = signal.signal(signal.SIGTERM, _on_term)
    old_alarm = signal.signal(signal.SIGALRM, _on_alarm)
    try:
        for phase in phases:
            remaining = budget_s - (time.monotonic() - start)
            allowed = min(remaining, phase.share * budget_s + bank)
            if remaining < phase.min_s:
                reason = f"{remaining:.0f} s of the budget left, the phase needs at least {phase.min_s:.0f} s"
                ctx.recorder.write("phase_end", phase=phase.name, status="skipped", seconds=0.0, reason=reason)
                log(f"[{phase.name}] skipped: {reason}")
                continue
            allowed = max(allowed, phase.min_s)
            ctx.phase, ctx.deadline = phase.name, time.monotonic() + allowed
            ctx.recorder.write("phase_start", phase=phase.name, title=phase.title, allowed_s=round(allowed, 1))
            log(f"[{phase.name}] {phase.title} (up to {allowed:.0f} s)")
            t0 = time.monotonic()
            n_before = len(ctx.recorder.records)
            summary: dict = {}
            signal.setitimer(signal.ITIMER_REAL, allowed + GRACE_S)
            try:
                summary = phase.run(ctx) or {}
                status = phase_status(summary, [r for r in ctx.recorder.records[n_before:] if r["kind"] == "result"])
            except PhaseTimeout:
                status, summary = "timeout", {"reason": f"stopped {GRACE_S:.0f} s past its {allowed:.0f} s"}
            except Interrupted:
                ctx.recorder.write("phase_end", phase=phase.name, status="interrupted",
                                   seconds=round(time.monotonic() - t0, 2), reason="SIGTERM")
                raise
            except Exception as exc:  # a phase's error is its result; the next phase still runs
                status = "error"
                summary = {"reason": f"{type(exc).__name__}: {exc}"[:2000],
                           "traceback": traceback.format_exc()[-4000:]}
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            used = time.monotonic() - t0
            bank = max(0.0, allowed - used)
            summary.pop("status", None)
            ctx.recorder.write("phase_end", phase=phase.name, status=status, seconds=round(used, 2), **summary)
            log(f"[{phase.name}] {status} in {used:.1f} s" + (f": {summary['reason']}" if "reason" in summary else ""))
            if status in ("fail", "error", "timeout") and worst == "ok":
                worst = status
    except Interrupted:
        worst = "interrupted"
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGALRM, old_alarm)
    ctx.recorder.write("end", status=worst, seconds=round(time.monotonic() - start, 2))
    return worst


def log_line(message: str) -> None:
    """Progress on stderr (stdout stays free for a caller's pipe)."""
    print(message, file=sys.stderr, flush=True)
