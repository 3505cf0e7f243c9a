"""Rhythms of the synthetic corpus: when the atria and ventricles fire, and the atrial waves of AF and flutter.

- Sinus: RR modulated by breathing (respiratory sinus arrhythmia, 0.15-0.4 Hz), a slower Mayer wave
  (~0.1 Hz) and AR(1) beat noise; each P conducts after the PR interval (first-degree AV block: a long PR).
- Premature atrial beats (PAC): an early P' of another shape, a normal QRS, and a sinus node reset (no
  compensatory pause). Premature ventricular beats (PVC): an early wide complex without P, the next sinus P
  blocked in its refractory period (full compensatory pause); bigeminy puts one after every sinus beat.
- Atrial fibrillation: no P waves; irregularly irregular RR (independent log-normal intervals, a refractory
  floor); fibrillatory f waves at 4-9 Hz whose frequency and amplitude wander.
- Atrial flutter: sawtooth F waves at 240-340 per minute, conducted 2:1, 4:1 or variably.
- Paced: every sinus P is followed by a ventricular pacing spike and a paced complex.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.signal as sps

CONDUCTED, PVC, PACED = 0, 1, 2  # ventricular beat kinds


@dataclass(frozen=True)
class RhythmSpec:
    """A visit's rhythm. Times in s."""

    rhythm: str  # "sinus", "af" or "flutter"
    rr: float  # mean RR of the sinus node (sinus) or of the ventricles (af); ignored for flutter
    pr: float  # P to R of a conducted beat
    hrv: float  # fractional RR modulation by breathing
    resp_hz: float  # breathing rate
    pvc_prob: float  # chance of a PVC after each beat
    pac_prob: float  # chance that the next atrial beat is premature
    bigeminy: bool = False
    paced: bool = False
    af_sigma: float = 0.2  # log-normal spread of AF RR intervals
    flutter_cycle: float = 0.2  # F-wave cycle
    flutter_block: int = 2  # 2, 3, 4: fixed conduction ratio; 0: variable 2:1 / 4:1


@dataclass
class Beats:
    """The beats of one record (times may fall outside it: the renderer clips)."""

    r: np.ndarray  # (B,) ventricular reference (R) times, sorted
    kind: np.ndarray  # (B,) CONDUCTED, PVC or PACED
    rr: np.ndarray  # (B,) RR interval before each beat
    p: np.ndarray  # (P,) discrete P-wave times (empty in AF and flutter)
    p_ectopic: np.ndarray  # (P,) bool: premature atrial P'


def _sinus_rr(rng: np.random.Generator, spec: RhythmSpec, count: int) -> np.ndarray:
    """(count,) sinus RR intervals with respiratory, Mayer-wave and AR(1) variability."""
    b = np.arange(count) * spec.rr
    lf = 0.4 * spec.hrv * np.sin(2 * np.pi * rng.uniform(0.07, 0.12) * b + rng.uniform(0, 2 * np.pi))
    resp = spec.hrv * np.sin(2 * np.pi * spec.resp_hz * b + rng.uniform(0, 2 * np.pi))
    ar = sps.lfilter([1.0], [1.0, -0.6], rng.normal(0.0, 0.35 * spec.hrv + 0.004, count))
    return spec.rr * (1.0 + resp + lf + ar)


def sinus_beats(rng: np.random.Generator, spec: RhythmSpec, seconds: float) -> Beats:
    """Sinus rhythm with PACs, PVCs (or bigeminy), optional pacing, over [-1.5 s, seconds + 1 s]."""
    count = int(np.ceil((seconds + 3.0) / (0.5 * spec.rr))) + 4
    rr = _sinus_rr(rng, spec, count)
    u = rng.random((count, 5))  # per beat: PVC?, PAC?, coupling, PR jitter, sinus reset
    p_t, p_ect, r_t, kind = [], [], [], []
    p, ectopic, j = -1.5 + rng.uniform(0.0, spec.rr), False, 0
    while p < seconds + 1.0 and j < count:
        p_t.append(p)
        p_ect.append(ectopic)
        r = p + spec.pr + (0.01 * (u[j, 3] - 0.5) if ectopic else 0.0)
        r_t.append(r)
        kind.append(PACED if spec.paced else CONDUCTED)
        step = rr[j]
        j += 1
        if (spec.bigeminy and u[j - 1, 0] < 0.9) or u[j - 1, 0] < spec.pvc_prob:
            r_t.append(r + max(0.3, (0.42 + 0.2 * u[j - 1, 2]) * step))
            kind.append(PVC)
            p_t.append(p + step)  # the next sinus P comes on time but finds the ventricles refractory
            p_ect.append(False)
            p, ectopic = p + step + rr[min(j, count - 1)], False  # full compensatory pause
            j += 1
        elif u[j - 1, 1] < spec.pac_prob and not ectopic:
            p, ectopic = p + max(0.3, (0.5 + 0.25 * u[j - 1, 2]) * step), True
        else:
            # after a P' the sinus node is reset and briefly suppressed: the next sinus beat comes 1-1.2 cycles later
            p, ectopic = p + step * (1.0 + 0.2 * u[j - 1, 4] if ectopic else 1.0), False
    r_arr = np.asarray(r_t)
    order = np.argsort(r_arr, kind="stable")
    r_arr = r_arr[order]
    return Beats(r=r_arr, kind=np.asarray(kind, dtype=np.int8)[order],
                 rr=np.diff(r_arr, prepend=r_arr[0] - spec.rr), p=np.asarray(p_t), p_ectopic=np.asarray(p_ect))


def af_beats(rng: np.random.Generator, spec: RhythmSpec, seconds: float) -> Beats:
    """Atrial fibrillation: independent log-normal RR intervals (>= 0.28 s), occasional PVCs, no P waves."""
    count = int(np.ceil((seconds + 3.0) / (0.4 * spec.rr))) + 4
    s = spec.af_sigma
    rr = np.maximum(0.28, spec.rr * np.exp(rng.normal(-0.5 * s * s, s, count)))
    r = -1.5 + rng.uniform(0.0, spec.rr) + np.concatenate([[0.0], np.cumsum(rr[:-1])])
    kind = np.where(rng.random(count) < spec.pvc_prob, PVC, CONDUCTED).astype(np.int8)
    keep = r < seconds + 1.0
    return Beats(r=r[keep], kind=kind[keep], rr=np.concatenate([[spec.rr], rr[:-1]])[keep], p=np.zeros(0),
                 p_ectopic=np.zeros(0, dtype=bool))


def flutter_beats(rng: np.random.Generator, spec: RhythmSpec, seconds: float, f_start: float) -> Beats:
    """Atrial flutter: every k-th F wave (first at ``f_start``) conducts, k fixed or varying 2 / 4."""
    cycle = spec.flutter_cycle
    count = int(np.ceil((seconds + 3.0) / (2 * cycle))) + 4
    k = (np.full(count, spec.flutter_block) if spec.flutter_block else rng.choice([2, 2, 3, 4], count))
    latency = spec.pr  # F wave to R: fixed for a patient
    r = f_start + latency + cycle * np.concatenate([[0], np.cumsum(k[:-1])])
    rr = np.concatenate([[k[0] * cycle], np.diff(r)])
    keep = r < seconds + 1.0
    return Beats(r=r[keep], kind=np.zeros(int(keep.sum()), np.int8), rr=rr[keep], p=np.zeros(0),
                 p_ectopic=np.zeros(0, dtype=bool))


def _slow(rng: np.random.Generator, t: np.ndarray, lo: float, hi: float, terms: int = 3) -> np.ndarray:
    """A smooth random signal of unit-ish scale from ``terms`` sinusoids between lo and hi Hz."""
    f = rng.uniform(lo, hi, (terms, 1)).astype(np.float32)
    ph = rng.uniform(0, 2 * np.pi, (terms, 1)).astype(np.float32)
    return np.sin(np.float32(2 * np.pi) * f * t + ph).sum(axis=0) / np.float32(np.sqrt(terms / 2))


def atrial_sources(rng: np.random.Generator, spec: RhythmSpec, fs: float, n: int, amplitude: float,
                   f_start: float = 0.0) -> np.ndarray:
    """(2, n) float32 continuous atrial sources in mV: two f-wave generators (AF), a sawtooth and its
    lagged copy (flutter), zeros otherwise."""
    out = np.zeros((2, n), np.float32)
    t = np.arange(n, dtype=np.float32) / np.float32(fs)
    if spec.rhythm == "af":
        for i in range(2):
            f0 = rng.uniform(4.5, 8.5)
            freq = f0 * (1.0 + 0.08 * _slow(rng, t, 0.1, 0.6))
            phase = np.float32(2 * np.pi / fs) * np.cumsum(freq, dtype=np.float32)
            env = np.maximum(0.1, 1.0 + 0.35 * _slow(rng, t, 0.05, 0.4))
            wave = np.sin(phase) + 0.35 * np.sin(2 * phase + rng.uniform(0, 2 * np.pi))
            out[i] = (amplitude * (1.0 if i == 0 else rng.uniform(0.4, 0.9))) * env * wave
    elif spec.rhythm == "flutter":
        phase = np.float32(2 * np.pi / spec.flutter_cycle) * (t - np.float32(f_start))
        win = np.hanning(max(3, int(0.03 * fs)))  # 30 ms smoothing: F waves have no corners
        win /= win.sum()
        for i, (lag, gain) in enumerate(((0.0, 1.0), (0.25, 0.4))):
            saw = sps.sawtooth(phase - np.float32(2 * np.pi * lag), width=0.8)
            out[i] = gain * amplitude * np.convolve(saw, win, mode="same")
    return out
