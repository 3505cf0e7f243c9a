"""Installed without the C++ extension (plain ``pip install -e .``, or ``ECGFAST_SKIP_EXT=1``) on a CPU machine:
every op falls back to plain torch and the whole step still runs, with the same numbers as the reference."""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = r"""
import sys
sys.modules["ecgfast._C"] = None  # as if setup.py had not built it: importing it raises ImportError
import torch
from ecgfast.augment import ECGAugment
from ecgfast.loss import MultiPositiveContrastiveLoss
from ecgfast.ops.contrastive_loss import resolve_backend
from ecgfast.ops.vcg_augment import available_backends, default_backend
from ecgfast.reference.contrastive_loss import multi_positive_contrastive_loss_reference

assert available_backends("cpu") == ("torch",), available_backends("cpu")
assert default_backend("cpu") == "torch"
z = torch.randn(12, 8, requires_grad=True)
ids = torch.arange(12) // 3
print("loss backend", resolve_backend("cpu"))
loss = MultiPositiveContrastiveLoss()(z, ids)
torch.testing.assert_close(loss, multi_positive_contrastive_loss_reference(z, ids), rtol=1e-6, atol=1e-6)
loss.backward()
g = torch.Generator().manual_seed(0)
views = ECGAugment(backend="auto")(torch.randn(3, 8, 250), g)
assert views.shape == (3, 8, 250) and torch.isfinite(views).all()
print("ok")
"""


def test_everything_falls_back_to_torch_without_the_extension():
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "ECGFAST_LOSS_BACKEND",
                                                            "ECGFAST_VCG_BACKEND")}
    res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "loss backend torch" in res.stdout and res.stdout.strip().endswith("ok")
