"""The embedded synthetic corpus: 12-lead ECGs that behave like real ones, as a Reader of 8 leads.

Patients (:func:`patient_state`) have an anatomy (heart orientation, torso lead field, non-dipolar local
lead fields, body habitus), a conduction system (normal, RBBB, LBBB, left anterior fascicular block,
nonspecific delay, first-degree AV block, pacemaker), a rhythm tendency (persistent or paroxysmal atrial
fibrillation, flutter, PAC and PVC burden, bigeminy) and a heart (old infarct, hypertrophy, cardiomyopathy).
A patient's ECGs are visits (:func:`visit_state`) spread over years: each has its own time, ejection
fraction, potassium, rhythm, heart rate, heart axis (a few degrees of drift), electrode placement, ST
state, noise and recording device. Beats come from :mod:`.synthetic_rhythm`, their shapes from
:mod:`.synthetic_morphology`, noise from :mod:`.synthetic_noise`; :mod:`.realism` measures how real it
looks (``python -m ecgfast.data.synthetic --compare ../shared/data/ecg/cinc2021``).

Labels (binary 0/1 on every record). Prevalence is the share of records and noise the share of records whose
label disagrees with the truth, both measured by :func:`.synthetic_patient.label_stats` on 20,000 patients
(seed 0, 2-5 ECGs each); the tests hold them within bounds:

- ``low_ef``: ejection fraction measured by echo (SD 4 points) below 40 %: prevalence 19 %, noise 6 %.
  The true EF changes slowly (a per-patient slope over the years between visits: 15 % of the patients
  have ECGs with both labels). Its ECG signs are spread over many features, none decisive: LBBB and
  nonspecific QRS widening, Q waves and T inversion of an old infarct, low QRS voltage, poor R-wave
  progression, flat T, a wide left-atrial P, faster rate, PVCs and AF (QRS width alone: AUROC ~0.7).
- ``hyperk``: lab potassium above 5.0 mmol/L at the time of the ECG: prevalence 12 %, noise 4 % (lab SD
  0.12 and 3 % haemolysed samples, +0.4 to 1.2). Potassium changes between visits, much more with kidney
  disease (23 % of the patients have ECGs with both labels); the ECG follows the true value with a
  per-patient sensitivity: peaked narrow T, shorter QT, flat wide P, longer PR, wider QRS above 6 mmol/L,
  and flat T with a big U below 3.9 (T-to-QRS amplitude ratio alone: AUROC ~0.7). The record's meta holds
  ``potassium_lab``, so the paper's protocol (K > 5 against 4 <= K <= 5, K < 4 dropped) can be applied.
- ``af``: atrial fibrillation on this ECG: prevalence 8 %, noise 0.9 % (5 % of AF ECGs read as not AF,
  0.5 % of the others read as AF). Flutter (1.3 % of ECGs, labelled 0) and sinus rhythm with premature
  beats are the confusers (RR variability alone: AUROC ~0.9).
- ``lbbb``, ``rbbb``: the patient's bundle-branch block: prevalence 3.4 % and 4.9 %, no label noise.

Everything is a pure function of (seed, patient index, ECG index): any worker reads any record, in any
order, and gets the same samples. :data:`SYNTHETIC_VERSION` changes whenever the samples do.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence

import numpy as np

from . import synthetic_morphology as morph
from . import synthetic_rhythm as rhythm
from .readers.base import Reader, SourceItem
from .record import ECGRecord
from .synthetic_morphology import C, Morphology
from .synthetic_noise import device_filter, electrode_noise
from .synthetic_patient import LABELS, PatientState, VisitState, patient_state, visit_state

__all__ = ["LABELS", "SYNTHETIC_VERSION", "PatientState", "SyntheticReader", "VisitState", "patient_state",
           "synthesize", "synthesize_12", "visit_state"]

#: Version of the generator: part of any cache key of a synthetic store (bumped whenever samples change).
SYNTHETIC_VERSION = 2
_QRS = np.array([C[n] for n in ("q", "r_apex", "r", "s", "late")])


def _visit_morphology(state: PatientState, visit: VisitState, rng: np.random.Generator
                      ) -> tuple[Morphology, float, float]:
    """This visit's components (EF, potassium and ST applied; axis drift; electrodes moved), PR and QTc (s)."""
    shape = state.shape.copy()
    dirs = state.dirs.copy()
    shape[0] *= np.exp(rng.normal(0.0, 0.05, morph.K))
    # A failing ventricle: slower, lower QRS, poor R progression, flat T, a strained left atrium.
    c = float(np.clip((55.0 - visit.ef) / 25.0, 0.0, 1.6))
    shape[0, _QRS] *= np.exp(-0.15 * c)
    shape[1:, _QRS] *= 1.0 + 0.06 * c
    shape[0, C["r_apex"]] *= np.exp(-0.5 * c)
    shape[0, [C["t"], C["t2"]]] *= np.exp(-0.35 * c)
    shape[0, C["p_la"]] *= 1.0 + 0.5 * c
    shape[3, C["p_la"]] *= 1.0 + 0.2 * c
    # Potassium: hyper (peaked narrow T, flat wide P, long PR, wide QRS above 6), hypo (flat T, big U).
    dk = visit.potassium - 4.4
    hi, p_hi = max(dk, 0.0) * state.k_sensitivity, max(dk - 0.5, 0.0) * state.k_sensitivity
    lo = max(-dk - 0.5, 0.0)
    t = [C["t"], C["t2"]]
    shape[0, t] *= np.exp(0.42 * hi - 0.6 * lo)
    shape[2, t] *= np.exp(-0.26 * hi)
    shape[3, t] *= np.exp(-0.12 * hi)
    shape[0, C["u"]] *= np.exp(1.0 * lo)
    shape[0, morph.SINUS_P] *= np.exp(-0.45 * p_hi)
    shape[2:, morph.SINUS_P] *= 1.0 + 0.12 * p_hi
    shape[1:, _QRS] *= 1.0 + 0.08 * max(visit.potassium - 6.0, 0.0) * state.k_sensitivity
    # Repolarisation offsets at RR = 1 s (each beat shifts them with its own RR).
    qt = state.qtc - 0.012 * dk * state.k_sensitivity
    t_peak = qt - 0.045 * (1.0 + 0.06 * c) - 2.5 * shape[3, C["t"]]
    shape[1, C["t"]], shape[1, C["t2"]] = t_peak, t_peak + 0.045
    shape[1, C["u"]] = t_peak + 2.5 * shape[3, C["t"]] + 0.09
    if visit.st != "none":
        if visit.st == "elevation":
            d = [(-0.1, 0.2, -0.97), (0.1, 0.95, -0.25), (0.9, 0.1, -0.2)][int(rng.integers(3))]
            amp = rng.uniform(0.12, 0.35)
        else:
            d, amp = (-0.6, -0.6, 0.4), rng.uniform(0.06, 0.18)
        dirs[C["st"]] = morph.unit(np.asarray(d) + rng.normal(0.0, 0.1, 3))
        shape[:, C["st"]] = (amp, 0.045 * (1.0 + 0.06 * c) + 0.05, 0.02, 0.09)
    if visit.rhythm == "flutter":  # typical flutter circles the right atrium: sawtooth negative in II, III, aVF
        dirs[C["atrial_1"]] = morph.unit(np.array([-0.15, -0.85, -0.5]) + rng.normal(0.0, 0.15, 3))
        dirs[C["atrial_2"]] = morph.unit(np.array([0.4, -0.5, 0.75]) + rng.normal(0.0, 0.15, 3))
    # Heart axis drifts a few degrees between visits; electrodes land a little elsewhere each time.
    rot = morph.rotation(np.deg2rad(rng.normal(0.0, 3.0, 3))) @ state.rotation
    field = state.field.copy()
    nxt = np.vstack([field[4:], 2 * field[8] - field[7]])  # the next precordial position (V6: beyond)
    field[3:] += rng.normal(0.0, 0.2, (6, 1)) * (nxt - field[3:])
    field += rng.normal(0.0, 0.03, field.shape) * np.linalg.norm(field, axis=1, keepdims=True)
    local = state.local * np.exp(rng.normal(0.0, 0.1, (1, 9, 1)))
    pr = state.pr + 0.02 * p_hi
    return Morphology(dirs=dirs @ rot.T, amp=shape[0], offset=shape[1], sig_l=shape[2], sig_r=shape[3],
                      field=field, local=local), pr, qt


def _events(comps: np.ndarray, times: np.ndarray, m: Morphology, amp_mod: np.ndarray,
            rr: np.ndarray | None = None, qtc: float = 0.4) -> tuple[np.ndarray, ...]:
    """Flattened bump arrays (comp, centre, sig_l, sig_r, amp) of components ``comps`` (C,) at beats (B,).

    With ``rr`` (B,), repolarisation components move with the QT of each beat (Fridericia) and widen with RR.
    """
    c, b = len(comps), len(times)
    centre = times[None] + m.offset[comps][:, None]  # (C, B)
    sig_l = np.broadcast_to(m.sig_l[comps][:, None], (c, b)).copy()
    sig_r = np.broadcast_to(m.sig_r[comps][:, None], (c, b)).copy()
    if rr is not None:
        rr = np.clip(rr, 0.3, 1.8)
        rep = np.isin(comps, morph.REPOLARISATION)
        centre[rep] += qtc * (np.cbrt(rr) - 1.0)
        stretch = rr ** 0.2
        sig_l[rep] *= stretch
        sig_r[rep] *= stretch
    amp = m.amp[comps][:, None] * amp_mod[None]
    keep = np.abs(amp) > 1e-9
    return (np.broadcast_to(comps[:, None], (c, b))[keep], centre[keep], sig_l[keep], sig_r[keep], amp[keep])


def synthesize_12(state: PatientState, visit: VisitState, rng: np.random.Generator, fs: float = 500.0,
                  seconds: float = 10.0, noise: bool = True) -> tuple[np.ndarray, dict[str, object]]:
    """One recording: ((12, T) float32 mV in :data:`~.synthetic_morphology.LEADS12` order, meta).

    ``noise=False`` leaves out noise and the device filter (the heart's signal alone, for tests and plots).
    """
    n = int(round(fs * seconds))
    m, pr, qtc = _visit_morphology(state, visit, rng)
    c = float(np.clip((55.0 - visit.ef) / 25.0, 0.0, 1.6))
    resp_hz = rng.uniform(0.15, 0.35)
    hr = float(np.clip(state.heart_rate * np.exp(rng.normal(0.0, 0.1)) + 10.0 * c, 38.0, 170.0))
    spec = rhythm.RhythmSpec(
        rhythm=visit.rhythm, rr=60.0 / (state.af_rate * np.exp(rng.normal(0.0, 0.1)) if visit.rhythm == "af" else hr),
        pr=pr, hrv=state.hrv, resp_hz=resp_hz, pvc_prob=state.pvc_prob, pac_prob=state.pac_prob,
        bigeminy=state.bigeminy, paced=state.paced, af_sigma=rng.uniform(0.15, 0.3),
        flutter_cycle=state.flutter_cycle, flutter_block=state.flutter_block)
    f_start = rng.uniform(-2.0, -1.5)
    if visit.rhythm == "af":
        beats = rhythm.af_beats(rng, spec, seconds)
    elif visit.rhythm == "flutter":
        beats = rhythm.flutter_beats(rng, spec, seconds, f_start)
    else:
        beats = rhythm.sinus_beats(rng, spec, seconds)
    # Breathing: ~5 % amplitude and a ~2 degree swing of the heart, plus beat-to-beat scatter.
    resp_phase = rng.uniform(0, 2 * np.pi)
    parts = []
    if len(beats.p):
        mod = (1.0 + 0.05 * np.sin(2 * np.pi * resp_hz * beats.p + resp_phase)) * rng.normal(1.0, 0.03, len(beats.p))
        for comps, sel in ((morph.SINUS_P, ~beats.p_ectopic), (morph.ECTOPIC_P, beats.p_ectopic)):
            parts.append(_events(comps, beats.p[sel], m, mod[sel]))
    mod = (1.0 + 0.05 * np.sin(2 * np.pi * resp_hz * beats.r + resp_phase)) * rng.normal(1.0, 0.03, len(beats.r))
    for kind, comps in ((rhythm.CONDUCTED, morph.CONDUCTED), (rhythm.PVC, morph.PVC), (rhythm.PACED, morph.PACED)):
        sel = beats.kind == kind
        if sel.any():
            parts.append(_events(comps, beats.r[sel], m, mod[sel], beats.rr[sel], qtc))
    comp, centre, sig_l, sig_r, amp = (np.concatenate(a) for a in zip(*parts, strict=True))
    waves = morph.render(fs, n, comp.astype(np.int64), centre, sig_l, sig_r, amp)  # (K, n) float32
    atrial_mv = min(0.12, rng.lognormal(np.log(0.04), 0.4)) if visit.rhythm == "af" else rng.uniform(0.1, 0.25)
    waves[-2:] = rhythm.atrial_sources(rng, spec, fs, n, atrial_mv, f_start)
    axis = morph.unit(np.array([0.3, 0.2, 1.0]) + rng.normal(0.0, 0.3, 3))
    g, dg = m.gains(axis)  # (9, K) each
    theta = np.float32(0.04) * np.sin(np.float32(2 * np.pi * resp_hz) * np.arange(n, dtype=np.float32) / np.float32(fs)
                                      + np.float32(resp_phase))
    electrodes = morph.mix(g, waves) + theta * morph.mix(dg, waves)  # (9, n)
    meta: dict[str, object] = {}
    if noise:
        extra, meta = electrode_noise(rng, fs, n, resp_hz, state.noise_level * rng.lognormal(0.0, 0.3))
        electrodes, meta["device"] = device_filter(rng, electrodes + extra, fs, float(meta["powerline_hz"]))
    reversal = bool(rng.random() < 0.01)
    if reversal:  # left and right arm electrodes swapped: lead I inverted, II and III exchanged
        electrodes = electrodes[[1, 0, *range(2, 9)]]
    leads = morph.mix(morph.LEAD_MATRIX, electrodes)  # (12, n)
    inside = beats.r[(beats.r >= 0) & (beats.r < seconds)]
    meta.update({
        "heart_rate": float(60.0 / np.mean(np.diff(inside))) if len(inside) > 1 else hr,
        "rhythm": visit.rhythm, "conduction": state.conduction, "infarct": state.infarct, "lvh": state.lvh,
        "paced": state.paced, "st": visit.st, "limb_reversal": reversal,
        "pvc_beats": int(((beats.kind == rhythm.PVC) & (beats.r >= 0) & (beats.r < seconds)).sum()),
        "pac_beats": int((beats.p_ectopic & (beats.p >= 0) & (beats.p < seconds)).sum()) if len(beats.p) else 0,
        "pr_ms": float(1000 * pr), "qtc_ms": float(1000 * qtc), "ef": visit.ef, "ef_echo": visit.ef_echo,
        "potassium": visit.potassium, "potassium_lab": visit.potassium_lab, "years": visit.years,
    })
    return leads, meta


def synthesize(state: PatientState, visit: VisitState, rng: np.random.Generator, fs: float = 500.0,
               seconds: float = 10.0, noise: bool = True) -> tuple[np.ndarray, dict[str, object]]:
    """One recording in ecgfast's lead order: ((8, T) float32 mV of I, II, V1..V6, meta)."""
    leads, meta = synthesize_12(state, visit, rng, fs, seconds, noise)
    return np.ascontiguousarray(leads[morph.SELECT8]), meta


class SyntheticReader(Reader):
    """A synthetic corpus of ``n_patients`` patients with several ECGs each (the embedded default).

    Args:
        n_patients: number of patients.
        ecgs_per_patient: ECGs per patient, an int or an inclusive (min, max) range drawn per patient.
        seed: corpus seed (>= 0); the whole corpus is a pure function of it and the other arguments.
        fs: sampling rate in Hz.
        seconds: record length in s.
        noise: add noise and the device filter (False: the heart's signal alone).

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
            for e in range(self.n_ecgs(p)):
                yield SourceItem(record_id=f"syn-p{p:06d}-e{e}", locator=f"{p}:{e}", patient_id=f"syn-p{p:06d}",
                                 labels=dict(visit_state(state, self.seed, p, e).labels))

    def read_12(self, item: SourceItem) -> tuple[np.ndarray, dict[str, int], dict[str, object]]:
        """The record of ``item`` as 12 leads before lead selection: ((12, T) float32 mV, labels, meta)."""
        p, e = (int(v) for v in item.locator.split(":"))
        if not (0 <= p < self.n_patients and 0 <= e < self.n_ecgs(p)):
            raise ValueError(f"record {item.record_id}: locator {item.locator} is outside this synthetic corpus")
        state = patient_state(self.seed, p)
        visit = visit_state(state, self.seed, p, e)
        leads, meta = synthesize_12(state, visit, np.random.default_rng([self.seed, p, 3, e]), self.fs,
                                    self.seconds, self.noise)
        meta.update(patient_index=p, ecg_index=e, synthetic_seed=self.seed, synthetic_version=SYNTHETIC_VERSION)
        return leads, dict(visit.labels), meta

    def read(self, item: SourceItem) -> ECGRecord:
        leads, labels, meta = self.read_12(item)
        p, e = meta["patient_index"], meta["ecg_index"]
        return ECGRecord(record_id=f"syn-p{p:06d}-e{e}", patient_id=f"syn-p{p:06d}",
                         signal=np.ascontiguousarray(leads[morph.SELECT8]), fs=self.fs,
                         source=f"synthetic:{self.seed}:{p}:{e}", labels=labels, meta=meta)

    def describe(self) -> str:
        lo, hi = self.ecgs_per_patient
        return (f"synthetic v{SYNTHETIC_VERSION} (patients={self.n_patients}, ecgs={lo}-{hi}, seed={self.seed}, "
                f"fs={self.fs:g}, seconds={self.seconds:g}, noise={self.noise})")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ecgfast.data.synthetic --compare FOLDER``: the realism report (table and PNG)."""
    p = argparse.ArgumentParser(prog="python -m ecgfast.data.synthetic",
                                description="Compare the synthetic corpus with a folder of real WFDB records: "
                                            "a median [IQR] table per statistic and a PNG of 10 + 10 ECGs.")
    p.add_argument("--compare", required=True, metavar="FOLDER", help="folder of real WFDB records (any depth)")
    p.add_argument("--patients", type=int, default=200, help="synthetic patients (default 200)")
    p.add_argument("--seed", type=int, default=42, help="synthetic corpus seed (default 42)")
    p.add_argument("--png", default="synthetic-realism.png", help="where to write the plot")
    p.add_argument("--markdown", default=None, help="also write the table to this Markdown file")
    args = p.parse_args(argv)
    from .realism import compare

    reader = SyntheticReader(n_patients=args.patients, seed=args.seed)
    table = compare(reader, args.compare, png=args.png, seed=args.seed)
    print(table)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
