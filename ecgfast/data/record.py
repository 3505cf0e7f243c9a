"""The record object every reader yields, and the error a reader raises for an unusable record."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from ecgfast import LEADS

#: units a record's signal (and so a store) can be in: millivolts, or "z" for normalised signals
SIGNAL_UNITS: tuple[str, ...] = ("mV", "z")


class RejectReason(str, Enum):  # noqa: UP042 (enum.StrEnum needs Python 3.11; we support 3.10)
    """Why a record was kept out of the store. The value is what the prepare report prints."""

    UNREADABLE = "unreadable"  # file missing, corrupt, wrong format, reader raised
    TRUNCATED = "truncated"  # signal file shorter than its header says
    HEADER_MISMATCH = "header_mismatch"  # header and data disagree (channels, length, checksum)
    MISSING_LEADS = "missing_leads"  # one of I, II, V1..V6 not present
    NON_FINITE = "non_finite"  # NaN or Inf samples
    FLAT_LEAD = "flat_lead"  # a lead is constant
    SATURATED_LEAD = "saturated_lead"  # a lead sits at its extreme for too long (clipping)
    TOO_SHORT = "too_short"  # shorter than the minimum duration
    BAD_SAMPLING_RATE = "bad_sampling_rate"  # missing, zero, negative or non-numeric rate
    BAD_GAIN = "bad_gain"  # a header gain that is missing, zero (uncalibrated), negative, non-finite or absurd
    IMPLAUSIBLE_AMPLITUDE = "implausible_amplitude"  # a lead's peak beyond what an ECG can be (50 mV by default)
    UNSAFE_FILE = "unsafe_file"  # a file that is not a regular file inside the input folder (FIFO, symlink out)
    DUPLICATE_ID = "duplicate_id"  # a record with the same id was already accepted


class RecordError(Exception):
    """A record cannot go into the store. ``reason`` classifies it; the message names what was wrong."""

    def __init__(self, reason: RejectReason, message: str):
        super().__init__(message)
        self.reason = RejectReason(reason)
        self.message = message

    def __reduce__(self):  # keep reason across process boundaries
        return (RecordError, (self.reason, self.message))


@dataclass
class ECGRecord:
    """One ECG, as readers yield it and preprocessing consumes it.

    Attributes:
        record_id: unique id of the recording within its source (e.g. ``"E00271"``, ``"21837"``).
        patient_id: opaque patient id string; never printed in logs. Sources without patient ids use
            the record id (each record its own patient) and set ``meta["patient_id_known"] = False``.
        signal: (8, T) float32 samples in millivolts, leads in :data:`ecgfast.LEADS` order.
        fs: sampling rate in Hz.
        source: where it came from (file path, or ``"array:<index>"``).
        labels: task name -> value (binary 0/1 or a number), e.g. ``{"dx:426177001": 1}``.
        meta: anything else worth keeping (age, sex, strat_fold, ...), JSON-serialisable values.
        units: unit of ``signal``: "mV" (the default; what every physical source is converted to) or "z"
            (normalised: each lead in standard deviations, no physical amplitude).
    """

    record_id: str
    patient_id: str
    signal: np.ndarray
    fs: float
    source: str
    labels: dict[str, float] = field(default_factory=dict)
    meta: dict[str, object] = field(default_factory=dict)
    units: str = "mV"

    def __post_init__(self) -> None:
        if self.signal.ndim != 2 or self.signal.shape[0] != len(LEADS):
            raise ValueError(f"record {self.record_id}: signal must be (8, T), got {tuple(self.signal.shape)}")
        if self.units not in SIGNAL_UNITS:
            raise ValueError(f"record {self.record_id}: units must be one of {SIGNAL_UNITS}, got {self.units!r}")

    @property
    def n_samples(self) -> int:
        return int(self.signal.shape[1])

    @property
    def seconds(self) -> float:
        return self.n_samples / float(self.fs)
