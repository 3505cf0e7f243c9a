"""Checkpoints: atomic folders, pruning, file modes, weights_only state, finding the newest intact one by scanning,
refusing a pointer outside the run, and never writing NaN/Inf weights or buffers."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from ecgfast.pretrain.checkpoint import (
    CheckpointError,
    find_checkpoint,
    load_state,
    load_weights,
    non_finite_tensors,
    resolve_checkpoint,
    save_checkpoint,
)


def _model(width: int = 3) -> torch.nn.Module:
    torch.manual_seed(width)
    return torch.nn.Sequential(torch.nn.Linear(4, width), torch.nn.BatchNorm1d(width))


def _save(run, step, model=None):
    return save_checkpoint(run, step, model or _model(), {"step": step, "rng": torch.get_rng_state()},
                           config={"s": step}, keep=5)


def test_round_trip_and_pruning(tmp_path):
    model = _model()
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model, {"step": step, "rng": torch.get_rng_state()}, config={"s": step})
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["ckpt-00000002", "ckpt-00000003", "latest"]  # keep=2, no temporary folders left behind
    ckpt = find_checkpoint(tmp_path)
    assert ckpt.name == "ckpt-00000003"
    other = _model()
    with torch.no_grad():
        for p in other.parameters():
            p.zero_()
    load_weights(other, ckpt)
    for (k, a), b in zip(model.state_dict().items(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b), k  # buffers (BatchNorm running stats) included
    assert load_state(ckpt)["step"] == 3
    assert resolve_checkpoint(tmp_path) == ckpt and resolve_checkpoint(ckpt) == ckpt


def test_files_get_the_users_usual_modes(tmp_path):
    """mkdtemp and safetensors create owner-only files; a checkpoint shared with a group must not be."""
    ckpt = save_checkpoint(tmp_path, 7, _model(), {"step": 7}, config={})
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(ckpt).st_mode & 0o777 == 0o777 & ~umask
    for f in [*ckpt.iterdir(), ckpt.parent / "latest"]:
        assert os.stat(f).st_mode & 0o777 == 0o666 & ~umask, f.name


def test_other_model_shape_and_broken_files_are_clear_errors(tmp_path):
    ckpt = save_checkpoint(tmp_path, 1, _model(3), {"step": 1})
    with pytest.raises(CheckpointError, match="another model shape"):
        load_weights(_model(5), ckpt)
    (ckpt / "state.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="cannot load state"):
        load_state(ckpt)
    with pytest.raises(CheckpointError, match="no intact checkpoint"):
        find_checkpoint(tmp_path)


def test_no_checkpoint_yet(tmp_path):
    assert find_checkpoint(tmp_path) is None
    with pytest.raises(CheckpointError, match="no such"):
        resolve_checkpoint(tmp_path / "nothing")
    with pytest.raises(CheckpointError, match="neither"):
        resolve_checkpoint(tmp_path)


def test_a_missing_latest_pointer_does_not_hide_the_checkpoints(tmp_path):
    for step in (2, 4):
        _save(tmp_path, step)
    (tmp_path / "checkpoints" / "latest").unlink()
    assert find_checkpoint(tmp_path).name == "ckpt-00000004"


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one_and_says_so(tmp_path, caplog):
    for step in (2, 4, 6):
        _save(tmp_path, step)
    (tmp_path / "checkpoints" / "ckpt-00000006" / "model.safetensors").write_bytes(b"\0" * 100)
    (tmp_path / "checkpoints" / "ckpt-00000004" / "state.pt").unlink()
    with caplog.at_level(logging.WARNING, logger="ecgfast.checkpoint"):
        assert find_checkpoint(tmp_path).name == "ckpt-00000002"
    text = caplog.text
    assert "ckpt-00000006" in text and "ckpt-00000004" in text and "newest intact" in text


def test_latest_pointing_outside_the_run_is_refused(tmp_path):
    other = tmp_path / "other"
    _save(other, 9)
    run = tmp_path / "run"
    _save(run, 1)
    (run / "checkpoints" / "latest").write_text("../../other/checkpoints/ckpt-00000009\n")
    with pytest.raises(CheckpointError, match="refusing to follow"):
        find_checkpoint(run)


def test_non_finite_weights_or_buffers_are_never_written(tmp_path):
    model = _model()
    with torch.no_grad():
        model[1].running_var[0] = float("inf")
        model[0].weight[0, 0] = float("nan")
    assert non_finite_tensors(model) == ["0.weight", "1.running_var"]
    with pytest.raises(CheckpointError, match=r"2 tensor\(s\) hold NaN/Inf: 0.weight, 1.running_var"):
        save_checkpoint(tmp_path, 3, model, {"step": 3})
    assert not (tmp_path / "checkpoints" / "ckpt-00000003").exists()
    assert find_checkpoint(tmp_path) is None
