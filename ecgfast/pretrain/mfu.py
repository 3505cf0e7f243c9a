"""Model FLOPs utilisation (MFU) of pretraining: the encoder's FLOPs counted once, and the peak they are set against.

MFU = ECGs/s x views per ECG x FLOPs per view / (ranks x peak FLOP/s of one device), as nanoGPT and PaLM report it:
the model's forward + backward FLOPs only. What a memory mode recomputes (``checkpoint``: the blocks' forward again;
``chunked``: the whole forward again), the augmentation and the O(N^2 d) loss are not counted, so a mode that
recomputes shows as a lower MFU for the same work: that is the price it pays for its memory.

The FLOPs are counted by ``torch.utils.flop_counter`` on the model built on the meta device (no memory, no compute,
about a second); the paper model counts about 85 GFLOP per 5 s view, as METHOD.md says. The peak is the device's
dense (no sparsity) bf16 tensor-core rate for a bf16 run, its fp32 rate (no TF32) for an fp32 run, from the vendor
datasheets of the GPUs in :data:`GPU_PEAKS`, or ``--peak-tflops``; elsewhere (a CPU, a GPU not in the table) MFU is
not reported rather than guessed.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..models import DualStreamTemporalNet, temporalnet_config


class DevicePeak(NamedTuple):
    """Datasheet rates of one GPU: dense bf16 tensor-core and fp32 TFLOP/s, memory GB/s."""

    bf16_tflops: float
    fp32_tflops: float
    gbps: float


#: Datasheet peaks; the first key contained in ``torch.cuda.get_device_name()`` wins (so longer names come first:
#: "H100 PCIe" before "H100", "L40S" before "L4").
GPU_PEAKS: dict[str, DevicePeak] = {
    "H100 PCIe": DevicePeak(756.0, 51.0, 2000.0),
    "H100 NVL": DevicePeak(835.0, 60.0, 3900.0),
    "H100": DevicePeak(989.0, 67.0, 3350.0),
    "H200": DevicePeak(989.0, 67.0, 4800.0),
    "A100": DevicePeak(312.0, 19.5, 2039.0),
    "L40S": DevicePeak(362.0, 91.6, 864.0),
    "L4": DevicePeak(121.0, 30.3, 300.0),
}


def gpu_peak(name: str) -> DevicePeak | None:
    """The datasheet peaks of the GPU named ``name`` (the first key of :data:`GPU_PEAKS` it contains); None if
    unknown."""
    return next((peak for key, peak in GPU_PEAKS.items() if key in name), None)


def device_peak_tflops(device: torch.device, bf16: bool, override: float | None = None) -> tuple[float, str] | None:
    """(TFLOP/s of one device, where the number comes from) for MFU, or None where no peak is known.

    Args:
        device: the training device.
        bf16: whether training runs under bf16 autocast (the tensor-core rate) or in fp32.
        override: a peak given by the user (``--peak-tflops``), used as is on any device.
    """
    if override is not None:
        return float(override), "--peak-tflops"
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    peak = gpu_peak(name)
    if peak is None:
        return None
    rate, kind = (peak.bf16_tflops, "dense bf16") if bf16 else (peak.fp32_tflops, "fp32")
    return rate, f"{name}, {kind} datasheet"


def train_flops_per_view(model: str, segment: int, leads: int = 8) -> int:
    """Forward + backward FLOPs of one view (``leads`` x ``segment`` samples) through the pretraining model of
    preset ``model`` (both streams and the projection heads), counted on two views built on the meta device.

    Raises:
        KeyError: an unknown preset.
    """
    with torch.device("meta"):
        net = DualStreamTemporalNet(temporalnet_config(model)).train()
        views = torch.zeros(2, leads, segment)  # (2 views, leads, T): BatchNorm in training mode needs more than one
    with FlopCounterMode(display=False) as counter:
        net.embed(views).float().sum().backward()  # embed: what the loop's ContrastivePretrainer runs
    return counter.get_total_flops() // 2


def mfu(ecgs_per_s: float, views_per_ecg: int, flops_per_view: int, world: int, peak_tflops: float) -> float:
    """Model FLOPs utilisation, a share in [0, 1] (more only if the peak is wrong): ``ecgs_per_s`` is the global
    throughput over ``world`` devices of ``peak_tflops`` each."""
    return ecgs_per_s * views_per_ecg * flops_per_view / (world * peak_tflops * 1e12)


__all__ = ["DevicePeak", "GPU_PEAKS", "device_peak_tflops", "gpu_peak", "mfu", "train_flops_per_view"]
