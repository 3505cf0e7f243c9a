"""The fused VCG augmentation op (ecgfast.ops.vcg_op) on every backend available here, and its module.

Oracles: the plain-torch reference (ecgfast.reference.vcg_augment) in float64, judged with STYLE.md's rule (error
at most twice torch's own float32 / bf16 error plus a small atol); exact equality of the mask pattern; the view
windows against the reference's crop_windows (samples outside [0, T) read 0), with NaN guard bands around the
record to prove that no kernel reads outside it; the noise against the reference's Philox stream at the counter
of every output element; cropping commutes with the op. Each backend runs on each device it exists for
(tests/devices.py): Triton in its interpreter on the CPU (tests/conftest.py sets TRITON_INTERPRET=1), on small grids,
and compiled on CUDA; the C++ op on the CPU and the CUDA op on CUDA; the input on that device. Pairs this machine
lacks are skipped cases (CUDA ones marked ``gpu``). The reference itself is tested in
tests/test_vcg_reference.py, the parameter sampling in tests/test_vcg_params.py.
"""

from __future__ import annotations

import doctest
import importlib
import math
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from devices import CUDA, backend_cases, cross, device_cases
from scipy import stats

import ecgfast.nn
from ecgfast.nn import VCGAugment
from ecgfast.ops import backends
from ecgfast.ops.configs import VCGAugmentConfig
from ecgfast.ops.vcg_op import vcg_augment, vcg_augment_apply
from ecgfast.ops.vcg_params import counter_seeds, sample_vcg_params
from ecgfast.reference.vcg_augment import (
    crop_windows,
    lead_transform_matrices,
    philox_randn,
    vcg_augment_reference,
    vcg_augment_views_reference,
)

op_module = importlib.import_module("ecgfast.ops.vcg_op")
OP = "vcg_augment"
ENV = backends.ENV_VARS[OP]
BACKENDS = backends.available_backends(OP, "cpu")  # triton (interpreter), cpp (if built), torch
KERNEL_BACKENDS = [b for b in BACKENDS if b != "torch"]
CASES = backend_cases(OP)  # (backend, device): triton, cpp, torch on the CPU; triton, cuda, torch on CUDA
COMPILED = {("cpp", "cpu"), ("triton", "cuda"), ("cuda", "cuda"), ("torch", "cuda")}  # fast at the long lengths
# The grid, declared once: odd and prime sizes, T = 1; the paper's 2500 on the compiled/torch paths only
# (the Triton interpreter is slow), int16 with gain/baseline and the float inputs, both outputs, layouts.
BATCHES = [1, 3, 7]
LENGTHS = [1, 2, 13, 97]
LONG_LENGTH = 2500
IN_DTYPES = [torch.int16, torch.float32, torch.bfloat16, torch.float16]
OUT_DTYPES = [torch.float32, torch.bfloat16]
LAYOUTS = ["contiguous", "strided"]
# View windows: (T, L) with L < T at odd and prime sizes, a 1-sample view, whole records; long records (from
# LONG_WINDOW on: the training call's 10 s record cut in two 5 s halves) on the compiled CPU path only.
WINDOW_SIZES = [(13, 13), (13, 7), (97, 31), (97, 1), (2503, 1249), (5000, 2500)]
LONG_WINDOW = 2503
WINDOW_MODES = ["none", "shared", "per_view", "ends"]
WINDOW_DTYPES = [(torch.int16, torch.bfloat16), (torch.float32, torch.float32), (torch.int16, torch.float32),
                 (torch.bfloat16, torch.bfloat16)]
DEG = math.pi / 180


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _inputs(batch: int, n: int, dtype: torch.dtype, layout: str, seed: int = 0, length: int | None = None):
    """x (B, 8, T) in ``dtype`` and ``layout`` with gain/baseline for int16; matrices (2, B, 8, 8); starts
    (2, B, 8), also outside [0, L) (the op takes them mod L)."""
    g = _gen(seed)
    length = n if length is None else length
    q = torch.randint(-3000, 3000, (batch, 8, n), generator=g, dtype=torch.int16)
    gain, baseline = 100 + 200 * torch.rand(batch, generator=g), 50 * torch.randn(batch, generator=g)
    if dtype == torch.int16:
        x = q
    else:
        x, gain, baseline = (q.float() / 200).to(dtype), None, None
    if layout == "strided":  # (B, T, 8) memory seen as (B, 8, T): lead stride 1, time stride 8
        x = x.transpose(1, 2).contiguous().transpose(1, 2)
        assert not x.is_contiguous() or n == 1  # a (B, 8, 1) tensor is contiguous whatever its strides
    angles = (torch.rand(2 * batch, 3, generator=g) * 2 - 1) * 45 * DEG
    scales = 1 + 0.5 * torch.rand(2 * batch, 3, generator=g)
    matrices = lead_transform_matrices(angles, scales).view(2, batch, 8, 8)
    starts = torch.randint(-length, 2 * length, (2, batch, 8), generator=g)
    return x, gain, baseline, matrices, starts


def _windows(mode: str, batch: int, n: int, length: int, seed: int) -> torch.Tensor | None:
    """View starts in [0, T - L]: none, (B,) shared by the views, (2, B) per view, or at the record's two ends."""
    g = _gen(seed)
    if mode == "none":
        return None
    if mode == "shared":
        return torch.randint(0, n - length + 1, (batch,), generator=g)
    if mode == "per_view":
        return torch.randint(0, n - length + 1, (2, batch), generator=g)
    ends = torch.tensor([0, n - length]).repeat(batch)[:batch]
    return torch.stack([ends, torch.full((batch,), n - length)])  # view 1 always the record's last L samples


def _reference(x, gain, baseline, matrices, starts, mask_length, work: torch.dtype, out_dtype: torch.dtype,
               windows: torch.Tensor | None = None, length: int | None = None) -> torch.Tensor:
    """The reference chain in ``work`` precision: decode, crop the windows (crop_windows), then per view
    vcg_augment_reference (transform, mask of the L-sample view, one cast)."""
    n_views, batch = matrices.shape[:2]
    xf = x.to(work)
    if x.dtype == torch.int16:
        xf = (xf - baseline.to(work)[:, None, None]) / gain.to(work)[:, None, None]
    length = x.shape[-1] if length is None else length
    if windows is None:
        windows = torch.zeros(n_views, batch, dtype=torch.long)
    views = crop_windows(xf, windows.expand(n_views, batch), length)
    return torch.stack([vcg_augment_reference(views[v], matrices[v].to(work), starts[v], mask_length,
                                              out_dtype=out_dtype) for v in range(n_views)])


def _assert_close_to_reference(out, x, gain, baseline, matrices, starts, mask_length, windows=None, length=None):
    args = (x, gain, baseline, matrices, starts, mask_length)
    ref64 = _reference(*args, torch.float64, torch.float64, windows, length)
    ref_torch = _reference(*args, torch.float32, out.dtype, windows, length)
    assert out.shape == ref64.shape and out.dtype in (torch.float32, torch.bfloat16)
    assert not out.requires_grad
    assert torch.equal(out == 0, ref64 == 0)  # the mask pattern exactly (no sample of x is exactly 0 here)
    err = (out.double() - ref64).abs().max().item()
    err_torch = (ref_torch.double() - ref64).abs().max().item()
    atol = 1e-5 * max(1.0, ref64.abs().max().item())
    assert err <= 2 * err_torch + atol, (err, err_torch)


# ------------------------------------------------------------------------------------ equals the reference
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("out_dtype", OUT_DTYPES)
@pytest.mark.parametrize("in_dtype", IN_DTYPES)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize(("backend", "device", "n"), cross(CASES, [(n,) for n in LENGTHS + [LONG_LENGTH]],
                                                           lambda b, d, n: n != LONG_LENGTH or (b, d) in COMPILED))
def test_backend_equals_reference(backend, device, batch, n, in_dtype, out_dtype, layout):
    # T = 2500 on the compiled paths only: the Triton interpreter is slow there (the GPU test runs Triton at 5000)
    # and the torch backend on the CPU is the reference chain itself, already compared with the oracle at small sizes
    x, gain, baseline, matrices, starts = _inputs(batch, n, in_dtype, layout, seed=batch * 1000 + n)
    mask_length = min(round(0.5 * n), n - 1)
    # one view and two: both on the fast paths; in the (slow) Triton interpreter one view only for B = 1
    for n_views in (1, 2) if (backend, device) != ("triton", "cpu") or batch == 1 else (2,):
        out = vcg_augment(x.to(device), gain, baseline, matrices=matrices[:n_views], mask_starts=starts[:n_views],
                          mask_length=mask_length, out_dtype=out_dtype, backend=backend)
        assert out.device.type == device
        _assert_close_to_reference(out.cpu(), x, gain, baseline, matrices[:n_views], starts[:n_views], mask_length)


@pytest.mark.parametrize("mode", WINDOW_MODES)
@pytest.mark.parametrize(("backend", "device", "n", "length", "in_dtype", "out_dtype"), cross(
    CASES, [(n, length, i, o) for n, length in WINDOW_SIZES for i, o in WINDOW_DTYPES],
    lambda b, d, n, length, i, o: (n < LONG_WINDOW or (b, d) in COMPILED)
    and ((b, d) != ("triton", "cpu") or (i, o) in WINDOW_DTYPES[:2])))
def test_view_windows_equal_reference(backend, device, n, length, in_dtype, out_dtype, mode):
    """View v of ECG b is x[b, :, w : w + L] transformed and masked, with w from ``windows`` (None: 0; (B,): one
    start for both views, read once; (2, B): a start per view), the mask starts taken mod L. Long records on the
    compiled CPU path only; in the Triton interpreter two of the dtype pairs (the main grid has all of them)."""
    batch = 3
    seed = n + length + WINDOW_MODES.index(mode)
    layout = LAYOUTS[seed % 2]
    x, gain, baseline, matrices, starts = _inputs(batch, n, in_dtype, layout, seed=seed, length=length)
    windows = _windows(mode, batch, n, length, seed)
    mask_length = min(round(0.5 * length), length - 1)
    for n_views in (1, 2) if (backend, device) != ("triton", "cpu") or mode == "per_view" else (2,):
        win = windows if windows is None or windows.ndim == 1 else windows[:n_views]
        out = vcg_augment(x.to(device), gain, baseline, matrices=matrices[:n_views], mask_starts=starts[:n_views],
                          mask_length=mask_length, windows=win, length=length, out_dtype=out_dtype, backend=backend)
        assert out.shape == (n_views, batch, 8, length) and out.device.type == device
        _assert_close_to_reference(out.cpu(), x, gain, baseline, matrices[:n_views], starts[:n_views], mask_length,
                                   win, length)


@pytest.mark.parametrize(("n", "length", "mode"), [(2500, 2500, "none"), (5000, 2500, "per_view"),
                                                   (2503, 1249, "shared")])
@pytest.mark.parametrize(("backend", "device"), backend_cases(OP, only=("triton",)))
def test_triton_at_the_training_lengths(backend, device, n, length, mode):
    """The Triton kernel (the interpreter on the CPU, compiled on CUDA) at the lengths training uses (5 s views of a
    10 s record at 500 Hz, an odd prime-ish record), where its T loop runs many blocks: int16 in, bf16 out, two
    views, one ECG of each layout (the interpreter's cost grows with B x T)."""
    for batch_seed, layout in enumerate(LAYOUTS):
        x, gain, baseline, matrices, starts = _inputs(1, n, torch.int16, layout, seed=n + batch_seed, length=length)
        windows = _windows(mode, 1, n, length, n + batch_seed)
        mask_length = min(round(0.5 * length), length - 1)
        out = vcg_augment(x.to(device), gain, baseline, matrices=matrices, mask_starts=starts,
                          mask_length=mask_length, windows=windows, length=length, out_dtype=torch.bfloat16,
                          backend=backend)
        assert out.shape == (2, 1, 8, length)
        _assert_close_to_reference(out.cpu(), x, gain, baseline, matrices, starts, mask_length, windows, length)


@pytest.mark.parametrize(("backend", "device"), CASES)
def test_windowed_views_are_the_views_of_the_cropped_records(backend, device):
    """Cropping commutes with the op: view v of x at window w equals the one-view op on x[..., w : w + L]."""
    batch, n, length = 3, 61, 23
    x, gain, baseline, matrices, _ = _inputs(batch, n, torch.int16, "contiguous", seed=9)
    x = x.to(device)
    windows = torch.tensor([[0, 17, n - length], [n - length, 5, 0]])
    out = vcg_augment(x, gain, baseline, matrices=matrices, windows=windows, length=length, backend=backend)
    for v in range(2):
        crop = torch.stack([x[b, :, int(windows[v, b]):int(windows[v, b]) + length] for b in range(batch)])
        alone = vcg_augment(crop, gain, baseline, matrices=matrices[v:v + 1], backend=backend)
        torch.testing.assert_close(out[v], alone[0], rtol=1e-6, atol=1e-6)
    # a shared window is the per-view window repeated
    shared = vcg_augment(x, gain, baseline, matrices=matrices, windows=windows[1], length=length, backend=backend)
    repeated = vcg_augment(x, gain, baseline, matrices=matrices, windows=windows[1].expand(2, batch), length=length,
                           backend=backend)
    assert torch.equal(shared, repeated)


@pytest.mark.parametrize(("backend", "device"), CASES)
def test_kors_residual_and_full_mask_edges(backend, device):
    x, gain, baseline, _, starts = _inputs(3, 13, torch.int16, "contiguous", seed=5)
    xd = x.to(device)
    for transform, residual in (("kors", False), ("kors", True), ("dower", True)):
        out, p = vcg_augment(xd, gain, baseline, seed=1, transform=transform, residual=residual, backend=backend,
                             return_params=True)
        _assert_close_to_reference(out.cpu(), x, gain, baseline, p.matrices.cpu(), p.mask_starts.cpu(),
                                   p.mask_length)
    m = torch.eye(8).expand(1, 3, 8, 8)
    for length in (0, 13):  # nothing masked; everything masked
        out = vcg_augment(xd, gain, baseline, matrices=m, mask_starts=starts[:1], mask_length=length, backend=backend)
        _assert_close_to_reference(out.cpu(), x, gain, baseline, m, starts[:1], length)
    no_mask = vcg_augment(xd, gain, baseline, matrices=m, backend=backend)  # explicit matrices, no starts: no mask
    _assert_close_to_reference(no_mask.cpu(), x, gain, baseline, m, starts[:1], 0)
    # the whole 7-sample view masked, of a window at the record's end
    win = torch.full((3,), 6)
    full = vcg_augment(xd, gain, baseline, matrices=m, mask_starts=starts[:1], mask_length=7, windows=win, length=7,
                       backend=backend)
    assert full.shape == (1, 3, 8, 7) and (full == 0).all()


# --------------------------------------------------------------------------- drawn parameters, randomness
def test_drawn_parameters_are_the_samplers_over_the_view_length():
    x, gain, baseline, _, _ = _inputs(4, 101, torch.int16, "contiguous")
    cfg = VCGAugmentConfig(max_angle_deg=30.0, mask_fraction=0.3)
    windows = torch.tensor([[0, 1, 2, 3], [50, 51, 52, 53]])
    out, p = vcg_augment(x, gain, baseline, seed=6, offset=9, windows=windows, length=47, config=cfg,
                         return_params=True, backend="torch")
    drawn = sample_vcg_params(4, 47, cfg, seed=6, offset=9)  # mask starts over L = 47, not T = 101
    for field in ("matrices", "mask_starts", "angles", "scales"):
        assert torch.equal(getattr(p, field), getattr(drawn, field)), field
    assert p.mask_length == drawn.mask_length == 14 and p.noise_seed == drawn.noise_seed
    _assert_close_to_reference(out, x, gain, baseline, p.matrices, p.mask_starts, 14, windows, 47)
    # keyword hyperparameters override the config; an explicit mask_length overrides the fraction
    _, q = vcg_augment(x, gain, baseline, seed=6, offset=9, config=cfg, max_angle_deg=10.0, mask_length=3,
                       return_params=True, backend="torch")
    assert q.angles.abs().max() <= 10 * DEG and q.mask_length == 3
    one = vcg_augment(x, gain, baseline, seed=6, offset=9, n_views=1, windows=windows[0], length=47, config=cfg,
                      backend="torch")
    torch.testing.assert_close(one[0], out[0], rtol=0, atol=0)  # one view is the first of two


@pytest.mark.parametrize("device", device_cases())
def test_same_seed_same_views_other_seed_or_offset_other_views(device):
    x, gain, baseline, _, _ = _inputs(3, 97, torch.int16, "contiguous")
    x = x.to(device)
    windows = torch.tensor([[0, 10, 20], [40, 50, 60]])
    outs = {}
    for backend in backends.available_backends(OP, device):
        kw = {"noise_std": 0.05, "backend": backend, "windows": windows, "length": 37}
        a = vcg_augment(x, gain, baseline, seed=11, offset=2, **kw)
        assert torch.equal(a, vcg_augment(x, gain, baseline, seed=11, offset=2, **kw))
        for other in ({"seed": 12, "offset": 2}, {"seed": 11, "offset": 3}):
            b = vcg_augment(x, gain, baseline, **kw, **other)
            assert not torch.allclose(a, b)
        assert not torch.allclose(a[0], a[1])  # the two views differ
        outs[backend] = a
    # identical across backends given the seed: same parameters, same mask, same noise up to float rounding
    assert len(outs) >= 2, outs.keys()  # a kernel backend besides the reference
    for backend, out in outs.items():
        assert torch.equal(out == 0, outs["torch"] == 0), backend
        torch.testing.assert_close(out, outs["torch"], atol=1e-5, rtol=1e-5, msg=backend)


@pytest.mark.parametrize(("backend", "device"), CASES)
def test_noise_is_the_reference_philox_stream_at_each_output_counter(backend, device):
    """noisy - clean = noise_std * philox_randn(noise seed, ((v * B + b) * 8 + l) * L + t) where not masked, and
    exactly 0 where masked; int16 input, a window per view, explicit matrices keyed by (seed, offset)."""
    batch, n, length, std = 3, 53, 29, 0.25
    x, gain, baseline, matrices, starts = _inputs(batch, n, torch.int16, "strided", seed=13, length=length)
    windows = torch.tensor([[0, 24, 11], [n - length, 3, 0]])
    kw = {"matrices": matrices, "mask_starts": starts, "mask_length": 9, "windows": windows, "length": length,
          "seed": 21, "offset": 4, "backend": backend}
    noisy = vcg_augment(x.to(device), gain, baseline, noise_std=std, **kw).cpu()
    clean = vcg_augment(x.to(device), gain, baseline, **kw).cpu()
    counters = torch.arange(2 * batch * 8 * length).view(2, batch, 8, length)
    expected = std * philox_randn(counter_seeds(21, 4)[1], counters)
    masked = clean == 0
    assert masked.sum() == 2 * batch * 8 * 9 and torch.equal(noisy == 0, masked)
    torch.testing.assert_close((noisy - clean)[~masked], expected[~masked], rtol=1e-5, atol=1e-5)
    # and the whole noisy output is the torch reference's (vcg_augment_views_reference)
    reference = vcg_augment_views_reference(x, gain, baseline, matrices, starts % length, 9, std,
                                            counter_seeds(21, 4)[1], windows, length)
    torch.testing.assert_close(noisy, reference, rtol=1e-5, atol=1e-5)
    # bf16 output: the same float32 value rounded once
    bf16 = vcg_augment(x.to(device), gain, baseline, noise_std=std, out_dtype=torch.bfloat16, **kw).cpu()
    assert bf16.dtype == torch.bfloat16
    torch.testing.assert_close(bf16.float(), reference, rtol=2**-8, atol=1e-5)


def test_noise_is_gaussian_with_the_requested_std():
    backend = backends.default_backend(OP, "cpu")
    x = torch.zeros(16, 8, 2000)
    eye = torch.eye(8).expand(2, 16, 8, 8)
    out = vcg_augment(x, matrices=eye, noise_std=0.2, seed=5, backend=backend)  # no mask: pure noise
    n = out.double().numpy().ravel()
    assert abs(n.mean()) < 0.2 * 4 / math.sqrt(n.size) and abs(n.std() - 0.2) < 0.002
    assert stats.kstest(n[:100_000] / 0.2, "norm").pvalue > 1e-3
    assert abs(np.corrcoef(out[0].flatten(), out[1].flatten())[0, 1]) < 0.01  # views independent
    # power: 0.21 is told apart from 0.2
    assert stats.kstest(n[:100_000] / 0.21, "norm").pvalue < 1e-3


# ---------------------------------------------------------------------------- windows: checks and bounds
def test_bad_windows_raise_value_errors_naming_the_problem():
    x = torch.randn(2, 8, 10)
    cases = [
        ({"windows": torch.tensor([-1, 0]), "length": 5}, "windows must start in"),
        ({"windows": torch.tensor([[0, 0], [0, -3]]), "length": 5}, "windows must start in"),
        ({"windows": torch.tensor([0, 6]), "length": 5}, r"\[0, 5\]"),  # start + length > T
        ({"windows": torch.tensor([[0, 0], [5, 6]]), "length": 5}, "windows must start in"),
        ({"windows": torch.tensor([0, 0, 0]), "length": 5}, "windows must be"),
        ({"windows": torch.zeros(2, 3, dtype=torch.long), "length": 5}, "windows must be"),
        ({"windows": torch.zeros(3, 2, dtype=torch.long), "length": 5}, "windows must be"),
        ({"windows": torch.zeros(2, 2, dtype=torch.long), "length": 5, "n_views": 1}, "windows must be"),
        ({"windows": torch.zeros(2), "length": 5}, "integer"),
        ({"windows": torch.zeros(2, dtype=torch.bool), "length": 5}, "integer"),
        ({"windows": [0, 0], "length": 5}, "integer"),
        ({"windows": torch.zeros(2, dtype=torch.long)}, "need a length"),
        ({"windows": torch.zeros(2, dtype=torch.long), "length": 0}, "length must be in"),
        ({"windows": torch.zeros(2, dtype=torch.long), "length": 11}, "length must be in"),
        ({"length": 11}, "length must be in"),
        ({"length": 0}, "length must be in"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            vcg_augment(x, **kwargs)
    # the edges are allowed: a window ending at the record's last sample, a window of the whole record
    assert vcg_augment(x, windows=torch.tensor([5, 0]), length=5).shape == (2, 2, 8, 5)
    assert vcg_augment(x, windows=torch.zeros(2, 2, dtype=torch.int32), length=10).shape == (2, 2, 8, 10)
    assert vcg_augment(x, length=4).shape == (2, 2, 8, 4)  # no windows: the first L samples


def _guarded(batch: int, n: int, pad: int, dtype: torch.dtype, seed: int, device: str = "cpu"):
    """x (B, 8, T) on ``device`` inside a buffer whose ``pad`` samples on either side are poison (NaN; int16: 32767,
    i.e. 32.8 mV at gain 1000), so that a load outside [0, T) shows in the output."""
    g = _gen(seed)
    data = torch.randint(-3000, 3000, (batch, 8, n), generator=g, dtype=torch.int16)
    if dtype == torch.int16:
        buf = torch.full((batch, 8, n + 2 * pad), 32767, dtype=torch.int16)
        gain, baseline = torch.full((batch,), 1000.0), torch.zeros(batch)
    else:
        buf = torch.full((batch, 8, n + 2 * pad), float("nan"), dtype=dtype)
        data, gain, baseline = (data.float() / 1000).to(dtype), None, None
    buf[..., pad:pad + n] = data
    return buf.to(device)[..., pad:pad + n], gain, baseline


@pytest.mark.parametrize("dtype", [torch.int16, torch.float32], ids=str)
@pytest.mark.parametrize(("backend", "device"), CASES)
def test_kernels_read_zero_outside_the_record(backend, device, dtype):
    """Called below the functional's window check (torch.ops.ecgfast.vcg_augment for cpp, the custom op for triton and
    torch), windows partly or wholly outside [0, T) read 0 there, as crop_windows does, and never the poison
    around the record."""
    batch, n, length, pad = 3, 13, 7, 16
    x, gain, baseline = _guarded(batch, n, pad, dtype, seed=17, device=device)
    angles = torch.rand(2 * batch, 3, generator=_gen(1))
    m = lead_transform_matrices(angles, torch.ones(2 * batch, 3)).view(2, batch, 8, 8)
    starts = torch.zeros(2, batch, 8, dtype=torch.long)
    per_view = torch.tensor([[-7, -3, 10], [n, 6, 9]])  # wholly left, partly left, partly right; wholly right
    shared = torch.tensor([-2, n - 3, -length]).expand(2, batch).contiguous()
    g32 = None if gain is None else gain.float()
    b32 = None if baseline is None else baseline.float()
    for windows, is_shared in ((per_view, False), (shared, True)):
        args = (x, *(t if t is None else t.to(device) for t in (g32, b32, m, starts, windows)), is_shared, length, 0,
                0.0, 0, torch.float32)
        if backend == "cpp":
            out = torch.ops.ecgfast.vcg_augment(*args)
        else:
            out = vcg_augment_apply(*args, backend)
        out = out.cpu()
        expected = vcg_augment_views_reference(x.cpu(), gain, baseline, m, starts, 0, windows=windows, length=length)
        assert torch.isfinite(out).all(), backend
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        assert (out[1, 0] == 0).all() if windows is per_view else (out[:, 2] == 0).all()  # wholly outside: zeros


@pytest.mark.skipif("cpp" not in BACKENDS, reason="ecgfast._C not built")
def test_cpp_schema_checks_its_arguments():
    x = torch.randn(2, 8, 10)
    m, s, w = torch.eye(8).expand(2, 2, 8, 8), torch.zeros(2, 2, 8, dtype=torch.long), torch.zeros(2, 2)
    call = torch.ops.ecgfast.vcg_augment
    assert call(x, None, None, m, s, w.long(), True, 10, 0, 0.0, 0, torch.float32).shape == (2, 2, 8, 10)
    for args, match in [
        ((x, None, None, m, s, w[:1].long(), False, 10, 0, 0.0, 0, torch.float32), "windows must be"),
        ((x, None, None, m, s, w.long(), False, 11, 0, 0.0, 0, torch.float32), "length must be"),
        ((x, None, None, m, s, w.long(), False, 5, 6, 0.0, 0, torch.float32), "mask_length"),
        ((x, None, None, m, s[:, :1], w.long(), False, 5, 0, 0.0, 0, torch.float32), "mask_starts"),
        ((x, None, None, m, s, w.long(), False, 5, 0, 0.0, 0, torch.float16), "out_dtype"),
        ((x.to(torch.int16), None, None, m, s, w.long(), False, 5, 0, 0.0, 0, torch.float32), "gain"),
        ((x.double(), None, None, m, s, w.long(), False, 5, 0, 0.0, 0, torch.float32), "int16, float16"),
    ]:
        with pytest.raises(RuntimeError, match=match):
            call(*args)


# ------------------------------------------------------------------------------------ compile, autograd
@pytest.mark.parametrize(("backend", "device"), [c for c in CASES if c.id != "triton-cpu"])  # not the interpreter
def test_torch_compile_fullgraph(backend, device):
    x, gain, baseline, matrices, starts = (t.to(device) for t in _inputs(3, 97, torch.int16, "contiguous"))
    windows = torch.tensor([[0, 10, 48], [48, 3, 0]], device=device)

    def step(q, g, b, m, s, w):
        whole = vcg_augment(q, g, b, matrices=m, mask_starts=s, mask_length=48, out_dtype=torch.bfloat16,
                            backend=backend)
        halves = vcg_augment(q, g, b, matrices=m, mask_starts=s, mask_length=24, windows=w, length=49,
                             out_dtype=torch.bfloat16, noise_std=0.1, seed=3, offset=1, backend=backend)
        return whole.float().sum(-1), halves.float().sum(-1)

    compiled = torch.compile(step, fullgraph=True)
    args = (x, gain, baseline, matrices, starts, windows)
    for got, expected in zip(compiled(*args), step(*args), strict=True):
        if device == "cpu":
            assert torch.equal(got, expected)
        else:  # Inductor may order a GPU sum's additions differently from eager mode
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)


def test_views_need_no_grad_and_do_not_break_backward():
    x = torch.randn(2, 8, 50, requires_grad=True)
    w = torch.randn(8, requires_grad=True)
    views = vcg_augment(x * 2, seed=0)
    assert not views.requires_grad
    loss = (views * w[:, None]).sum() + (x**2).sum()
    loss.backward()
    assert torch.allclose(x.grad, 2 * x.detach()) and w.grad is not None


# ------------------------------------------------------------------------------------------- bad inputs
def test_bad_inputs_raise_value_errors_naming_the_problem():
    x = torch.randn(2, 8, 10)
    q, gain, baseline = torch.zeros(2, 8, 10, dtype=torch.int16), torch.ones(2), torch.zeros(2)
    m = torch.eye(8).expand(2, 2, 8, 8)
    cases = [
        (lambda: vcg_augment(torch.randn(8, 10)), "B, 8, T"),
        (lambda: vcg_augment(torch.randn(2, 7, 10)), "B, 8, T"),
        (lambda: vcg_augment(torch.randn(2, 8, 0)), "B, 8, T"),
        (lambda: vcg_augment(torch.randn(0, 8, 10)), "B, 8, T"),
        (lambda: vcg_augment(x.double()), "dtype"),
        (lambda: vcg_augment(q.int(), gain, baseline), "dtype"),
        (lambda: vcg_augment(q), "gain"),
        (lambda: vcg_augment(q, gain), "baseline"),
        (lambda: vcg_augment(q, gain[:1], baseline), "gain"),
        (lambda: vcg_augment(q, gain.long(), baseline), "gain"),
        (lambda: vcg_augment(x, gain, baseline), "int16 x only"),
        (lambda: vcg_augment(x, n_views=3), "n_views"),
        (lambda: vcg_augment(x, matrices=torch.eye(8).expand(3, 2, 8, 8)), "n_views"),
        (lambda: vcg_augment(x, matrices=m[:, :1]), "matrices"),
        (lambda: vcg_augment(x, matrices=m.long()), "floating"),
        (lambda: vcg_augment(x, matrices=m, mask_starts=torch.zeros(2, 2, 8)), "integer"),
        (lambda: vcg_augment(x, matrices=m, mask_starts=torch.zeros(1, 2, 8, dtype=torch.long)), "mask_starts"),
        (lambda: vcg_augment(x, matrices=m, mask_length=3), "needs mask_starts"),
        (lambda: vcg_augment(x, mask_starts=torch.zeros(2, 2, 8, dtype=torch.long)), "pass matrices"),
        (lambda: vcg_augment(x, matrices=m, mask_starts=torch.zeros(2, 2, 8, dtype=torch.long), mask_length=11),
         "mask_length"),
        (lambda: vcg_augment(x, mask_length=-1), "mask_length"),
        (lambda: vcg_augment(x, out_dtype=torch.float16), "out_dtype"),
        (lambda: vcg_augment(x, backend="jax"), "backend"),
        (lambda: vcg_augment(x, noise_std=-1.0), "noise_std"),
        (lambda: vcg_augment(x, transform="frank"), "transform"),
        (lambda: vcg_augment(x, wander_mv=0.1), "unknown"),
        (lambda: vcg_augment(x, offset=-1), "offset"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()


# ------------------------------------------------------------------------------------------ backend choice
def test_backend_choice_and_environment_override(monkeypatch):
    assert BACKENDS[-1] == "torch" and set(BACKENDS) <= set(backends.BACKENDS[OP])
    assert "triton" in BACKENDS or torch.cuda.is_available()  # without a GPU, conftest.py sets TRITON_INTERPRET=1
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.delenv(backends.ENV_VARS["contrastive_loss"], raising=False)
    monkeypatch.setattr(backends, "_DEFAULT", {})
    expected = "cpp" if "cpp" in BACKENDS else "torch"  # the Triton interpreter is never a default
    assert backends.default_backend(OP, "cpu") == backends.resolve_backend(OP, "cpu") == expected
    monkeypatch.setenv(ENV, "torch")
    assert backends.default_backend(OP, "cpu") == expected  # decided once per device type, then cached
    monkeypatch.setattr(backends, "_DEFAULT", {})
    assert backends.default_backend(OP, "cpu") == "torch"
    assert backends.default_backend("contrastive_loss", "cpu") != "torch" or "cpp" not in BACKENDS  # per op
    # the functional follows the default: count the calls of the reference (the torch backend's body)
    calls = []
    monkeypatch.setattr(op_module, "vcg_augment_views_reference",
                        lambda *a, f=op_module.vcg_augment_views_reference: calls.append(1) or f(*a))
    vcg_augment(torch.randn(1, 8, 4))
    assert calls == [1]
    vcg_augment(torch.randn(1, 8, 4), backend=KERNEL_BACKENDS[-1])  # an explicit backend wins over $ECGFAST_...
    assert calls == [1]
    monkeypatch.setenv(ENV, "triton")
    monkeypatch.setattr(backends, "_DEFAULT", {})
    assert backends.default_backend(OP, "cpu") == "triton"
    for bad, match in (("nope", ENV), ("cuda", "not available")):
        monkeypatch.setenv(ENV, bad)
        monkeypatch.setattr(backends, "_DEFAULT", {})
        with pytest.raises(ValueError, match=match):
            backends.default_backend(OP, "cpu")
    with pytest.raises(ValueError, match="not available"):
        vcg_augment(torch.randn(1, 8, 4), backend="cuda")
    with pytest.raises(ValueError, match="must be one of"):
        backends.resolve_backend(OP, "cpu", "jax")
    assert backends.available_backends(OP, "cuda")[-1] == "torch"  # what a CUDA device would get, detected once


def test_ops_package_functional_names():
    """README: ``from ecgfast.ops import multi_positive_contrastive_loss, vcg_augment`` gives the functionals."""
    from ecgfast.ops import VCGAugmentConfig as Config
    from ecgfast.ops import multi_positive_contrastive_loss
    from ecgfast.ops import sample_vcg_params as sample

    assert Config is VCGAugmentConfig and sample is sample_vcg_params
    assert multi_positive_contrastive_loss is importlib.import_module("ecgfast.ops.contrastive_loss") \
        .multi_positive_contrastive_loss


def test_ops_package_exports_the_vcg_functional():
    code = ("from ecgfast.ops import vcg_augment; import torch; "
            "print(tuple(vcg_augment(torch.randn(1, 8, 4), backend='torch').shape))")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "(2, 1, 8, 4)", res.stderr[-2000:]


def test_docstring_examples_run():
    for module in (op_module, backends):
        result = doctest.testmod(module, extraglobs={"torch": torch})
        assert result.failed == 0 and result.attempted > 0, module.__name__


# ------------------------------------------------------------------------------------------------ the module
def test_vcg_augment_module_holds_a_config_and_counts_calls():
    q, gain, baseline, _, _ = _inputs(3, 101, torch.int16, "contiguous", seed=30)
    cfg = VCGAugmentConfig(max_angle_deg=30.0, noise_std=0.01)
    aug = VCGAugment(cfg, out_dtype=torch.bfloat16, backend="torch", seed=4, mask_fraction=0.25)
    assert aug.config == cfg.with_overrides(mask_fraction=0.25) and cfg.mask_fraction == 0.5
    assert "max_angle_deg=30.0" in repr(aug) and "seed=4" in repr(aug)
    kw = {"seed": 4, "config": aug.config, "out_dtype": torch.bfloat16, "backend": "torch"}
    first, second = aug(q, gain, baseline), aug(q, gain, baseline)  # offsets 0 and 1 from the call counter
    assert aug.calls == 2 and not torch.equal(first, second)
    assert torch.equal(first, vcg_augment(q, gain, baseline, offset=0, **kw))
    assert torch.equal(second, aug(q, gain, baseline, offset=1))
    assert aug.calls == 2  # an explicit offset does not advance the counter
    windows = torch.tensor([[0, 10, 50], [51, 40, 1]])
    views, p = aug(q, gain, baseline, offset=7, windows=windows, length=50, return_params=True)
    assert views.shape == (2, 3, 8, 50) and views.dtype == torch.bfloat16
    assert torch.equal(views, vcg_augment(q, gain, baseline, offset=7, windows=windows, length=50, **kw))
    assert torch.equal(p.mask_starts, sample_vcg_params(3, 50, aug.config, seed=4, offset=7).mask_starts)
    assert p.mask_length == 12  # round(0.25 * 50)
    assert VCGAugment(n_views=1)(torch.randn(3, 8, 101), offset=0).shape == (1, 3, 8, 101)
    for kwargs in ({"n_views": 3}, {"max_angle_deg": 200}, {"transform": "frank"}, {"noise_std": -1.0},
                   {"out_dtype": torch.float16}, {"scale_range": (0.5, 1.5)}, {"mask_fraction": 1.0}):
        with pytest.raises(ValueError):
            VCGAugment(**kwargs)
    with pytest.raises((TypeError, ValueError), match="wander_mv"):
        VCGAugment(wander_mv=0.1)
    runner = doctest.DocTestRunner()
    for example in doctest.DocTestFinder().find(VCGAugment, globs=vars(ecgfast.nn)):
        runner.run(example)
    assert runner.failures == 0 and runner.tries > 0


# -------------------------------------------------------------------------------- CUDA source, compile only
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found")
def test_cuda_source_compiles_with_nvcc(tmp_path):
    """nvcc -c of csrc/vcg_augment_cuda.cu against torch's headers, so the CUDA code cannot rot on CPU CI.

    A CPU build of torch lacks the CMake-generated c10/cuda/impl/cuda_cmake_macros.h; a stub stands in for it
    (CUDA builds of torch ship the real one). Measured about 20 s on the 2-core CPU machine.
    """
    from torch.utils.cpp_extension import include_paths

    stub = tmp_path / "stub" / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n")
    src = os.path.join(os.path.dirname(__file__), "..", "csrc", "vcg_augment_cuda.cu")
    cmd = ["nvcc", "-c", src, "-o", str(tmp_path / "vcg_augment_cuda.o"), "-std=c++17", "-O3",
           "--expt-relaxed-constexpr", "-Xcompiler", "-fPIC", "-DTORCH_EXTENSION_NAME=_C",
           f"-D_GLIBCXX_USE_CXX11_ABI={int(torch.compiled_with_cxx11_abi())}",
           "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
           "-D__CUDA_NO_HALF2_OPERATORS__", "-diag-suppress", "3306", "-Xcompiler", "-Wno-c++20-extensions",
           *[f"-I{p}" for p in include_paths()], f"-I{tmp_path / 'stub'}"]
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    print(f"nvcc compile-only: {time.perf_counter() - start:.1f} s")
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "vcg_augment_cuda.o").stat().st_size > 0


_TRITON_AOT = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from ecgfast.kernels.vcg_augment import _vcg_augment_fwd_kernel

# the launcher's calls (ecgfast.ops.vcg_op._vcg_augment_triton): the training call (int16 -> bf16 bits, two
# views with their own windows, noise), one float32 view of a whole record, and bf16 in with a shared window
CASES = [("i16", "i16", 2, False, True), ("fp32", "fp32", 1, True, False), ("bf16", "fp32", 2, True, False)]
for in_type, out_type, n_views, shared, noise in CASES:
    signature = {"x_ptr": f"*{in_type}", "gain_ptr": "*fp32", "baseline_ptr": "*fp32", "m_ptr": "*fp32",
                 "starts_ptr": "*i64", "windows_ptr": "*i64", "out_ptr": f"*{out_type}", "B": "i32", "T": "i32",
                 "L": "i32", "stride_xb": "i32", "stride_xl": "i32", "stride_xt": "constexpr", "mask_length": "i32",
                 "noise_std": "fp32", "noise_seed": "i64", "N_VIEWS": "constexpr", "SHARED_WINDOW": "constexpr",
                 "IS_INT": "constexpr", "HAS_NOISE": "constexpr", "OUT_BF16": "constexpr", "BLOCK_T": "constexpr"}
    names = list(_vcg_augment_fwd_kernel.arg_names)
    assert names == list(signature), names  # the kernel's parameters, in order
    constants = {"stride_xt": 1, "N_VIEWS": n_views, "SHARED_WINDOW": shared, "IS_INT": in_type == "i16",
                 "HAS_NOISE": noise, "OUT_BF16": out_type == "i16", "BLOCK_T": 512}
    source = ASTSource(fn=_vcg_augment_fwd_kernel, signature=signature,
                       constexprs={(names.index(k),): v for k, v in constants.items()})
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    assert len(compiled.asm["cubin"]) > 0 and "st.global" in compiled.asm["ptx"]
    print(in_type, out_type, n_views, shared, noise, "ok")
"""


def test_triton_kernel_compiles_for_sm90(tmp_path):
    """Ahead-of-time Triton compile to PTX and cubin for an H100 (sm_90): the training call (int16 -> bf16, two views
    with their own windows, noise), float32 -> float32 one view, bf16 -> float32 two views sharing a window. Catches
    what the interpreter accepts but the GPU compiler rejects, on CPU-only CI. A subprocess, because the interpreter
    (TRITON_INTERPRET=1, set for these tests) cannot compile; a fresh Triton cache, so every case is compiled."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton_cache")
    result = subprocess.run([sys.executable, "-c", _TRITON_AOT], capture_output=True, text=True, env=env, timeout=300)
    if "no NVIDIA backend" in result.stderr or "KeyError: 'cuda'" in result.stderr:
        pytest.skip("this triton has no NVIDIA backend")
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count(" ok") == 3


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_gpu_backends_equal_cpu_reference():
    batch, n = 7, 5000
    x, gain, baseline, matrices, starts = _inputs(batch, n, torch.int16, "strided", seed=1, length=2500)
    halves = torch.tensor([[0] * batch, [2500] * batch])
    shared = torch.arange(batch) * 300
    for backend in backends.available_backends(OP, "cuda"):
        for windows, length, mask in ((None, None, 2500), (halves, 2500, 1250), (shared, 2503, 1252)):
            out = vcg_augment(x.cuda(), gain, baseline, matrices=matrices, mask_starts=starts, mask_length=mask,
                              windows=windows, length=length, backend=backend, out_dtype=torch.bfloat16)
            _assert_close_to_reference(out.cpu(), x, gain, baseline, matrices, starts, mask, windows, length)
        # the training call: drawn parameters (on the host, so the same as on the CPU) and noise
        kw = {"seed": 3, "offset": 5, "noise_std": 0.1, "windows": halves, "length": 2500}
        noisy = vcg_augment(x.cuda(), gain, baseline, backend=backend, **kw)
        torch.testing.assert_close(noisy.cpu(), vcg_augment(x, gain, baseline, backend="torch", **kw), atol=1e-5,
                                   rtol=1e-5)
        # below the functional's check: windows outside the record read 0, never the poison around it
        xg, g, b = _guarded(3, 13, 16, torch.float32, seed=17)
        m = torch.eye(8).expand(2, 3, 8, 8)
        w = torch.tensor([[-7, -3, 10], [13, 6, 9]])
        z = torch.zeros(2, 3, 8, dtype=torch.long)
        out = vcg_augment_apply(xg.cuda(), None, None, m.cuda(), z.cuda(), w.cuda(), False, 7, 0, 0.0, 0,
                                torch.float32, backend)
        torch.testing.assert_close(out.cpu(), vcg_augment_views_reference(xg, g, b, m, z, 0, windows=w, length=7))
