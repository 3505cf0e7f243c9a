"""The sizes of every phase of the GPU check, on a GPU and in the CPU smoke run (one place, quoted by the README).

The smoke sizes are toys: the same code paths (Triton in its interpreter, the C++ ops, the tiny preset) in well
under the 3 minutes CI gives it; their numbers measure nothing.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sizes:
    """Sizes of the phases; each field says which phase reads it."""

    # loss_correctness: the Triton loss forward + backward against the float64 reference
    loss_ns: tuple[int, ...]  # N rows
    loss_ds: tuple[int, ...]  # d features
    loss_slice_n: int  # N of the row-slice (DDP path), determinism and forced-config cases
    # vcg_correctness: the Triton and CUDA VCG ops against the float64 reference chain
    vcg_batch: int
    vcg_lengths: tuple[int, int]  # (a record of T samples as its own view, a record cut in two halves)
    # warmup and loss_timing: d = 128 (the projection head's), bf16 rows on a GPU
    timing_ns: tuple[int, ...]
    timing_d: int
    gemm_n: int  # the bf16 GEMM (gemm_n^3) whose rate gives the 6 N^2 d floor
    reps: int  # timed repetitions of a kernel (the median is reported)
    # vcg_timing: the training call (int16 records of record_samples -> two views of half of them)
    vcg_timing_batches: tuple[int, ...]
    record_samples: int
    # train_step: the pretraining step
    model: str  # TemporalNet preset
    train_batch: int  # ECGs per step (two views each)
    segment: int  # samples per view
    steps: int  # timed steps per mode (after warm-up)
    # dali: a store of this many records of record_samples, read in batches of dali_batch
    dali_records: int
    dali_batch: int


GPU = Sizes(loss_ns=(2, 65, 2048, 8192), loss_ds=(16, 128, 256), loss_slice_n=8192, vcg_batch=64,
            vcg_lengths=(2500, 5000), timing_ns=(2048, 8192, 32768, 65536), timing_d=128, gemm_n=8192, reps=10,
            vcg_timing_batches=(512, 4096), record_samples=5000, model="paper", train_batch=512, segment=2500,
            steps=3, dali_records=4096, dali_batch=512)

SMOKE = Sizes(loss_ns=(2, 65), loss_ds=(16, 128), loss_slice_n=65, vcg_batch=2, vcg_lengths=(250, 500),
              timing_ns=(64, 128), timing_d=16, gemm_n=128, reps=2, vcg_timing_batches=(4,), record_samples=500,
              model="tiny", train_batch=4, segment=250, steps=1, dali_records=64, dali_batch=16)
