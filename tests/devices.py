"""The devices an op test runs on: every (backend, device) pair of an op as a test parameter.

The CPU cases run the Triton kernels in Triton's interpreter (tests/conftest.py sets ``TRITON_INTERPRET=1`` where
there is no GPU), the C++ op and the torch reference; the CUDA cases run the compiled Triton kernels, the CUDA op and
the reference on the GPU, with the test's tensors on that device. A pair this machine cannot run is still a test
case, skipped with the reason (no CUDA device, the interpreter off on a CUDA host, the extension not built), so that
the CUDA cases show in a CPU run's report rather than being absent; CUDA cases carry the ``gpu`` mark.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence

import pytest
import torch

from ecgfast.ops import backends

CUDA = torch.cuda.is_available()
DEVICES = ("cpu", "cuda")
_NATIVE = {"cpp": "cpu", "cuda": "cuda"}  # the extension's backends each run on one device type only


def why_unavailable(op: str, backend: str, device: str) -> str | None:
    """None where ``backend`` of ``op`` runs on ``device`` here, else the reason it does not."""
    if device == "cuda" and not CUDA:
        return "needs a CUDA device"
    if backend in backends.available_backends(op, device):
        return None
    if backend == "triton":
        if device == "cpu":
            return "Triton on the CPU runs in its interpreter (TRITON_INTERPRET=1), off on a CUDA host"
        return "triton is not installed"
    return f"ecgfast._C has no {backend} kernel here (not built, or built without CUDA)"


def backend_cases(op: str, only: Sequence[str] | None = None, devices: Sequence[str] = DEVICES) -> list:
    """``pytest.param(backend, device)`` for every backend of ``op`` (or those in ``only``) on every device where that
    backend exists (cpp on the CPU, cuda on CUDA, triton and torch on both); ids ``backend-device``."""
    cases = []
    for device in devices:
        for backend in backends.BACKENDS[op]:
            if (only is not None and backend not in only) or _NATIVE.get(backend, device) != device:
                continue
            marks = [pytest.mark.gpu] if device == "cuda" else []
            reason = why_unavailable(op, backend, device)
            if reason is not None:
                marks.append(pytest.mark.skip(reason=reason))
            cases.append(pytest.param(backend, device, marks=marks, id=f"{backend}-{device}"))
    return cases


def device_cases(devices: Sequence[str] = DEVICES) -> list:
    """``pytest.param(device)`` for the CPU and CUDA, the CUDA case skipped without a GPU and marked ``gpu``."""
    return [pytest.param(d, marks=[pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA device")]
                         if d == "cuda" else [], id=d) for d in devices]


def to_device(value, device: str | torch.device):
    """``value`` with every tensor in it (nested in lists, tuples and dicts) moved to ``device``, strides kept for
    dense tensors; anything else unchanged."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    return value


@contextlib.contextmanager
def no_positive_warning(device: str, match: str = "no row has a positive") -> Iterator[None]:
    """The loss's "no row has a positive" RuntimeWarning: expected on the CPU; on a GPU the check would synchronise
    the host, so it is not made, and no such warning may appear."""
    if device == "cpu":
        with pytest.warns(RuntimeWarning, match=match):
            yield
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    assert not [w for w in caught if match in str(w.message)]


def cross(cases: list, rows: Sequence[tuple], keep=None) -> list:
    """Every (backend, device) case of :func:`backend_cases` joined with every row of further parameters, its marks
    and id kept; ``keep(backend, device, *row)`` drops combinations (e.g. long signals in the interpreter)."""
    out = []
    for case in cases:
        for row in rows:
            if keep is None or keep(*case.values, *row):
                out.append(pytest.param(*case.values, *row, marks=case.marks,
                                        id="-".join([case.id, *(str(v).replace("torch.", "") for v in row)])))
    return out
