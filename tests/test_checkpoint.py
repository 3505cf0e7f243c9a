"""Checkpoints: atomic folders, the ``latest`` pointer, pruning, file modes, weights_only state, clear errors."""

from __future__ import annotations

import os

import pytest
import torch

from ecgfast.checkpoint import CheckpointError, latest_checkpoint, load_state, load_weights, save_checkpoint


def _model(width: int = 3) -> torch.nn.Module:
    torch.manual_seed(width)
    return torch.nn.Sequential(torch.nn.Linear(4, width), torch.nn.BatchNorm1d(width))


def test_round_trip_latest_and_pruning(tmp_path):
    model = _model()
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model, {"step": step, "rng": torch.get_rng_state()}, config={"s": step})
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["ckpt-00000002", "ckpt-00000003", "latest"]  # keep=2, no temporary folders left behind
    ckpt = latest_checkpoint(tmp_path)
    assert ckpt.name == "ckpt-00000003"
    other = _model()
    with torch.no_grad():
        for p in other.parameters():
            p.zero_()
    load_weights(other, ckpt)
    for (k, a), b in zip(model.state_dict().items(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b), k  # buffers (BatchNorm running stats) included
    assert load_state(ckpt)["step"] == 3


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
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        latest_checkpoint(tmp_path)


def test_no_checkpoint_yet(tmp_path):
    assert latest_checkpoint(tmp_path) is None
