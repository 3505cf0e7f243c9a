"""Issue 21, the pretraining monitor: RankMe, alignment and uniformity against their definitions, the cross-validated
probe, and in a run with the default settings: rankme at step 0 and at the end of metrics.csv, one line per label at
the end, validation ECGs only (never a test record), and training unchanged by it (also across a resume)."""

from __future__ import annotations

import csv
import itertools
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ecgfast.data.store import ECGStore
from ecgfast.pretrain import cli, loop
from ecgfast.pretrain.checkpoint import find_checkpoint
from ecgfast.pretrain.config import SYNTHETIC_DEFAULTS, TrainConfig, load_config
from ecgfast.pretrain.corpus import synthetic_store
from ecgfast.pretrain.monitor import alignment, probe_auroc, rankme, uniformity

TINY = {**SYNTHETIC_DEFAULTS, "synthetic_patients": 40, "batch_size": 8, "workers": 0, "progress": False,
        "log_every": 1, "seed": 3}  # the monitor's own settings stay at their defaults


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ECGFAST_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


# ---- the measures against their definitions ----------------------------------------------------------------------


def _with_singular_values(n: int, d: int, values: list[float], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    u = np.linalg.qr(rng.normal(size=(n, len(values))))[0]  # (n, k) orthonormal columns
    v = np.linalg.qr(rng.normal(size=(d, len(values))))[0]  # (d, k)
    return u @ np.diag(values) @ v.T


@pytest.mark.parametrize("k", [1, 2, 5, 17])
def test_rankme_is_k_for_k_equal_singular_values(k):
    x = _with_singular_values(100, 32, [3.0] * k)
    assert rankme(x) == pytest.approx(k, abs=k * 32 * 1e-7 * 17)  # up to the definition's epsilon (1e-7)
    centred = x - x.mean(axis=0)  # rank k - or k and one less: centre first, then build the oracle from it
    s = np.linalg.svd(centred, compute_uv=False)
    p = s / s.sum() + 1e-7
    assert rankme(x, center=True) == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-9)


def test_rankme_is_1_for_a_collapsed_matrix_and_follows_garrido_elsewhere():
    rng = np.random.default_rng(1)
    line = rng.normal(size=(200, 1)) * rng.normal(size=(1, 64))  # every row on one line through 0
    slack = 64 * 1e-7 * 17  # the definition's epsilon: each of the 64 singular values adds at most -eps log eps
    assert rankme(line) == pytest.approx(1.0, abs=slack) and rankme(line, center=True) == pytest.approx(1.0, abs=slack)
    assert rankme(np.ones((10, 8)), center=True) == 0.0  # one point: nothing spreads
    x = rng.normal(size=(50, 12)) * np.linspace(0.1, 3, 12)
    s = np.linalg.svd(x, compute_uv=False)
    p = s / s.sum() + 1e-7  # Garrido et al. (2023), eq. 1
    assert rankme(x) == pytest.approx(np.exp(-np.sum(p * np.log(p))), rel=1e-12)


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed),
                                                     dtype=torch.float64), dim=1)


def test_alignment_and_uniformity_are_wang_and_isolas():
    a, b, x = _unit(13, 7, 0), _unit(13, 7, 1), _unit(11, 5, 2)
    assert alignment(a, b) == pytest.approx(np.mean([float(((a[i] - b[i]) ** 2).sum()) for i in range(13)]))
    assert alignment(a, b, alpha=1) == pytest.approx(np.mean([float((a[i] - b[i]).norm()) for i in range(13)]))
    pairs = [float(torch.exp(-2 * ((x[i] - x[j]) ** 2).sum())) for i, j in itertools.combinations(range(11), 2)]
    assert uniformity(x) == pytest.approx(np.log(np.mean(pairs)), rel=1e-12)
    # closed forms: identical views align perfectly; one point has uniformity 0; two antipodes log(exp(-2 * 4))
    assert alignment(a, a) == 0.0 and uniformity(x[:1].repeat(4, 1)) == pytest.approx(0.0, abs=1e-12)
    assert uniformity(torch.stack([x[0], -x[0]])) == pytest.approx(-8.0)


def test_the_probe_is_cross_validated_by_patient():
    rng = np.random.default_rng(0)
    patients = np.repeat(np.arange(60), 3)
    y = (patients % 3 == 0).astype(int)  # a patient's label
    x = rng.normal(size=(180, 6))
    assert 0.3 < probe_auroc(x, y, patients, seed=0) < 0.7  # nothing to find
    x[:, 0] += 3 * y
    assert probe_auroc(x, y, patients, seed=0) > 0.95
    # one patient's records share noise that identifies the patient: a probe fitted across folds that split the
    # patient would learn the patient, not the label; grouped folds never do, so the pure-noise AUROC stays at chance
    ident = rng.normal(size=(60, 20))[patients]
    assert 0.25 < probe_auroc(ident, y, patients, seed=0) < 0.75


# ---- in a run -------------------------------------------------------------------------------------------------------


def test_a_run_logs_rankme_at_step_0_and_the_end_and_prints_the_probes(tmp_path, capsys):
    assert TrainConfig().monitor_every > 0  # on by default
    args = ["--max-steps", "4", "--no-progress", "--out", str(tmp_path / "run")]  # the embedded default, 4 steps
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    rows = _rows(tmp_path / "run")
    assert rows[0]["step"] == "0" and rows[0]["loss"] == "" and float(rows[0]["rankme"]) > 0
    assert rows[-1]["step"] == "4" and float(rows[-1]["rankme"]) > 0 and rows[-1]["loss"]
    assert all(r["rankme"] == "" for r in rows[1:-1])  # the default interval is longer than this run
    for r in (rows[0], rows[-1]):
        assert float(r["alignment"]) >= 0 and float(r["uniformity"]) <= 0 and float(r["monitor_s"]) > 0
    probes = [k for k in rows[0] if k.startswith("probe_")]
    assert probes and all(0 <= float(rows[-1][k]) <= 1 for k in probes)
    lines = [ln for ln in printed.splitlines() if "monitor:" in ln]
    assert len(lines) == len(probes) + 1 and all("at step 4" in ln and "at step 0)" in ln for ln in lines)
    for k in probes:
        assert any(f"AUROC of {k[len('probe_'):]} " in ln for ln in lines)
    assert cli.main(args[:-1] + [str(tmp_path / "off"), "--monitor-every", "0"]) == 0
    assert "rankme" not in _rows(tmp_path / "off")[0] and "monitor:" not in capsys.readouterr().out


def test_the_monitor_reads_validation_ecgs_only(tmp_path, monkeypatch):
    read: list[np.ndarray] = []
    real = ECGStore.read

    def spy(self, indices):
        read.append(np.asarray(indices).reshape(-1))
        return real(self, indices)

    monkeypatch.setattr(ECGStore, "read", spy)  # read_mv goes through read too
    summary = loop.pretrain(load_config(overrides={**TINY, "out": str(tmp_path / "run"), "max_steps": 3}))
    assert summary["monitor"]
    store = ECGStore(synthetic_store(40, 3))
    seen = np.unique(np.concatenate(read))
    split = store.manifest["split"].to_numpy()
    assert not (split[seen] == "test").any()  # never a test record, by the monitor or anyone
    val = set(store.split_indices("val").tolist())
    assert val and set(seen.tolist()) & val  # the monitor read validation records ...
    assert set(seen.tolist()) <= val | set(store.split_indices("train").tolist())  # ... and training reads train


def test_training_is_the_same_with_and_without_the_monitor_and_across_a_resume(tmp_path):
    runs = {}
    for name, every in (("on", 1), ("off", 0)):  # measured after every step: any side effect would show
        cfg = load_config(overrides={**TINY, "out": str(tmp_path / name), "max_steps": 6, "ckpt_every": 2,
                                     "monitor_every": every})
        runs[name] = loop.pretrain(cfg)
    assert runs["on"]["losses"] == runs["off"]["losses"]
    on, off = (load_file(find_checkpoint(tmp_path / n) / "model.safetensors") for n in ("on", "off"))
    assert all(torch.equal(on[k], off[k]) for k in off)  # BatchNorm statistics included
    # a resume keeps the step-0 row, drops what came after the checkpoint, and reads step 0 back for the report
    run = tmp_path / "on"
    before = _rows(run)
    shutil.rmtree(find_checkpoint(run))  # the end's checkpoint is lost: the run resumes from step 4
    (run / "checkpoints" / "latest").unlink(missing_ok=True)
    cfg = load_config(overrides={**TINY, "out": str(run), "max_steps": 6, "ckpt_every": 2, "monitor_every": 1})
    resumed = loop.pretrain(cfg, resume=True)
    after = _rows(run)
    assert [r["step"] for r in after] == [r["step"] for r in before] == [str(s) for s in range(7)]
    assert after[0] == before[0]  # the step-0 row survives the resume untouched
    np.testing.assert_allclose([float(r["rankme"]) for r in after], [float(r["rankme"]) for r in before], rtol=1e-6)
    assert resumed["losses"] == pytest.approx(runs["on"]["losses"][4:], rel=1e-6)
    rank_line = resumed["monitor"][0]
    assert rank_line.startswith("monitor: effective rank")
    assert f"({float(before[0]['rankme']):.1f} at step 0)" in rank_line


@pytest.mark.parametrize("flags", [["--monitor-every", "-1"], ["--monitor-ecgs", "1"]])
def test_impossible_monitor_settings_exit_2(tmp_path, capsys, flags):
    assert cli.main(flags + ["--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ecgfast-train: error:") and flags[0][2:].replace("-", "_") in err
    assert not (tmp_path / "r").exists()
