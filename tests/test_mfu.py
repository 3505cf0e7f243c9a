"""MFU of pretraining: the counted encoder FLOPs against the architecture's own count and METHOD.md's 85 GFLOP per
view, the datasheet lookup, and the loop's metrics.csv column at the default logging interval."""

from __future__ import annotations

import csv

import pytest
import torch

from ecgfast.models import temporalnet_config, temporalnet_macs
from ecgfast.pretrain import cli, loop
from ecgfast.pretrain.config import SYNTHETIC_DEFAULTS, ConfigError, TrainConfig, load_config, to_dict
from ecgfast.pretrain.mfu import GPU_PEAKS, device_peak_tflops, gpu_peak, mfu, train_flops_per_view
from ecgfast.pretrain.resume import check_resume


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ECGFAST_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.mark.parametrize("model,segment", [("tiny", 500), ("tiny", 251), ("small", 500), ("paper", 2500)])
def test_counted_flops_are_three_forwards_of_the_architecture(model, segment):
    """Forward + backward = 3 x the forward's 2 x MACs (8 leads, both streams); the heads and BatchNorm are small."""
    counted = train_flops_per_view(model, segment)
    forward = 2 * 8 * temporalnet_macs(temporalnet_config(model), segment)["total"]
    assert 2.95 < counted / forward < 3.05


def test_paper_model_counts_methods_85_gflop_per_view():
    assert train_flops_per_view("paper", 2500) / 1e9 == pytest.approx(85, rel=0.02)


def test_flops_grow_linearly_with_the_segment():
    assert train_flops_per_view("tiny", 1000) / train_flops_per_view("tiny", 500) == pytest.approx(2, rel=0.01)


@pytest.mark.parametrize("name,bf16", [("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0),
                                       ("NVIDIA H200", 989.0), ("NVIDIA A100-SXM4-80GB", 312.0),
                                       ("NVIDIA L40S", 362.0), ("NVIDIA L4", 121.0)])
def test_datasheet_lookup_takes_the_longest_matching_name(name, bf16):
    assert gpu_peak(name).bf16_tflops == bf16


def test_unknown_devices_have_no_peak_and_an_override_wins():
    assert gpu_peak("Some Future GPU") is None
    assert device_peak_tflops(torch.device("cpu"), bf16=False) is None
    assert device_peak_tflops(torch.device("cpu"), bf16=True, override=2.5) == (2.5, "--peak-tflops")
    assert all(p.fp32_tflops < p.bf16_tflops for p in GPU_PEAKS.values())


def test_mfu_is_achieved_over_peak_flops():
    # 1000 ECGs/s x 2 views x 85 GFLOP = 170 TFLOP/s over 2 devices of 989: 8.6 %
    assert mfu(1000.0, 2, 85 * 10**9, 2, 989.0) == pytest.approx(170 / 1978)


def test_peak_tflops_is_checked_and_safe_to_change_on_resume():
    with pytest.raises(ConfigError, match="peak_tflops"):
        TrainConfig(peak_tflops=0.0)
    saved, now = to_dict(TrainConfig()), to_dict(TrainConfig(peak_tflops=400.0))
    assert check_resume(saved, now, "bf16", "bf16", None, "") == {"peak_tflops": (None, 400.0)}
    assert cli.build_parser().parse_args(["--peak-tflops", "312"]).peak_tflops == 312.0


def _rows(run) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return [r for r in csv.DictReader(f) if r["loss"]]


def test_loop_logs_mfu_where_throughput_is_measured_at_the_default_interval(tmp_path):
    """With a peak (here --peak-tflops on a CPU), every row that measures ECGs/s (the first step, then every
    log_every steps of the embedded default, and the last) carries MFU = ECGs/s x 2 views x FLOPs per view / peak;
    no other row does. Without a peak the column is there and empty."""
    settings = {**SYNTHETIC_DEFAULTS, "synthetic_patients": 40, "batch_size": 8, "workers": 0, "progress": False,
                "seed": 3, "max_steps": 12, "monitor_every": 0}
    config = load_config(overrides={**settings, "out": str(tmp_path / "peak"), "peak_tflops": 0.5})
    summary = loop.pretrain(config)
    rows = _rows(tmp_path / "peak")
    measured = [r for r in rows if r["ecgs_per_s"]]
    assert [int(r["step"]) for r in measured] == [1, 5, 10, 12]  # the synthetic default's log_every: 5
    per_view = train_flops_per_view(config.model, config.segment or 500)
    for r in measured:
        assert float(r["mfu"]) == pytest.approx(float(r["ecgs_per_s"]) * 2 * per_view / 0.5e12, rel=1e-6)
    assert all(r["mfu"] == "" for r in rows if not r["ecgs_per_s"])
    assert summary["mfu"] == pytest.approx(float(measured[-1]["mfu"]), rel=1e-6)

    loop.pretrain(load_config(overrides={**settings, "out": str(tmp_path / "none"), "max_steps": 2}))
    rows = _rows(tmp_path / "none")
    assert rows and all(r["mfu"] == "" for r in rows) and rows[0]["ecgs_per_s"]
