"""Installed without the C++ extension (plain ``pip install -e .``, or ``ECGFAST_SKIP_EXT=1``) on a CPU machine:
ecgfast.ops.backends finds no extension at import, every op falls back to plain torch and both ops still run,
with the same numbers as the reference; asking for the extension's backend is a clear error."""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = r"""
import sys
sys.modules["ecgfast._C"] = None  # as if setup.py had not built it: importing it raises ImportError
import pytest
import torch
from ecgfast.nn import MultiPositiveContrastiveLoss, VCGAugment
from ecgfast.ops import backends
from ecgfast.ops.contrastive_loss import multi_positive_contrastive_loss
from ecgfast.ops.vcg_op import vcg_augment
from ecgfast.reference.contrastive_loss import multi_positive_contrastive_loss_reference
from ecgfast.reference.vcg_augment import vcg_augment_views_reference

assert backends.EXTENSION_LOADED is False
assert not hasattr(torch.ops.ecgfast, "vcg_augment") and not hasattr(torch.ops.ecgfast, "mp_contrastive_lse_fwd")
for op in ("vcg_augment", "contrastive_loss"):
    assert backends.available_backends(op, "cpu") == ("torch",), backends.available_backends(op, "cpu")
    assert backends.default_backend(op, "cpu") == "torch"
    with pytest.raises(ValueError, match="not available"):
        backends.resolve_backend(op, "cpu", "cpp")
print("loss backend", backends.resolve_backend("contrastive_loss", "cpu"))

z = torch.randn(12, 8, requires_grad=True)
ids = torch.arange(12) // 3
loss = MultiPositiveContrastiveLoss()(z, ids)
torch.testing.assert_close(loss, multi_positive_contrastive_loss_reference(z, ids), rtol=0, atol=0)
loss.backward()
assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
with pytest.raises(ValueError, match="not available"):
    multi_positive_contrastive_loss(z, ids, backend="cpp")

q = torch.randint(-2000, 2000, (3, 8, 250), dtype=torch.int16)
gain, baseline = torch.full((3,), 200.0), torch.zeros(3)
halves = torch.tensor([[0, 0, 0], [125, 125, 125]])
views, p = VCGAugment(noise_std=0.05)(q, gain, baseline, windows=halves, length=125, return_params=True)
assert views.shape == (2, 3, 8, 125) and torch.isfinite(views).all()
expected = vcg_augment_views_reference(q, gain, baseline, p.matrices, p.mask_starts, p.mask_length, 0.05,
                                       p.noise_seed, halves, 125)
assert torch.equal(views, expected)
with pytest.raises(ValueError, match="not available"):
    vcg_augment(q, gain, baseline, backend="cpp")
print("ok")
"""


def test_everything_falls_back_to_torch_without_the_extension():
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "ECGFAST_LOSS_BACKEND",
                                                            "ECGFAST_VCG_BACKEND")}
    res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "loss backend torch" in res.stdout and res.stdout.strip().endswith("ok")
