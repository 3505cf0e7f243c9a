"""Noise of the synthetic corpus, made at the electrodes (so every lead that shares an electrode shares its noise),
and the recording device's filters.

- Baseline wander: breathing (at the visit's respiratory rate) and slow drift (0.02-0.4 Hz), per electrode.
- Electrode motion: in some records a lead-off-like step that recovers exponentially, with a burst of
  0.5-8 Hz motion noise (as in the MIT-BIH Noise Stress Test "em" records).
- EMG: 20-150 Hz muscle noise whose level follows slow tension changes, stronger on the limb electrodes.
- Powerline: 50 or 60 Hz (and a weak third harmonic) through unequal electrode impedances.
- Amplifier white noise.
- Device filters, one profile per visit: diagnostic 0.05-150 Hz, 0.5-100 Hz with a notch, 0.67-40 Hz
  (monitoring-like), or unfiltered; zero-phase (scipy.signal.sosfiltfilt), as most carts export.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.signal as sps

N_ELECTRODES = 9
_LIMB = np.array([1.6, 1.6, 1.6, 1, 1, 1, 1, 1, 1], np.float32)[:, None]  # EMG weight: limbs carry muscle
PROFILES: tuple[str, ...] = ("diagnostic", "hp0.5-notch", "monitor", "raw")
_PROFILE_P = np.array([0.50, 0.20, 0.08, 0.22])


@lru_cache(maxsize=16)
def _emg_sos(fs: float) -> np.ndarray:
    return sps.butter(2, [20.0, min(150.0, 0.45 * fs)], btype="bandpass", fs=fs, output="sos")


@lru_cache(maxsize=16)
def _motion_sos(fs: float) -> np.ndarray:
    return sps.butter(2, [0.5, min(8.0, 0.4 * fs)], btype="bandpass", fs=fs, output="sos")


@lru_cache(maxsize=32)
def device_sos(profile: str, fs: float, line_hz: float) -> np.ndarray | None:
    """Second-order sections of a device filter profile at ``fs`` (None: no filtering)."""
    top = 0.45 * fs
    if profile == "diagnostic":
        return sps.butter(1, [0.05, min(150.0, top)], btype="bandpass", fs=fs, output="sos")
    if profile == "hp0.5-notch":
        band = sps.butter(2, [0.5, min(100.0, top)], btype="bandpass", fs=fs, output="sos")
        if line_hz >= top:
            return band
        notch = sps.tf2sos(*sps.iirnotch(line_hz, 30.0, fs=fs))
        return np.vstack([band, notch])
    if profile == "monitor":
        return sps.butter(2, [0.67, min(40.0, top)], btype="bandpass", fs=fs, output="sos")
    return None


def electrode_noise(rng: np.random.Generator, fs: float, n: int, resp_hz: float, level: float = 1.0
                    ) -> tuple[np.ndarray, dict[str, object]]:
    """(9, n) float32 mV noise at RA, LA, LL, V1..V6, and what was drawn (JSON-able) for the record's meta.

    ``level`` scales the whole visit (a tidy recording vs a restless patient). Sources are few slow sines
    mixed into the electrodes and float32 uniform draws shaped by filters: the noise costs about a millisecond.
    """
    t = np.arange(n, dtype=np.float32) / np.float32(fs)
    # Wander: breathing + 3 drift sines, mixed into the electrodes with log-normal gains (mV).
    f = np.concatenate([[resp_hz], rng.uniform(0.02, 0.4, 3)]).astype(np.float32)[:, None]
    src = np.sin(np.float32(2 * np.pi) * f * t + rng.uniform(0, 2 * np.pi, (4, 1)).astype(np.float32))  # (4, n)
    wander_mv = rng.lognormal(np.log(0.034), 0.35)  # breathing and skin drift do not follow `level`
    mix = (rng.normal(0.0, 1.0, (N_ELECTRODES, 4)) * wander_mv * rng.lognormal(0.0, 0.35, (N_ELECTRODES, 1)))
    # Powerline through unequal electrode impedances: a sin + b cos per electrode, plus a weak 3rd harmonic.
    line_hz = float(rng.choice([50.0, 60.0]))
    line_mv = rng.lognormal(np.log(0.004), 0.9) * (5.0 if rng.random() < 0.1 else 1.0)
    for h, scale in ((1, 1.0), (3, 0.15)):
        if h * line_hz < 0.5 * fs:
            wt = np.float32(2 * np.pi * h * line_hz) * t
            gain = scale * line_mv * rng.lognormal(0.0, 0.6, (N_ELECTRODES, 1))
            phase = rng.uniform(0, 2 * np.pi, (N_ELECTRODES, 1))
            src = np.concatenate([src, np.sin(wt)[None], np.cos(wt)[None]])
            mix = np.concatenate([mix, gain * np.cos(phase), gain * np.sin(phase)], axis=1)
    out = np.einsum("es,sn->en", mix.astype(np.float32), src)  # not BLAS: see synthetic_morphology.mix
    # EMG: uniform draws (twice as fast as normal ones; the band-pass makes them Gaussian anyway).
    emg_mv = level * rng.lognormal(np.log(0.011), 0.6)
    raw = (rng.random((N_ELECTRODES, n), dtype=np.float32) - np.float32(0.5)) * np.float32(np.sqrt(12.0))
    tension = np.exp(np.float32(0.5) * np.sin(np.float32(2 * np.pi * rng.uniform(0.05, 0.4)) * t
                                               + np.float32(rng.uniform(0, 7))))
    out += sps.sosfilt(_emg_sos(fs), raw).astype(np.float32) * (np.float32(emg_mv) * _LIMB * tension)
    out += rng.standard_normal((N_ELECTRODES, n), dtype=np.float32) * np.float32(rng.uniform(0.002, 0.006))
    # Electrode motion: a step that decays over a second or so, plus 0.5-8 Hz motion noise around it.
    motion = bool(rng.random() < 0.15 * level)
    if motion:
        e = int(rng.integers(N_ELECTRODES))
        t0 = rng.uniform(0.0, n / fs)
        after = np.clip(t - np.float32(t0), 0, None)
        step = np.where(t >= t0, np.exp(-after / np.float32(rng.uniform(0.3, 1.5))), 0).astype(np.float32)
        burst = sps.sosfilt(_motion_sos(fs), rng.standard_normal(n)).astype(np.float32)
        burst *= np.exp(-np.abs(t - np.float32(t0)) / np.float32(0.7)) / max(1e-6, float(burst.std()))  # unit peak SD
        out[e] += rng.normal(0.0, 0.5) * step + rng.uniform(0.05, 0.3) * burst
    return out, {"powerline_hz": line_hz, "wander_mv": float(wander_mv), "emg_mv": float(emg_mv),
                 "electrode_motion": motion}


def device_filter(rng: np.random.Generator, x: np.ndarray, fs: float, line_hz: float) -> tuple[np.ndarray, str]:
    """``x`` (E, n) through a device profile drawn for this visit; returns (filtered float32, profile name)."""
    profile = str(PROFILES[int(rng.choice(len(PROFILES), p=_PROFILE_P))])
    sos = device_sos(profile, fs, line_hz)
    if sos is None:
        return x, profile
    return sps.sosfiltfilt(sos, x, axis=1).astype(np.float32), profile
