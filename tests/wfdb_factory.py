"""Write small, valid WFDB records for tests, and break them in controlled ways."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import wfdb

LEADS12 = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]


def ecg_like(n_leads: int = 12, fs: float = 500.0, seconds: float = 10.0, seed: int = 0) -> np.ndarray:
    """(T, n_leads) float64 mV: a spiky periodic waveform with per-lead gains and a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(fs * seconds)) / fs
    beat = np.exp(-(((t % 0.8) - 0.3) ** 2) / (2 * 0.012**2)) - 0.2 * np.exp(-(((t % 0.8) - 0.55) ** 2) / 0.002)
    gains = rng.uniform(0.4, 1.6, n_leads) * rng.choice([-1, 1], n_leads)
    return beat[:, None] * gains[None, :] + 0.02 * rng.standard_normal((t.size, n_leads))


def write_record(folder: Path, name: str, signal: np.ndarray | None = None, fs: float = 500.0,
                 sig_name: list[str] | None = None, comments: list[str] | None = None, fmt: str = "16") -> Path:
    """Write ``folder/name.hea`` + ``name.dat`` (format ``fmt``, gain 1000/mV). Returns the base path."""
    folder.mkdir(parents=True, exist_ok=True)
    signal = ecg_like(fs=fs) if signal is None else signal
    sig_name = sig_name or LEADS12[: signal.shape[1]]
    n = signal.shape[1]
    wfdb.wrsamp(name, fs=fs, units=["mV"] * n, sig_name=sig_name, p_signal=signal, fmt=[fmt] * n,
                adc_gain=[1000.0] * n, baseline=[0] * n, comments=comments or [], write_dir=str(folder))
    return folder / name


def write_digital_record(folder: Path, name: str, d_signal: np.ndarray, fs: float = 500.0,
                         sig_name: list[str] | None = None) -> Path:
    """Write a record from digital (int) samples, e.g. to place format 16's NaN code -32768."""
    folder.mkdir(parents=True, exist_ok=True)
    n = d_signal.shape[1]
    wfdb.wrsamp(name, fs=fs, units=["mV"] * n, sig_name=sig_name or LEADS12[:n], d_signal=d_signal.astype(np.int16),
                fmt=["16"] * n, adc_gain=[1000.0] * n, baseline=[0] * n, write_dir=str(folder))
    return folder / name


def set_header_field(base: Path, line: int, field: int, value: str) -> None:
    """Replace whitespace-separated field ``field`` of non-comment line ``line`` of ``base.hea`` (0 is the record
    line, 1.. the signal lines) with ``value``, as a hostile or broken header would have it."""
    hea = Path(str(base) + ".hea")
    lines = hea.read_text().splitlines()
    body = [i for i, ln in enumerate(lines) if ln.strip() and not ln.lstrip().startswith("#")]
    tokens = lines[body[line]].split()
    tokens[field] = value
    lines[body[line]] = " ".join(tokens)
    hea.write_text("\n".join(lines) + "\n")
