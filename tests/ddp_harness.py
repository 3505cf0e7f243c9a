"""Two gloo processes running the gathered contrastive loss, checked against one process holding the full batch.

Shared by tests/test_loss.py (the reference backend: the gather and the gradient scaling of
:func:`ecgfast.ops.multi_positive_contrastive_loss`) and tests/test_contrastive_loss_op.py (every kernel backend).
The ranks get different inputs (different rows, scales and patients, positives across ranks, unequal row counts,
a row without any positive): symmetric inputs would hide the classic wrong-gradient bug of a gathered loss.

A plain module beside the tests (tests/ is on sys.path under pytest, and the spawned ranks inherit it), not a test
module: it collects nothing.
"""

from __future__ import annotations

import gc
import socket
import traceback
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

CASES = ("mean", "mean_unequal", "sum", "none")
D_IN, D_OUT = 5, 4
LOSS_KWARGS = {"temperature": 0.2, "weights": (1.0, 0.5)}
GLOO = dist.is_available() and dist.is_gloo_available()


def reduction_of(case: str) -> str:
    return "none" if case == "none" else "sum" if case == "sum" else "mean"


def rank_inputs(rank: int, case: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                  torch.Tensor]:
    """Rank-dependent inputs (x, ecg, patient, view): 2 views of 3 ECGs per rank, patients shared across ranks.

    Rank 0 holds patients 10, 11, 12, rank 1 patients 11, 12, 13: positives cross ranks. In "mean_unequal" rank 1
    also holds a row without any positive and rank 0 one ECG fewer.
    """
    gen = torch.Generator().manual_seed(1234 + 17 * rank)
    ecgs = torch.arange(3) + 3 * rank
    patients = torch.arange(3) + 10 + rank
    if case == "mean_unequal" and rank == 0:
        ecgs, patients = ecgs[:2], patients[:2]
    ecg, patient = ecgs.repeat(2), patients.repeat(2)
    view = torch.arange(2).repeat_interleave(len(ecgs))
    if case == "mean_unequal" and rank == 1:  # a lone ECG of a lone patient: no positive anywhere
        ecg, patient, view = torch.cat([ecg, torch.tensor([99])]), torch.cat([patient, torch.tensor([99])]), \
            torch.cat([view, torch.tensor([0])])
    x = torch.randn(len(ecg), D_IN, generator=gen, dtype=torch.float64) * (1 + rank)  # different scales per rank
    return x.to(dtype), ecg, patient, view


def make_model(dtype: torch.dtype) -> torch.nn.Linear:
    torch.manual_seed(0)
    return torch.nn.Linear(D_IN, D_OUT).to(dtype)


def _worker(rank: int, world: int, port: int, out_dir: str, backend: str, dtype: torch.dtype) -> None:
    from ecgfast.nn import MultiPositiveContrastiveLoss
    from ecgfast.ops import contrastive_loss as op

    try:
        calls = []  # forward launches of the kernel backends in this rank
        for name in ("_triton_forward", "_cpp_forward"):
            real = getattr(op, name)
            setattr(op, name, lambda *a, _real=real, **k: calls.append(1) or _real(*a, **k))
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=timedelta(seconds=60))
        results = {}
        for case in CASES:
            x, ecg, patient, view = rank_inputs(rank, case, dtype)
            model = make_model(dtype)
            ddp = torch.nn.parallel.DistributedDataParallel(model)
            z = ddp(x)
            z.retain_grad()
            loss_fn = MultiPositiveContrastiveLoss(reduction=reduction_of(case), backend=backend, **LOSS_KWARGS)
            loss = loss_fn(z, ecg, patient, view_ids=view)
            (loss.mean() if case == "none" else loss).backward()
            results[case] = {"loss": loss.detach(), "z_grad": z.grad, "weight_grad": model.weight.grad,
                             "bias_grad": model.bias.grad}
            del ddp, z, loss  # DDP's reducer holds gloo work: release it while the process group is alive
            gc.collect()
        # gather=False: this rank's rows alone, no collective; rows= cannot be combined with the gather
        x, ecg, patient, view = rank_inputs(rank, "mean", dtype)
        z = make_model(dtype)(x).detach()
        local = MultiPositiveContrastiveLoss(gather=False, backend=backend, **LOSS_KWARGS)
        results["local"] = {"loss": local(z, ecg, patient, view_ids=view)}
        try:
            op.multi_positive_contrastive_loss(z, [ecg, patient], rows=slice(0, 2), backend=backend)
            results["rows_error"] = ""
        except ValueError as e:
            results["rows_error"] = str(e)
        results["kernel_calls"] = len(calls)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()  # no rank tears gloo down while the other still talks to it (an abort at exit otherwise)
        dist.destroy_process_group()
    except Exception:  # the parent reads this and fails with it
        (Path(out_dir) / f"rank{rank}.err").write_text(traceback.format_exc())
        raise


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(out_dir: Path, backend: str, dtype: torch.dtype, world: int = 2, timeout_s: float = 120.0) -> list[dict]:
    """Run the worker in ``world`` spawned gloo processes (they inherit the environment, TRITON_INTERPRET included)
    and return each rank's results; a hang, a crash or an exception fails with the ranks' tracebacks."""
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, str(out_dir), backend, dtype)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=timeout_s)  # a hang fails the test instead of blocking CI
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.terminate()
        p.join(5)
    errors = "\n".join(f.read_text() for f in sorted(out_dir.glob("*.err")))
    assert not hung, f"distributed workers hung (timeout)\n{errors}"
    assert all(p.exitcode == 0 for p in procs), f"exit codes {[p.exitcode for p in procs]}\n{errors}"
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(world)]


def assert_ranks_match_the_full_batch(ranks: list[dict], dtype: torch.dtype, rtol: float, atol: float) -> None:
    """Every rank's loss and gradients against the float64 single-process loss of the concatenated batch
    (the reference backend): the full-batch loss is the mean of the per-rank losses, every rank holds the
    full-batch parameter gradient after DDP's average, and each rank's embedding gradient is its block of the
    full-batch one (times the world size, which DDP's average divides out)."""
    from ecgfast.nn import MultiPositiveContrastiveLoss
    from ecgfast.reference.contrastive_loss import multi_positive_contrastive_loss_reference

    world = len(ranks)
    close = {"rtol": rtol, "atol": atol}
    for case in CASES:
        inputs = [rank_inputs(r, case, torch.float64) for r in range(world)]
        x, ecg, patient, view = (torch.cat(parts) for parts in zip(*inputs, strict=True))
        model = make_model(dtype).double()  # the ranks' initial weights, in float64
        z = model(x.to(dtype).double())
        z.retain_grad()
        loss_fn = MultiPositiveContrastiveLoss(reduction=reduction_of(case), backend="torch", **LOSS_KWARGS)
        full = loss_fn(z, ecg, patient, view_ids=view)
        sizes = [len(part[0]) for part in inputs]
        if case == "none":
            # per-row losses are the full batch's rows; each rank's .mean() under DDP is the full mean's gradient
            got = torch.cat([r[case]["loss"] for r in ranks]).double()
            torch.testing.assert_close(got, full.detach(), **close, msg=case)
            full.mean().backward()
        else:
            got = torch.stack([r[case]["loss"] for r in ranks]).double().mean()
            torch.testing.assert_close(got, full.detach(), **close, msg=case)
            full.backward()
        for r in ranks:
            assert r[case]["loss"].dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
            torch.testing.assert_close(r[case]["weight_grad"].double(), model.weight.grad, **close, msg=case)
            torch.testing.assert_close(r[case]["bias_grad"].double(), model.bias.grad, **close, msg=case)
        assembled = torch.cat([r[case]["z_grad"] for r in ranks]).double() / world
        torch.testing.assert_close(assembled, z.grad, **close, msg=case)
        assert z.grad[: sizes[0]].abs().sum() > 0 and z.grad[sizes[0]:].abs().sum() > 0
    for rank, r in enumerate(ranks):  # gather=False: the rank's own rows only
        x, ecg, patient, view = rank_inputs(rank, "mean", dtype)
        z = make_model(dtype)(x).detach().double()
        own = multi_positive_contrastive_loss_reference(z, [ecg, patient], view_ids=view, **LOSS_KWARGS)
        torch.testing.assert_close(r["local"]["loss"].double(), own, **close)
        assert "gather=False" in r["rows_error"], r["rows_error"]
