"""Phase ``vcg_correctness``: every compiled VCG augmentation backend of the device (Triton and the CUDA op on a GPU;
Triton's interpreter and the C++ op on a CPU) against the float64 reference chain.

Cases (B = ``vcg_batch`` ECGs, lengths T0, T1 = ``vcg_lengths``: 2500 and 5000 on a GPU), parameters drawn in the call
from ``(seed, offset)`` as training draws them:

- ``whole``: int16 records of T0 samples, each its own view, two views, noise 0.05 mV, bf16 out;
- ``halves``: int16 records of T1 samples cut into two views of T1 / 2 (the training call), noise, bf16 out;
- ``shared``: int16 records of T1, both views from one window of T0 + 3 samples at a random start, float32 out;
- ``float strided``: float32 mV records of T0 in a (B, T, 8) memory layout, no noise, float32 out.

The reference: decode, crop, ``M @ x``, noise from the same Philox counters, mask, all in float64 (on the device).
The rule: the mask pattern exactly (output zeros where and only where the reference's are), and a max error at most
twice that of torch's own float32 chain (rounded to the output dtype) plus 1e-5 of the signal's scale.
"""

from __future__ import annotations

import torch

from ecgfast.ops.backends import available_backends
from ecgfast.ops.vcg_op import vcg_augment
from ecgfast.reference.vcg_augment import (
    crop_windows,
    philox_randn,
    vcg_augment_reference,
    vcg_augment_views_reference,
)

from .record import Context
from .timers import wall

NOISE_STD = 0.05


def reference64(x, gain, baseline, params, windows, length, noise_std) -> torch.Tensor:
    """The op's result in float64 from its drawn ``params`` (module docstring), (V, B, 8, L)."""
    n_views, batch = params.matrices.shape[:2]
    xf = x.double()
    if x.dtype == torch.int16:
        xf = (xf - baseline.double()[:, None, None]) / gain.double()[:, None, None]
    if windows is None:
        windows = torch.zeros(n_views, batch, dtype=torch.long, device=x.device)
    views = crop_windows(xf, windows.expand(n_views, batch), length)
    outs = []
    for v in range(n_views):
        noise = None
        if noise_std > 0:
            first = v * batch * 8 * length
            counters = torch.arange(first, first + batch * 8 * length, device=x.device).view(batch, 8, length)
            noise = noise_std * philox_randn(params.noise_seed, counters).double()
        outs.append(vcg_augment_reference(views[v], params.matrices[v].double(), params.mask_starts[v] % length,
                                          params.mask_length, noise, torch.float64))
    return torch.stack(outs)


def make_input(batch: int, n: int, float_strided: bool, device: torch.device, seed: int):
    """(x (B, 8, n), gain, baseline): int16 adc units with gain and baseline, or float32 mV in (B, n, 8) memory."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randint(-3000, 3000, (batch, 8, n), generator=gen, dtype=torch.int16)
    gain = 100 + 900 * torch.rand(batch, generator=gen)
    baseline = 20 * torch.randn(batch, generator=gen)
    if float_strided:
        x = ((q.float() - baseline[:, None, None]) / gain[:, None, None]).transpose(1, 2).contiguous()
        return x.to(device).transpose(1, 2), None, None
    return q.to(device), gain.to(device), baseline.to(device)


def cases(batch: int, t0: int, t1: int, device: torch.device) -> list[tuple]:
    """(name, x, gain, baseline, windows, length, noise_std, out_dtype) of the module docstring."""
    gen = torch.Generator().manual_seed(5)
    halves = torch.tensor([[0] * batch, [t1 // 2] * batch], device=device)
    shared = torch.randint(0, t1 - (t0 + 3) + 1, (batch,), generator=gen).to(device)
    return [("whole", *make_input(batch, t0, False, device, 1), None, t0, NOISE_STD, torch.bfloat16),
            ("halves", *make_input(batch, t1, False, device, 2), halves, t1 // 2, NOISE_STD, torch.bfloat16),
            ("shared", *make_input(batch, t1, False, device, 3), shared, t0 + 3, 0.0, torch.float32),
            ("float strided", *make_input(batch, t0, True, device, 4), None, t0, 0.0, torch.float32)]


def run(ctx: Context) -> dict:
    device = ctx.device
    kernels = [b for b in available_backends("vcg_augment", device) if b != "torch"]
    if not kernels:
        return {"status": "skipped", "reason": f"no compiled VCG backend on {device}"}
    t0, t1 = ctx.sizes.vcg_lengths
    todo = [(b, c) for c in cases(ctx.sizes.vcg_batch, t0, t1, device) for b in kernels]
    for i, (backend, (name, x, gain, baseline, windows, length, noise_std, out_dtype)) in enumerate(todo):
        if ctx.out_of_time(2):
            return {"status": "partial", "reason": f"deadline: {len(todo) - i} of {len(todo)} cases not run"}
        kw = {"seed": 3, "offset": 17, "windows": windows, "length": length, "noise_std": noise_std,
              "out_dtype": out_dtype}
        result: list = []
        first_s = wall(lambda kw=kw, backend=backend, x=x, gain=gain, baseline=baseline, result=result: result.extend(
            vcg_augment(x, gain, baseline, backend=backend, return_params=True, **kw)), device)
        out, params = result
        exact = reference64(x, gain, baseline, params, windows, length, noise_std)
        own = vcg_augment_views_reference(x, gain, baseline, params.matrices, params.mask_starts % length,
                                          params.mask_length, noise_std, params.noise_seed,
                                          None if windows is None else windows.expand(2, x.shape[0]), length,
                                          out_dtype)
        err = (out.double() - exact).abs().max().item()
        err_torch = (own.double() - exact).abs().max().item()
        limit = 2 * err_torch + 1e-5 * max(1.0, exact.abs().max().item())
        same_mask = bool(torch.equal(out == 0, exact == 0))
        ctx.record(name, backend=backend, batch=x.shape[0], samples=x.shape[-1], view=length,
                   out=str(out_dtype).removeprefix("torch."), noise=noise_std, first_call_s=first_s,
                   mask_exact=same_mask, max_err=err, torch_err=err_torch, limit=limit,
                   ok=same_mask and err <= limit)
    return {"cases": len(todo), "backends": kernels}
