"""Fused multi-positive contrastive loss vs the naive PyTorch loss that materialises N x N: speed and peak memory.

Run: ``pytest bench/test_bench_contrastive_loss.py --benchmark-only`` (or ``python bench/run_all.py``). Providers
"naive" (what peers write: the similarity matrix, a positive mask, log-softmax) and "fused"
(:func:`ecgfast.ops.multi_positive_contrastive_loss`: triton on CUDA, the blockwise cpp backend on CPU; the Triton
interpreter is never benchmarked); modes "forward" and "full" (forward + backward). Each benchmark records in
``extra_info`` its peak extra memory (CUDA: ``max_memory_allocated``; CPU: peak RSS of one call in a fresh
process, the VmHWM mark reset before it), and prints beside the mean time of one call its FLOPs (the matmul floor
any implementation pays: forward 2 N^2 d, full 6 N^2 d), its bytes (the compulsory memory traffic: z read, the
loss written, ids read; for "full" also z read again and dz written: O(N d), what a kernel that never spills the
N x N matrix to memory moves), the achieved TFLOP/s and GB/s, and, on a GPU in ``ecgfast.pretrain.mfu.GPU_PEAKS``, the
percentage of its dense bf16 tensor-core peak and of its memory bandwidth (also in ``extra_info``, so
bench/run_all.py records them). CPU runs three small cases (N up to 4,096, where the 64 MiB N x N matrix starts to
show), so that the file takes a minute or two; the 16,384-row memory claim is a test in
tests/test_contrastive_loss_op.py. GPU sizes are issue 12's: N = 2,048 (the paper's batch), 8,192, 32,768 and
65,536 at d = 128, bf16 embeddings; the naive loss is skipped at 65,536 rows (16 GiB per N x N fp32 matrix, several
of them). On a GPU only, the current kernel is also measured against the previous one (commit 8f57bcd, kept in
bench/baselines/contrastive_loss_v1.py) at N = 2,048 and 8,192, d = 128, bf16 and fp32 embeddings
(:func:`test_contrastive_loss_against_the_previous_kernel`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from gpucheck.loss_timing import naive_loss  # the usual SupCon code, one copy for the benchmarks and the GPU check
from gpucheck.timers import device_peaks  # the datasheet peaks, one table for the benchmarks and the GPU check

from ecgfast.ops.backends import available_backends
from ecgfast.ops.contrastive_loss import multi_positive_contrastive_loss

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
TAU = 0.1
CPU_CASES = ((1024, 128), (2048, 256), (4096, 128))  # (N, d)
GPU_NS = (2048, 8192, 32768, 65536)
GPU_DS = (128,)
NAIVE_MAX_N = 32768  # the naive loss at 65,536 rows needs several 16 GiB N x N matrices


def make_case(provider: str, mode: str, n: int, d: int, device: torch.device = DEVICE):
    """(fn, z) for one benchmark: ``fn()`` runs the forward (and the backward for mode "full")."""
    gen = torch.Generator().manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    z = torch.randn(n, d, generator=gen).to(device=device, dtype=dtype).requires_grad_(mode == "full")
    ids = (torch.arange(n) // 2).to(device)  # two views of n / 2 ECGs

    def loss() -> torch.Tensor:
        if provider == "naive":
            return naive_loss(z, ids)
        return multi_positive_contrastive_loss(z, ids, TAU, backend="triton" if device.type == "cuda" else "cpp")

    def fn() -> None:
        out = loss()
        if mode == "full":
            out.backward()
            z.grad = None
        if device.type == "cuda":
            torch.cuda.synchronize()

    return fn, z


_CPU_PEAK = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, sys.argv[5])
    from test_bench_contrastive_loss import make_case
    provider, mode, n, d = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    make_case(provider, mode, 64, d, torch.device("cpu"))[0]()  # warm up libraries on a small input
    fn, _ = make_case(provider, mode, n, d, torch.device("cpu"))
    kib = lambda key: int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1])
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak RSS mark (VmHWM) to the current RSS
    before = kib("VmRSS:")
    fn()
    print((kib("VmHWM:") - before) / 1024)
""")


def peak_extra_mib(provider: str, mode: str, n: int, d: int) -> float:
    """Peak extra memory of one call in MiB: CUDA allocator peak, or peak RSS in a fresh CPU process."""
    if CUDA:
        fn, _ = make_case(provider, mode, n, d)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    out = subprocess.run([sys.executable, "-c", _CPU_PEAK, provider, mode, str(n), str(d),
                          os.path.dirname(os.path.abspath(__file__))], capture_output=True, text=True, timeout=600)
    return float(out.stdout.split()[-1]) if out.returncode == 0 else float("nan")


CASES = [(n, d, False) for n, d in CPU_CASES] + [(n, d, True) for n in GPU_NS for d in GPU_DS]


def flops_per_call(mode: str, n: int, d: int) -> int:
    """The matmul FLOPs of one call: the N x N similarities (2 N^2 d) forward, and twice that again backward."""
    return (2 if mode == "forward" else 6) * n * n * d


def bytes_per_call(mode: str, n: int, d: int, elem: int, id_kinds: int = 1) -> int:
    """Compulsory memory traffic of one call: z (N, d) read, the (N,) fp32 loss and the int64 ids read and written
    once; "full" also reads z again and writes dz (N, d) (the backward recomputes the similarity tiles)."""
    io = n * d * elem + n * 4 + id_kinds * n * 8
    return io if mode == "forward" else io + 2 * n * d * elem


def rates(mode: str, n: int, d: int, elem: int, mean_s: float, device: str) -> dict[str, float]:
    """FLOPs, bytes and rates of one call that took ``mean_s``, with % of peak where the device is known."""
    flops, nbytes = flops_per_call(mode, n, d), bytes_per_call(mode, n, d, elem)
    out = {"gflop": flops / 1e9, "mbytes": nbytes / 1e6, "matmul_tflops": flops / mean_s / 1e12,
           "gb_per_s": nbytes / mean_s / 1e9}
    peaks = device_peaks(device)
    if peaks is not None:
        out["pct_of_bf16_peak"] = 100 * out["matmul_tflops"] / peaks[0]
        out["pct_of_bandwidth"] = 100 * out["gb_per_s"] / peaks[1]
    return out


@pytest.mark.parametrize("mode", ("forward", "full"))
@pytest.mark.parametrize("provider", ("naive", "fused"))
@pytest.mark.parametrize("n,d,gpu", CASES, ids=[f"{'gpu' if g else 'cpu'}-N{n}-d{d}" for n, d, g in CASES])
def test_contrastive_loss(benchmark, capsys, provider: str, mode: str, n: int, d: int, gpu: bool) -> None:
    if gpu and not CUDA:
        pytest.skip("GPU sizes need CUDA")
    if not gpu and CUDA:
        pytest.skip("CPU sizes run on CPU-only machines")
    if provider == "naive" and n > NAIVE_MAX_N:
        pytest.skip(f"the naive loss at N = {n} needs several {n * n * 4 / 2**30:.0f} GiB N x N matrices")
    fused_backend = "triton" if CUDA else "cpp"
    if provider == "fused" and fused_backend not in available_backends("contrastive_loss", DEVICE):
        pytest.skip(f"the {fused_backend} backend is not available here")
    benchmark.group = f"contrastive-loss-{mode}-N{n}-d{d}"
    fn, z = make_case(provider, mode, n, d)
    benchmark.pedantic(fn, rounds=3 if CUDA else 2, warmup_rounds=1)
    device = torch.cuda.get_device_name(0) if CUDA else "cpu"
    mean_s = benchmark.stats.stats.mean
    benchmark.extra_info["device"] = device
    benchmark.extra_info.update(rates(mode, n, d, z.element_size(), mean_s, device))
    benchmark.extra_info["peak_extra_mib"] = peak_extra_mib(provider, mode, n, d)
    info = benchmark.extra_info
    peak = (f", {info['pct_of_bf16_peak']:.1f} % of bf16 peak, {info['pct_of_bandwidth']:.1f} % of bandwidth"
            if "pct_of_bf16_peak" in info else "")
    with capsys.disabled():  # beside pytest-benchmark's table, which has no room for these
        print(f"\n{benchmark.group} {provider}: {mean_s * 1e3:.3f} ms, {info['gflop']:.2f} GFLOP, "
              f"{info['mbytes']:.2f} MB, {info['matmul_tflops']:.3g} TFLOP/s, {info['gb_per_s']:.3g} GB/s{peak}, "
              f"peak +{info['peak_extra_mib']:.1f} MiB")


# ---------------------------------------------------------------------------------------------------------------
# The FlashAttention-2-style kernel against the previous one (commit 8f57bcd, bench/baselines/contrastive_loss_v1.py)

VERSUS_NS = (2048, 8192)
VERSUS_D = 128
VERSUS_DTYPES = (torch.bfloat16, torch.float32)  # z's dtype; each provider's products in that precision


def make_versus_case(provider: str, mode: str, n: int, d: int, dtype: torch.dtype):
    """(fn, z) on the GPU: ``fn()`` runs the loss of provider "v1" (the previous kernel) or "fused" (the current
    Triton backend), forward or forward + backward ("full"), with one kind of ids (two views of n / 2 ECGs)."""
    from baselines.contrastive_loss_v1 import contrastive_loss_v1  # bench/ is on sys.path (no __init__.py)

    gen = torch.Generator().manual_seed(0)
    z = torch.randn(n, d, generator=gen).to(device="cuda", dtype=dtype).requires_grad_(mode == "full")
    ids = (torch.arange(n) // 2).cuda()

    def fn() -> None:
        if provider == "v1":
            out = contrastive_loss_v1(z, ids, TAU)
        else:
            out = multi_positive_contrastive_loss(z, ids, TAU, backend="triton")
        if mode == "full":
            out.backward()
            z.grad = None
        torch.cuda.synchronize()

    return fn, z


@pytest.mark.skipif(not CUDA, reason="the previous kernel is compared on a GPU only")
@pytest.mark.parametrize("mode", ("forward", "full"))
@pytest.mark.parametrize("provider", ("v1", "fused"))
@pytest.mark.parametrize("dtype", VERSUS_DTYPES, ids=str)
@pytest.mark.parametrize("n", VERSUS_NS)
def test_contrastive_loss_against_the_previous_kernel(benchmark, capsys, provider: str, mode: str, n: int,
                                                      dtype: torch.dtype) -> None:
    """Speed, FLOP rate (of the 2 / 6 N^2 d floor, the same for both) and peak memory, v1 vs fused, same inputs."""
    if "triton" not in available_backends("contrastive_loss", DEVICE):
        pytest.skip("the triton backend is not available here")
    d = VERSUS_D
    benchmark.group = f"contrastive-loss-vs-v1-{mode}-N{n}-d{d}-{str(dtype).removeprefix('torch.')}"
    fn, z = make_versus_case(provider, mode, n, d, dtype)
    benchmark.pedantic(fn, rounds=5, warmup_rounds=2)  # the warm-up rounds include the autotuning
    device = torch.cuda.get_device_name(0)
    mean_s = benchmark.stats.stats.mean
    benchmark.extra_info.update(device=device, dtype=str(dtype), **rates(mode, n, d, z.element_size(), mean_s, device))
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    benchmark.extra_info["peak_extra_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    info = benchmark.extra_info
    peak = f", {info['pct_of_bf16_peak']:.1f} % of bf16 peak" if "pct_of_bf16_peak" in info else ""
    with capsys.disabled():
        print(f"\n{benchmark.group} {provider}: {mean_s * 1e3:.3f} ms, {info['matmul_tflops']:.3g} TFLOP/s{peak}, "
              f"peak +{info['peak_extra_mib']:.1f} MiB")
