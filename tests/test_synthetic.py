"""The synthetic corpus: deterministic, physically consistent 12-lead ECGs, realistic statistics, hard labels.

Signals are measured with :mod:`ecgfast.data.realism`, the same code that compares the corpus with real
records; the real-record tests use ``shared_ecg`` and skip without ../shared.
"""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
from scipy.stats import rankdata

from ecgfast import LEADS
from ecgfast.data import realism
from ecgfast.data.readers.base import SourceItem
from ecgfast.data.synthetic import LABELS, SYNTHETIC_VERSION, SyntheticReader, main, patient_state, visit_state
from ecgfast.data.synthetic_morphology import LEADS12, SELECT8
from ecgfast.data.synthetic_patient import label_stats

FS = 500.0
PRE = int(0.3 * FS)  # column of the R peak in a median beat
LEAD = {name: i for i, name in enumerate(LEADS)}


def _auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann-Whitney U / (n1 n0): the probability that a positive outscores a negative."""
    r = rankdata(scores)
    pos = labels == 1
    n1, n0 = pos.sum(), (~pos).sum()
    return float((r[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _rr_cv(signal: np.ndarray) -> float:
    rr = np.diff(realism.r_peaks(signal.astype(np.float64), FS))
    return float(rr.std() / rr.mean())


def _find(seed: int, want, count: int, ecgs: int = 3, limit: int = 3000) -> list[tuple[int, int]]:
    """(patient, ecg) of the first ``count`` visits with ``want(state, visit)``, from latent states only."""
    found = []
    for p in range(limit):
        state = patient_state(seed, p)
        for e in range(ecgs):
            if want(state, visit_state(state, seed, p, e)):
                found.append((p, e))
                if len(found) == count:
                    return found
    raise AssertionError(f"only {len(found)} of {count} wanted visits in {limit} patients")


def _read(seed: int, picks: list[tuple[int, int]], noise: bool = True) -> list:
    reader = SyntheticReader(n_patients=max(p for p, _ in picks) + 1, ecgs_per_patient=3, seed=seed, noise=noise)
    return [reader.read(SourceItem(f"syn-p{p:06d}-e{e}", f"{p}:{e}")) for p, e in picks]


@pytest.fixture(scope="module")
def cohort() -> list:
    """The first ECG of each of 240 patients (noisy), read once for the module."""
    reader = SyntheticReader(n_patients=240, ecgs_per_patient=(1, 3), seed=7)
    return [reader.read(it) for it in reader.items() if it.record_id.endswith("-e0")]


@pytest.fixture(scope="module")
def cohort_stats(cohort) -> list[dict[str, float]]:
    """The realism statistics of the first 100 records of the cohort."""
    return [realism.record_stats(rec.signal, FS) for rec in cohort[:100]]


# ---- interface, determinism ---------------------------------------------------------------------------------

def test_items_ids_and_counts():
    reader = SyntheticReader(n_patients=30, ecgs_per_patient=(2, 4), seed=3)
    items = list(reader.items())
    assert items == list(reader.items())  # deterministic enumeration
    ids = [it.record_id for it in items]
    assert len(set(ids)) == len(ids) and ids[0] == "syn-p000000-e0"
    counts: dict[str, int] = {}
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
    # A record does not depend on the corpus around it: more patients or ECGs leave it unchanged.
    bigger = SyntheticReader(n_patients=60, ecgs_per_patient=(2, 5), seed=11)
    np.testing.assert_array_equal(bigger.read(items[2]).signal, first[2].signal)


def test_shape_dtype_labels_meta_version():
    reader = SyntheticReader(n_patients=3, seed=0)
    item = next(iter(reader.items()))
    rec = reader.read(item)
    assert rec.signal.shape == (len(LEADS), 5000) and rec.signal.dtype == np.float32
    assert np.isfinite(rec.signal).all() and rec.fs == FS
    assert rec.record_id == item.record_id and rec.patient_id == item.patient_id
    assert set(rec.labels) == set(LABELS) and rec.labels == item.labels
    assert all(v in (0, 1) for v in rec.labels.values())
    assert {"heart_rate", "rhythm", "conduction", "ef", "potassium", "potassium_lab"} <= set(rec.meta)
    assert isinstance(SYNTHETIC_VERSION, int) and SYNTHETIC_VERSION == 2
    assert rec.meta["synthetic_version"] == SYNTHETIC_VERSION and f"v{SYNTHETIC_VERSION}" in reader.describe()
    assert SyntheticReader(n_patients=1, fs=250.0, seconds=4.0).read(item).signal.shape == (8, 1000)
    assert np.isfinite(SyntheticReader(n_patients=1, fs=100.0, seconds=4.0).read(item).signal).all()
    with pytest.raises(ValueError):
        reader.read(SourceItem(record_id="syn-p000009-e0", locator="9:0"))
    with pytest.raises(ValueError):
        SyntheticReader(n_patients=3, ecgs_per_patient=(3, 2))


# ---- physics ------------------------------------------------------------------------------------------------

def test_einthoven_and_augmented_leads_on_the_12_lead_output():
    """III = II - I and the augmented leads hold for every record, noise included: leads are electrode differences."""
    reader = SyntheticReader(n_patients=8, ecgs_per_patient=2, seed=4)
    lead = {name: i for i, name in enumerate(LEADS12)}
    for item in reader.items():
        x, labels, meta = reader.read_12(item)
        assert x.shape == (12, 5000) and x.dtype == np.float32
        i, ii, iii = x[lead["I"]], x[lead["II"]], x[lead["III"]]
        tol = 1e-5 * float(np.abs(x).max())
        np.testing.assert_allclose(iii, ii - i, atol=tol)
        np.testing.assert_allclose(x[lead["aVR"]], -(i + ii) / 2, atol=tol)
        np.testing.assert_allclose(x[lead["aVL"]], i - ii / 2, atol=tol)
        np.testing.assert_allclose(x[lead["aVF"]], ii - i / 2, atol=tol)
        np.testing.assert_array_equal(reader.read(item).signal, x[SELECT8])
        assert [LEADS12[k] for k in SELECT8] == list(LEADS)
        assert np.abs(iii).max() > 0.05  # III is a real lead, not a zero row


def test_af_is_irregular_and_sinus_without_ectopy_is_not():
    af = _read(5, _find(5, lambda s, v: v.rhythm == "af", 12))
    sinus = [r for r in _read(5, _find(5, lambda s, v: v.rhythm == "sinus" and not s.paced, 16))
             if r.meta["pvc_beats"] == 0 and r.meta["pac_beats"] == 0]
    af_cv = np.array([_rr_cv(r.signal) for r in af])
    sinus_cv = np.array([_rr_cv(r.signal) for r in sinus])
    assert len(sinus) >= 8
    assert np.median(af_cv) > 0.12 and (af_cv > 0.08).mean() >= 0.75, af_cv
    assert np.median(sinus_cv) < 0.06 and np.median(af_cv) > 3 * np.median(sinus_cv), (af_cv, sinus_cv)


def test_no_p_waves_in_af():
    """Averaged over beats, sinus rhythm leaves a P wave before the QRS; AF leaves only averaged-out f waves."""
    def p_wave(rec) -> float:
        beat = realism.median_beat(rec.signal.astype(np.float64), FS)
        on, _ = realism.qrs_bounds(beat, FS, PRE)
        seg = beat[[LEAD["II"], LEAD["V1"]], on - int(0.2 * FS):on - int(0.02 * FS)]
        seg = seg - beat[[LEAD["II"], LEAD["V1"]], on - int(0.02 * FS):on].mean(axis=1, keepdims=True)
        return float(np.abs(seg).max())

    af = [p_wave(r) for r in _read(8, _find(8, lambda s, v: v.rhythm == "af", 12))]
    sinus = [p_wave(r) for r in _read(8, _find(8, lambda s, v: v.rhythm == "sinus" and not s.paced
                                            and s.conduction == "normal", 12))]
    assert np.median(sinus) > 0.06, sinus  # a visible P wave, in mV
    assert np.median(af) < 0.5 * np.median(sinus), (af, sinus)


def test_bundle_branch_blocks_are_wide_with_their_own_lead_morphology():
    def qrs(rec) -> tuple[float, np.ndarray]:
        beat = realism.median_beat(rec.signal.astype(np.float64), FS)
        on, off = realism.qrs_bounds(beat, FS, PRE)
        return 1000.0 * (off - on) / FS, beat[:, on:off + 1]

    normal = [qrs(r) for r in _read(2, _find(2, lambda s, v: s.conduction == "normal" and v.rhythm == "sinus"
                                          and not s.paced and s.infarct == "none", 10), noise=False)]
    rbbb = [qrs(r) for r in _read(2, _find(2, lambda s, v: s.conduction == "rbbb" and v.rhythm == "sinus"
                                        and not s.paced, 10, ecgs=1), noise=False)]
    lbbb = [qrs(r) for r in _read(2, _find(2, lambda s, v: s.conduction == "lbbb" and v.rhythm == "sinus"
                                        and not s.paced, 10, ecgs=1), noise=False)]
    assert 70 <= np.median([w for w, _ in normal]) <= 110
    assert np.median([w for w, _ in rbbb]) >= 120 and np.median([w for w, _ in lbbb]) >= 130
    # RBBB: the slow right ventricle ends the QRS rightward and anterior: R' in V1, S in I and V6.
    terminal = np.array([q[:, -int(0.035 * FS):].mean(axis=1) for _, q in rbbb])  # (records, 8) mV
    assert (terminal[:, LEAD["V1"]] > 0).mean() >= 0.8
    assert (terminal[:, LEAD["I"]] < 0).mean() >= 0.7 and (terminal[:, LEAD["V6"]] < 0).mean() >= 0.7
    # LBBB: the QRS is mostly negative in V1 and positive in I and V6, with no septal q in V6.
    area = np.array([q.mean(axis=1) for _, q in lbbb])
    assert (area[:, LEAD["V1"]] < 0).mean() >= 0.8 and (area[:, LEAD["V6"]] > 0).mean() >= 0.8
    assert (area[:, LEAD["I"]] > 0).mean() >= 0.8
    first = np.array([q[LEAD["V6"], :int(0.02 * FS)].min() - q[LEAD["V6"], 0] for _, q in lbbb])  # from onset
    assert np.median(first) > -0.05, first


def test_dower_projection_keeps_what_it_keeps_on_real_ecgs(cohort_stats):
    """Real: 90 % [83-94] of the energy survives D @ D_inv; a pure dipole model would keep ~99 %."""
    kept = np.array([s["dower_kept"] for s in cohort_stats])
    assert 0.85 <= np.median(kept) <= 0.94, np.median(kept)
    assert np.percentile(kept, 90) < 0.975
    clean = SyntheticReader(n_patients=20, ecgs_per_patient=1, seed=7, noise=False)
    kept_clean = [realism.record_stats(clean.read(it).signal, FS)["dower_kept"] for it in clean.items()]
    assert np.median(kept_clean) < 0.96  # non-dipolar content is part of the heart's signal, not only noise


def test_average_polarity_and_r_progression():
    """Averaged over patients: upright QRS in I, II, V5, V6; mostly negative in V1; R grows V1 -> V4."""
    reader = SyntheticReader(n_patients=40, ecgs_per_patient=1, seed=1, noise=False)
    beats = np.stack([realism.median_beat(reader.read(it).signal.astype(np.float64), FS) for it in reader.items()])
    qrs = beats.mean(axis=0)[:, PRE - int(0.06 * FS):PRE + int(0.07 * FS)]
    r, s = qrs.max(axis=1), -qrs.min(axis=1)  # (8,) R and S heights per lead
    for name in ("I", "II", "V5", "V6"):
        assert r[LEAD[name]] > s[LEAD[name]], name
    assert s[LEAD["V1"]] > r[LEAD["V1"]]
    assert r[LEAD["V1"]] < r[LEAD["V2"]] < r[LEAD["V4"]]


def test_visits_of_a_patient_differ_as_real_visits_do():
    """Rate, axis (a few degrees), electrodes and noise change between visits; the patient stays recognisable."""
    reader = SyntheticReader(n_patients=12, ecgs_per_patient=3, seed=6, noise=False)
    axis_change, rate_change, same, other = [], [], [], []
    beats = {}
    for it in reader.items():
        rec = reader.read(it)
        if rec.meta["rhythm"] != "sinus":
            continue
        beat = realism.median_beat(rec.signal.astype(np.float64), FS)
        beats.setdefault(rec.patient_id, []).append((beat, rec.meta["heart_rate"]))
    for visits in beats.values():
        for (a, hr_a), (b, hr_b) in zip(visits, visits[1:], strict=False):
            axis_a, axis_b = (np.degrees(np.arctan2(x[LEAD["II"]].sum() - x[LEAD["I"]].sum() / 2,
                                                    x[LEAD["I"]].sum())) for x in (a, b))  # frontal QRS-T axis
            axis_change.append(abs((axis_a - axis_b + 180) % 360 - 180))
            rate_change.append(abs(np.log(hr_a / hr_b)))
            same.append(np.corrcoef(a.ravel(), b.ravel())[0, 1])
    patients = list(beats.values())
    for a, b in zip(patients, patients[1:], strict=False):
        other.append(np.corrcoef(a[0][0].ravel(), b[0][0].ravel())[0, 1])
    assert 0.5 <= np.median(axis_change) <= 15.0, axis_change
    assert np.median(rate_change) > 0.03  # heart rates differ by several percent
    assert np.median(same) < 0.995  # not near-duplicates
    assert np.median(same) > np.median(other) + 0.1  # but more alike than two patients


# ---- labels ---------------------------------------------------------------------------------------------------

def test_label_prevalence_and_noise_within_stated_bounds():
    stats = label_stats(seed=9, n_patients=1500)
    bounds = {"low_ef": (0.15, 0.24), "hyperk": (0.09, 0.16), "af": (0.06, 0.12), "lbbb": (0.02, 0.06),
              "rbbb": (0.03, 0.07)}
    for name, (lo, hi) in bounds.items():
        assert lo <= stats[name]["prevalence"] <= hi, (name, stats[name])
    assert 0.03 <= stats["low_ef"]["noise"] <= 0.09
    assert 0.02 <= stats["hyperk"]["noise"] <= 0.06
    assert 0.002 <= stats["af"]["noise"] <= 0.02


def test_hyperk_changes_between_visits_more_than_low_ef():
    """Potassium is a blood value at the time of the ECG; the ejection fraction changes slowly."""
    mixed = {"low_ef": 0, "hyperk": 0}
    for p in range(600):
        state = patient_state(3, p)
        labels = [visit_state(state, 3, p, e).labels for e in range(4)]
        for task in mixed:
            mixed[task] += len({lab[task] for lab in labels}) > 1
    assert mixed["hyperk"] > 1.3 * mixed["low_ef"] > 0, mixed
    reader = SyntheticReader(n_patients=20, ecgs_per_patient=(2, 4), seed=9)
    last = [it for it in reader.items() if it.patient_id == "syn-p000003"][-1]
    assert reader.read(last).labels == last.labels


def test_labels_are_learnable_but_not_trivial(cohort):
    """One hand-made feature per task separates the classes, far from perfectly; the encoder has to combine."""
    qrs_ms, t_over_qrs, rr_cv = [], [], []
    for rec in cohort:
        x = rec.signal.astype(np.float64)
        peaks = realism.r_peaks(x, FS)
        beat = realism.median_beat(x, FS, peaks)
        on, off = realism.qrs_bounds(beat, FS, PRE)
        beat = beat - beat[:, on - int(0.02 * FS):on].mean(axis=1, keepdims=True)
        qrs = beat[:, on:off + 1]
        t_wave = beat[:, off + int(0.04 * FS):off + int(0.35 * FS)]
        qrs_ms.append(1000.0 * (off - on) / FS)
        t_over_qrs.append(np.abs(t_wave).max(axis=1).mean() / (qrs.max(axis=1) - qrs.min(axis=1)).mean())
        rr = np.diff(peaks)
        rr_cv.append(rr.std() / rr.mean())
    y = {task: np.array([r.labels[task] for r in cohort]) for task in ("low_ef", "hyperk", "af")}
    auc = {"low_ef": _auroc(np.array(qrs_ms), y["low_ef"]), "hyperk": _auroc(np.array(t_over_qrs), y["hyperk"]),
           "af": _auroc(np.array(rr_cv), y["af"])}
    assert 0.6 <= auc["low_ef"] <= 0.88, auc
    assert 0.6 <= auc["hyperk"] <= 0.88, auc
    assert 0.8 <= auc["af"] <= 0.98, auc


# ---- realism against real records --------------------------------------------------------------------------------

def test_synthetic_statistics_sit_inside_the_real_iqr(shared_ecg, cohort_stats):
    real = realism.read_real(shared_ecg / "cinc2021", limit=60)
    assert len(real) >= 50
    r = realism.summarize([realism.record_stats(x, fs) for _, x, fs in real])
    s = realism.summarize(cohort_stats)
    for name in ("amp_I", "amp_V2", "amp_V5", "hr", "centroid_hz", "below_1hz", "dower_kept", "qrs_ms"):
        assert r[name][1] <= s[name][0] <= r[name][2], (name, s[name], r[name])
    assert 0.8 <= r["dower_kept"][0] <= 0.95  # the real records themselves lose non-dipolar energy


def test_compare_command_prints_the_table_and_writes_the_png(shared_ecg, tmp_path, capsys):
    folder = tmp_path / "real"
    folder.mkdir()
    for name in ("E00271", "HR06008", "A1041", "JS20000"):
        for ext in (".hea", ".mat"):
            shutil.copy(shared_ecg / "cinc2021" / (name + ext), folder)
    png, md = tmp_path / "realism.png", tmp_path / "realism.md"
    assert main(["--compare", str(folder), "--patients", "4", "--seed", "1", "--png", str(png),
                 "--markdown", str(md)]) == 0
    out = capsys.readouterr().out
    assert "| statistic | synthetic" in out and "real (n=4)" in out
    for label in ("QRS p-p V2", "hr", "rr_cv", "irregular", "centroid_hz", "below_1hz", "dower_kept", "qrs_ms"):
        assert label in out, label
    assert md.read_text().strip() == out.strip()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
