"""Tests of the fused multi-positive contrastive loss (ecgfast.ops.contrastive_loss) against the torch reference.

Every (backend, device) pair (tests/devices.py: triton in the interpreter on the CPU and compiled on CUDA, cpp on the
CPU when ecgfast._C is built, torch on both; pairs this machine lacks are skipped cases, CUDA ones marked ``gpu``) is
compared with the float64 reference over a grid declared once below, the tensors on that device. Low-
precision results pass when their error against the float64 reference is at most twice torch's own error in that
precision (the reference with upcast=False) plus a small atol (flash-attention's rule). Also: float64 gradcheck,
grad_output != 1, a closed form, a row permutation, anchors as a row slice, non-contiguous ids, fewer than two
rows, torch.compile(fullgraph=True), backend choice and input checks, two gloo ranks on every kernel backend
(tests/ddp_harness.py), the measured peak memory of the blockwise CPU path at N = 16,384, and an ahead-of-time
compile of the Triton kernels for an H100.
"""

from __future__ import annotations

import doctest
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from ddp_harness import GLOO, assert_ranks_match_the_full_batch, run_ranks
from devices import backend_cases, no_positive_warning, to_device

from ecgfast.nn import MultiPositiveContrastiveLoss
from ecgfast.ops import backends
from ecgfast.ops import contrastive_loss as op
from ecgfast.ops.contrastive_loss import multi_positive_contrastive_loss
from ecgfast.reference.contrastive_loss import multi_positive_contrastive_loss_reference as reference
from ecgfast.reference.contrastive_loss import positive_weight_sums

OP = "contrastive_loss"
ENV = backends.ENV_VARS[OP]
BACKENDS = backends.available_backends(OP, "cpu")  # triton (interpreter), cpp (if built), torch
KERNEL_BACKENDS = [b for b in BACKENDS if b != "torch"]
CASES = backend_cases(OP)  # (backend, device): triton, cpp, torch on the CPU; triton, torch on CUDA
TRITON_DEVICES = backend_cases(OP, only=("triton",))  # the interpreter on the CPU, the compiled kernels on CUDA
# float64 input never goes to Triton (it runs on cpp, else torch): the float64 tests take the other backends
FLOAT64_BACKENDS = [b for b in BACKENDS if b != "triton"]
# The grid, declared once: odd and prime sizes, d = 1, tiles not dividing N.
NS = (2, 3, 17, 64, 131)
DS = (1, 8, 33, 128)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
ID_CASES = ("one", "two", "singletons", "one_group")
TAU = 0.1
ATOL = {torch.float32: 2e-5, torch.bfloat16: 2e-3, torch.float16: 2e-3}  # added to 2x torch's own error
# Gradients: the kernels round the softmax weights to the input precision before the gradient dots (as
# FlashAttention does with P), a relative 2^-8 (bf16) / 2^-11 (fp16) of terms of size |x| / tau. Torch's own
# low-precision error can be exactly 0 where terms cancel exactly (N = 2: the loss is identically 0).
GRAD_ATOL = {torch.float32: 2e-5, torch.bfloat16: 2**-8 / TAU, torch.float16: 2**-11 / TAU}
needs_cpp = pytest.mark.skipif("cpp" not in BACKENDS, reason="ecgfast._C not built")


def _count_kernel_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the forward launches of the kernel backends (the custom op calls _triton_forward or _cpp_forward)."""
    calls: list[int] = []
    for name in ("_triton_forward", "_cpp_forward"):
        real = getattr(op, name)
        monkeypatch.setattr(op, name, lambda *a, _real=real, **k: calls.append(1) or _real(*a, **k))
    return calls


def make_ids(case: str, n: int, gen: torch.Generator) -> list[torch.Tensor]:
    if case == "one":
        return [torch.randint(0, max(1, n // 3), (n,), generator=gen)]
    if case == "two":  # ECG ids nested in patient ids
        ecg = torch.randint(0, max(1, n // 2), (n,), generator=gen)
        return [ecg, ecg // 2]
    if case == "singletons":  # only rows 0 and 1 share a group: most rows have no positive
        ids = torch.arange(n) * 5 - 7
        ids[1] = ids[0]
        return [ids]
    if case == "one_group":
        return [torch.full((n,), 42)]
    raise ValueError(case)


def _loss_and_grad(fn, z: torch.Tensor, up: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-row loss, dz) of ``fn`` at z, as float64 CPU tensors; the other tensors are moved to z's device."""
    z = z.detach().requires_grad_()
    per_row = fn(z, reduction="none", **to_device(kwargs, z.device))
    (grad,) = torch.autograd.grad(per_row, z, up.to(per_row.device, per_row.dtype))
    return per_row.detach().double().cpu(), grad.double().cpu()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", DS)
@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize(("backend", "device"), CASES)
def test_forward_and_grads_match_the_reference(backend: str, device: str, n: int, d: int, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(97 * n + d)
    z = torch.randn(n, d, generator=gen).to(dtype)
    case = ID_CASES[(n + d) % len(ID_CASES)]
    ids = make_ids(case, n, gen)
    views = torch.randint(0, 2, (n,), generator=gen) if (n * d) % 2 else None
    weights = [0.5 + torch.rand(1, generator=gen).item() for _ in ids]
    kw = {"group_ids": ids, "temperature": TAU, "weights": weights, "view_ids": views}
    up = torch.rand(n, generator=gen) + 0.5  # a non-uniform upstream gradient
    truth, truth_grad = _loss_and_grad(reference, z.double(), up, **kw)
    low, low_grad = _loss_and_grad(lambda x, **k: reference(x, upcast=dtype == torch.float32, **k), z, up, **kw)
    err_torch, gerr_torch = (low - truth).abs().max().item(), (low_grad - truth_grad).abs().max().item()
    got, grad = _loss_and_grad(multi_positive_contrastive_loss, z.to(device), up, backend=backend, **kw)
    assert torch.isfinite(got).all() and torch.isfinite(grad).all()
    err, gerr = (got - truth).abs().max().item(), (grad - truth_grad).abs().max().item()
    msg = f"{backend} case={case} views={views is not None}"
    assert err <= 2 * err_torch + ATOL[dtype], (msg, err, err_torch)
    assert gerr <= 2 * gerr_torch + GRAD_ATOL[dtype], (msg, gerr, gerr_torch)
    has_pos = positive_weight_sums(ids, weights, views) > 0
    assert torch.equal(got[~has_pos], torch.zeros_like(got[~has_pos]))  # rows without positives: exactly 0


# The issue-12 grid of the Triton kernels (in the interpreter without a GPU): N = 3 (one partial tile), 65 (two row
# blocks, split keys and the merge / reduce kernels), 4097 (the interpreter's 512-row tiles, nine key splits; fp32 and
# bf16 at d = 16 only, about 30 s each on 2 cores); d = 16, 128, 256; strided z, ids and view ids. N = 2 is apart:
# its only allowed key is its positive, so the loss is identically 0 and has no relative error to measure.
# On CUDA the grid adds the check's sizes (bench/gpu_check.py): N = 2048 and 8192 at every d and dtype, where the
# autotuned tiles and the split paths of the compiled kernels run.
GRID = [(n, d, dtype) for n in (3, 65) for d in (16, 128, 256) for dtype in DTYPES] + [
    pytest.param(4097, 16, dtype, marks=pytest.mark.slow) for dtype in (torch.float32, torch.bfloat16)]
GPU_GRID = [pytest.param(n, d, dtype, marks=pytest.mark.gpu) for n in (2048, 8192) for d in (16, 128, 256)
            for dtype in DTYPES]
# floor added to twice torch's own relative error in the same precision (relative: max-norm for the loss, Frobenius
# for the gradient, both against the float64 reference); the kernels round the gradient once to z's dtype
GRID_RTOL = {torch.float32: 1e-5, torch.bfloat16: 2**-8, torch.float16: 2**-11}
needs_triton = pytest.mark.skipif("triton" not in BACKENDS, reason="triton not available (no GPU, no interpreter)")


def strided_case(n: int, d: int, dtype: torch.dtype, gen: torch.Generator,
                 device: str = "cpu") -> tuple[torch.Tensor, dict]:
    """z (n, d) in dtype, and the loss arguments, every tensor a non-contiguous view on ``device``: z every other
    column of a (n, 2d) matrix, or the transpose of a (d, n) one; two kinds of ids and the view ids every other entry
    of wider vectors. At N = 3 the ids and views are fixed so that a row has a positive and a negative."""
    if (n + d) % 2:
        z = torch.randn(n, 2 * d, generator=gen).to(device, dtype)[:, ::2]
    else:
        z = torch.randn(d, n, generator=gen).to(device, dtype).T
    if n == 3:
        wide_ids = torch.tensor([[0, 9, 0, 9, 1, 9], [0, 9, 0, 9, 0, 9]])  # row 1 pairs with 0 (both kinds), 2 (one)
        wide_views = torch.tensor([0, 7, 1, 7, 0, 7])
    else:
        ecg = torch.randint(0, max(1, n // 3), (2 * n,), generator=gen)
        wide_ids = torch.stack([ecg, ecg // 2])
        wide_views = torch.randint(0, 2, (2 * n,), generator=gen)
    wide_ids, wide_views = wide_ids.to(device), wide_views.to(device)
    kw = {"group_ids": wide_ids[:, ::2], "temperature": TAU, "weights": (1.0, 0.5),
          "view_ids": wide_views[::2] if d != 128 else None}
    return z, kw


@pytest.mark.parametrize(("n", "d", "dtype"), GRID + GPU_GRID, ids=str)
@pytest.mark.parametrize(("backend", "device"), TRITON_DEVICES)
def test_triton_grid_relative_errors_against_float64(backend: str, device: str, n: int, d: int,
                                                     dtype: torch.dtype) -> None:
    if n in (2048, 8192) and device != "cuda":
        pytest.skip("N = 2048 and 8192 on the compiled kernels only (the interpreter takes minutes there)")
    gen = torch.Generator().manual_seed(1000 * n + d)
    z, kw = strided_case(n, d, dtype, gen, device)
    assert not z.is_contiguous() and not kw["group_ids"].is_contiguous()
    up = (torch.rand(n, generator=gen) + 0.5).to(device)  # a non-uniform upstream gradient
    truth, truth_grad = _loss_and_grad(reference, z.double(), up, **kw)  # on z's device, in float64
    assert truth_grad.norm() > 1e-3 * math.sqrt(n * d)  # a grid point with a real gradient to measure
    low, low_grad = _loss_and_grad(lambda x, **k: reference(x, upcast=dtype == torch.float32, **k), z, up, **kw)
    got, grad = _loss_and_grad(multi_positive_contrastive_loss, z, up, backend=backend, **kw)

    def rel(a: torch.Tensor, b: torch.Tensor, norm: float | str) -> float:
        return ((a - b).norm(p=norm) / b.norm(p=norm)).item()

    for what, value, own, exact, norm in (("loss", got, low, truth, math.inf), ("grad", grad, low_grad, truth_grad, 2)):
        err, err_torch = rel(value, exact, norm), rel(own, exact, norm)
        assert err <= 2 * err_torch + GRID_RTOL[dtype], (what, err, err_torch)


# the fixed shift's threshold: 2 log2(e) / tau <= FIXED_SHIFT_MAX_RANGE (100) from tau = 0.028854
SHIFT_TAUS = [(0.02, False), (0.0289, True), (0.05, True), (1.0, True)]


@pytest.mark.parametrize(("tau", "fixed"), SHIFT_TAUS, ids=str)
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize(("backend", "device"), TRITON_DEVICES)
def test_fixed_shift_and_online_max_agree_with_float64(backend: str, device: str, dtype: torch.dtype, tau: float,
                                                       fixed: bool) -> None:
    """Temperatures on both sides of the fixed shift's range (below it the kernels keep the online max), with two
    id kinds, view ids and split keys: loss and gradient within the grid's rule of the float64 reference."""
    from ecgfast.kernels import contrastive_loss as kernels

    assert op._fixed_shift(True, tau) == fixed and not op._fixed_shift(False, tau)
    assert 2 * kernels.LOG2E / tau <= kernels.FIXED_SHIFT_MAX_RANGE or not fixed
    n, d = 65, 16
    gen = torch.Generator().manual_seed(int(tau * 1000))
    z = torch.randn(n, d, generator=gen).to(device, dtype)
    ecg = torch.randint(0, n // 3, (n,), generator=gen).to(device)
    kw = {"group_ids": [ecg, ecg // 2], "weights": (1.0, 0.5), "temperature": tau,
          "view_ids": torch.randint(0, 2, (n,), generator=gen).to(device)}
    up = (torch.rand(n, generator=gen) + 0.5).to(device)
    truth, truth_grad = _loss_and_grad(reference, z.double(), up, **kw)
    low, low_grad = _loss_and_grad(lambda x, **k: reference(x, upcast=dtype == torch.float32, **k), z, up, **kw)
    got, grad = _loss_and_grad(multi_positive_contrastive_loss, z, up, backend=backend, **kw)
    for value, own, exact, norm in ((got, low, truth, math.inf), (grad, low_grad, truth_grad, 2)):
        err = ((value.double() - exact).norm(p=norm) / exact.norm(p=norm)).item()
        err_torch = ((own.double() - exact).norm(p=norm) / exact.norm(p=norm)).item()
        assert err <= 2 * err_torch + GRID_RTOL[dtype], (tau, err, err_torch)


@pytest.mark.parametrize(("backend", "device"), TRITON_DEVICES)
def test_fixed_shift_keeps_the_widest_logit_range(backend: str, device: str) -> None:
    """At the smallest temperature that takes the fixed shift, a row whose only key points the opposite way has
    every term at exp2(-2 log2(e) / tau) = 2^-100 after the shift: no underflow, so its loss (lse - s with one key)
    is 0, not inf or NaN, and the gradient is finite."""
    tau = 0.0289
    assert op._fixed_shift(True, tau)
    v = torch.randn(1, 16, generator=torch.Generator().manual_seed(0))
    z = torch.cat([v, -v]).to(device).requires_grad_()
    loss = multi_positive_contrastive_loss(z, torch.zeros(2, dtype=torch.long, device=device), tau,
                                           reduction="none", backend=backend)
    loss.sum().backward()
    assert loss.abs().max().item() <= 1e-4, loss
    assert torch.isfinite(z.grad).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", (16, 128, 256))
@pytest.mark.parametrize(("backend", "device"), TRITON_DEVICES)
def test_triton_two_rows_give_an_identically_zero_loss(backend: str, device: str, d: int, dtype: torch.dtype) -> None:
    """N = 2 with one pair: each row's only allowed key is its positive, so loss = lse - s = 0 whatever z is."""
    gen = torch.Generator().manual_seed(d)
    z, _ = strided_case(2, d, dtype, gen, device)
    got, grad = _loss_and_grad(multi_positive_contrastive_loss, z, torch.ones(2), backend=backend,
                               group_ids=torch.zeros(4, device=device)[::2].long())
    assert got.abs().max() <= 1e-5 and grad.abs().max() <= GRAD_ATOL[dtype]


@pytest.mark.parametrize(("n", "d"), [(65, 128), pytest.param(8192, 128, marks=pytest.mark.gpu)])
@pytest.mark.parametrize(("backend", "device"), TRITON_DEVICES)
def test_triton_runs_are_bitwise_deterministic(backend: str, device: str, n: int, d: int) -> None:
    """Two runs of forward and backward give the same bits (no atomics; the split partials are reduced in a fixed
    order), with two id kinds, view ids and split keys. N = 8192 on CUDA only."""
    if device == "cpu" and n > 65:
        pytest.skip("N = 8192 on the compiled kernels only")
    gen = torch.Generator().manual_seed(n)
    z = torch.randn(n, d, generator=gen).to(device, torch.bfloat16)
    ecg = torch.arange(n, device=device) // 2
    kw = {"group_ids": [ecg, ecg // 4], "weights": (1.0, 0.5), "view_ids": torch.arange(n, device=device) % 2}
    up = torch.rand(n, generator=gen).to(device) + 0.5
    first = _loss_and_grad(multi_positive_contrastive_loss, z, up, backend=backend, **kw)
    second = _loss_and_grad(multi_positive_contrastive_loss, z, up, backend=backend, **kw)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


@pytest.mark.parametrize("d", (128, 256))
@pytest.mark.parametrize(("backend", "device"), TRITON_DEVICES)
def test_every_config_left_after_pruning_matches_the_reference(backend: str, device: str, d: int) -> None:
    """Each config the autotuner may pick (launch_configs, pruned ahead of time) forced in turn, forward and backward,
    at the training shape (N = 2048 on CUDA, two id kinds, view ids, bf16 rows): within the grid's rule of the float64
    reference. On the CPU the interpreter's one config at N = 65."""
    from ecgfast.kernels import contrastive_loss as kernels

    n = 2048 if device == "cuda" else 65
    gen = torch.Generator().manual_seed(d)
    z = torch.randn(n, d, generator=gen).to(device, torch.bfloat16)
    ecg = torch.arange(n, device=device) // 2
    ids = torch.stack([ecg, ecg // 4])
    views = torch.arange(n, device=device) % 2
    args = (ids, (1.0, 0.5), views)
    up = torch.rand(n, generator=gen).to(device) + 0.5
    kw = {"group_ids": ids, "weights": (1.0, 0.5), "view_ids": views, "temperature": TAU}
    truth, truth_grad = _loss_and_grad(reference, z.double(), up, **kw)
    low, low_grad = _loss_and_grad(reference, z, up, upcast=False, **kw)
    d_pad = max(16, 1 << (d - 1).bit_length())
    for which in ("fwd", "bwd"):
        for config in kernels.launch_configs(which, d_pad, 2, n):
            forced = {which: config}
            loss, w_sum, lse = op._triton_forward(z, *args, 0, n, TAU, True, "bf16", config=forced.get("fwd"))
            dz = op._triton_backward(up, z, *args, lse, w_sum, 0, n, TAU, True, "bf16", config=forced.get("bwd"))
            for value, own, exact, norm in ((loss, low, truth, math.inf), (dz, low_grad, truth_grad, 2)):
                err = ((value.double().cpu() - exact).norm(p=norm) / exact.norm(p=norm)).item()
                err_torch = ((own - exact).norm(p=norm) / exact.norm(p=norm)).item()
                assert err <= 2 * err_torch + GRID_RTOL[torch.bfloat16], (which, config, err, err_torch)


def test_the_autotune_keys_hold_every_argument_that_changes_the_kernel() -> None:
    """Every constexpr of the autotuned kernels is a tile size the autotuner chooses, follows from D (D_PAD, BLOCK_D,
    BLOCK_DX), or is in the key; so are the N and query-row buckets. Otherwise one variant's choice (say, without
    view ids) would be reused for another (with them)."""
    import inspect

    from ecgfast.kernels import contrastive_loss as kernels

    tuned, from_d = {"BLOCK_M", "BLOCK_N"}, {"D_PAD", "BLOCK_D", "BLOCK_DX"}
    for kernel, key in ((kernels._mp_contrastive_fwd_kernel, kernels.FWD_KEY),
                        (kernels._mp_contrastive_bwd_kernel, kernels.BWD_KEY)):
        assert list(kernel.keys) == key
        params = inspect.signature(kernel.fn.fn).parameters
        constexprs = {name for name, p in params.items() if "constexpr" in str(p.annotation)}
        assert constexprs - tuned - from_d <= set(key), constexprs - tuned - from_d - set(key)
        assert {"N_BUCKET", "ROWS_BUCKET", "HAS_VIEWS", "FIXED_SHIFT", "SINGLE"} <= set(key)


@pytest.mark.skipif("triton" not in BACKENDS, reason="needs the Triton interpreter (a CPU host)")
def test_variants_are_tuned_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the autotuner (two configs offered, as on a GPU at large N), calls that differ only in the number of
    id kinds, in the shift (a temperature below the fixed shift's range), in view ids, in the key split or in the
    query rows get autotuner cache entries of their own."""
    from ecgfast.kernels import contrastive_loss as kernels

    offered = [kernels._interpreter_config(1)] * 2  # two entries: the launcher goes through the autotuner
    monkeypatch.setattr(kernels, "launch_configs", lambda *a, **k: offered)
    fwd = kernels._mp_contrastive_fwd_kernel
    monkeypatch.setattr(fwd, "cache", {})
    monkeypatch.delitem(fwd.__dict__, "do_bench", raising=False)  # a cached_property over _do_bench
    monkeypatch.setattr(fwd, "_do_bench", lambda fn, quantiles: (fn(), [1.0, 1.0, 1.0])[1])  # no GPU timer here
    n = 40
    z = torch.randn(n, 16)
    ecg = torch.arange(n) // 2
    for kw in ({"group_ids": [ecg]}, {"group_ids": [ecg, ecg // 2]}, {"group_ids": [ecg], "temperature": 0.02},
               {"group_ids": [ecg], "view_ids": torch.arange(n) % 2}, {"group_ids": [ecg], "rows": slice(0, 10)}):
        multi_positive_contrastive_loss(z, backend="triton", **kw)
    op._triton_forward(z, ecg[None], (1.0,), None, 0, n, TAU, True, "fp32", splits=2)  # two key splits, partials
    assert len(fwd.cache) == 6, list(fwd.cache)


def test_an_interpreter_that_cannot_run_the_kernels_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """Triton < 3.8's interpreter with NumPy >= 2.4 fails in every key loop; tests/conftest.py stops with this
    message instead of failing hundreds of cases."""
    import ecgfast.kernels as kernels

    versions = {"triton": "3.6.0", "numpy": "2.4.6"}
    monkeypatch.setattr(kernels.metadata, "version", lambda name: versions[name])
    assert "install triton>=3.8 or numpy<2.4" in kernels.interpreter_incompatibility()
    for triton_version, numpy_version in (("3.8.0", "2.4.6"), ("3.6.0", "2.3.5"), ("3.9.1", "2.5.0")):
        versions.update(triton=triton_version, numpy=numpy_version)
        assert kernels.interpreter_incompatibility() is None


# (z's dtype, precision argument, the dtype the rows are rounded to or None, unit roundoff u of the rows)
PRECISION_CASES = [(torch.float32, "bf16", torch.bfloat16, 2**-8), (torch.bfloat16, None, torch.bfloat16, 2**-8),
                   (torch.float16, None, torch.float16, 2**-11), (torch.float32, "fp16", torch.float16, 2**-11),
                   (torch.float32, None, None, 0.0)]


@pytest.mark.parametrize(("z_dtype", "precision", "rows_dtype", "u"), PRECISION_CASES, ids=str)
@pytest.mark.parametrize(("backend", "device"), CASES)
def test_precision_contract(backend: str, device: str, z_dtype: torch.dtype, precision: str | None,
                            rows_dtype: torch.dtype | None, u: float) -> None:
    """The functional's precision contract: rows normalised in float32 and rounded once to nearest; the loss float32
    and equal to the loss of the rounded rows; |loss_i - exact loss_i| <= 2 (2 u + u^2) / tau; the gradient in z's
    dtype, within a relative 2 u of the float64 gradient of the rounded rows' loss passed straight through."""
    gen = torch.Generator().manual_seed(31)
    n, d = 65, 128
    z = torch.randn(n, d, generator=gen).to(z_dtype).requires_grad_()
    ids = make_ids("two", n, gen)
    kw = {"group_ids": ids, "temperature": TAU, "weights": (1.0, 0.5), "view_ids": torch.randint(0, 2, (n,),
                                                                                                 generator=gen)}
    up = torch.rand(n, generator=gen) + 0.5
    z_dev = z.detach().to(device).requires_grad_()
    got = multi_positive_contrastive_loss(z_dev, reduction="none", backend=backend, precision=precision,
                                          **to_device(kw, device))
    (grad,) = torch.autograd.grad(got, z_dev, up.to(device))
    assert got.dtype == torch.float32 and grad.dtype == z_dtype
    got, grad = got.detach().cpu(), grad.cpu()

    z64 = z.detach().double().requires_grad_()
    x = torch.nn.functional.normalize(z64, dim=1)
    rounded = torch.nn.functional.normalize(z.detach().float(), dim=1)  # normalised in float32, then rounded once
    rounded = (rounded if rows_dtype is None else rounded.to(rows_dtype)).double()
    through = x + (rounded - x).detach()  # the rounded rows, the gradient passed straight through the rounding
    of_rounded = reference(through, reduction="none", normalize=False, **kw)
    (grad_of_rounded,) = torch.autograd.grad(of_rounded, z64, up.double())
    exact = reference(z64.detach(), reduction="none", **kw)

    assert (got.double() - of_rounded).abs().max() <= 1e-5  # the rounded rows' loss up to float32 summation
    assert (got.double() - exact).abs().max() <= 2 * (2 * u + u * u) / TAU + 1e-5
    rel = ((grad.double() - grad_of_rounded).norm() / grad_of_rounded.norm()).item()
    assert rel <= 2 * u + 1e-5, rel


@pytest.mark.parametrize("case", ID_CASES)
@pytest.mark.parametrize(("backend", "device"), CASES)
def test_id_cases_views_weights_and_reductions(backend: str, device: str, case: str) -> None:
    gen = torch.Generator().manual_seed(ID_CASES.index(case))
    n, d = 23, 8
    z = torch.randn(n, d, generator=gen)
    ids = make_ids(case, n, gen)
    for views in (None, torch.randint(0, 3, (n,), generator=gen)):
        for weights in (None, [0.0] + [1.5] * (len(ids) - 1) if len(ids) > 1 else [2.0]):
            for reduction in ("mean", "sum", "none"):
                kw = {"temperature": TAU, "weights": weights, "view_ids": views, "reduction": reduction}
                expected = reference(z, ids, **kw)
                got = multi_positive_contrastive_loss(z.to(device), to_device(ids, device), backend=backend,
                                                      **to_device(kw, device))
                assert got.dtype == torch.float32 and got.device.type == device
                torch.testing.assert_close(got.cpu(), expected, rtol=1e-5, atol=1e-5, msg=f"{backend} {kw}")


@pytest.mark.parametrize(("backend", "device"), CASES)
def test_non_contiguous_ids_and_view_ids_give_the_contiguous_loss(backend: str, device: str) -> None:
    """Stride-2 views of the id vectors (e.g. every other row of a (2B,) batch) are read by element, not by memory
    offset: the loss and the gradient equal those of contiguous copies (issue 12: the Triton kernels read the view
    ids' memory as if contiguous)."""
    gen = torch.Generator().manual_seed(12)
    n = 29
    z = torch.randn(n, 16, generator=gen).to(device).requires_grad_()
    wide_ids = torch.randint(0, 9, (2 * n,), generator=gen).to(device)
    wide_views = torch.randint(0, 3, (2 * n,), generator=gen).to(device)
    ids, views = wide_ids[::2], wide_views[::2]
    assert not ids.is_contiguous() and not views.is_contiguous()
    for kw in ({"view_ids": views}, {"view_ids": views, "reduction": "none"},
               {"view_ids": views, "rows": slice(3, 20)}):
        got = multi_positive_contrastive_loss(z, [ids, ids // 3], backend=backend, **kw)
        contiguous = {k: (v.contiguous() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
        expected = multi_positive_contrastive_loss(z, [ids.contiguous(), (ids // 3).contiguous()], backend=backend,
                                                   **contiguous)
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6, msg=f"{backend} {list(kw)}")
        (g,), (g_ref,) = torch.autograd.grad(got.sum(), z), torch.autograd.grad(expected.sum(), z)
        torch.testing.assert_close(g, g_ref, rtol=1e-6, atol=1e-6)
    # and both are the reference's
    torch.testing.assert_close(multi_positive_contrastive_loss(z, ids, view_ids=views, backend=backend).cpu(),
                               reference(z.cpu(), ids.cpu(), view_ids=views.cpu()), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("backend", "device"), CASES)
@pytest.mark.filterwarnings("ignore:Anomaly Detection has been enabled")
def test_no_positives_warns_and_gives_zero_not_nan(backend: str, device: str) -> None:
    """Loss 0 and gradient 0, never NaN; a warning on the CPU (not on a GPU, where the check would synchronise)."""
    z = torch.randn(6, 4, device=device, requires_grad=True)
    zeros = torch.zeros(6, dtype=torch.long, device=device)
    cases = [([torch.arange(6, device=device)], {}),  # all singletons
             ([zeros], {"view_ids": zeros}),  # nothing allowed
             ([zeros], {"weights": [0.0]})]  # weight 0
    for ids, kwargs in cases:
        for reduction in ("mean", "sum"):
            with no_positive_warning(device):
                loss = multi_positive_contrastive_loss(z, ids, backend=backend, reduction=reduction, **kwargs)
            assert loss.item() == 0 and loss.grad_fn is not None
            with torch.autograd.detect_anomaly():
                (grad,) = torch.autograd.grad(loss, z)
            assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize(("backend", "device"), CASES)
def test_fewer_than_two_rows_give_the_references_zero_with_a_warning(backend: str, device: str) -> None:
    """N = 1: no pair at all. Every backend returns the reference's loss 0 (on the CPU a warning for "mean" and
    "sum"), and a zero gradient; no error."""
    z = torch.randn(1, 5, device=device, requires_grad=True)
    ids = torch.zeros(1, dtype=torch.long, device=device)
    for reduction in ("mean", "sum"):
        with no_positive_warning(device):
            loss = multi_positive_contrastive_loss(z, ids, reduction=reduction, backend=backend)
        assert loss.shape == () and loss.item() == 0 and loss.dtype == torch.float32
        (grad,) = torch.autograd.grad(loss, z)
        assert torch.equal(grad, torch.zeros_like(grad))
    per_row = multi_positive_contrastive_loss(z, [ids, ids], view_ids=ids, reduction="none", backend=backend)
    assert torch.equal(per_row.cpu(), torch.zeros(1))
    with no_positive_warning(device):
        module_loss = MultiPositiveContrastiveLoss(backend=backend)(z.double(), ids)
    assert module_loss.item() == 0 and module_loss.dtype == torch.float64


@pytest.mark.parametrize(("backend", "device"), CASES)
def test_an_empty_batch_gives_the_references_zero(backend: str, device: str) -> None:
    z = torch.randn(0, 5, requires_grad=True)
    ids = torch.zeros(0, dtype=torch.long)
    with pytest.warns(RuntimeWarning, match="no row has a positive"):
        expected = reference(z, ids)
    with no_positive_warning(device):
        loss = multi_positive_contrastive_loss(z.to(device), ids.to(device), backend=backend)
    assert loss.item() == expected.item() == 0


@pytest.mark.parametrize("backend", FLOAT64_BACKENDS)
def test_gradcheck_float64(backend: str) -> None:
    gen = torch.Generator().manual_seed(7)
    z = torch.randn(6, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    ids = [torch.tensor([0, 0, 1, 1, 2, 3]), torch.tensor([0, 0, 0, 1, 1, 1])]
    views = torch.tensor([0, 1, 0, 1, 0, 1])
    for kwargs in ({}, {"weights": [1.0, 0.5], "view_ids": views}, {"rows": slice(2, 5), "reduction": "none"}):
        assert torch.autograd.gradcheck(
            lambda x, kw=kwargs: multi_positive_contrastive_loss(x, ids, TAU, backend=backend, **kw), (z,),
            eps=1e-6, atol=1e-5)
    assert torch.autograd.gradcheck(
        lambda x: multi_positive_contrastive_loss(x * 0.3, ids, 0.5, normalize=False, backend=backend), (z,),
        eps=1e-6, atol=1e-5)


def test_float64_never_runs_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    """float64 asked of Triton runs on cpp (else torch): a float64 loss, the float64 reference's value."""
    launched = []
    real = op._triton_forward
    monkeypatch.setattr(op, "_triton_forward", lambda *a, **k: launched.append(1) or real(*a, **k))
    gen = torch.Generator().manual_seed(8)
    z = torch.randn(9, 4, generator=gen, dtype=torch.float64)
    ids = torch.arange(9) % 4
    loss = multi_positive_contrastive_loss(z, ids, backend="triton")
    assert loss.dtype == torch.float64 and not launched
    torch.testing.assert_close(loss, reference(z, ids), rtol=1e-12, atol=1e-12)
    multi_positive_contrastive_loss(z.float(), ids, backend="triton")  # float32 does launch it
    assert launched


@pytest.mark.parametrize(("backend", "device"), CASES)
def test_grad_output_not_one_scales_the_gradient(backend: str, device: str) -> None:
    gen = torch.Generator().manual_seed(9)
    z = torch.randn(19, 12, generator=gen).to(device).requires_grad_()
    ids = to_device(make_ids("two", 19, gen), device)
    (g1,) = torch.autograd.grad(multi_positive_contrastive_loss(z, ids, backend=backend), z)
    (g37,) = torch.autograd.grad(multi_positive_contrastive_loss(z, ids, backend=backend) * 3.7, z)
    torch.testing.assert_close(g37, 3.7 * g1)
    z_cpu = z.detach().cpu().requires_grad_()
    (g_ref,) = torch.autograd.grad(reference(z_cpu, to_device(ids, "cpu")) * 3.7, z_cpu)
    torch.testing.assert_close(g37.cpu(), g_ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("n", (2, 5, 12))
@pytest.mark.parametrize(("backend", "device"), CASES)
def test_identical_embeddings_give_log_of_the_denominator_size(backend: str, device: str, n: int) -> None:
    """Every s_ij = 1/tau: loss_i = log |allowed(i)| = log(n - 1) for every row with a positive."""
    z = torch.randn(1, 7).expand(n, 7).contiguous().to(device)
    loss = multi_positive_contrastive_loss(z, [torch.arange(n, device=device) // 2 * 0], TAU, backend=backend)
    assert loss.item() == pytest.approx(math.log(n - 1), abs=1e-5)


@pytest.mark.parametrize(("backend", "device"), CASES)
def test_permuting_rows_and_ids_permutes_the_per_row_losses(backend: str, device: str) -> None:
    gen = torch.Generator().manual_seed(11)
    n = 37
    z = torch.randn(n, 16, generator=gen).to(device)
    ids = to_device(make_ids("two", n, gen), device)
    views = torch.randint(0, 3, (n,), generator=gen).to(device)
    perm = torch.randperm(n, generator=gen).to(device)
    a = multi_positive_contrastive_loss(z, ids, view_ids=views, reduction="none", backend=backend)
    b = multi_positive_contrastive_loss(z[perm], [g[perm] for g in ids], view_ids=views[perm], reduction="none",
                                        backend=backend)
    torch.testing.assert_close(b, a[perm], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("backend", "device"), CASES)
def test_anchor_rows_slice_matches_the_reference_block(backend: str, device: str) -> None:
    """The DDP layout: local anchors [offset, offset + n) of the gathered keys, self excluded by global index."""
    gen = torch.Generator().manual_seed(5)
    z = torch.randn(70, 9, generator=gen, requires_grad=True)
    ids = make_ids("two", 70, gen)
    views = torch.randint(0, 2, (70,), generator=gen)
    z_dev = z.detach().to(device).requires_grad_()
    for rows in (slice(0, 33), slice(33, 70), slice(10, 11), slice(-5, None)):
        got = multi_positive_contrastive_loss(z_dev, to_device(ids, device), view_ids=views.to(device), rows=rows,
                                              backend=backend)
        expected = reference(z, ids, view_ids=views, rows=rows)
        torch.testing.assert_close(got.cpu(), expected, rtol=1e-5, atol=1e-6)
        (g,), (g_ref,) = torch.autograd.grad(got, z_dev), torch.autograd.grad(expected, z)
        torch.testing.assert_close(g.cpu(), g_ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("reduction", ("mean", "none"))
@pytest.mark.parametrize(("backend", "device"), CASES)
def test_torch_compile_fullgraph_traces_the_op(backend: str, device: str, reduction: str) -> None:
    """Every backend traces without a graph break: one custom op forward and one backward, whatever the backend
    (the torch backend's reference runs inside the op). A host synchronisation (``.item()``, ``bool(tensor)``) in
    the op would break the graph, so this is also the check that the op has none."""
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(40, 16, generator=gen).to(device).requires_grad_()
    ids = to_device(make_ids("two", 40, gen), device)
    views = torch.randint(0, 2, (40,), generator=gen).to(device)

    def step(x: torch.Tensor) -> torch.Tensor:
        out = multi_positive_contrastive_loss(torch.tanh(x), ids, TAU, (1.0, 0.5), views, reduction=reduction,
                                              backend=backend)
        return out.sum() * 2.0

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    got = compiled(z)
    (g,) = torch.autograd.grad(got, z)
    expected = step(z)
    (g_ref,) = torch.autograd.grad(expected, z)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(g, g_ref)


# One forward + backward of the Triton path at N = 2048, d = 128, two id kinds and view ids (issue 12 found ~138 torch
# ops and ~100 launches there, and a host synchronisation): the Triton launches, exactly, and every aten op the
# profiler records (nested ones included: aten::to -> _to_copy -> copy_), bounded.
TRITON_LAUNCHES = {"_mp_contrastive_normalize_kernel": 2, "_mp_contrastive_fwd_kernel": 1,
                   "_mp_contrastive_merge_kernel": 1, "_mp_contrastive_row_terms_kernel": 1,
                   "_mp_contrastive_bwd_kernel": 1,
                   "_mp_contrastive_bwd_reduce_kernel": 1}  # 32 row blocks of 64 < 132 SMs: the keys are split
# measured 89 and 55 (torch 2.13, CPU), the test's own ops included; 18 of them since issue 24: the ids' int32 labels
# (one sort and one search for all kinds, once a call) and the backward's per-row terms
MAX_ATEN_OPS = {"mean": 94, "none": 60}
HOST_SYNCS = ("aten::_local_scalar_dense", "aten::item", "aten::is_nonzero")


@needs_triton
@pytest.mark.parametrize("reduction", ("mean", "none"))
def test_one_forward_backward_is_seven_launches_and_a_bounded_number_of_torch_ops(
        reduction: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernels are replaced by stubs that count their launches (so that the interpreter's own torch calls are not
    counted and the test takes a second); torch.profiler counts the aten ops of the host code around them. No host
    synchronisation, but the CPU-only "no row has a positive" check of reduction="mean" (skipped on a GPU and under
    torch.compile)."""
    from ecgfast.kernels import contrastive_loss as kernels

    launches: dict[str, int] = {}

    class Stub:
        def __init__(self, name: str) -> None:
            self.name = name
            self.fn = self  # the launcher calls kernel.fn[grid] where it bypasses the autotuner

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.__setitem__(self.name, launches.get(self.name, 0) + 1)

    for name in TRITON_LAUNCHES:
        monkeypatch.setattr(kernels, name, Stub(name))
    n, d = 2048, 128
    z = torch.randn(n, d, requires_grad=True)
    ecg = torch.arange(n) // 2
    ids, views = torch.stack([ecg, ecg // 4]), torch.arange(n) % 2
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        loss = multi_positive_contrastive_loss(z, ids, TAU, (1.0, 0.5), views, reduction=reduction, backend="triton",
                                               precision="bf16")
        (loss.sum() if reduction == "none" else loss).backward()
    aten = [e.name for e in prof.events() if e.name.startswith("aten::")]
    assert launches == TRITON_LAUNCHES
    print(f"{reduction}: {len(aten)} aten ops, launches {launches}")
    assert len(aten) <= MAX_ATEN_OPS[reduction], sorted(aten)
    syncs = [name for name in aten if name in HOST_SYNCS]
    assert len(syncs) == (3 if reduction == "mean" else 0), syncs  # bool(has_pos.any()): is_nonzero -> item -> ...


@pytest.mark.parametrize(("backend", "device"), CASES)
def test_module_runs_the_chosen_backend(backend: str, device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_kernel_calls(monkeypatch)
    gen = torch.Generator().manual_seed(2)
    n = 37
    z = torch.randn(n, 8, generator=gen, requires_grad=True)
    ids = make_ids("two", n, gen)
    loss = MultiPositiveContrastiveLoss(weights=(1.0, 0.5), backend=backend)(z.to(device), *to_device(ids, device))
    assert bool(calls) == (backend != "torch")
    torch.testing.assert_close(loss.cpu(), reference(z, ids, weights=(1.0, 0.5)), rtol=1e-5, atol=1e-6)


def test_backend_choice_and_environment_override(monkeypatch: pytest.MonkeyPatch) -> None:
    assert BACKENDS[-1] == "torch" and set(BACKENDS) <= set(backends.BACKENDS[OP])
    assert "triton" in BACKENDS or torch.cuda.is_available()  # without a GPU, conftest.py sets TRITON_INTERPRET=1
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.delenv(backends.ENV_VARS["vcg_augment"], raising=False)
    monkeypatch.setattr(backends, "_DEFAULT", {})
    expected = "cpp" if "cpp" in BACKENDS else "torch"  # the Triton interpreter is never a default
    assert backends.resolve_backend(OP, "cpu") == expected
    monkeypatch.setenv(ENV, "torch")
    assert backends.resolve_backend(OP, "cpu") == expected  # decided once per device type, then cached
    monkeypatch.setattr(backends, "_DEFAULT", {})
    assert backends.resolve_backend(OP, "cpu") == "torch"
    assert backends.resolve_backend("vcg_augment", "cpu") == expected  # the variable is per op
    z, ids = torch.randn(4, 3), torch.tensor([0, 0, 1, 1])
    calls = _count_kernel_calls(monkeypatch)
    torch.testing.assert_close(multi_positive_contrastive_loss(z, ids), reference(z, ids), rtol=0, atol=0)
    assert not calls  # the default followed $ECGFAST_LOSS_BACKEND
    multi_positive_contrastive_loss(z, ids, backend=KERNEL_BACKENDS[-1])  # an explicit backend wins
    assert calls
    monkeypatch.setenv(ENV, "triton")
    monkeypatch.setattr(backends, "_DEFAULT", {})
    assert backends.resolve_backend(OP, "cpu") == "triton"
    monkeypatch.setenv(ENV, "nope")
    monkeypatch.setattr(backends, "_DEFAULT", {})
    with pytest.raises(ValueError, match=ENV):
        multi_positive_contrastive_loss(z, ids)
    for bad in ("cuda-magic", "cuda"):  # the loss has no "cuda" backend: triton is its CUDA kernel
        with pytest.raises(ValueError, match="must be one of"):
            multi_positive_contrastive_loss(z, ids, backend=bad)
    assert backends.available_backends(OP, "cuda")[-1] == "torch"


def test_row_bounds_are_those_of_slice_indices() -> None:
    """The anchors' bounds, written out so that torch 2.11's dynamo traces them, equal slice.indices for every slice
    with a positive step (others are refused)."""
    bounds = (None, -100, -5, -1, 0, 1, 3, 33, 100)
    for n in (0, 1, 5, 70):
        for rows in [slice(a, b, c) for a in bounds for b in bounds for c in (None, 1, 2)] + [None]:
            assert op._row_bounds(rows, n) == (rows or slice(None)).indices(n), (rows, n)


def test_input_checks() -> None:
    z, ids = torch.randn(4, 3), torch.tensor([0, 0, 1, 1])
    bad = [
        ((torch.randn(4), ids), r"\(N, d\)"),
        ((torch.randn(4, 1025), ids), "d <= 1024"),
        ((torch.randn(4, 0), ids), "d <= 1024"),
        ((z, ids[:3]), r"shape \(4,\)"),
        ((z, ids.float()), "integer"),
        ((z, torch.zeros(2, 2, 4, dtype=torch.long)), r"\(K, N\)"),
        ((z, []), "at least one"),
        ((torch.arange(12).view(4, 3), ids), "float"),
    ]
    for args, match in bad:
        with pytest.raises(ValueError, match=match):
            multi_positive_contrastive_loss(*args)
    for kwargs, match in (({"temperature": 0.0}, "temperature"), ({"temperature": float("nan")}, "temperature"),
                          ({"weights": (1.0, 2.0)}, "2 weights"), ({"weights": (-1.0,)}, ">= 0"),
                          ({"reduction": "avg"}, "reduction"), ({"rows": slice(3, 1)}, "rows"),
                          ({"rows": slice(0, 4, 2)}, "step 1"), ({"view_ids": ids[:3]}, "view_ids"),
                          ({"view_ids": ids.float()}, "view_ids"), ({"gather": 1}, "gather"),
                          ({"normalize": "yes"}, "normalize")):
        with pytest.raises(ValueError, match=match):
            multi_positive_contrastive_loss(z, ids, **kwargs)


@pytest.mark.skipif(not {"triton", "cpp"} <= set(BACKENDS), reason="needs both kernel backends")
def test_triton_and_cpp_agree() -> None:
    gen = torch.Generator().manual_seed(17)
    z = torch.randn(100, 40, generator=gen)
    ids = make_ids("two", 100, gen)
    views = torch.randint(0, 2, (100,), generator=gen)
    a = multi_positive_contrastive_loss(z, ids, view_ids=views, reduction="none", backend="triton")
    b = multi_positive_contrastive_loss(z, ids, view_ids=views, reduction="none", backend="cpp")
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_docstring_examples_run() -> None:
    result = doctest.testmod(op, extraglobs={"torch": torch})
    assert result.failed == 0 and result.attempted > 0


# ---------------------------------------------------------------------------------------------------------------
# Distributed: 2 gloo ranks on every kernel backend (tests/ddp_harness.py; the reference backend in test_loss.py)

# the dtype each kernel backend runs in: float64 where it can (tight tolerances), float32 on Triton
DDP_DTYPES = {"cpp": torch.float64, "triton": torch.float32}
DDP_TOLERANCES = {torch.float64: {"rtol": 1e-10, "atol": 1e-12}, torch.float32: {"rtol": 1e-4, "atol": 1e-5}}


@pytest.mark.skipif(not GLOO, reason="needs torch.distributed + gloo")
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_two_ranks_on_a_kernel_backend_match_the_single_process_full_batch(backend: str, tmp_path: Path) -> None:
    """Local queries against the gathered keys on the fused kernels, rank-different inputs, against the float64
    full batch on one process; the kernels really ran in the ranks."""
    dtype = DDP_DTYPES[backend]
    ranks = run_ranks(tmp_path, backend, dtype)
    assert all(r["kernel_calls"] > 0 for r in ranks)
    assert_ranks_match_the_full_batch(ranks, dtype, **DDP_TOLERANCES[dtype])


# ---------------------------------------------------------------------------------------------------------------
# Peak memory on CPU, measured: each path in a fresh process; the kernel's peak-RSS mark (VmHWM) is reset just
# before the call (/proc/self/clear_refs), so the figure is the peak resident memory of the call minus what was there.

_MEMORY_SCRIPT = textwrap.dedent("""
    import sys, torch
    from ecgfast.ops.contrastive_loss import multi_positive_contrastive_loss
    torch.manual_seed(0)
    which, n, d = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    ids = torch.arange(n) // 2  # two views of n / 2 ECGs
    def naive(z):  # what peers write: the N x N similarity matrix, masked, log-softmax
        x = torch.nn.functional.normalize(z, dim=1)
        s = x @ x.T / 0.1
        s = s.masked_fill(torch.eye(n, dtype=torch.bool), float("-inf"))
        partner = torch.arange(n) ^ 1
        return -(s.log_softmax(1)[torch.arange(n), partner]).mean()
    def fused(z):
        return multi_positive_contrastive_loss(z, ids, 0.1, backend="cpp")
    fn = naive if which == "naive" else fused
    small = torch.randn(64, d, requires_grad=True)  # warm up libraries and thread pools on a small input
    ids_full, ids = ids, torch.arange(64) // 2
    n_full, n = n, 64
    fn(small).backward()
    ids, n = ids_full, n_full
    z = torch.randn(n, d, requires_grad=True)
    kib = lambda key: int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1])
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak RSS (VmHWM) to the current RSS
    before = kib("VmRSS:")
    fn(z).backward()
    print(f"{(kib('VmHWM:') - before) / 1024:.1f}")  # peak RSS during the call minus RSS before it, MiB
""")


def measure_extra_memory_mib(which: str, n: int, d: int) -> float:
    """Peak extra resident memory (MiB) of forward + backward of ``which`` ("naive" or "fused"), own process."""
    out = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, which, str(n), str(d)], capture_output=True,
                         text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert out.returncode == 0, out.stderr
    return float(out.stdout.strip().splitlines()[-1])


@needs_cpp
@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_blockwise_cpu_peak_memory_is_20x_below_naive_at_16k() -> None:
    n, d = 16_384, 128
    naive = measure_extra_memory_mib("naive", n, d)
    fused = measure_extra_memory_mib("fused", n, d)
    print(f"\nN={n} d={d}: extra peak memory naive {naive:.0f} MiB, fused {fused:.1f} MiB, ratio {naive / fused:.1f}")
    assert naive >= 1024  # the N x N fp32 matrix alone is 1 GiB: the measurement sees it
    assert fused * 20 <= naive, (naive, fused)


# ---------------------------------------------------------------------------------------------------------------
# Ahead-of-time compile of the Triton kernels for an H100, without a GPU

def _compile_for_sm90(script: str, tmp_path: Path) -> str:
    """Run a compile-only ``script`` in a subprocess without the interpreter (which cannot compile) and with a fresh
    Triton cache (so that every kernel really is compiled); its stdout, printed. Skips where Triton has no NVIDIA
    backend."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton_cache")
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=900)
    if "no NVIDIA backend" in result.stderr or "KeyError: 'cuda'" in result.stderr:
        pytest.skip("this triton has no NVIDIA backend")
    assert result.returncode == 0, result.stderr[-4000:]
    print(result.stdout)
    return result.stdout


_TRITON_AOT = textwrap.dedent("""
    import triton
    from ecgfast.kernels import contrastive_loss as k
    from ecgfast.ops.kernel_sass import SMEM_MAX, compile_sm90, resource_usage

    # (row dtype, product precision of tl.dot, d, configs): d = 128 whole-d tiles; 256 and 1024 the similarity in d
    # chunks and the backward's dx in column chunks. Every config the pruner leaves, but the first at d = 1024.
    CASES = [("bf16", "ieee", 128, "all"), ("bf16", "ieee", 256, "all"), ("bf16", "ieee", 1024, "first"),
             ("fp16", "ieee", 128, "all"), ("fp32", "tf32", 128, "all"), ("fp32", "tf32", 256, "all"),
             ("fp32", "tf32", 1024, "first"),
             ("fp32", "ieee", 128, "all"), ("fp32", "ieee", 256, "all")]
    for dtype, dot, d, which_configs in CASES:
        d_pad = max(16, triton.next_power_of_2(d))
        elem = 4 if dtype == "fp32" else 2
        fma = k.uses_fma(dot, elem)
        for which in ("fwd", "bwd"):
            kernel = {"fwd": k._mp_contrastive_fwd_kernel, "bwd": k._mp_contrastive_bwd_kernel}[which].fn
            configs = k.launch_configs(which, d_pad, elem, 8192, fma=fma)
            if dtype == "bf16":  # the tensor-core tiles survive the pruning at every d: 128 rows, or 64 and 8 warps
                assert any(c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] >= 128 * 64 for c in configs), (which, d)
            for config in configs if which_configs == "all" else configs[:1]:
                consts = {"D": d, "D_PAD": d_pad, "BLOCK_D": k.dot_chunk(d_pad), "NUM_KINDS": 2, "HAS_VIEWS": True,
                          "FIXED_SHIFT": True, "SINGLE": True, "DOT": dot, "NORMALIZE": True, "stride_z1": 1,
                          "BLOCK_DX": k.dx_chunk(d_pad), **config.kwargs}
                if which == "bwd":  # SINGLE only with whole-d dx (else the reduction kernel finishes the rows)
                    consts["SINGLE"] = k.dx_chunk(d_pad) == d_pad
                compiled = compile_sm90(kernel, {"X": f"*{dtype}", "Z": "*fp32"}, consts, config.num_warps,
                                        config.num_stages)
                regs, spilled = resource_usage(compiled)
                ptx = compiled.asm["ptx"]
                assert compiled.metadata.shared <= SMEM_MAX, (which, dtype, d, config, compiled.metadata.shared)
                assert "st.global" in ptx, (which, dtype, d, config)
                if not fma:
                    assert "mma" in ptx, (which, dtype, d, config)  # tensor cores
                if config.kwargs["BLOCK_M"] >= 64 and dtype != "fp32":
                    assert "wgmma" in ptx, (which, dtype, d, config)  # Hopper's warpgroup MMA
                assert spilled == 0, (which, dtype, dot, d, config, regs, spilled)  # every config, every dtype
                print(which, dtype, dot, d, config.kwargs, config.num_warps, config.num_stages, "regs", regs,
                      "spilled", spilled, "ok")
    # the online-max path (tau below the fixed shift's range), once
    for which, kernel in (("fwd", k._mp_contrastive_fwd_kernel.fn), ("bwd", k._mp_contrastive_bwd_kernel.fn)):
        config = k.launch_configs(which, 128, 2, 8192)[0]
        consts = {"D": 128, "D_PAD": 128, "BLOCK_D": 128, "BLOCK_DX": 128, "NUM_KINDS": 2, "HAS_VIEWS": True,
                  "FIXED_SHIFT": False, "SINGLE": True, "DOT": "ieee", "NORMALIZE": True, "stride_z1": 1,
                  **config.kwargs}
        regs, spilled = resource_usage(compile_sm90(kernel, {"X": "*bf16", "Z": "*fp32"}, consts, config.num_warps,
                                                    config.num_stages))
        assert spilled == 0, (which, "online max", regs, spilled)
        print(which, "online max", "regs", regs, "ok")
    for name, kernel, consts in (  # the row-wise kernels, once each
            ("normalize", k._mp_contrastive_normalize_kernel,
             {"stride_z1": 1, "D": 128, "D_PAD": 128, "NORMALIZE": True, "BLOCK_M": 32}),
            ("merge", k._mp_contrastive_merge_kernel, {"BLOCK": 128}),
            ("row terms", k._mp_contrastive_row_terms_kernel, {"FIXED_SHIFT": True, "BLOCK": 1024}),
            ("reduce", k._mp_contrastive_bwd_reduce_kernel,
             {"stride_z1": 1, "D": 128, "D_PAD": 128, "NORMALIZE": True, "BLOCK_M": 32})):
        types = {"X": "*bf16", "Z": "*fp32", "PART": "*fp32"}
        regs, spilled = resource_usage(compile_sm90(kernel, types, consts, 4, 1))
        assert spilled == 0, (name, regs, spilled)
        print(name, "regs", regs, "ok")
""")


def test_triton_loss_kernels_compile_for_sm90(tmp_path) -> None:
    """Ahead-of-time Triton compile to PTX and cubin for an H100 (sm_90) of the loss kernels with the launcher's
    argument types (ecgfast.ops.kernel_sass), 16-byte alignment, constexprs, num_warps and num_stages: every forward
    and backward config the autotuner may pick, for bf16 rows at d = 128 (whole-d tiles) and 256 (d chunks), fp16
    at 128, tf32 and float32 (CUDA-core FMA) at 128 and 256, and the first bf16 and tf32 ones at d = 1024 (tensor
    cores: wgmma for blocks of >= 64 rows, mma below; zero spilled bytes in every one, from cuobjdump's resource
    usage; shared memory within an H100 block's; a 128 x 64-class tile among the bf16 configs at every d), the
    online-max path, and the row-wise kernels. Catches what the interpreter accepts but the GPU
    compiler rejects, on CPU-only CI (and on a GPU host, where the spill check still holds). A subprocess, because
    the interpreter (TRITON_INTERPRET=1) cannot compile; a fresh Triton cache, so every kernel really is compiled."""
    stdout = _compile_for_sm90(_TRITON_AOT, tmp_path)
    assert stdout.count(" ok") >= 50


_SASS_BUDGET = textwrap.dedent("""
    from ecgfast.ops import kernel_sass as ks
    n, d = 8192, 128
    budget = ks.instruction_budget(n, d)  # 2x the tensor-core floor of 6 N^2 d at the H100's issue rate
    for case in ks.LOSS_CASES:
        costs = ks.loss_costs(case, d, n)
        for which, found in costs.items():
            assert found, (case, which)  # the launcher offers warpgroup-MMA tiles
            for c in found:
                print(case, which, f"{c.block_m}x{c.block_n} w{c.num_warps} s{c.num_stages}", "unmasked",
                      round(c.unmasked, 1), "masked", round(c.masked, 1), "regs", c.registers, "spilled", c.spilled)
                assert c.spilled == 0, (case, c)
                assert c.masked > c.unmasked, (case, c)  # the four stretches were told apart
        best = {which: min(c.weighted(n) for c in found) for which, found in costs.items()}
        total = best["fwd"] + best["bwd"]
        print(case, "best fwd", round(best["fwd"], 1), "bwd", round(best["bwd"], 1), "total", round(total, 1),
              "budget", round(budget, 1), "issue us", round(ks.issue_time_us(total, n), 1), "floor us",
              round(ks.tensor_floor_us(n, d), 1))
        assert total <= budget, (case, best, budget)
""")


def test_loss_kernels_meet_the_sass_budget(tmp_path) -> None:
    """Instructions per score element of the key loops, from the sm_90 SASS of every warpgroup-MMA config (bf16,
    d = 128), in the benchmark case (one id kind) and the training case (two id kinds and view ids): the forward's
    and the backward's (fewest-instruction config each, masked tiles weighted in at N = 8192) within the budget that
    puts their issue time at 2x the tensor-core floor on an H100: N^2 I / (128 x 132 SMs x 1.83 GHz) <= 2 x
    6 N^2 d / 989 TFLOP/s, i.e. I <= 48.0 at N = 8192, d = 128 (ecgfast.ops.kernel_sass.instruction_budget). Zero
    spilled bytes in every config. Compile only (no GPU); a subprocess, as the compile test."""
    assert _compile_for_sm90(_SASS_BUDGET, tmp_path).count("budget") == 2
