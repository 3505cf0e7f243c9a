"""How fast the command lines answer ``--help`` (a fresh interpreter each time): they import torch only after
reading their arguments. Measured, not asserted: ``pytest bench/test_bench_cli.py --benchmark-only``."""

from __future__ import annotations

import subprocess
import sys

import pytest

CLIS = {"ecgfast-train": "ecgfast.pretrain", "ecgfast-eval": "ecgfast.eval", "ecgfast-prepare": "ecgfast.prepare"}


@pytest.mark.parametrize("cli", sorted(CLIS))
@pytest.mark.benchmark(group="cli-help")
def test_help(benchmark, cli):
    def run() -> None:
        subprocess.run([sys.executable, "-m", CLIS[cli], "--help"], check=True, capture_output=True)

    benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    benchmark.extra_info.update(seconds=benchmark.stats.stats.mean)


@pytest.mark.benchmark(group="cli-help")
def test_import_torch_for_comparison(benchmark):
    """What every --help used to pay: a fresh interpreter importing torch."""
    benchmark.pedantic(lambda: subprocess.run([sys.executable, "-c", "import torch"], check=True), rounds=5,
                       warmup_rounds=1)
    benchmark.extra_info.update(seconds=benchmark.stats.stats.mean)
