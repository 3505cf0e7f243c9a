"""How much a corpus looks like real ECGs: per-record statistics, their median [IQR], a side-by-side table.

Every statistic is measured the same way on synthetic and real records, from the 8 leads I, II, V1..V6 in mV:

- ``amp_<lead>``: QRS peak-to-peak per lead (mV): after a 0.67 Hz high-pass, the peak-to-peak within
  +-80 ms of each R peak, median over beats. ``pp_V2``: max - min of the whole V2 record (mV), wander and all.
- ``hr``: heart rate (bpm), 60 / mean RR. ``rr_cv``: std / mean of the RR intervals. ``irregular``: RR CV > 0.15.
- ``centroid_hz``: spectral centroid of the Welch power spectrum summed over leads (0 to 100 Hz).
- ``below_1hz``: share of that power (mean removed per lead) below 1 Hz: baseline wander.
- ``dower_kept``: energy kept by the Dower projection, |D D_inv x|^2 / |x|^2 on the 0.67 Hz high-passed leads.
- ``qrs_ms``: QRS width of the median beat: where the spatial velocity (norm over leads of the derivative of
  the 0.67-40 Hz signal) rises above 5 % of its QRS peak over the isoelectric level, onset to offset.

R peaks come from the QRS band (5-25 Hz) slope energy summed over leads. Filters are scipy.signal's
zero-phase Butterworths; real records are read with wfdb.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import scipy.signal as sps
from tqdm.auto import tqdm

from ecgfast import LEADS

from .readers.base import Reader

#: Dower matrix D (8, 3) and inverse Dower matrix D_inv (3, 8), METHOD.md.
DOWER = np.array([[0.632, -0.235, 0.059], [0.235, 1.066, -0.132], [-0.515, 0.157, -0.917],
                  [0.044, 0.164, -1.387], [0.882, 0.098, -1.277], [1.213, 0.127, -0.601],
                  [1.125, 0.127, -0.086], [0.831, 0.076, 0.230]])
INV_DOWER = np.array([[0.156, -0.010, -0.172, -0.074, 0.122, 0.231, 0.239, 0.194],
                      [-0.227, 0.887, 0.057, -0.019, -0.106, -0.022, 0.041, 0.048],
                      [0.022, 0.102, -0.229, -0.310, -0.246, -0.063, 0.055, 0.108]])

STAT_NAMES: tuple[str, ...] = (*(f"amp_{lead}" for lead in LEADS), "pp_V2", "hr", "rr_cv", "irregular", "centroid_hz",
                               "below_1hz", "dower_kept", "qrs_ms")
_UNITS = {"hr": "bpm", "centroid_hz": "Hz", "qrs_ms": "ms", "below_1hz": "%", "dower_kept": "%", "irregular": "%"}


@lru_cache(maxsize=16)
def _sos(kind: str, fs: float, low: float, high: float | None = None) -> np.ndarray:
    band = low if high is None else [low, high]
    return sps.butter(2 if kind == "bandpass" else 3, band, btype=kind, fs=fs, output="sos")


def r_peaks(signal: np.ndarray, fs: float) -> np.ndarray:
    """R-peak sample indices of an (L, T) mV signal: peaks of the QRS-band slope energy summed over leads.

    Slopes rather than amplitudes, so that tall T waves, P and flutter waves are not taken for QRS complexes.
    """
    band = sps.sosfiltfilt(_sos("bandpass", fs, 5.0, 25.0), signal, axis=1)
    energy = (np.gradient(band, axis=1) ** 2).sum(axis=0)
    win = max(1, int(0.08 * fs))
    energy = np.convolve(energy, np.ones(win) / win, mode="same")  # 80 ms: one hump per QRS
    cand, props = sps.find_peaks(energy, distance=int(0.24 * fs), height=0.0)
    if len(cand) == 0:
        return cand
    heights = props["peak_heights"]
    ref = np.median(np.sort(heights)[-max(3, len(heights) // 3):])  # typical QRS hump, robust to artefact spikes
    return cand[heights > 0.2 * ref]


def _median_beat(x: np.ndarray, peaks: np.ndarray, pre: int, post: int) -> np.ndarray | None:
    """(L, pre + post) median of the beats around ``peaks`` whose window fits, or None without any."""
    keep = peaks[(peaks >= pre) & (peaks < x.shape[1] - post)]
    if len(keep) == 0:
        return None
    idx = keep[:, None] + np.arange(-pre, post)  # (B, W)
    return np.median(x[:, idx], axis=1)  # (L, W)


def median_beat(signal: np.ndarray, fs: float, peaks: np.ndarray | None = None, pre: float = 0.3,
                post: float = 0.4) -> np.ndarray | None:
    """(L, W) median beat of the 0.67-40 Hz band-passed signal from ``pre`` s before to ``post`` s after the
    R peaks (the peak at column ``round(pre * fs)``); None when no beat fits in the record."""
    peaks = r_peaks(signal, fs) if peaks is None else peaks
    x = sps.sosfiltfilt(_sos("bandpass", fs, 0.67, 40.0), signal, axis=1)
    return _median_beat(x, peaks, int(round(pre * fs)), int(round(post * fs)))


def qrs_bounds(beat: np.ndarray, fs: float, peak: int) -> tuple[int, int]:
    """(onset, offset) columns of the QRS of a median beat whose R peak is near column ``peak``: where the
    spatial velocity (norm over leads of the derivative, 10 ms smoothed) stays above its isoelectric level
    plus 5 % of its QRS peak, allowing dips of up to 16 ms (notched, fragmented QRS)."""
    vel = np.sqrt((np.gradient(beat, axis=1) ** 2).sum(axis=0))  # (W,) spatial velocity
    win = max(1, int(0.01 * fs))
    vel = np.convolve(vel, np.ones(win) / win, mode="same")
    # The velocity peak is on the steepest slope near the R peak, not on it.
    lo, hi = max(0, peak - int(0.08 * fs)), min(len(vel), peak + int(0.08 * fs))
    top = lo + int(np.argmax(vel[lo:hi]))
    floor = np.percentile(vel, 10)  # isoelectric level (P-R and S-T segments, T-P interval)
    above = vel > floor + 0.05 * (vel[top] - floor)
    gap = int(0.016 * fs)
    on = top
    while on > 0 and above[max(0, on - gap):on].any():
        on -= 1
    off = top
    while off < len(vel) - 1 and above[off + 1:off + 1 + gap].any():
        off += 1
    return on, off


def qrs_width_ms(signal: np.ndarray, fs: float, peaks: np.ndarray | None = None) -> float:
    """QRS width (ms) of the median beat from its spatial velocity, NaN when no beat is usable."""
    beat = median_beat(signal, fs, peaks)
    if beat is None:
        return float("nan")
    on, off = qrs_bounds(beat, fs, int(round(0.3 * fs)))
    return float(1000.0 * (off - on) / fs)


def record_stats(signal: np.ndarray, fs: float) -> dict[str, float]:
    """The statistics of :data:`STAT_NAMES` for one (8, T) mV record in I, II, V1..V6 order."""
    x = np.asarray(signal, dtype=np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    hp = sps.sosfiltfilt(_sos("highpass", fs, 0.67), x, axis=1)
    peaks = r_peaks(x, fs)
    out: dict[str, float] = {}
    half = int(0.08 * fs)
    inner = peaks[(peaks >= half) & (peaks < x.shape[1] - half)]
    if len(inner):
        win = hp[:, inner[:, None] + np.arange(-half, half + 1)]  # (8, B, W)
        p2p = np.median(win.max(axis=2) - win.min(axis=2), axis=1)
    else:
        p2p = np.full(len(LEADS), np.nan)
    out.update({f"amp_{lead}": float(v) for lead, v in zip(LEADS, p2p, strict=True)})
    out["pp_V2"] = float(np.ptp(x[LEADS.index("V2")]))
    rr = np.diff(peaks) / fs
    out["hr"] = float(60.0 / rr.mean()) if len(rr) else float("nan")
    out["rr_cv"] = float(rr.std() / rr.mean()) if len(rr) > 1 else float("nan")
    out["irregular"] = float(out["rr_cv"] > 0.15) if len(rr) > 1 else float("nan")
    f, pxx = sps.welch(x, fs=fs, nperseg=min(x.shape[1], int(4 * fs)), axis=1)
    p = pxx.sum(axis=0)
    band = f <= 100.0
    out["centroid_hz"] = float((f[band] * p[band]).sum() / p[band].sum())
    out["below_1hz"] = float(p[f < 1.0].sum() / p.sum())
    out["dower_kept"] = float(((DOWER @ (INV_DOWER @ hp)) ** 2).sum() / (hp ** 2).sum())
    out["qrs_ms"] = qrs_width_ms(x, fs, peaks)
    return out


def summarize(stats: Sequence[dict[str, float]]) -> dict[str, tuple[float, float, float]]:
    """name -> (median, 25th, 75th percentile) over records, NaNs left out; ``irregular`` as a share."""
    out = {}
    for name in STAT_NAMES:
        v = np.array([s[name] for s in stats], dtype=np.float64)
        v = v[np.isfinite(v)]
        if name == "irregular":
            share = float(v.mean()) if len(v) else float("nan")
            out[name] = (share, share, share)
        else:
            out[name] = tuple(float(q) for q in np.percentile(v, [50, 25, 75])) if len(v) else (np.nan,) * 3
    return out


def read_real(folder: str | Path, seconds: float = 10.0, limit: int | None = None
              ) -> list[tuple[str, np.ndarray, float]]:
    """(record name, (8, T) mV in I, II, V1..V6 order, fs) for every WFDB record under ``folder`` (the first
    ``limit`` in name order) that has the 8 leads, cropped to its first ``seconds``. Read with wfdb; lead names
    matched without regard to case."""
    import wfdb

    out = []
    for header in sorted(Path(folder).rglob("*.hea"))[:limit]:
        rec = wfdb.rdrecord(str(header.with_suffix("")))
        names = [str(n).upper() for n in rec.sig_name]
        if rec.p_signal is None or not all(lead.upper() in names for lead in LEADS):
            continue
        x = rec.p_signal[: int(round(seconds * rec.fs)), [names.index(lead.upper()) for lead in LEADS]].T
        if np.isfinite(x).all():
            out.append((header.stem, np.ascontiguousarray(x, dtype=np.float64), float(rec.fs)))
    return out


def _cell(name: str, q: tuple[float, float, float]) -> str:
    m, lo, hi = q
    if name in ("below_1hz", "dower_kept", "irregular"):
        m, lo, hi = 100 * m, 100 * lo, 100 * hi
    if name == "irregular":
        return f"{m:.0f}"
    digits = 2 if name.startswith(("amp_", "pp_")) or name == "rr_cv" else 0 if name in ("hr", "qrs_ms") else 1
    return f"{m:.{digits}f} [{lo:.{digits}f}-{hi:.{digits}f}]"


def table(synthetic: Sequence[dict[str, float]], real: Sequence[dict[str, float]]) -> str:
    """A Markdown table: per statistic, the synthetic and real median [IQR] and whether the synthetic median
    lies inside the real IQR (for ``irregular``: within 5 points of the real share)."""
    s, r = summarize(synthetic), summarize(real)
    rows = [f"| statistic | synthetic (n={len(synthetic)}) | real (n={len(real)}) | inside real IQR |",
            "|---|---|---|---|"]
    for name in STAT_NAMES:
        if name == "irregular":
            inside = abs(s[name][0] - r[name][0]) <= 0.05
        else:
            inside = r[name][1] <= s[name][0] <= r[name][2]
        unit = _UNITS.get(name, "mV" if name.startswith(("amp_", "pp_")) else "")
        label = name.replace("amp_", "QRS p-p ").replace("pp_", "record p-p ") + (f" ({unit})" if unit else "")
        rows.append(f"| {label} | {_cell(name, s[name])} | {_cell(name, r[name])} | {'yes' if inside else 'NO'} |")
    return "\n".join(rows)


def plot_examples(synthetic: Sequence[tuple[str, np.ndarray, float]], real: Sequence[tuple[str, np.ndarray, float]],
                  path: str | Path, spacing: float = 3.0) -> None:
    """One PNG: synthetic ECGs in the left column, real ones in the right, every panel on the same axes
    (10 s, 8 leads ``spacing`` mV apart, 0.67 Hz high-passed so that wander does not shift the traces)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(len(synthetic), len(real))
    fig, axes = plt.subplots(rows, 2, figsize=(22, 3.2 * rows), sharex=True, sharey=True, squeeze=False)
    offsets = -spacing * np.arange(len(LEADS))
    for col, (title, records) in enumerate((("synthetic", synthetic), ("real", real))):
        for row in range(rows):
            ax = axes[row, col]
            if row >= len(records):
                ax.axis("off")
                continue
            name, x, fs = records[row]
            x = sps.sosfiltfilt(_sos("highpass", fs, 0.67), x, axis=1, padtype="even")  # no swing at a cut QRS
            t = np.arange(x.shape[1]) / fs
            ax.plot(t, (x + offsets[:, None]).T, lw=0.5, color="black")
            ax.set_title(f"{title}: {name}", fontsize=9, loc="left")
            ax.grid(True, lw=0.3, alpha=0.5)
    axes[0, 0].set_yticks(offsets, LEADS)
    axes[0, 0].set_xlim(0, 10)
    axes[0, 0].set_ylim(offsets[-1] - spacing, spacing)
    for ax in axes[-1]:
        ax.set_xlabel("s")
    fig.tight_layout()
    fig.savefig(path, dpi=60)
    plt.close(fig)


def compare(reader: Reader, folder: str | Path, png: str | Path | None = None, seed: int = 0, n_plot: int = 10,
            progress: bool = True) -> str:
    """Statistics of every record of ``reader`` and of the WFDB records in ``folder``, as a Markdown table;
    with ``png``, also the plot of ``n_plot`` random records of each.

    Raises:
        FileNotFoundError: ``folder`` holds no WFDB record with the 8 leads.
    """
    items = list(reader.items())
    synthetic, syn_stats = [], []
    for item in tqdm(items, desc=reader.format_name, unit="rec", disable=not progress):
        rec = reader.read(item)
        syn_stats.append(record_stats(rec.signal, rec.fs))
        synthetic.append((item.record_id, rec.signal, rec.fs))
    real = read_real(folder)
    if not real:
        raise FileNotFoundError(f"{folder}: no WFDB record with the leads {', '.join(LEADS)}")
    real_stats = [record_stats(x, fs) for _, x, fs in tqdm(real, desc="real", unit="rec", disable=not progress)]
    if png is not None:
        rng = np.random.default_rng(seed)
        pick_s = rng.choice(len(synthetic), min(n_plot, len(synthetic)), replace=False)
        pick_r = rng.choice(len(real), min(n_plot, len(real)), replace=False)
        plot_examples([synthetic[i] for i in pick_s], [real[i] for i in pick_r], png)
    return table(syn_stats, real_stats)
