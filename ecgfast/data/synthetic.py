"""The embedded synthetic corpus: realistic 8-lead ECGs from a 3-D heart-dipole model, as a Reader.

The cardiac dipole (VCG, 3 x T) is a sum of P, Q, R, S and T waves, each a time bump (an asymmetric
Gaussian, as in McSharry et al.'s ECGSYN) along its own 3-D direction (the 3-D extension of Sameni et al.
2007), repeated beat by beat with RR intervals that carry respiratory sinus arrhythmia and noise. The Dower
matrix (METHOD.md) projects it to the leads I, II, V1..V6. A patient is a latent state drawn once (heart
orientation, amplitudes, widths, intervals, heart rate and two disease severities); each recording adds
electrode jitter, a heart-rate change, baseline wander, powerline, muscle (EMG) and white noise.

Two patient-level tasks in the spirit of the paper's: ``low_ef`` (low QRS voltage, wide QRS, tachycardia)
and ``hyperk`` (tall peaked T, flat P, wider QRS). Each label is a noisy threshold of a latent severity
that also drives the morphology, so both are learnable from the ECG but neither is trivial.

Everything is a pure function of (seed, patient index, ECG index): any worker reads any record, in any
order, and gets the same samples.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.signal as sps

from .readers.base import Reader, SourceItem
from .record import ECGRecord

#: Dower matrix (8, 3): rows I, II, V1..V6; columns X (left), Y (foot), Z (back). METHOD.md.
DOWER = np.array([[0.632, -0.235, 0.059], [0.235, 1.066, -0.132], [-0.515, 0.157, -0.917],
                  [0.044, 0.164, -1.387], [0.882, 0.098, -1.277], [1.213, 0.127, -0.601],
                  [1.125, 0.127, -0.086], [0.831, 0.076, 0.230]])

WAVES = ("P", "Q", "R", "S", "T")
# Mean wave directions (X left, Y foot, Z back): septal Q anterior-rightward, main R left-inferior-slightly
# posterior, terminal S posterior-superior, T concordant and anterior. Gives rS in V1, qR in V5/V6.
_DIRECTION = np.array([[0.55, 0.80, -0.20], [-0.35, 0.15, -0.92], [0.76, 0.60, 0.26],
                       [-0.45, -0.10, 0.88], [0.70, 0.55, -0.45]])
_DIRECTION /= np.linalg.norm(_DIRECTION, axis=1, keepdims=True)
_AMPLITUDE = np.array([0.19, 0.18, 1.45, 0.6, 0.30])  # dipole mV; R gives ~1.1 mV in lead II
_OFFSET_QRS = np.array([-0.022, 0.0, 0.022])  # s, Q R S peaks around the R peak at width factor 1
_SIGMA_LEFT = np.array([0.022, 0.008, 0.010, 0.010, 0.055])  # s, rising side of each bump
_SIGMA_RIGHT = np.array([0.022, 0.008, 0.010, 0.012, 0.035])  # s, falling side (T falls faster)
_LN2 = float(np.log(2.0))  # softplus(0): severity effects are centred on the median patient


@dataclass(frozen=True)
class PatientState:
    """Latent state of one synthetic patient, drawn once and shared by all of their ECGs."""

    rotation: np.ndarray  # (3, 3) heart orientation: electrical axis and precordial transition
    amplitude: np.ndarray  # (5,) dipole amplitude of P, Q, R, S, T in mV
    qrs_width: float  # QRS width factor (1 ~ 90 ms)
    t_sharpness: float  # T width divisor (>1: narrow, peaked T)
    pr: float  # s, P-wave centre to R peak
    qtc: float  # s, Bazett-corrected QT
    heart_rate: float  # bpm at rest
    low_ef_latent: float  # continuous severity, N(0, 1)
    hyperk_latent: float  # continuous severity, N(0, 1)
    low_ef: int  # noisy threshold of low_ef_latent
    hyperk: int  # noisy threshold of hyperk_latent


def _rotation(angles: np.ndarray) -> np.ndarray:
    """Rz @ Ry @ Rx for angles (3,) in radians."""
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def patient_state(seed: int, patient: int) -> PatientState:
    """The latent state of patient ``patient`` of the corpus with ``seed`` (deterministic)."""
    rng = np.random.default_rng([seed, patient, 1])
    ef, k = rng.standard_normal(2)
    # Heart orientation: frontal axis spread ~20 deg (about Z), horizontal and sagittal ~10 deg.
    rotation = _rotation(np.deg2rad(rng.normal(0.0, [10.0, 12.0, 20.0])))
    habitus = np.exp(rng.normal(0.0, 0.2))  # torso size / conductivity scales every wave alike
    amplitude = _AMPLITUDE * habitus * np.exp(rng.normal(0.0, [0.25, 0.4, 0.15, 0.3, 0.25]))
    sp_ef, sp_k = np.logaddexp(0.0, ef), np.logaddexp(0.0, k)  # softplus: effects grow with severity
    amplitude[1:4] *= np.exp(-0.22 * ef - 0.12 * sp_ef)  # low EF: low QRS voltage
    amplitude[4] *= np.exp(0.22 * k + 0.18 * sp_k)  # hyperkalemia: tall T
    amplitude[0] *= np.exp(-0.2 * k - 0.15 * sp_k)  # ... and flat P
    qrs_width = float(np.exp(rng.normal(0.0, 0.07)) * (1.0 + 0.08 * (sp_ef - _LN2) + 0.05 * (sp_k - _LN2)))
    heart_rate = float(np.clip(rng.normal(68.0, 9.0) + 6.0 * ef, 42.0, 130.0))
    return PatientState(
        rotation=rotation, amplitude=amplitude, qrs_width=qrs_width,
        t_sharpness=float(np.exp(rng.normal(0.0, 0.08) + 0.12 * sp_k)),
        pr=float(np.clip(rng.normal(0.155, 0.018), 0.11, 0.22)), qtc=float(rng.normal(0.41, 0.02) - 0.01 * k),
        heart_rate=heart_rate, low_ef_latent=float(ef), hyperk_latent=float(k),
        low_ef=int(ef + rng.normal(0.0, 0.6) > 0.8), hyperk=int(k + rng.normal(0.0, 0.8) > 0.95))


def _beat_times(rng: np.random.Generator, heart_rate: float, seconds: float) -> np.ndarray:
    """R-peak times (B,) in s covering [-1, seconds + 1]: RR with respiratory sinus arrhythmia and jitter."""
    rr_mean = 60.0 / heart_rate
    n = int(np.ceil((seconds + 2.0) / (0.8 * rr_mean))) + 2
    f_resp, phase = rng.uniform(0.15, 0.35), rng.uniform(0, 2 * np.pi)
    rsa = rng.uniform(0.01, 0.05)  # fractional RR modulation by breathing
    b = np.arange(n)
    rr = rr_mean * (1.0 + rsa * np.sin(2 * np.pi * f_resp * b * rr_mean + phase) + rng.normal(0.0, 0.015, n))
    t = -1.0 + rng.uniform(0, rr_mean) + np.concatenate([[0.0], np.cumsum(rr[:-1])])
    return t[t < seconds + 1.0]


def _bumps(fs: float, n: int, center: np.ndarray, sigma_l: np.ndarray, sigma_r: np.ndarray,
           amp: np.ndarray) -> np.ndarray:
    """Sum of asymmetric Gaussian bumps per wave: (W, n) from (W, B) centres (s), widths (s), amplitudes.

    Each bump is evaluated on a window of +-5 sigma samples around its centre and scatter-added.
    """
    w, b = center.shape
    half = int(np.ceil(5.0 * max(sigma_l.max(), sigma_r.max()) * fs))
    k = np.arange(-half, half + 1)
    idx = np.rint(center * fs).astype(np.int64)[..., None] + k  # (W, B, K)
    dt = idx / fs - center[..., None]
    sig = np.where(dt < 0, sigma_l[..., None], sigma_r[..., None])
    val = amp[..., None] * np.exp(-0.5 * (dt / sig) ** 2)
    keep = (idx >= 0) & (idx < n)
    flat = (idx + (np.arange(w) * n)[:, None, None])[keep]
    return np.bincount(flat, weights=val[keep], minlength=w * n).reshape(w, n)


@lru_cache(maxsize=8)
def _emg_sos(fs: float) -> np.ndarray:
    return sps.butter(2, [20.0, min(150.0, 0.45 * fs)], btype="bandpass", fs=fs, output="sos")


def _noise(rng: np.random.Generator, fs: float, n: int) -> tuple[np.ndarray, float]:
    """(8, n) mV of baseline wander, powerline, EMG and white noise; and the powerline frequency.

    Few sine evaluations (sources mixed into leads), float32 draws: the noise must cost about a millisecond.
    """
    t = np.arange(n, dtype=np.float32) / np.float32(fs)
    # Wander: 4 slow sources (breathing, electrode motion) mixed into the leads, ~0.05-0.3 mV.
    f = rng.uniform(0.05, 0.6, (4, 1)).astype(np.float32)
    src = np.sin(np.float32(2 * np.pi) * f * t + rng.uniform(0, 7, (4, 1)).astype(np.float32))  # (4, n)
    mix = rng.normal(0.0, 1.0, (8, 4)) * rng.lognormal(np.log(0.05), 0.5, (8, 1))
    # Powerline: one frequency, a gain and phase per lead: a sin + b cos.
    line_hz = float(rng.choice([50.0, 60.0]))
    wt = np.float32(2 * np.pi * line_hz) * t
    gain = rng.lognormal(np.log(0.006), 0.8, (8, 1)) * (4.0 if rng.random() < 0.2 else 1.0)
    phase = rng.uniform(0, 2 * np.pi, (8, 1))
    src = np.concatenate([src, np.sin(wt)[None], np.cos(wt)[None]])  # (6, n)
    mix = np.concatenate([mix, gain * np.cos(phase), gain * np.sin(phase)], axis=1)  # (8, 6)
    # EMG: 20-150 Hz noise whose level follows slow muscle tension; white: amplifier noise.
    # Uniform draws are twice as fast as normal ones, and the band-pass makes them Gaussian anyway.
    emg_src = (rng.random((8, n), dtype=np.float32) - np.float32(0.5)) * np.float32(np.sqrt(12.0))
    burst = np.exp(np.float32(0.8) * np.sin(np.float32(2 * np.pi * rng.uniform(0.05, 0.4)) * t + rng.uniform(0, 7)))
    emg = sps.sosfilt(_emg_sos(fs), emg_src) * (rng.lognormal(np.log(0.012), 0.6) * burst)
    white = rng.standard_normal((8, n), dtype=np.float32) * np.float32(rng.uniform(0.003, 0.012))
    return mix.astype(np.float32) @ src + emg + white, line_hz


def synthesize(state: PatientState, rng: np.random.Generator, fs: float = 500.0, seconds: float = 10.0,
               noise: bool = True) -> tuple[np.ndarray, dict[str, object]]:
    """One recording of a patient: ((8, T) float32 mV in I, II, V1..V6 order, meta with JSON-able values).

    ``noise=False`` returns the pure dipole projection (rank 3 across leads), for tests and plots.
    """
    n = int(round(fs * seconds))
    hr = float(np.clip(state.heart_rate * np.exp(rng.normal(0.0, 0.06)), 40.0, 140.0))  # this visit's rate
    beats = _beat_times(rng, hr, seconds)  # (B,)
    rr = np.diff(beats, prepend=beats[0] - 60.0 / hr)  # preceding RR of each beat
    w = state.qrs_width
    # QT adapts to the preceding RR (Bazett); T peak ~2.6 falling sigmas before T end.
    qt = state.qtc * np.sqrt(rr)
    t_sig_r = _SIGMA_RIGHT[4] * rr ** 0.3 / state.t_sharpness
    t_peak = -0.045 * w + qt - 2.6 * t_sig_r
    offsets = np.stack([np.full_like(rr, -state.pr), *(np.full_like(rr, o * w) for o in _OFFSET_QRS), t_peak])
    scale = np.array([1.0, w, w, w, 1.0])[:, None]  # QRS widens as a whole
    sig_l = np.broadcast_to(_SIGMA_LEFT[:, None] * scale, offsets.shape).copy()
    sig_r = np.broadcast_to(_SIGMA_RIGHT[:, None] * scale, offsets.shape).copy()
    sig_l[4], sig_r[4] = _SIGMA_LEFT[4] * rr ** 0.3 / state.t_sharpness ** 1.5, t_sig_r
    # Per-beat amplitude: breathing moves the heart (~5 %) plus beat-to-beat scatter.
    beat_amp = 1.0 + 0.04 * np.sin(2 * np.pi * rng.uniform(0.15, 0.35) * beats + rng.uniform(0, 7))
    visit_amp = state.amplitude[:, None] * np.exp(rng.normal(0.0, 0.05, (5, 1)))  # (5, 1)
    amp = visit_amp * beat_amp * rng.normal(1.0, 0.02, beats.shape)  # (5, B)
    waves = _bumps(fs, n, beats + offsets, sig_l, sig_r, amp)  # (5, n)
    # Directions: the patient's heart orientation plus a small per-wave, per-visit wobble.
    dirs = (state.rotation @ (_DIRECTION + rng.normal(0.0, 0.04, _DIRECTION.shape)).T)  # (3, 5)
    dower = DOWER * np.exp(rng.normal(0.0, 0.05, DOWER.shape)) + rng.normal(0.0, 0.03, DOWER.shape)  # electrodes
    signal = (dower @ dirs) @ waves  # (8, 5) @ (5, n)
    line_hz = None
    if noise:
        extra, line_hz = _noise(rng, fs, n)
        signal += extra
    inside = (beats >= 0) & (beats < seconds)
    meta: dict[str, object] = {
        "heart_rate": float(60.0 / np.mean(np.diff(beats[inside]))) if inside.sum() > 1 else hr,
        "qrs_ms": float(1000 * w * (_OFFSET_QRS[2] - _OFFSET_QRS[0] + 2.5 * (_SIGMA_RIGHT[3] + _SIGMA_LEFT[1]))),
        "qt_ms": float(1000 * state.qtc * np.sqrt(60.0 / hr)),
        "low_ef_latent": state.low_ef_latent, "hyperk_latent": state.hyperk_latent,
        "powerline_hz": line_hz,
    }
    return signal.astype(np.float32), meta


class SyntheticReader(Reader):
    """A synthetic corpus of ``n_patients`` patients with several ECGs each (the embedded default).

    Args:
        n_patients: number of patients.
        ecgs_per_patient: ECGs per patient, an int or an inclusive (min, max) range drawn per patient.
        seed: corpus seed (>= 0); the whole corpus is a pure function of it and the other arguments.
        fs: sampling rate in Hz.
        seconds: record length in s.
        noise: add baseline wander, powerline, EMG and white noise (False: noise-free dipole projections).

    Example:
        >>> reader = SyntheticReader(n_patients=3, ecgs_per_patient=(1, 4), seed=0)
        >>> rec = reader.read(next(iter(reader.items())))  # rec.signal: (8, 5000) float32 mV
    """

    format_name = "synthetic"

    def __init__(self, n_patients: int = 200, ecgs_per_patient: int | tuple[int, int] = (2, 5), seed: int = 0,
                 fs: float = 500.0, seconds: float = 10.0, noise: bool = True):
        lo, hi = (ecgs_per_patient,) * 2 if np.ndim(ecgs_per_patient) == 0 else tuple(ecgs_per_patient)
        if n_patients < 0 or not 1 <= lo <= hi:
            raise ValueError(f"need n_patients >= 0 and 1 <= min <= max ECGs per patient, got {n_patients}, "
                             f"{ecgs_per_patient}")
        if seed < 0 or fs < 100.0 or seconds <= 0:
            raise ValueError(f"need seed >= 0, fs >= 100 Hz and seconds > 0, got {seed}, {fs}, {seconds}")
        self.n_patients, self.ecgs_per_patient, self.seed = int(n_patients), (int(lo), int(hi)), int(seed)
        self.fs, self.seconds, self.noise = float(fs), float(seconds), bool(noise)

    def n_ecgs(self, patient: int) -> int:
        """How many ECGs patient ``patient`` has (deterministic from the seed)."""
        lo, hi = self.ecgs_per_patient
        return int(np.random.default_rng([self.seed, patient, 0]).integers(lo, hi + 1))

    def items(self) -> Iterator[SourceItem]:
        for p in range(self.n_patients):
            state = patient_state(self.seed, p)
            labels = {"low_ef": state.low_ef, "hyperk": state.hyperk}
            for e in range(self.n_ecgs(p)):
                yield SourceItem(record_id=f"syn-p{p:06d}-e{e}", locator=f"{p}:{e}", patient_id=f"syn-p{p:06d}",
                                 labels=dict(labels))

    def read(self, item: SourceItem) -> ECGRecord:
        p, e = (int(v) for v in item.locator.split(":"))
        if not (0 <= p < self.n_patients and 0 <= e < self.n_ecgs(p)):
            raise ValueError(f"record {item.record_id}: locator {item.locator} is outside this synthetic corpus")
        state = patient_state(self.seed, p)
        signal, meta = synthesize(state, np.random.default_rng([self.seed, p, 2, e]), self.fs, self.seconds,
                                  self.noise)
        meta.update(patient_index=p, ecg_index=e, synthetic_seed=self.seed)
        return ECGRecord(record_id=f"syn-p{p:06d}-e{e}", patient_id=f"syn-p{p:06d}", signal=signal, fs=self.fs,
                         source=f"synthetic:{self.seed}:{p}:{e}",
                         labels={"low_ef": state.low_ef, "hyperk": state.hyperk}, meta=meta)

    def describe(self) -> str:
        lo, hi = self.ecgs_per_patient
        return (f"synthetic (patients={self.n_patients}, ecgs={lo}-{hi}, seed={self.seed}, fs={self.fs:g}, "
                f"seconds={self.seconds:g}, noise={self.noise})")
