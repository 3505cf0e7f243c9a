"""From a reader's ECGRecord to what the store holds: checked, resampled, filtered, fixed length, int16.

Order matters: the checks run on the source samples (resampling ringing would hide a flat or clipped
lead), then resampling, optional zero-phase filters, crop/pad, and quantisation with a per-record gain.
Stored value q relates to millivolts as ``mV = (q - baseline) / gain``.

Units: a store holds millivolts ("mV") or normalised signals ("z": each lead in standard deviations, as a
per-lead z-scored corpus is published). The amplitude checks are stated in the store's unit:

=========================  ==========================  ==================================================
check                      "mV"                        "z"
=========================  ==========================  ==================================================
flat lead (peak-to-peak)   below 0.01 mV               below 0.1 SD: only a lead that was constant
implausible amplitude      a sample beyond +-50 mV     a sample beyond +-50 SD: not a z-scored ECG lead
clipped (saturated)        0.25 s at the lead's max    the same: a plateau at the extremes has no unit
                           or min value
=========================  ==========================  ==================================================

A per-lead z-scored lead has peak-to-peak of at least 2 SD, so a flat one can only be a lead that was constant
before normalisation; and no sample of it can lie beyond sqrt(T - 1) SD of its mean (sqrt(4999) = 70.7 for 10 s
at 500 Hz), while real 12-lead ECGs stay well inside 50 SD (at most 17.5 in the 1,819 PTB-XL ECGs of the
shared subset): a larger value says the data is not what "z" declares (raw ADC counts, microvolts).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, replace
from fractions import Fraction

import numpy as np
from scipy import signal as sps

from ecgfast import LEADS

from .record import SIGNAL_UNITS, ECGRecord, RecordError, RejectReason

INT16_MAX = 32766  # one below the int16 limit, so rounding of the baseline can never clip


FS_RANGE = (50.0, 10_000.0)  # store rates ecgfast accepts, Hz
SECONDS_RANGE = (1.0, 600.0)  # store record lengths ecgfast accepts, s


@dataclass(frozen=True)
class PreprocessConfig:
    """How records become store rows. Defaults: 500 Hz, 10 s, no filters.

    Attributes:
        fs: store sampling rate (Hz); records at another rate are resampled (polyphase).
        seconds: store length; longer records are cropped (from the start), shorter ones zero-padded.
        min_seconds: records shorter than this (at their own rate) are rejected as too short.
        bandpass: (low, high) Hz for a zero-phase Butterworth band-pass, or None.
        notch: powerline frequency (50 or 60 Hz) for a zero-phase notch, or None.
        flat_mv: a lead whose peak-to-peak amplitude is below this (mV) is flat ("mV" stores).
        saturation_seconds: a lead that spends this long at exactly its max or min value is clipped.
        max_abs_mv: a lead with a sample beyond +-this (mV) is no ECG: ``implausible_amplitude`` ("mV" stores).
        units: the store's unit, "mV" or "z"; every record must come in it (see the module docstring).
        flat_z: ``flat_mv`` for "z" stores, in standard deviations.
        max_abs_z: ``max_abs_mv`` for "z" stores, in standard deviations.
        normalize: "zscore": after the filters, each lead of each record becomes (x - mean) / sd over its samples,
            and the store holds "z" signals whatever unit its sources yield (each record checked in its own unit
            first): how public z-scored corpora such as ptbxl-subset were made, so that such a corpus and
            millivolt records can be one store. None: values kept in their unit.
    """

    fs: float = 500.0
    seconds: float = 10.0
    min_seconds: float = 5.0
    bandpass: tuple[float, float] | None = None
    notch: float | None = None
    flat_mv: float = 0.01
    saturation_seconds: float = 0.25
    max_abs_mv: float = 50.0
    units: str = "mV"
    flat_z: float = 0.1
    max_abs_z: float = 50.0
    normalize: str | None = None

    @property
    def n_samples(self) -> int:
        return int(round(self.fs * self.seconds))

    @property
    def flat_limit(self) -> float:
        """Peak-to-peak below which a lead is flat, in the store's unit."""
        return self.flat_z if self.units == "z" else self.flat_mv

    @property
    def amplitude_limit(self) -> float:
        """Absolute value beyond which a sample is no ECG, in the store's unit."""
        return self.max_abs_z if self.units == "z" else self.max_abs_mv

    def __post_init__(self) -> None:
        if not all(math.isfinite(v) for v in (self.fs, self.seconds, self.min_seconds)):
            raise ValueError(f"fs, seconds and min_seconds must be finite numbers, got {self.fs}, {self.seconds}, "
                             f"{self.min_seconds}")
        # an ECG store: QRS content reaches ~40 Hz (so at least 50 Hz), high-resolution ECG ~10 kHz; a record of
        # 1 s to 10 min (a 10 s ECG is 80 kB at 500 Hz; 10 min at 10 kHz would already be 96 MB a record)
        if not FS_RANGE[0] <= self.fs <= FS_RANGE[1]:
            raise ValueError(f"fs must be in [{FS_RANGE[0]:g}, {FS_RANGE[1]:g}] Hz, got {self.fs:g}")
        if not SECONDS_RANGE[0] <= self.seconds <= SECONDS_RANGE[1]:
            raise ValueError(f"seconds (the store's record length) must be in [{SECONDS_RANGE[0]:g}, "
                             f"{SECONDS_RANGE[1]:g}], got {self.seconds:g}")
        if self.min_seconds < 0:
            raise ValueError(f"min_seconds must be >= 0, got {self.min_seconds:g}")
        if self.normalize not in (None, "zscore"):
            raise ValueError(f"normalize must be zscore or unset, got {self.normalize!r}")
        if self.units not in SIGNAL_UNITS:
            raise ValueError(f"units must be one of {SIGNAL_UNITS}, got {self.units!r}")
        if not (self.max_abs_mv > 0 and self.max_abs_z > 0 and self.flat_mv >= 0 and self.flat_z >= 0):
            raise ValueError(f"amplitude limits must be positive, got {self}")
        if self.bandpass is not None:
            lo, hi = self.bandpass
            if not 0 <= lo < hi < self.fs / 2:
                raise ValueError(f"bandpass {self.bandpass} must satisfy 0 <= low < high < fs/2 = {self.fs / 2}")
        if self.notch is not None and not 0 < self.notch < self.fs / 2:
            raise ValueError(f"notch {self.notch} Hz must be in (0, fs/2 = {self.fs / 2})")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PreparedRecord:
    """One store row: (8, n_samples) int16 plus what is needed to get millivolts back."""

    samples: np.ndarray  # (8, n_samples) int16
    gain: float  # adc units per mV
    baseline: int  # adc value of 0 mV
    valid_length: int  # samples before zero padding
    checksum: str  # blake2b-64 of the int16 bytes


def check_signal(signal: np.ndarray, fs: float, record_id: str, config: PreprocessConfig) -> None:
    """Reject unusable signals: bad rate, too short, NaN/Inf, flat leads, implausible amplitudes, clipped leads.

    Args:
        signal: (8, T) float values in ``config.units`` (millivolts by default), ecgfast lead order, at its
            source rate ``fs``.
    Raises:
        RecordError naming the record, the lead and the measured value.
    """
    if not fs or not np.isfinite(fs) or fs <= 0:
        raise RecordError(RejectReason.BAD_SAMPLING_RATE, f"record {record_id}: sampling rate {fs!r}")
    n = signal.shape[1]
    if n < config.min_seconds * fs or n < 2:
        raise RecordError(RejectReason.TOO_SHORT,
                          f"record {record_id}: {n / fs:.2f} s, minimum is {config.min_seconds:g} s")
    finite = np.isfinite(signal)
    if not finite.all():
        bad = [LEADS[i] for i in np.where(~finite.all(axis=1))[0]]
        raise RecordError(RejectReason.NON_FINITE,
                          f"record {record_id}: {int((~finite).sum())} NaN/Inf samples in lead(s) {', '.join(bad)}")
    hi, lo = signal.max(axis=1), signal.min(axis=1)  # (8,)
    unit = "SD" if config.units == "z" else "mV"
    for i in np.where(hi - lo < config.flat_limit)[0]:
        raise RecordError(RejectReason.FLAT_LEAD,
                          f"record {record_id}: lead {LEADS[i]} is flat (peak-to-peak {hi[i] - lo[i]:.4f} {unit})")
    peak = np.maximum(hi, -lo)  # (8,) largest absolute value per lead
    for i in np.where(peak > config.amplitude_limit)[0]:
        raise RecordError(RejectReason.IMPLAUSIBLE_AMPLITUDE,
                          f"record {record_id}: lead {LEADS[i]} reaches {peak[i]:.4g} {unit}, beyond the "
                          f"{config.amplitude_limit:g} {unit} an ECG can be (wrong gain or unit in the source?)")
    # Time at exactly the lead's extreme values: clipping by an ADC or an amplifier shows as plateaus there.
    at_extreme = ((signal == hi[:, None]) | (signal == lo[:, None])).sum(axis=1)  # (8,)
    limit = config.saturation_seconds * fs
    for i in np.where(at_extreme >= limit)[0]:
        raise RecordError(RejectReason.SATURATED_LEAD,
                          f"record {record_id}: lead {LEADS[i]} sits at its extreme value for "
                          f"{at_extreme[i] / fs:.2f} s (clipped; limit {config.saturation_seconds:g} s)")


def resample(signal: np.ndarray, fs: float, target_fs: float) -> np.ndarray:
    """Polyphase resampling (scipy.signal.resample_poly) of (L, T) from ``fs`` to ``target_fs``."""
    if fs == target_fs:
        return signal
    ratio = Fraction(target_fs / fs).limit_denominator(1000)
    return sps.resample_poly(signal, ratio.numerator, ratio.denominator, axis=1).astype(np.float32)


def apply_filters(signal: np.ndarray, fs: float, config: PreprocessConfig) -> np.ndarray:
    """Zero-phase (forward-backward) band-pass and notch filters of (L, T), as configured."""
    out = signal
    if config.bandpass is not None:
        sos = sps.butter(2, config.bandpass, btype="bandpass", fs=fs, output="sos")
        out = sps.sosfiltfilt(sos, out, axis=1)
    if config.notch is not None:
        b, a = sps.iirnotch(config.notch, Q=30.0, fs=fs)
        out = sps.filtfilt(b, a, out, axis=1)
    return np.asarray(out, dtype=np.float32)


def fit_length(signal: np.ndarray, n: int) -> tuple[np.ndarray, int]:
    """Crop (keep the start) or zero-pad (8, T) to (8, n). Returns (signal, valid_length)."""
    t = signal.shape[1]
    if t >= n:
        return signal[:, :n], n
    out = np.zeros((signal.shape[0], n), dtype=signal.dtype)
    out[:, :t] = signal
    return out, t


def quantize(signal: np.ndarray) -> tuple[np.ndarray, float, int]:
    """int16 with the finest per-record gain at which nothing clips. Returns (q, gain, baseline).

    The range always includes 0 mV so zero padding is representable; ``mV = (q - baseline) / gain``.
    """
    lo, hi = min(float(signal.min()), 0.0), max(float(signal.max()), 0.0)
    half = max((hi - lo) / 2.0, 1e-6)
    gain = float(np.float32((INT16_MAX - 1) / half))  # exactly representable in float32 for GPU decoding
    baseline = int(round(-(hi + lo) / 2.0 * gain))
    q = np.rint(signal.astype(np.float64) * gain) + baseline
    return q.astype(np.int16), gain, baseline


def checksum(samples: np.ndarray) -> str:
    """16 hex digits of blake2b over the record's int16 bytes (C order)."""
    return hashlib.blake2b(np.ascontiguousarray(samples).tobytes(), digest_size=8).hexdigest()


def dequantize(samples: np.ndarray, gain: float, baseline: float) -> np.ndarray:
    """Millivolts (float32) from stored int16 samples."""
    return ((samples.astype(np.float32) - np.float32(baseline)) / np.float32(gain)).astype(np.float32)


def preprocess(record: ECGRecord, config: PreprocessConfig) -> PreparedRecord:
    """Check, resample, filter, fit and quantise one record.

    Raises:
        RecordError: the record is unusable (see :func:`check_signal`), or its units are not the store's.
    """
    if record.units != config.units and config.normalize is None:
        raise RecordError(RejectReason.HEADER_MISMATCH, f"record {record.record_id}: signal in {record.units!r}, "
                                                        f"the store holds {config.units!r}")
    signal = np.asarray(record.signal, dtype=np.float32)
    check_signal(signal, record.fs, record.record_id, replace(config, units=record.units))  # in its own unit
    x = resample(signal, record.fs, config.fs)
    x = apply_filters(x, config.fs, config)
    if config.normalize == "zscore":  # (8, T): each lead to zero mean, unit sd; check_signal refused flat leads
        x = (x - x.mean(axis=1, keepdims=True)) / np.maximum(x.std(axis=1, keepdims=True), 1e-12)
    x, valid = fit_length(x, config.n_samples)
    q, gain, baseline = quantize(x)  # zero padding maps exactly to q == baseline
    return PreparedRecord(samples=q, gain=gain, baseline=baseline, valid_length=valid, checksum=checksum(q))
