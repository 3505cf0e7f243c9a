"""The synthetic corpus: deterministic, ECG-shaped, rank-3 across leads, and two learnable-but-hard tasks."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import scipy.signal as sps
from scipy.stats import rankdata

from ecgfast import LEADS
from ecgfast.data.readers.base import SourceItem
from ecgfast.data.synthetic import SyntheticReader, patient_state

FS = 500.0


def _r_peaks(signal: np.ndarray, fs: float = FS) -> np.ndarray:
    """R-peak sample indices from the QRS-band energy summed over leads."""
    sos = sps.butter(2, [8.0, 30.0], btype="bandpass", fs=fs, output="sos")
    energy = (sps.sosfiltfilt(sos, signal, axis=1) ** 2).sum(axis=0)
    energy = np.convolve(energy, np.ones(int(0.04 * fs)) / int(0.04 * fs), mode="same")  # 40 ms smoothing
    peaks, _ = sps.find_peaks(energy, distance=int(0.3 * fs), height=0.3 * np.percentile(energy, 99))
    return peaks


def _median_beat(signal: np.ndarray, fs: float = FS) -> np.ndarray:
    """(8, W) median beat from -0.25 s to +0.45 s around the R peaks, baseline (PR segment) at zero."""
    sos = sps.butter(2, 0.5, btype="highpass", fs=fs, output="sos")
    x = sps.sosfiltfilt(sos, signal, axis=1)
    pre, post = int(0.25 * fs), int(0.45 * fs)
    peaks = [p for p in _r_peaks(signal, fs) if pre <= p < x.shape[1] - post]
    beats = np.stack([x[:, p - pre:p + post] for p in peaks])  # (B, 8, W)
    beat = np.median(beats, axis=0)
    base = beat[:, pre - int(0.07 * fs):pre - int(0.05 * fs)].mean(axis=1, keepdims=True)
    return beat - base


def _window(beat: np.ndarray, start: float, stop: float, fs: float = FS) -> np.ndarray:
    pre = int(0.25 * fs)
    return beat[:, pre + int(start * fs):pre + int(stop * fs)]


def _auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann-Whitney U / (n1 n0): the probability that a positive outscores a negative."""
    r = rankdata(scores)
    pos = labels == 1
    n1, n0 = pos.sum(), (~pos).sum()
    return float((r[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


@pytest.fixture(scope="module")
def cohort() -> list:
    """The first ECG of each of 400 patients (noisy), read once for the whole module."""
    reader = SyntheticReader(n_patients=400, ecgs_per_patient=(1, 3), seed=7)
    firsts = [it for it in reader.items() if it.record_id.endswith("-e0")]
    return [reader.read(it) for it in firsts]


def test_items_ids_and_counts():
    reader = SyntheticReader(n_patients=30, ecgs_per_patient=(2, 4), seed=3)
    items = list(reader.items())
    assert items == list(reader.items())  # deterministic enumeration
    ids = [it.record_id for it in items]
    assert len(set(ids)) == len(ids) and ids[0] == "syn-p000000-e0"
    counts = {}
    for it in items:
        assert it.record_id.startswith(it.patient_id + "-e")
        counts[it.patient_id] = counts.get(it.patient_id, 0) + 1
    assert len(counts) == 30 and set(counts.values()) <= {2, 3, 4} and len(set(counts.values())) > 1
    assert len(list(SyntheticReader(n_patients=5, ecgs_per_patient=1).items())) == 5


def test_deterministic_in_any_order_and_process():
    reader = SyntheticReader(n_patients=6, seed=11)
    items = list(reader.items())
    first = [reader.read(it) for it in items]
    again = [reader.read(it) for it in reversed(items)][::-1]
    clone = pickle.loads(pickle.dumps(reader))
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a.signal, b.signal)
        assert a.meta == b.meta and a.labels == b.labels
    np.testing.assert_array_equal(clone.read(items[4]).signal, first[4].signal)
    assert not np.allclose(first[0].signal, first[1].signal)  # two ECGs of one patient differ
    other = SyntheticReader(n_patients=6, seed=12).read(items[0])
    assert not np.allclose(other.signal, first[0].signal)  # another seed, another corpus


def test_shape_dtype_labels_meta():
    reader = SyntheticReader(n_patients=3, seed=0)
    item = next(iter(reader.items()))
    rec = reader.read(item)
    assert rec.signal.shape == (len(LEADS), 5000) and rec.signal.dtype == np.float32
    assert np.isfinite(rec.signal).all() and rec.fs == FS
    assert rec.record_id == item.record_id and rec.patient_id == item.patient_id
    assert set(rec.labels) == {"low_ef", "hyperk"} and rec.labels == item.labels
    assert {"heart_rate", "low_ef_latent", "hyperk_latent"} <= set(rec.meta)
    assert SyntheticReader(n_patients=1, fs=250.0, seconds=4.0).read(item).signal.shape == (8, 1000)
    with pytest.raises(ValueError):
        reader.read(SourceItem(record_id="syn-p000009-e0", locator="9:0"))
    with pytest.raises(ValueError):
        SyntheticReader(n_patients=3, ecgs_per_patient=(3, 2))


def test_realistic_amplitudes_and_heart_rate(cohort):
    r_ii, qrs_ms = [], []
    for rec in cohort[:50]:
        beat = _median_beat(rec.signal)
        r_ii.append(_window(beat, -0.05, 0.05)[1].max())
        peaks = _r_peaks(rec.signal)
        hr = 60.0 * FS / np.mean(np.diff(peaks))
        assert 40.0 <= hr <= 150.0, rec.record_id
        assert abs(hr - rec.meta["heart_rate"]) < 4.0, (rec.record_id, hr, rec.meta["heart_rate"])
        qrs_ms.append(rec.meta["qrs_ms"])
    assert 0.4 <= np.median(r_ii) <= 2.5
    assert 75.0 <= np.median(qrs_ms) <= 115.0
    assert np.abs(np.stack([r.signal for r in cohort[:50]])).max() < 8.0  # no runaway sample


def test_polarity_of_a_typical_ecg():
    """Averaged over patients: upright QRS in I, II, V5, V6; mostly negative in V1; R grows V1 -> V5."""
    reader = SyntheticReader(n_patients=40, ecgs_per_patient=1, seed=1, noise=False)
    beats = np.stack([_median_beat(reader.read(it).signal) for it in reader.items()])
    qrs = _window(beats.mean(axis=0), -0.06, 0.07)
    r, s = qrs.max(axis=1), -qrs.min(axis=1)  # (8,) R and S heights per lead
    lead = {name: i for i, name in enumerate(LEADS)}
    for name in ("I", "II", "V5", "V6"):
        assert r[lead[name]] > s[lead[name]], name
    assert s[lead["V1"]] > r[lead["V1"]]
    assert r[lead["V1"]] < r[lead["V3"]] < r[lead["V5"]]


def test_noise_free_record_is_rank_three():
    rec = SyntheticReader(n_patients=2, seed=5, noise=False).read(SourceItem("syn-p000001-e0", "1:0"))
    eig = np.linalg.eigvalsh(np.cov(rec.signal.astype(np.float64)))[::-1]
    assert eig[2] > 1e-3 * eig[0]  # three independent dipole directions
    assert eig[3] < 1e-6 * eig[0]  # and nothing else
    noisy = SyntheticReader(n_patients=2, seed=5).read(SourceItem("syn-p000001-e0", "1:0")).signal
    assert np.std(noisy - rec.signal) > 0.005  # the noise is really there


def test_label_prevalence_and_patient_level():
    states = [patient_state(9, p) for p in range(300)]
    for task in ("low_ef", "hyperk"):
        prevalence = np.mean([getattr(s, task) for s in states])
        assert 0.15 <= prevalence <= 0.45, (task, prevalence)
    reader = SyntheticReader(n_patients=20, ecgs_per_patient=(2, 4), seed=9)
    by_patient: dict[str, set] = {}
    for it in reader.items():
        by_patient.setdefault(it.patient_id, set()).add(tuple(sorted(it.labels.items())))
    assert all(len(v) == 1 for v in by_patient.values())
    last = [it for it in reader.items() if it.patient_id == "syn-p000003"][-1]
    assert reader.read(last).labels == {"low_ef": states[3].low_ef, "hyperk": states[3].hyperk}


def test_tasks_are_informative_but_not_trivial(cohort):
    """One hand feature per task separates the classes, but far from perfectly."""
    qrs_amp, t_amp = [], []
    for rec in cohort:
        beat = _median_beat(rec.signal)
        qrs = _window(beat, -0.06, 0.07)
        qrs_amp.append((qrs.max(axis=1) - qrs.min(axis=1)).mean())
        t_amp.append(np.abs(_window(beat, 0.12, 0.42)).max(axis=1).mean())
    low_ef = np.array([rec.labels["low_ef"] for rec in cohort])
    hyperk = np.array([rec.labels["hyperk"] for rec in cohort])
    auc_ef = _auroc(-np.array(qrs_amp), low_ef)  # low voltage -> low EF
    auc_k = _auroc(np.array(t_amp), hyperk)  # tall T -> hyperkalemia
    assert 0.6 <= auc_ef <= 0.97, auc_ef
    assert 0.6 <= auc_k <= 0.97, auc_k
