"""Who the synthetic patients are, and what is true at each of their ECGs (the labels).

A patient (:func:`patient_state`) is drawn once from (seed, patient): anatomy (heart orientation, torso lead
field, non-dipolar local lead fields, habitus), conduction (normal, RBBB, LBBB, left anterior fascicular
block, nonspecific delay, first-degree AV block, pacemaker), rhythm tendencies (persistent or paroxysmal AF,
flutter, PAC and PVC burden, bigeminy), heart disease (old infarct, hypertrophy, cardiomyopathy) and the
course of the two tasks: an ejection fraction that drifts over years, a potassium level and its
visit-to-visit spread (kidney disease widens both). A visit (:func:`visit_state`) is drawn from (seed,
patient, ECG index): its time, true and measured EF and potassium, rhythm, ST state and labels. The labels,
their prevalence and noise are described in :mod:`ecgfast.data.synthetic`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import synthetic_morphology as morph
from .synthetic_morphology import C

LABELS: tuple[str, ...] = ("low_ef", "hyperk", "af", "lbbb", "rbbb")


@dataclass(frozen=True)
class PatientState:
    """Latent state of one synthetic patient, drawn once and shared by all of their ECGs."""

    age: float
    female: bool
    rotation: np.ndarray  # (3, 3) heart orientation: electrical axis and precordial transition
    field: np.ndarray  # (9, 3) torso lead field of RA, LA, LL, V1..V6 (Dower, bent by this torso)
    local: np.ndarray  # (K, 9, 3) component-local (non-dipolar) lead fields
    dirs: np.ndarray  # (K, 3) component directions before rotation (conduction, infarct, LVH applied)
    shape: np.ndarray  # (4, K) amplitude (mV), offset, rising and falling width (s) per component
    conduction: str  # normal, rbbb, lbbb, lafb, ivcd
    infarct: str  # none, anterior, inferior, lateral
    lvh: bool
    paced: bool
    pr: float  # s, P to R
    qtc: float  # s, Fridericia-corrected QT
    heart_rate: float  # bpm, sinus at rest
    hrv: float  # fractional respiratory RR modulation
    af_burden: float  # chance that a visit is in AF
    flutter_burden: float  # chance that a visit is in flutter
    af_rate: float  # bpm, ventricular rate in AF
    flutter_cycle: float  # s
    flutter_block: int  # 2, 3, 4 or 0 (variable)
    pvc_prob: float  # per beat
    pac_prob: float  # per beat
    bigeminy: bool
    ef0: float  # % ejection fraction at the first visit
    ef_slope: float  # % per year
    ckd: bool  # kidney disease: higher and more variable potassium
    k_mean: float  # mmol/L
    k_sd: float  # visit-to-visit SD
    k_sensitivity: float  # how strongly this heart shows potassium on the ECG
    noise_level: float  # how noisy this patient's recordings tend to be


def _softplus(x: float) -> float:
    return float(np.logaddexp(0.0, x))


def patient_state(seed: int, patient: int) -> PatientState:
    """The latent state of patient ``patient`` of the corpus with ``seed`` (deterministic)."""
    rng = np.random.default_rng([seed, patient, 1])
    age = float(np.clip(rng.normal(62.0, 15.0), 18.0, 95.0))
    old = (age - 60.0) / 15.0
    female = bool(rng.random() < 0.45)
    rotation = morph.rotation(np.deg2rad(rng.normal(0.0, [10.0, 12.0, 22.0])))
    # Torso: each electrode's lead vector scaled and bent; precordials closer to the heart than Dower's torso.
    norm = np.linalg.norm(morph.ELECTRODE_FIELD, axis=1, keepdims=True)
    field = morph.ELECTRODE_FIELD * np.exp(rng.normal(0.0, 0.08, (9, 1))) + rng.normal(0.0, 0.08, (9, 3)) * norm
    field[3:] *= morph.PRECORDIAL_GAIN[:, None] * np.exp(rng.normal(0.0, 0.12))
    local = rng.normal(0.0, 1.0, (morph.K, 9, 3)) * (morph.PROXIMITY[:, None] * norm)[None]
    dirs = morph.unit(morph.BASE_DIRECTIONS + rng.normal(0.0, 0.12, morph.BASE_DIRECTIONS.shape))
    shape = morph.BASE_SHAPE.copy()
    shape[0] *= np.exp(rng.normal(0.0, 0.2, morph.K))
    shape[2:] *= np.exp(rng.normal(0.0, 0.06, (1, morph.K)))
    qrs = [C[n] for n in ("q", "r_apex", "r", "s", "late")]
    shape[1:, qrs] *= np.exp(rng.normal(np.log(0.95), 0.08))  # QRS duration varies between hearts
    habitus = np.exp(rng.normal(0.0, 0.2)) * (rng.uniform(0.35, 0.55) if rng.random() < 0.05 else 1.0)
    shape[0] *= habitus * (0.9 if female else 1.0)
    # The ventricular ectopic focus of this patient: a random direction, its loop and its discordant T.
    a = morph.unit(rng.normal(0.0, 1.0, 3))
    b = morph.unit(0.5 * a + rng.normal(0.0, 1.0, 3))
    dirs[C["pvc_a"]], dirs[C["pvc_b"]] = a, b
    dirs[C["pvc_t"]] = morph.unit(-(1.6 * a + b) + rng.normal(0.0, 0.3, 3))
    # Heart disease. cm: non-ischaemic cardiomyopathy severity; the infarct and LBBB lower the EF too.
    cm = rng.standard_normal()
    infarct = "none"
    if rng.random() < 0.05 + 0.07 * _softplus(old):
        infarct = str(rng.choice(["anterior", "inferior", "lateral"], p=[0.45, 0.4, 0.15]))
    u = rng.random()
    lbbb_p = 0.02 + 0.08 * (cm > 1.0)
    conduction = ("lbbb" if u < lbbb_p else "rbbb" if u < lbbb_p + 0.05 else "lafb" if u < lbbb_p + 0.09
                  else "ivcd" if u < lbbb_p + 0.11 + 0.06 * (cm > 1.2) else "normal")
    ef0 = (59.0 + rng.normal(0.0, 6.0) - 12.0 * _softplus(1.8 * (cm - 0.5)) - 7.0 * (conduction == "lbbb")
           - {"none": 0.0, "anterior": 14.0, "inferior": 8.0, "lateral": 9.0}[infarct])
    lvh = bool(rng.random() < 0.06)
    paced = bool(rng.random() < 0.015)
    morph.apply_conduction(dirs, shape, conduction, rng)
    if infarct != "none":
        morph.apply_infarct(dirs, shape, infarct, rng)
    if lvh:
        morph.apply_lvh(dirs, shape, rng)
    # Rhythm tendencies. AF: persistent or paroxysmal, more with age and a failing heart.
    af_u, af_risk = rng.random(), 0.06 * np.exp(0.5 * old + 0.4 * max(cm, 0.0)) / 1.3
    af_burden = (rng.uniform(0.9, 1.0) if af_u < af_risk else rng.uniform(0.15, 0.4) if af_u < 2 * af_risk else 0.0)
    flutter_burden = rng.uniform(0.5, 0.9) if rng.random() < 0.02 else 0.0
    ectopy = rng.lognormal(np.log([0.0012, 0.005]), [1.5, 1.9]) * np.array([1.0 + 1.5 * max(cm, 0.0), 1.0])  # PVC, PAC
    ckd = bool(rng.random() < 0.23 + 0.1 * old + 0.12 * (cm > 1.0))  # kidney and heart failure go together
    return PatientState(
        age=age, female=female, rotation=rotation, field=field, local=local, dirs=dirs, shape=shape,
        conduction=conduction, infarct=infarct, lvh=lvh, paced=paced,
        pr=float(np.clip(rng.normal(0.150, 0.018), 0.11, 0.20) if rng.random() > 0.04 else rng.uniform(0.22, 0.32)),
        qtc=float(rng.normal(0.40, 0.018) + 0.01 * female),
        heart_rate=float(np.clip(72.0 * np.exp(rng.normal(0.0, 0.3)), 38.0, 150.0)),
        hrv=float(np.clip(rng.lognormal(np.log(0.022 * (1.1 - 0.25 * old)), 0.5), 0.004, 0.12)),
        af_burden=float(af_burden), flutter_burden=float(flutter_burden),
        af_rate=float(np.clip(rng.normal(88.0, 20.0), 50.0, 150.0)),
        flutter_cycle=float(60.0 / rng.uniform(240.0, 340.0)),
        flutter_block=int(rng.choice([2, 2, 2, 4, 0])),
        pvc_prob=float(min(ectopy[0], 0.3)), pac_prob=float(min(ectopy[1], 0.3)), bigeminy=bool(rng.random() < 0.01),
        ef0=float(np.clip(ef0, 12.0, 75.0)), ef_slope=float(rng.normal(-0.5, 1.5)),
        ckd=ckd, k_mean=float(4.3 + rng.normal(0.0, 0.18) + (0.5 + rng.normal(0.0, 0.2)) * ckd),
        k_sd=float(0.2 + 0.35 * ckd), k_sensitivity=float(rng.lognormal(0.0, 0.35)),
        noise_level=float(rng.lognormal(0.0, 0.4)))


@dataclass(frozen=True)
class VisitState:
    """What is true at one ECG of a patient: drawn from (seed, patient, ECG index) alone, so that labels are
    known without making the signal."""

    years: float  # since the patient's first ECG
    ef: float  # % true ejection fraction
    ef_echo: float  # % measured
    potassium: float  # mmol/L, true, drives the ECG
    potassium_lab: float  # mmol/L, measured, defines the label
    rhythm: str  # sinus, af, flutter
    st: str  # none, elevation, depression
    labels: dict[str, int]


def visit_state(state: PatientState, seed: int, patient: int, ecg: int) -> VisitState:
    """The state at ECG ``ecg`` of ``patient``: its time, EF, potassium, rhythm and labels."""
    gaps = np.random.default_rng([seed, patient, 4]).random((ecg, 2))  # row j: the gap before ECG j + 1
    years = float(np.where(gaps[:, 0] < 0.25, 0.002, -0.8 * np.log1p(-gaps[:, 1])).sum())
    rng = np.random.default_rng([seed, patient, 2, ecg])
    ef = float(np.clip(state.ef0 + state.ef_slope * years + rng.normal(0.0, 1.5), 10.0, 75.0))
    ef_echo = ef + rng.normal(0.0, 4.0)
    k = state.k_mean + rng.normal(0.0, state.k_sd)
    k_lab = k + rng.normal(0.0, 0.12) + (rng.uniform(0.4, 1.2) if rng.random() < 0.03 else 0.0)
    u = rng.random()
    rhythm_name = ("sinus" if state.paced else "af" if u < state.af_burden
                   else "flutter" if u < state.af_burden + (1 - state.af_burden) * state.flutter_burden else "sinus")
    u = rng.random()
    st = "elevation" if u < 0.025 else "depression" if u < 0.085 + 0.06 * (ef < 40) else "none"
    af = int(rng.random() < (0.95 if rhythm_name == "af" else 0.005))  # reading errors: 5 % of AF missed
    labels = {"low_ef": int(ef_echo < 40.0), "hyperk": int(k_lab > 5.0), "af": af,
              "lbbb": int(state.conduction == "lbbb"), "rbbb": int(state.conduction == "rbbb")}
    return VisitState(years=years, ef=ef, ef_echo=float(ef_echo), potassium=float(k), potassium_lab=float(k_lab),
                      rhythm=rhythm_name, st=st, labels=labels)


def label_stats(seed: int, n_patients: int, ecgs_per_patient: tuple[int, int] = (2, 5)) -> dict[str, dict[str, float]]:
    """Per label: ``prevalence`` over records, and for ``low_ef``, ``hyperk``, ``af`` the ``noise``: the share of
    records whose label disagrees with the truth (true EF < 40, true potassium > 5, AF on the ECG).

    Counts ECGs per patient as :class:`~ecgfast.data.synthetic.SyntheticReader` does; makes no signal.
    """
    lo, hi = ecgs_per_patient
    labels, truth = [], []
    for p in range(n_patients):
        state = patient_state(seed, p)
        for e in range(int(np.random.default_rng([seed, p, 0]).integers(lo, hi + 1))):
            v = visit_state(state, seed, p, e)
            labels.append([v.labels[name] for name in LABELS])
            truth.append([v.ef < 40.0, v.potassium > 5.0, v.rhythm == "af"])
    y, t = np.asarray(labels, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    out = {name: {"prevalence": float(y[:, i].mean())} for i, name in enumerate(LABELS)}
    for i, name in enumerate(LABELS[:3]):
        out[name]["noise"] = float((y[:, i] != t[:, i]).mean())
    return out
