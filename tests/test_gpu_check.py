"""bench/gpu_check.py: the smoke run of every phase, a run killed mid-way, the budget's skips, the runner's rules; and
bench/gpu_wheels.py: the wheel folder's checks and the device command the docs give.

The smoke run is the whole check at toy sizes on this machine (Triton's interpreter, the C++ ops, the tiny preset)
in a subprocess, with a budget large enough that no phase is skipped for time: every phase must end with a status,
the correctness phases with every result inside its rule. No timing is asserted (README states the smoke's wall time).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"
sys.path.insert(0, str(ROOT / "bench"))

import gpu_wheels  # noqa: E402  (bench/ is not a package)
from gpu_check import PHASE_TABLE  # noqa: E402
from gpucheck import record  # noqa: E402
from gpucheck.summary import render  # noqa: E402

PHASES = [name for name, *_ in PHASE_TABLE]
MUST_RUN = ("facts", "loss_correctness", "vcg_correctness", "warmup", "loss_timing", "vcg_timing", "train_step")


def read(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "gpu_check.jsonl").read_text().splitlines()]


def run_check(out: Path, *args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


@pytest.mark.slow
def test_smoke_runs_every_phase_and_writes_jsonl_and_summary(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_check(out, "--budget-s", "1500")
    assert result.returncode == 0, result.stderr[-4000:]
    records = read(out)
    assert records[0]["kind"] == "start" and records[-1] == {**records[-1], "kind": "end", "status": "ok"}
    ends = {r["phase"]: r for r in records if r["kind"] == "phase_end"}
    assert list(ends) == PHASES  # every phase, in order, with a status
    for name in MUST_RUN:
        assert ends[name]["status"] == "ok", ends[name]
    assert ends["dali"]["status"] in ("ok", "skipped")  # skipped only where DALI does not import
    assert ends["gpu_tests"]["status"] == ("skipped" if not torch.cuda.is_available() else "ok")
    results = [r for r in records if r["kind"] == "result"]
    assert not [r for r in results if r.get("ok") is False]
    by_phase = {name: [r for r in results if r["phase"] == name] for name in PHASES}
    loss = by_phase["loss_correctness"]
    assert {"training call", "row slice (DDP rank 1 of 4)", "deterministic", "grid", "config fwd", "config bwd",
            "timing variant"} <= {r["case"] for r in loss}
    assert len([r for r in loss if r["case"] == "grid"]) == 2 * 2 * 3  # N {2, 65} x d {16, 128} x 3 precisions
    assert all(r["ok"] for r in loss)
    assert {r["case"] for r in by_phase["vcg_correctness"]} == {"whole", "halves", "shared", "float strided"}
    modes = {r["case"] for r in by_phase["train_step"] if "step_s" in r}
    assert modes == {f"{m} {how}" for m in ("full", "checkpoint", "chunked") for how in ("eager", "compiled")}
    assert all(r["ecgs_per_s"] > 0 and r["predicted_gib"] > 0 for r in by_phase["train_step"] if "step_s" in r)
    assert any(r["case"] == "bf16 GEMM" and r["tflops"] > 0 for r in by_phase["loss_timing"])
    summary = (out / "gpu_check.md").read_text()
    assert "finished **ok**" in summary and all(f"| {name} |" in summary for name in PHASES)
    assert summary == render(records)  # the summary is the records' rendering


def test_a_run_stopped_by_sigterm_keeps_what_it_measured(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--smoke", "--out", str(out), "--only",
                             "facts,loss_correctness"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline:  # until the loss phase has recorded a result
            if (out / "gpu_check.jsonl").is_file() and any(
                    r["kind"] == "result" and r["phase"] == "loss_correctness" for r in read(out)):
                break
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
    records = read(out)
    ends = {r["phase"]: r["status"] for r in records if r["kind"] == "phase_end"}
    assert ends == {"facts": "ok", "loss_correctness": "interrupted"}
    assert records[-1]["kind"] == "end" and records[-1]["status"] == "interrupted"
    assert "| loss_correctness | interrupted |" in (out / "gpu_check.md").read_text()


def test_a_budget_too_small_skips_every_phase_with_its_reason(tmp_path: Path) -> None:
    result = run_check(tmp_path / "out", "--budget-s", "0.5", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    ends = [r for r in read(tmp_path / "out") if r["kind"] == "phase_end"]
    assert [r["phase"] for r in ends] == PHASES
    assert all(r["status"] == "skipped" and "the phase needs at least" in r["reason"] for r in ends)


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    for args in (["--budget-s", "-1"], ["--only", "nope"]):
        result = run_check(tmp_path / "out", *args, timeout=120)
        assert result.returncode == 2 and "error" in result.stderr


def _ctx(tmp_path: Path) -> record.Context:
    return record.Context(device=torch.device("cpu"), smoke=True, sizes=None,
                          recorder=record.Recorder(tmp_path, render))


def test_the_runner_gives_each_phase_its_status_and_carries_unused_time(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """ok, fail (a result outside its rule), partial (stopped at its deadline), error (recorded with its message),
    timeout (SIGALRM past the grace), skipped (too little left); time a phase leaves unused goes to the next."""
    monkeypatch.setattr(record, "GRACE_S", 0.2)

    def failing(ctx):
        ctx.record("a", ok=False)
        return {}

    def partial(ctx):
        while not ctx.out_of_time():
            time.sleep(0.01)
        return {"status": "partial", "reason": "deadline"}

    def hangs(ctx):
        time.sleep(30)

    phases = [record.Phase("ok", "", 0.1, 0, lambda ctx: {"n": 1}),
              record.Phase("fail", "", 0.1, 0, failing),
              record.Phase("partial", "", 0.05, 0, partial),
              record.Phase("error", "", 0.1, 0, lambda ctx: 1 / 0),
              record.Phase("timeout", "", 0.05, 0, hangs),
              record.Phase("skipped", "", 0.1, 60, lambda ctx: {})]
    ctx = _ctx(tmp_path)
    assert record.run_phases(phases, ctx, budget_s=10, log=lambda _: None) == "fail"
    ends = {r["phase"]: r for r in ctx.recorder.records if r["kind"] == "phase_end"}
    assert {k: v["status"] for k, v in ends.items()} == {p.name: p.name for p in phases}
    assert "ZeroDivisionError" in ends["error"]["reason"] and "traceback" in ends["error"]
    starts = {r["phase"]: r["allowed_s"] for r in ctx.recorder.records if r["kind"] == "phase_start"}
    assert starts["partial"] > 0.05 * 10 + 0.5  # the ok and fail phases' unused seconds were carried over
    assert ends["timeout"]["seconds"] < 5
    assert (tmp_path / "gpu_check.md").read_text() == render(ctx.recorder.records)
    ctx.recorder.close()


# ---------------------------------------------------------------------------------------------------------------
# bench/gpu_wheels.py: the wheels for the GPU machine, and the command documented for it

def _wheel(folder: Path, filename: str, requires: tuple[str, ...] = (), size: int = 0) -> None:
    import zipfile

    name, version = filename.split("-")[:2]
    with zipfile.ZipFile(folder / filename, "w") as z:
        z.writestr(f"{name}-{version}.dist-info/METADATA", "Metadata-Version: 2.1\nName: {name}\n" + "".join(
            f"Requires-Dist: {r}\n" for r in requires))
        if size:
            z.writestr("padding.bin", os.urandom(size))


def test_the_wheel_folder_check_names_every_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu_wheels, "WHEELS", {"wfdb": "4.3.1", "tomli-w": "1.2.0"})
    _wheel(tmp_path, "wfdb-4.3.1-py3-none-any.whl", ("numpy>=1", "soundfile>=0.10", "pywin32; sys_platform == 'win32'",
                                                     "sphinx; extra == 'docs'"))
    _wheel(tmp_path, "tomli_w-1.2.0-py3-none-any.whl")
    assert gpu_wheels.check(tmp_path) == [  # numpy is on the machine; win32 and extras do not apply there
        f"wfdb-4.3.1-py3-none-any.whl needs soundfile>=0.10, which neither the device nor {tmp_path.name}/ has"]
    _wheel(tmp_path, "soundfile-0.14.0-py2.py3-none-manylinux_2_28_x86_64.whl")
    assert gpu_wheels.check(tmp_path) == []
    _wheel(tmp_path, "soundfile-0.13.1-py2.py3-none-manylinux_2_28_x86_64.whl")
    _wheel(tmp_path, "cffi-2.1.1-cp311-cp311-manylinux2014_x86_64.whl", size=2**20)
    monkeypatch.setattr(gpu_wheels, "LIMIT_MIB", 1)
    (tmp_path / "tomli_w-1.2.0-py3-none-any.whl").unlink()
    problems = "\n".join(gpu_wheels.check(tmp_path))
    for words in ("two versions of soundfile", "cp311-cp311-manylinux2014_x86_64.whl is not for CPython 3.12",
                  "tomli-w==1.2.0 is missing", "MiB of wheels, more than 1 MiB"):
        assert words in problems, problems


def test_the_readme_and_docs_give_the_command_gpu_wheels_prints() -> None:
    for doc in ("README.md", "docs/GPU_CHECK.md"):
        assert gpu_wheels.DEVICE_COMMAND in (ROOT / doc).read_text(), doc
    assert len(gpu_wheels.DEVICE_COMMAND) < 2000  # the device tool's limit for one command
