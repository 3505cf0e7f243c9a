"""Tests of the fused multi-positive contrastive loss (ecgfast.ops.contrastive_loss) against the torch reference.

Every available kernel backend (triton in the interpreter without a GPU, cpp when ecgfast._C is built) is compared
with the float64 reference over a grid declared once below. Low-precision results pass when their error against
the float64 reference is at most twice torch's own error in that precision (the reference with upcast=False) plus
a small atol (flash-attention's rule). Also: float64 gradcheck (cpp), grad_output != 1, a closed form, a row
permutation, anchors as a row slice, torch.compile(fullgraph=True), input checks, and the measured peak memory of
the blockwise CPU path at N = 16,384.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from ecgfast.ops import contrastive_loss as op
from ecgfast.ops.contrastive_loss import multi_positive_contrastive_loss, resolve_backend
from ecgfast.reference.contrastive_loss import multi_positive_contrastive_loss_reference as reference
from ecgfast.reference.contrastive_loss import positive_weight_sums

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

def _available(backend: str) -> bool:
    try:
        resolve_backend("cpu", backend)
    except ValueError:
        return False
    return True


KERNEL_BACKENDS = tuple(b for b in ("triton", "cpp") if _available(b))
needs_kernel = pytest.mark.skipif(not KERNEL_BACKENDS, reason="no kernel backend (triton interpreter or ecgfast._C)")
needs_cpp = pytest.mark.skipif(not _available("cpp"), reason="ecgfast._C not built")


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
    z = z.detach().requires_grad_()
    per_row = fn(z, reduction="none", **kwargs)
    (grad,) = torch.autograd.grad(per_row, z, up.to(per_row.dtype))
    return per_row.detach().double(), grad.double()


@needs_kernel
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", DS)
@pytest.mark.parametrize("n", NS)
def test_forward_and_grads_match_the_reference(n: int, d: int, dtype: torch.dtype) -> None:
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
    for backend in KERNEL_BACKENDS:
        got, grad = _loss_and_grad(multi_positive_contrastive_loss, z, up, backend=backend, **kw)
        assert torch.isfinite(got).all() and torch.isfinite(grad).all()
        err, gerr = (got - truth).abs().max().item(), (grad - truth_grad).abs().max().item()
        msg = f"{backend} case={case} views={views is not None}"
        assert err <= 2 * err_torch + ATOL[dtype], (msg, err, err_torch)
        assert gerr <= 2 * gerr_torch + GRAD_ATOL[dtype], (msg, gerr, gerr_torch)
        has_pos = positive_weight_sums(ids, weights, views) > 0
        assert torch.equal(got[~has_pos], torch.zeros_like(got[~has_pos]))  # rows without positives: exactly 0


@needs_kernel
@pytest.mark.parametrize("case", ID_CASES)
def test_id_cases_views_weights_and_reductions(case: str) -> None:
    gen = torch.Generator().manual_seed(ID_CASES.index(case))
    n, d = 23, 8
    z = torch.randn(n, d, generator=gen)
    ids = make_ids(case, n, gen)
    for views in (None, torch.randint(0, 3, (n,), generator=gen)):
        for weights in (None, [0.0] + [1.5] * (len(ids) - 1) if len(ids) > 1 else [2.0]):
            for reduction in ("mean", "sum", "none"):
                kw = {"temperature": TAU, "weights": weights, "view_ids": views, "reduction": reduction}
                expected = reference(z, ids, **kw)
                for backend in KERNEL_BACKENDS:
                    got = multi_positive_contrastive_loss(z, ids, backend=backend, **kw)
                    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, msg=f"{backend} {kw}")


@needs_kernel
@pytest.mark.filterwarnings("ignore:Anomaly Detection has been enabled")
def test_no_positives_warns_and_gives_zero_not_nan() -> None:
    z = torch.randn(6, 4, requires_grad=True)
    cases = [([torch.arange(6)], {}),  # all singletons
             ([torch.zeros(6, dtype=torch.long)], {"view_ids": torch.zeros(6, dtype=torch.long)})]  # nothing allowed
    for backend in KERNEL_BACKENDS:
        for ids, kwargs in cases:
            with pytest.warns(RuntimeWarning, match="no row has a positive"):
                loss = multi_positive_contrastive_loss(z, ids, backend=backend, **kwargs)
            assert loss.item() == 0 and loss.grad_fn is not None
            with torch.autograd.detect_anomaly():
                (grad,) = torch.autograd.grad(loss, z)
            assert torch.equal(grad, torch.zeros_like(grad))


@needs_cpp
def test_gradcheck_float64_cpp() -> None:
    gen = torch.Generator().manual_seed(7)
    z = torch.randn(6, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    ids = [torch.tensor([0, 0, 1, 1, 2, 3]), torch.tensor([0, 0, 0, 1, 1, 1])]
    views = torch.tensor([0, 1, 0, 1, 0, 1])
    for kwargs in ({}, {"weights": [1.0, 0.5], "view_ids": views}, {"rows": slice(2, 5), "reduction": "none"}):
        assert torch.autograd.gradcheck(
            lambda x, kw=kwargs: multi_positive_contrastive_loss(x, ids, TAU, backend="cpp", **kw), (z,),
            eps=1e-6, atol=1e-5)
    assert torch.autograd.gradcheck(
        lambda x: multi_positive_contrastive_loss(x * 0.3, ids, 0.5, normalize=False, backend="cpp"), (z,),
        eps=1e-6, atol=1e-5)


@needs_kernel
def test_grad_output_not_one_scales_the_gradient() -> None:
    gen = torch.Generator().manual_seed(9)
    z = torch.randn(19, 12, generator=gen, requires_grad=True)
    ids = make_ids("two", 19, gen)
    for backend in KERNEL_BACKENDS:
        (g1,) = torch.autograd.grad(multi_positive_contrastive_loss(z, ids, backend=backend), z)
        (g37,) = torch.autograd.grad(multi_positive_contrastive_loss(z, ids, backend=backend) * 3.7, z)
        torch.testing.assert_close(g37, 3.7 * g1)
        (g_ref,) = torch.autograd.grad(reference(z, ids) * 3.7, z)
        torch.testing.assert_close(g37, g_ref, rtol=1e-4, atol=1e-6)


@needs_kernel
@pytest.mark.parametrize("n", (2, 5, 12))
def test_identical_embeddings_give_log_of_the_denominator_size(n: int) -> None:
    """Every s_ij = 1/tau: loss_i = log |allowed(i)| = log(n - 1) for every row with a positive."""
    z = torch.randn(1, 7).expand(n, 7).contiguous()
    for backend in KERNEL_BACKENDS:
        loss = multi_positive_contrastive_loss(z, [torch.arange(n) // 2 * 0], TAU, backend=backend)
        assert loss.item() == pytest.approx(math.log(n - 1), abs=1e-5)


@needs_kernel
def test_permuting_rows_and_ids_permutes_the_per_row_losses() -> None:
    gen = torch.Generator().manual_seed(11)
    n = 37
    z = torch.randn(n, 16, generator=gen)
    ids = make_ids("two", n, gen)
    views = torch.randint(0, 3, (n,), generator=gen)
    perm = torch.randperm(n, generator=gen)
    for backend in KERNEL_BACKENDS:
        a = multi_positive_contrastive_loss(z, ids, view_ids=views, reduction="none", backend=backend)
        b = multi_positive_contrastive_loss(z[perm], [g[perm] for g in ids], view_ids=views[perm], reduction="none",
                                            backend=backend)
        torch.testing.assert_close(b, a[perm], rtol=1e-5, atol=1e-5)


@needs_kernel
def test_anchor_rows_slice_matches_the_reference_block() -> None:
    """The DDP layout: local anchors [offset, offset + n) of the gathered keys, self excluded by global index."""
    gen = torch.Generator().manual_seed(5)
    z = torch.randn(70, 9, generator=gen, requires_grad=True)
    ids = make_ids("two", 70, gen)
    views = torch.randint(0, 2, (70,), generator=gen)
    for backend in KERNEL_BACKENDS:
        for rows in (slice(0, 33), slice(33, 70), slice(10, 11)):
            got = multi_positive_contrastive_loss(z, ids, view_ids=views, rows=rows, backend=backend)
            expected = reference(z, ids, view_ids=views, rows=rows)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
            (g,), (g_ref,) = torch.autograd.grad(got, z), torch.autograd.grad(expected, z)
            torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-6)


@needs_cpp
def test_torch_compile_fullgraph_traces_the_op() -> None:
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(40, 16, generator=gen, requires_grad=True)
    ids = make_ids("two", 40, gen)
    views = torch.randint(0, 2, (40,), generator=gen)

    def step(x: torch.Tensor) -> torch.Tensor:
        return multi_positive_contrastive_loss(torch.tanh(x), ids, TAU, (1.0, 0.5), views, backend="cpp") * 2.0

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    got = compiled(z)
    (g,) = torch.autograd.grad(got, z)
    expected = step(z)
    (g_ref,) = torch.autograd.grad(expected, z)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(g, g_ref)


def test_backend_choice_and_input_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    z, ids = torch.randn(4, 3), torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match="unknown loss backend"):
        multi_positive_contrastive_loss(z, ids, backend="cuda-magic")
    monkeypatch.setenv(op.ENV_BACKEND, "torch")
    assert resolve_backend("cpu") == "torch"
    torch.testing.assert_close(multi_positive_contrastive_loss(z, ids), reference(z, ids), rtol=0, atol=0)
    monkeypatch.delenv(op.ENV_BACKEND)
    bad = [
        ((torch.randn(4), ids), r"\(N, d\)"),
        ((torch.randn(1, 3), ids[:1]), "N >= 2"),
        ((torch.randn(4, 1025), ids), "d <= 1024"),
        ((z, ids[:3]), r"shape \(4,\)"),
        ((z, ids.float()), "integer"),
        ((torch.arange(12).view(4, 3), ids), "float"),
    ]
    for args, match in bad:
        with pytest.raises(ValueError, match=match):
            multi_positive_contrastive_loss(*args)
    for kwargs, match in (({"temperature": 0.0}, "temperature"), ({"temperature": float("nan")}, "temperature"),
                          ({"weights": (1.0, 2.0)}, "2 weights"), ({"weights": (-1.0,)}, ">= 0"),
                          ({"reduction": "avg"}, "reduction"), ({"rows": slice(3, 1)}, "rows")):
        with pytest.raises(ValueError, match=match):
            multi_positive_contrastive_loss(z, ids, **kwargs)


@pytest.mark.skipif(len(KERNEL_BACKENDS) < 2, reason="needs both kernel backends")
def test_triton_and_cpp_agree() -> None:
    gen = torch.Generator().manual_seed(17)
    z = torch.randn(100, 40, generator=gen)
    ids = make_ids("two", 100, gen)
    a = multi_positive_contrastive_loss(z, ids, reduction="none", backend="triton")
    b = multi_positive_contrastive_loss(z, ids, reduction="none", backend="cpp")
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


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
# ecgfast.loss on the fused op: single process and 2 gloo ranks (local queries against gathered keys)


@needs_cpp
def test_loss_module_runs_the_fused_op(monkeypatch: pytest.MonkeyPatch) -> None:
    from ecgfast.loss import MultiPositiveContrastiveLoss

    gen = torch.Generator().manual_seed(2)
    n = 37
    z = torch.randn(n, 8, generator=gen, requires_grad=True)
    ids = make_ids("two", n, gen)
    calls = []
    monkeypatch.setattr(op.MultiPositiveContrastiveLSE, "apply", lambda *a, f=op.MultiPositiveContrastiveLSE.apply:
                        calls.append(1) or f(*a))
    loss = MultiPositiveContrastiveLoss(weights=(1.0, 0.5))(z, *ids)  # the fused op by default
    assert calls
    torch.testing.assert_close(loss, reference(z, ids, weights=(1.0, 0.5)), rtol=1e-5, atol=1e-6)


@needs_cpp
@pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                    reason="needs torch.distributed + gloo")
def test_two_ranks_on_the_fused_cpp_op_match_the_single_process_full_batch(tmp_path, monkeypatch) -> None:
    """tests/test_loss.py's 2-process check (rank-different inputs, float64), with every loss on the cpp op."""
    import test_loss  # tests/ is on sys.path under pytest (rootdir-relative, no __init__.py)

    monkeypatch.setenv(op.ENV_BACKEND, "cpp")  # inherited by the spawned ranks
    calls = []
    monkeypatch.setattr(op.MultiPositiveContrastiveLSE, "apply", lambda *a, f=op.MultiPositiveContrastiveLSE.apply:
                        calls.append(1) or f(*a))
    test_loss.test_two_ranks_match_the_single_process_full_batch(tmp_path)
    assert calls  # the single-process side ran the fused op too


# ---------------------------------------------------------------------------------------------------------------
# Ahead-of-time compile of the Triton kernels for an H100, without a GPU

_TRITON_AOT = textwrap.dedent("""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from ecgfast.kernels.contrastive_loss import (_mp_contrastive_bwd_dq_kernel, _mp_contrastive_bwd_kernel,
                                                  _mp_contrastive_fwd_kernel, mp_contrastive_block_sizes)

    # the launcher's argument types (ecgfast.ops.contrastive_loss): ints are i32, floats fp32, lse / g / out fp32,
    # VIEWS the int64 view ids, or x itself as a dummy pointer when HAS_VIEWS is False
    FWD = ("X", "VIEWS", "*fp32", "i32", "i32", "i32", "i32", "i32", "fp32")
    BWD = ("X", "VIEWS", "*fp32", "*fp32", "*fp32", "i32", "i32", "i32", "i32", "i32", "i32", "fp32", "fp32")
    # DOT_PRECISION as _dot_precision picks it on CUDA: tf32 only for fp32 with allow_tf32
    for dtype, precision in [("fp32", "ieee"), ("fp32", "tf32"), ("bf16", "ieee"), ("fp16", "ieee")]:
        for d, has_views in [(64, False), (1024, True)]:  # BLOCK_D = BLOCK_DO = 64, and 128 (d in 8 chunks)
            cfg = mp_contrastive_block_sizes(d, on_gpu=True)
            ptr = {"X": f"*{dtype}", "VIEWS": "*i64" if has_views else f"*{dtype}"}
            for kernel, types in [(_mp_contrastive_fwd_kernel, FWD), (_mp_contrastive_bwd_kernel, BWD),
                                  (_mp_contrastive_bwd_dq_kernel, BWD)]:
                names = list(kernel.arg_names)
                consts = {k: v for k, v in {**cfg, "HAS_VIEWS": has_views, "DOT_PRECISION": precision}.items()
                          if k in names}
                assert len(types) + len(consts) == len(names), names
                signature = dict(zip(names, [ptr.get(t, t) for t in types] + ["constexpr"] * len(consts)))
                source = ASTSource(fn=kernel, signature=signature,
                                   constexprs={(names.index(k),): v for k, v in consts.items()})
                compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                                          options={"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]})
                ptx = compiled.asm["ptx"]
                assert len(compiled.asm["cubin"]) > 0 and "st.global" in ptx
                if (dtype, precision) != ("fp32", "ieee"):  # tensor cores for bf16 / fp16 / tf32 products
                    assert "mma" in ptx, (kernel.fn.__name__, dtype, d)
                print(kernel.fn.__name__, dtype, precision, d, has_views, "ok")
""")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tests run the kernels themselves")
def test_triton_loss_kernels_compile_for_sm90_without_a_gpu(tmp_path) -> None:
    """Ahead-of-time Triton compile to PTX and cubin for an H100 (sm_90) of the forward and both backward kernels,
    with the launcher's signatures, tile sizes, num_warps and num_stages: fp32 (ieee and tf32 products), bf16 and
    fp16, d = 64 (no views) and d = 1024 (view ids, d in chunks). Catches what the interpreter accepts but the GPU
    compiler rejects, on CPU-only CI. A subprocess, because the interpreter (TRITON_INTERPRET=1) cannot compile;
    a fresh Triton cache, so every kernel really is compiled."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton_cache")
    result = subprocess.run([sys.executable, "-c", _TRITON_AOT], capture_output=True, text=True, env=env, timeout=300)
    if "no NVIDIA backend" in result.stderr or "KeyError: 'cuda'" in result.stderr:
        pytest.skip("this triton has no NVIDIA backend")
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count(" ok") == 24
