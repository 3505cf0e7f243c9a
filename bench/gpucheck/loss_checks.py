"""Phase ``loss_correctness``: the Triton contrastive loss, forward and backward, against the float64 reference.

Cases, in order of value (the phase stops at its deadline and says what it did not reach; most of its time is
Triton compiling and autotuning each new variant, which the ``first_call_s`` column shows):

1. the training call: N = ``loss_slice_n`` / 4 (2048 on a GPU), d = 128, bf16 rows, two id kinds, view ids;
2. a row slice (the DDP path: the queries of rank 1 of 4 against all N = ``loss_slice_n`` keys);
3. bitwise determinism: the training call at N = ``loss_slice_n`` twice, loss and gradient compared bit for bit;
4. every config the autotuner may pick at N = ``loss_slice_n``, d = 128 (pruned ahead of time), forced one at a time
   through the launcher, forward and backward; then the variant the timing phases measure (one id kind, no view ids);
5. the grid: every N x d of the sizes (``loss_ns`` x ``loss_ds``) in bf16, fp16 and fp32 rows; bf16 with two id kinds
   and view ids, fp16 with one kind and view ids, fp32 with two kinds and no view ids, so each N x d meets both id
   counts and both view settings; z and the ids non-contiguous (strided views);
6. the forced configs at d = 256 (d in chunks).

The rule (STYLE.md, flash-attention's): a result passes when its relative error against the float64 reference (max
norm for the per-row loss, Frobenius for the gradient) is at most twice torch's own relative error in the same
precision (the reference run in bf16 / fp16 / fp32) plus a floor of the rows' unit roundoff (1e-5 for fp32). Where
the loss is identically 0 (N = 2: a row's only key is its positive) absolute bounds replace the relative ones.
"""

from __future__ import annotations

import math

import torch

from ecgfast.ops import contrastive_loss as op
from ecgfast.reference.contrastive_loss import multi_positive_contrastive_loss_reference as reference

from .record import Context
from .timers import sync, wall

TAU = 0.1
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
RTOL = {"bf16": 2**-8, "fp16": 2**-11, "fp32": 1e-5}  # floor added to twice torch's own relative error
VARIANT = {"bf16": (2, True), "fp16": (1, True), "fp32": (2, False)}  # id kinds, view ids
WEIGHTS = {1: (1.0,), 2: (1.0, 0.5)}


def make_case(n: int, d: int, dtype: torch.dtype, kinds: int, views: bool, device: torch.device, seed: int):
    """z (n, d) and the loss's keyword arguments, all on ``device`` and non-contiguous: z every other column of an
    (n, 2d) matrix, ids and view ids every other entry of wider vectors. Rows in a random order: two views of each
    ECG (view ids 0 and 1), two ECGs per patient."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2 * d, generator=gen).to(device, dtype)[:, ::2]
    order = torch.randperm(n, generator=gen)
    ecg, view = (torch.arange(n) // 2)[order], (torch.arange(n) % 2)[order]
    wide = torch.full((kinds + 1, 2 * n), -1, dtype=torch.long)  # every other entry is junk the op must not read
    wide[:kinds, ::2] = torch.stack([ecg, ecg // 2][:kinds])
    wide[kinds, ::2] = view
    wide = wide.to(device)
    kw = {"group_ids": wide[:kinds, ::2], "temperature": TAU, "weights": WEIGHTS[kinds],
          "view_ids": wide[kinds, ::2] if views else None}
    up = (torch.rand(n, generator=gen) + 0.5).to(device)  # a non-uniform upstream gradient
    return z, kw, up


def loss_and_grad(fn, z: torch.Tensor, up: torch.Tensor, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-row loss, dz) of ``fn`` at z with upstream gradient ``up``, detached, as float64 on z's device."""
    z = z.detach().requires_grad_()
    per_row = fn(z, reduction="none", **kw)
    (grad,) = torch.autograd.grad(per_row, z, up.to(per_row.dtype))
    return per_row.detach().double(), grad.double()


def judge(got: tuple, own: tuple, exact: tuple, precision: str) -> dict:
    """Relative errors of (loss, grad) against the float64 ``exact``, torch's own, and whether each passes."""
    out, ok = {}, True
    for what, value, mine, truth, norm in (("loss", got[0], own[0], exact[0], math.inf),
                                           ("grad", got[1], own[1], exact[1], 2)):
        scale = truth.norm(p=norm).item()
        if scale < 1e-6:  # identically 0 (N = 2): absolute bounds
            err, err_torch = value.norm(p=norm).item(), mine.norm(p=norm).item()
            limit = 1e-5 if what == "loss" else 2 * RTOL[precision] / TAU * math.sqrt(value.numel())
        else:
            err = (value - truth).norm(p=norm).item() / scale
            err_torch = (mine - truth).norm(p=norm).item() / scale
            limit = 2 * err_torch + RTOL[precision]
        out[f"{what}_err"], out[f"{what}_torch_err"], out[f"{what}_limit"] = err, err_torch, limit
        ok = ok and math.isfinite(err) and err <= limit
    out["ok"] = ok
    return out


def check(ctx: Context, case: str, n: int, d: int, precision: str, kinds: int, views: bool, seed: int,
          rows: slice | None = None) -> None:
    """One comparison with the float64 reference (computed on the device), recorded with its first-call seconds
    (Triton compile and autotuning included)."""
    dtype = DTYPES[precision]
    z, kw, up = make_case(n, d, dtype, kinds, views, ctx.device, seed)
    if rows is not None:
        kw["rows"], up = rows, up[rows]
    exact = loss_and_grad(reference, z.double(), up, **kw)
    own = loss_and_grad(lambda x, **k: reference(x, upcast=dtype == torch.float32, **k), z, up, **kw)
    got: tuple = ()

    def fused() -> None:
        nonlocal got
        got = loss_and_grad(op.multi_positive_contrastive_loss, z, up, backend="triton", **kw)

    first_s = wall(fused, ctx.device)
    ctx.record(case, n=n, d=d, rows=precision, kinds=kinds, views=views, first_call_s=first_s,
               **judge(got, own, exact, precision))


def check_determinism(ctx: Context, n: int) -> None:
    z, kw, up = make_case(n, 128, torch.bfloat16, 2, True, ctx.device, seed=7)
    runs = [loss_and_grad(op.multi_positive_contrastive_loss, z, up, backend="triton", **kw) for _ in range(2)]
    same = all(torch.equal(a, b) for a, b in zip(*runs, strict=True))
    ctx.record("deterministic", n=n, d=128, rows="bf16", kinds=2, views=True, ok=same)


def check_configs(ctx: Context, n: int, d: int) -> int:
    """Every config left after pruning, forced in turn, forward then backward; returns how many were checked."""
    from ecgfast.kernels import contrastive_loss as k

    z, kw, up = make_case(n, d, torch.bfloat16, 2, True, ctx.device, seed=11)
    z = z.contiguous()
    exact = loss_and_grad(reference, z.double(), up, **kw)
    own = loss_and_grad(reference, z, up, upcast=False, **kw)
    ids, views = kw["group_ids"].contiguous(), kw["view_ids"].contiguous()
    d_pad = max(16, 1 << (d - 1).bit_length())
    checked = 0
    for which in ("fwd", "bwd"):
        for config in k.launch_configs(which, d_pad, 2, n):
            if ctx.out_of_time(5):
                return checked
            fwd_cfg, bwd_cfg = (config, None) if which == "fwd" else (None, config)
            loss, w_sum, lse = op._triton_forward(z, ids, WEIGHTS[2], views, 0, n, TAU, True, "bf16", config=fwd_cfg)
            dz = op._triton_backward(up, z, ids, WEIGHTS[2], views, lse, w_sum, 0, n, TAU, True, "bf16",
                                     config=bwd_cfg)
            sync(ctx.device)
            tiles = f"{config.kwargs['BLOCK_M']}x{config.kwargs['BLOCK_N']} w{config.num_warps} s{config.num_stages}"
            ctx.record(f"config {which}", n=n, d=d, rows="bf16", config=tiles,
                       **judge((loss.double(), dz.double()), own, exact, "bf16"))
            checked += 1
    return checked


def run(ctx: Context) -> dict:
    from ecgfast.ops.backends import available_backends

    if "triton" not in available_backends("contrastive_loss", ctx.device):
        return {"status": "skipped", "reason": f"no Triton backend for the loss on {ctx.device}"}
    n = ctx.sizes.loss_slice_n
    quarter = max(1, n // 4)
    grid = [(m, d, p) for m in ctx.sizes.loss_ns for d in ctx.sizes.loss_ds for p in DTYPES]
    steps = [("training call", lambda: check(ctx, "training call", max(2, quarter), 128, "bf16", 2, True, 98)),
             ("row slice", lambda: check(ctx, "row slice (DDP rank 1 of 4)", n, 128, "bf16", 2, True, 99,
                                         rows=slice(quarter, 2 * quarter))),
             ("determinism", lambda: check_determinism(ctx, n)),
             ("configs d 128", lambda: check_configs(ctx, n, 128)),
             ("timing variant", lambda: check(ctx, "timing variant", n, 128, "bf16", 1, False, 97))]
    steps += [(f"grid N {m} d {d} {p}", lambda m=m, d=d, p=p, i=i: check(ctx, "grid", m, d, p, *VARIANT[p], seed=i))
              for i, (m, d, p) in enumerate(grid)]
    steps.append(("configs d 256", lambda: check_configs(ctx, n, 256)))
    for j, (name, step) in enumerate(steps):
        if ctx.out_of_time(3):
            return {"status": "partial", "reason": f"deadline: {len(steps) - j} of {len(steps)} cases not run, from "
                                                   f"'{name}' on"}
        step()
    results = ctx.results()
    return {"passed": f"{sum(r.get('ok', False) for r in results)} of {len(results)}",
            "first_calls_s": sum(r.get("first_call_s", 0.0) for r in results)}
