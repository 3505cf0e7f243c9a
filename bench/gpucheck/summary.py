"""The Markdown summary of the GPU check's records (``gpu_check.md``): rendered from the JSON lines alone.

Layout: the run's header (command, device, versions, budget), a table of phases (status, seconds used of those
allowed, the phase's headline), then one section per phase with a table of its result lines (one column per field,
in the order the fields first appear). A phase still running when the file was last written shows as ``running``:
a run killed there left it so.
"""

from __future__ import annotations

import math

SKIP_FIELDS = {"kind", "time", "phase"}
END_SKIP = {"kind", "time", "phase", "status", "seconds", "traceback"}


def fmt(value: object) -> str:
    """A cell: floats to 4 significant digits (thousands separated), None as a dash, lists joined."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
            return f"{value:.3e}"
        return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k} {fmt(v)}" for k, v in value.items())
    return str(value).replace("|", "/").replace("\n", " ")


def _table(rows: list[dict], skip: set[str]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in skip and k not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return lines


def render(records: list[dict]) -> str:
    """The whole summary for the records written so far."""
    start = next((r for r in records if r["kind"] == "start"), {})
    end = next((r for r in records if r["kind"] == "end"), None)
    lines = ["# GPU check" + (" (smoke: toy sizes)" if start.get("smoke") else ""), ""]
    for key, label in (("command", "Command"), ("device", "Device"), ("versions", "Versions")):
        if key in start:
            value = f"`{start[key]}`" if key == "command" else fmt(start[key])
            lines.append(f"- {label}: {value}")
    if "budget_s" in start:
        lines.append(f"- Budget: {start['budget_s']:.0f} s; " + (
            f"finished **{end['status']}** after {end['seconds']:.0f} s" if end else
            "**no end record: the run is going on, or was killed** (everything below was measured before)"))
    lines += ["", "| phase | status | seconds (allowed) | headline |", "|---|---|---|---|"]
    phases: dict[str, dict] = {}
    for r in records:
        if r["kind"] == "phase_start":
            phases[r["phase"]] = {"title": r["title"], "allowed": r["allowed_s"], "status": "running", "end": {}}
        elif r["kind"] == "phase_end":
            p = phases.setdefault(r["phase"], {"title": "", "allowed": 0.0, "end": {}})
            p.update(status=r["status"], seconds=r["seconds"], end=r)
    for name, p in phases.items():
        used = f"{p['seconds']:.1f}" if "seconds" in p else "-"
        headline = "; ".join(f"{k} {fmt(v)}" for k, v in p["end"].items() if k not in END_SKIP)
        lines.append(f"| {name} | {p['status']} | {used} ({p['allowed']:.0f}) | {headline} |")
    for name, p in phases.items():
        results = [r for r in records if r["kind"] == "result" and r["phase"] == name]
        if not results and "traceback" not in p["end"]:
            continue
        lines += ["", f"## {name}: {p['title']}", ""]
        groups: dict[tuple, list[dict]] = {}  # results of the same fields share a table
        for r in results:
            groups.setdefault(tuple(k for k in r if k not in SKIP_FIELDS), []).append(r)
        for rows in groups.values():
            lines += [*_table(rows, SKIP_FIELDS), ""]
        if "traceback" in p["end"]:
            lines += ["```text", p["end"]["traceback"].rstrip(), "```", ""]
    return "\n".join(lines).rstrip() + "\n"
