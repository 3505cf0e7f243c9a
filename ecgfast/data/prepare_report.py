"""What ecgfast-prepare tells: counts for people and machines, and one row per rejected record.

``prepare_report.json`` (counts), ``prepare_report.md`` (the same, for people) and ``rejects.csv`` (record id, the
source it came from, its locator, reason, message) are written beside the store, each atomically. The console and
the report show counts only; paths in ``rejects.csv`` are relative to their source, with the parts that carry
patient ids redacted by the reader (:meth:`~ecgfast.data.readers.base.Reader.redact`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .store import atomic_path, write_json_atomic


@dataclass
class PrepareReport:
    """found == accepted + rejected; ``by_reason`` counts rejects; ``rejects`` lists one dict per reject
    (record_id, input, source, reason, message; paths relative to their source, patient ids redacted)."""

    found: int = 0
    accepted: int = 0
    rejected: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    rejects: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    resumed_shards: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    units: str = "mV"

    def summary(self) -> str:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.by_reason.items())) or "none"
        splits = ", ".join(f"{k} {self.splits[k]}" for k in ("train", "val", "test") if k in self.splits)
        return (f"found {self.found} records: {self.accepted} accepted, {self.rejected} rejected ({reasons}); "
                f"splits: {splits or 'none'}; units {self.units}; {self.seconds:.1f} s")


def write_report(out: Path, report: PrepareReport, manifest: pd.DataFrame, keys: np.ndarray) -> None:
    """prepare_report.json (counts), prepare_report.md (for people), rejects.csv (one row per reject)."""
    counts = {k: v for k, v in report.__dict__.items() if k != "rejects"}
    counts["patients"] = int(pd.Series(keys).nunique()) if len(manifest) else 0
    write_json_atomic(out / "prepare_report.json", counts)
    lines = ["# ecgfast-prepare report", "", f"- found: {report.found}", f"- accepted: {report.accepted}",
             f"- rejected: {report.rejected}", f"- patients: {counts['patients']}",
             f"- splits: {counts['splits']}", f"- units: {report.units}", "", "| reason | records |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(report.by_reason.items())]
    lines += ["", "Each rejected record, with what was wrong: rejects.csv"]
    with atomic_path(out / "prepare_report.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    with atomic_path(out / "rejects.csv") as tmp:
        pd.DataFrame(report.rejects, columns=["record_id", "input", "source", "reason", "message"]).to_csv(
            tmp, index=False)
