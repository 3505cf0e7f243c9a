"""Run every benchmark in bench/ in one call and record the results under bench/results/.

    python bench/run_all.py                 # all benchmarks, this machine's device
    python bench/run_all.py bench/test_bench_data.py   # a subset (files, or -k EXPR)

Writes ``bench/results/<device>-<date>.json`` (device name, date, versions, every benchmark's mean time and
extra info) and a Markdown table beside it. On a GPU machine it first runs the test suite there (real Triton and
CUDA kernels, the GPU-only tests) and records the outcome, then the benchmarks, the CUDA-only ones included (they
skip elsewhere): 10 to 25 minutes, with no budget. For a short, borrowed GPU window, ``bench/gpu_check.py`` measures
the central claims inside a time budget instead.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU {line.split(':', 1)[1].strip()} x{len(__import__('os').sched_getaffinity(0))}"
    except OSError:
        pass
    return f"CPU {platform.processor() or platform.machine()}"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "triton", "numpy", "scipy", "wfdb", "nvidia-dali-cuda130", "ecgfast"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run_tests() -> dict:
    """The whole test suite on this device (on a GPU: real Triton/CUDA kernels, GPU-only tests): rc and summary."""
    res = subprocess.run([sys.executable, "-m", "pytest", str(HERE.parent / "tests"), "-q", "-p", "no:cacheprovider",
                          "-rfs"], capture_output=True, text=True)
    print(res.stdout[-4000:], res.stderr[-2000:], sep="\n")
    lines = [ln for ln in res.stdout.strip().splitlines() if ln.strip()]
    return {"rc": res.returncode, "summary": lines[-1].strip("= ") if lines else "no output",
            "failures_and_skips": [ln for ln in lines if ln.startswith(("FAILED", "SKIPPED", "ERROR"))][:50]}


NOTE_KEYS = {"gb_per_s": "{:.2f} GB/s", "peak_extra_mib": "peak +{:,.1f} MiB", "wait_share": "data wait {:.1%}",
             "gflop": "{:,.2f} GFLOP", "mbytes": "{:,.2f} MB", "matmul_tflops": "{:.3f} TFLOP/s",
             "pct_of_bf16_peak": "{:.1f} % of bf16 peak", "pct_of_bandwidth": "{:.1f} % of bandwidth",
             "peak_mib": "peak {:,.0f} MiB", "predicted_mib": "predicted {:,.0f} MiB",
             "prediction_error": "prediction {:+.1%}", "gflop_per_step": "{:,.0f} GFLOP"}


def markdown(result: dict) -> list[str]:
    """The Markdown table of a result file: one row per benchmark, its rate and the notes it recorded."""
    tests = result.get("tests")
    lines = [f"# Benchmarks on {result['device']}, {result['date']}", "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()), "",
             *([f"Test suite on this device: {tests['summary']} (exit code {tests['rc']})", ""] if tests else []),
             "| group | benchmark | mean | rate | notes |", "|---|---|---|---|---|"]
    for r in sorted(result["benchmarks"], key=lambda r: (r["group"] or "", r["name"])):
        rate = next((f"{r[k]:,.0f} {k.replace('_per_s', '')}/s" for k in r
                     if k.endswith("_per_s") and k != "gb_per_s"), "")  # GB/s is a note, not the rate
        notes = ", ".join(fmt.format(r[k]) for k, fmt in NOTE_KEYS.items() if isinstance(r.get(k), (int, float)))
        lines.append(f"| {r['group']} | {r['name']} | {r['mean_s'] * 1e3:,.1f} ms | {rate} | {notes} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="*", default=[str(HERE)], help="benchmark files or folders (default: bench/)")
    p.add_argument("-k", default=None, help="pytest -k expression to select benchmarks")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--tests", action=argparse.BooleanOptionalAction, default=None,
                   help="run the test suite first and record its outcome (default: on with CUDA, where the kernels "
                        "compile for real and the GPU-only tests run)")
    args = p.parse_args(argv)
    tests = run_tests() if (args.tests if args.tests is not None else _has_cuda()) else None
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "bench.json"
        cmd = [sys.executable, "-m", "pytest", *args.paths, "--benchmark-only", f"--benchmark-json={raw}", "-q",
               "-p", "no:cacheprovider"] + (["-k", args.k] if args.k else [])
        rc = subprocess.call(cmd)
        if not raw.exists() or not raw.read_text().strip():
            print("no benchmark results were written", file=sys.stderr)
            return rc or 1
        data = json.loads(raw.read_text())
    device = device_name()
    date = datetime.date.today().isoformat()
    rows = [{"name": b["name"], "group": b["group"], "mean_s": b["stats"]["mean"], "stddev_s": b["stats"]["stddev"],
             "rounds": b["stats"]["rounds"], **b.get("extra_info", {})} for b in data["benchmarks"]]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9]+", "-", device).strip("-").lower() + f"-{date}"
    if (out / f"{stem}.json").exists():  # a partial run updates the day's file instead of replacing it
        earlier = json.loads((out / f"{stem}.json").read_text())["benchmarks"]
        rows = [r for r in earlier if r["name"] not in {n["name"] for n in rows}] + rows
    result = {"device": device, "date": date, "versions": versions(), "benchmarks": rows}
    if tests is not None:
        result["tests"] = tests
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = markdown(result)
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rc or (tests["rc"] if tests else 0)


if __name__ == "__main__":
    sys.exit(main())
