"""Heart sources to body-surface leads for the synthetic corpus: wave components, lead fields, 12 leads.

A beat is a sum of components (P of each atrium, septal, apical, free-wall and basal QRS forces, a late
right-ventricular force, T, U, an ST injury current, ectopic and paced complexes). Each component is a time
bump (an asymmetric Gaussian, as in McSharry et al.'s ECGSYN) along a 3-D dipole direction (Sameni et al. 2007).
Its potential at electrode e is ``(L + E_k)[e] @ d_k``: the torso lead field L (the Dower matrix, bent per
patient and moved per visit with the electrodes) plus a component-local term E_k that is largest on the
precordial electrodes, which sit close to the heart and see its regions, not one dipole. E_k is the
non-dipolar content: what the 3-D VCG projection of the leads cannot keep.

Electrodes are RA, LA, LL and V1..V6, potentials relative to Wilson's central terminal; the 12 leads are
differences of electrodes (:data:`LEAD_MATRIX`), so Einthoven's law III = II - I holds for signal and noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .realism import DOWER

ELECTRODES: tuple[str, ...] = ("RA", "LA", "LL", "V1", "V2", "V3", "V4", "V5", "V6")
LEADS12: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
#: Rows of the 12 leads in ecgfast's 8-lead order I, II, V1..V6.
SELECT8 = np.array([0, 1, 6, 7, 8, 9, 10, 11])

# (12, 9): leads from electrode potentials. WCT = (RA + LA + LL) / 3 is subtracted from the precordials.
LEAD_MATRIX = np.zeros((12, 9))
LEAD_MATRIX[0, [0, 1]] = [-1, 1]  # I = LA - RA
LEAD_MATRIX[1, [0, 2]] = [-1, 1]  # II = LL - RA
LEAD_MATRIX[2, [1, 2]] = [-1, 1]  # III = LL - LA
LEAD_MATRIX[3, :3] = [1, -0.5, -0.5]  # aVR
LEAD_MATRIX[4, :3] = [-0.5, 1, -0.5]  # aVL
LEAD_MATRIX[5, :3] = [-0.5, -0.5, 1]  # aVF
LEAD_MATRIX[6:, 3:] = np.eye(6)
LEAD_MATRIX[6:, :3] = -1.0 / 3.0

# (9, 3) electrode lead vectors relative to WCT, from the Dower rows: LA - RA = I, LL - RA = II, RA + LA + LL = 0.
_RA = -(DOWER[0] + DOWER[1]) / 3.0
ELECTRODE_FIELD = np.vstack([_RA, _RA + DOWER[0], _RA + DOWER[1], DOWER[2:]])

COMPONENTS: tuple[str, ...] = (
    "p_ra", "p_la", "pac_ra", "pac_la",  # sinus P (right then left atrium), ectopic atrial P'
    "q", "r_apex", "r", "s", "late", "t", "t2", "u", "st",  # conducted QRS-T; late: RBBB R' / LBBB second hump
    "pvc_a", "pvc_b", "pvc_t",  # ventricular ectopic complex
    "spike", "pace_a", "pace_b", "pace_t",  # right-ventricular apical pacing
    "atrial_1", "atrial_2",  # continuous atrial sources: fibrillation (f) or flutter (F) waves
)
K = len(COMPONENTS)
C = {name: i for i, name in enumerate(COMPONENTS)}
SINUS_P = np.array([C["p_ra"], C["p_la"]])
ECTOPIC_P = np.array([C["pac_ra"], C["pac_la"]])
CONDUCTED = np.array([C[n] for n in ("q", "r_apex", "r", "s", "late", "t", "t2", "u", "st")])
PVC = np.array([C["pvc_a"], C["pvc_b"], C["pvc_t"]])
PACED = np.array([C["spike"], C["pace_a"], C["pace_b"], C["pace_t"]])
REPOLARISATION = np.array([C[n] for n in ("t", "t2", "u", "pvc_t", "pace_t")])  # offsets follow the RR

# Mean directions (X left, Y foot, Z back). P: right atrium anterior-inferior, left atrium left-posterior
# (biphasic P in V1). QRS: septum right-anterior, apex anterior-inferior, free wall left-inferior, base
# posterior-superior (rS in V1, qR in V5/V6). T concordant with the QRS and anterior.
_DIRS = {
    "p_ra": (0.25, 0.75, -0.60), "p_la": (0.75, 0.35, 0.55), "pac_ra": (0.1, -0.8, -0.4), "pac_la": (0.6, -0.5, 0.5),
    "q": (-0.35, 0.15, -0.92), "r_apex": (0.35, 0.65, -0.65), "r": (0.90, 0.38, 0.20), "s": (-0.45, -0.10, 0.88),
    "late": (-0.55, 0.10, -0.83), "t": (0.70, 0.55, -0.45), "t2": (0.80, 0.45, -0.25), "u": (0.6, 0.5, -0.6),
    "st": (0.5, 0.5, -0.7), "pvc_a": (0.5, 0.8, -0.3), "pvc_b": (0.7, 0.0, 0.7), "pvc_t": (-0.6, -0.4, -0.3),
    "spike": (0.2, -0.6, -0.7), "pace_a": (-0.05, -0.75, 0.55), "pace_b": (0.6, -0.4, 0.6),
    "pace_t": (-0.3, 0.7, -0.6), "atrial_1": (0.2, 0.55, -0.8), "atrial_2": (-0.4, 0.3, -0.85),
}
BASE_DIRECTIONS = np.array([_DIRS[n] for n in COMPONENTS], dtype=np.float64)
BASE_DIRECTIONS /= np.linalg.norm(BASE_DIRECTIONS, axis=1, keepdims=True)

# Bump shapes of a normal beat: amplitude (dipole mV), offset (s, from the P time for P components, from
# the R time otherwise), rising and falling widths (s). Repolarisation offsets are set per beat from the RR.
_SHAPE = {  # name: (amp, offset, sig_l, sig_r)
    "p_ra": (0.11, 0.0, 0.022, 0.022), "p_la": (0.09, 0.030, 0.022, 0.026),
    "pac_ra": (0.10, 0.0, 0.020, 0.020), "pac_la": (0.08, 0.028, 0.020, 0.022),
    "q": (0.20, -0.020, 0.007, 0.007), "r_apex": (0.50, -0.009, 0.008, 0.008), "r": (1.25, 0.0, 0.0085, 0.0085),
    "s": (0.60, 0.020, 0.0085, 0.010), "late": (0.04, 0.034, 0.009, 0.010),
    "t": (0.36, 0.30, 0.055, 0.035), "t2": (0.10, 0.34, 0.040, 0.030), "u": (0.04, 0.5, 0.035, 0.035),
    "st": (0.0, 0.10, 0.020, 0.100),
    "pvc_a": (1.7, -0.035, 0.024, 0.024), "pvc_b": (1.1, 0.030, 0.030, 0.032), "pvc_t": (0.55, 0.33, 0.075, 0.05),
    "spike": (3.0, -0.030, 0.0008, 0.0008), "pace_a": (1.4, 0.015, 0.030, 0.030), "pace_b": (0.9, 0.070, 0.030, 0.034),
    "pace_t": (0.45, 0.36, 0.075, 0.05), "atrial_1": (0.0, 0.0, 0.0, 0.0), "atrial_2": (0.0, 0.0, 0.0, 0.0),
}
BASE_SHAPE = np.array([_SHAPE[n] for n in COMPONENTS], dtype=np.float64).T  # (4, K): amp, offset, sig_l, sig_r

# How close each electrode is to the heart: scale of the component-local (non-dipolar) lead-field term, and
# the gain of the precordial lead vectors over Dower's (which underestimates V1, V2 and overestimates V3, V4).
PROXIMITY = np.array([0.04, 0.04, 0.04, 0.26, 0.30, 0.30, 0.26, 0.18, 0.12])
PRECORDIAL_GAIN = np.array([1.1, 1.2, 0.95, 0.95, 1.1, 1.2])


def rotation(angles: np.ndarray) -> np.ndarray:
    """(3, 3) rotation Rz @ Ry @ Rx for angles (3,) in radians (about X, Y, Z)."""
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def mix(weights: np.ndarray, signals: np.ndarray) -> np.ndarray:
    """(R, n) float32 = weights (R, S) @ signals (S, n), without BLAS: these products are tiny, and OpenBLAS
    threads spinning on cores shared with other work made one record ~4x slower."""
    return np.einsum("rs,sn->rn", weights.astype(np.float32), signals.astype(np.float32, copy=False))


def unit(v: np.ndarray) -> np.ndarray:
    """Rows of ``v`` scaled to unit length."""
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@dataclass
class Morphology:
    """What one visit's beats look like: per component (K,) a unit direction, an amplitude and a bump shape.

    Directions are in body axes (the heart orientation is already applied); ``local`` is the (K, 9, 3)
    component-local lead-field term and ``field`` the (9, 3) torso lead field of this visit.
    """

    dirs: np.ndarray  # (K, 3)
    amp: np.ndarray  # (K,) mV
    offset: np.ndarray  # (K,) s
    sig_l: np.ndarray  # (K,) s
    sig_r: np.ndarray  # (K,) s
    field: np.ndarray  # (9, 3)
    local: np.ndarray  # (K, 9, 3)

    def gains(self, resp_axis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(9, K) electrode gain of each unit-amplitude component, and its derivative for a small rotation
        of the heart about ``resp_axis`` (breathing moves the heart: d/dtheta of R d = axis x d)."""
        lead = self.field[None] + self.local  # (K, 9, 3)
        g = np.einsum("kej,kj->ek", lead, self.dirs)
        dg = np.einsum("kej,kj->ek", lead, np.cross(resp_axis, self.dirs))
        return g, dg


def _bump_values(fs: float, n: int, comp: np.ndarray, center: np.ndarray, sig_l: np.ndarray, sig_r: np.ndarray,
                 amp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(flat indices into a (rows, n) array, values) of bumps evaluated on one +-4.5-width window length."""
    half = int(np.ceil(4.5 * max(float(sig_l.max()), float(sig_r.max())) * fs))
    k = np.arange(-half, half + 1)
    idx = np.rint(center * fs).astype(np.int64)[:, None] + k  # (N, W)
    dt = (idx / fs - center[:, None]).astype(np.float32)
    inv = np.where(dt < 0, (1.0 / sig_l)[:, None], (1.0 / sig_r)[:, None]).astype(np.float32)
    val = amp[:, None].astype(np.float32) * np.exp(np.float32(-0.5) * (dt * inv) ** 2)
    keep = (idx >= 0) & (idx < n)
    return (idx + (comp * n)[:, None])[keep], val[keep]


def render(fs: float, n: int, comp: np.ndarray, center: np.ndarray, sig_l: np.ndarray, sig_r: np.ndarray,
           amp: np.ndarray, rows: int = K) -> np.ndarray:
    """(rows, n) float32 sum of asymmetric Gaussian bumps, one per entry of the (N,) arrays, into row ``comp``.

    Narrow bumps (QRS, spikes) and wide ones (P, T, U, ST) are evaluated on windows of +-4.5 widths of their
    group's widest bump, then scatter-added with one ``np.bincount``.
    """
    if len(comp) == 0:
        return np.zeros((rows, n), np.float32)
    narrow = np.maximum(sig_l, sig_r) <= 0.012
    parts = [_bump_values(fs, n, comp[g], center[g], sig_l[g], sig_r[g], amp[g]) for g in (narrow, ~narrow) if g.any()]
    flat = np.concatenate([p[0] for p in parts])
    val = np.concatenate([p[1] for p in parts])
    return np.bincount(flat, weights=val, minlength=rows * n).reshape(rows, n).astype(np.float32)


# ---- disease: how conduction defects, infarcts and hypertrophy change a patient's components ----------------

def _set(dirs: np.ndarray, shape: np.ndarray, name: str, direction: tuple[float, float, float] | None = None,
         amp: float | None = None, offset: float | None = None, sig: tuple[float, float] | None = None) -> None:
    k = C[name]
    if direction is not None:
        dirs[k] = unit(np.asarray(direction, dtype=np.float64))
    if amp is not None:
        shape[0, k] = amp
    if offset is not None:
        shape[1, k] = offset
    if sig is not None:
        shape[2:, k] = sig


def apply_conduction(dirs: np.ndarray, shape: np.ndarray, conduction: str, rng: np.random.Generator) -> None:
    """Change the conducted QRS-T components in place for a conduction defect (before the heart rotation).

    - ``lbbb``: septum activated from the left (no septal q in I, V5, V6; QS or rS in V1-V3); slow left
      ventricular activation as two broad humps (notched R in I, V5, V6), QRS 140-170 ms; ST and T
      discordant to the QRS.
    - ``rbbb``: normal early QRS, then a slow right-anterior force 50-65 ms after R: rsR' in V1, wide S in I
      and V6, QRS 120-150 ms; T inverted in V1-V2.
    - ``lafb``: left-superior axis (rS in II, III, aVF; qR in I, aVL), QRS slightly wider.
    - ``ivcd``: nonspecific intraventricular delay: every QRS force slower, a fragmenting late force.
    """
    j = rng.normal(0.0, 0.08, 3)
    qrs = [C[n] for n in ("q", "r_apex", "r", "s", "late")]
    if conduction == "lbbb":
        _set(dirs, shape, "q", (0.55, 0.10, 0.80) + j, amp=0.30, offset=-0.022, sig=(0.010, 0.010))
        shape[0, C["r_apex"]] *= 0.25
        _set(dirs, shape, "r", (0.80, 0.15, 0.58) + j, offset=0.0, sig=(0.015, 0.015))
        shape[0, C["r"]] *= rng.uniform(1.4, 1.9)  # LBBB voltages are high: deep S in V1-V3
        _set(dirs, shape, "late", (0.70, -0.05, 0.70) + j, amp=rng.uniform(1.1, 1.6), offset=rng.uniform(0.035, 0.05),
             sig=(0.016, 0.018))
        shape[0, C["s"]] *= 0.15
        _set(dirs, shape, "t", (-0.70, -0.15, -0.70) + j, amp=rng.uniform(0.3, 0.5), sig=(0.07, 0.06))
        _set(dirs, shape, "t2", (-0.60, -0.25, -0.75) + j, sig=(0.06, 0.05))
        _set(dirs, shape, "st", (-0.70, -0.10, -0.70) + j, amp=rng.uniform(0.08, 0.16), offset=0.14,
             sig=(0.04, 0.10))
    elif conduction == "rbbb":
        _set(dirs, shape, "late", (-0.55, 0.10, -0.83) + j, amp=rng.uniform(0.55, 0.9),
             offset=rng.uniform(0.05, 0.065), sig=(0.016, 0.022))
        dirs[C["t"]] = unit(0.55 * dirs[C["t"]] + 0.45 * unit(np.array([0.6, 0.3, 0.75])))
    elif conduction == "lafb":
        _set(dirs, shape, "r", (0.72, -0.50, 0.30) + j)
        _set(dirs, shape, "q", (-0.25, 0.70, -0.60) + j)
        _set(dirs, shape, "r_apex", (0.40, 0.15, -0.80) + j)
        shape[2:, qrs] *= 1.08
    elif conduction == "ivcd":
        shape[2:, qrs] *= rng.uniform(1.3, 1.5)
        shape[1, qrs] *= 1.3
        _set(dirs, shape, "late", rng.normal(0.0, 1.0, 3), amp=rng.uniform(0.15, 0.35), offset=0.05)


def apply_infarct(dirs: np.ndarray, shape: np.ndarray, region: str, rng: np.random.Generator) -> None:
    """An old myocardial infarction of ``region`` (anterior, inferior, lateral): the region's forces are
    lost, so the initial QRS points away from it (pathological Q waves), and its T turns away too."""
    j = rng.normal(0.0, 0.1, 3)
    size = rng.uniform(0.6, 1.2)
    if region == "anterior":
        shape[0, C["r_apex"]] *= 0.15
        _set(dirs, shape, "q", (0.10, 0.20, 0.97) + j, amp=0.45 * size, sig=(0.012, 0.012))
        dirs[C["t"]] = unit(dirs[C["t"]] + size * np.array([0.0, 0.0, 1.0]))
    elif region == "inferior":
        _set(dirs, shape, "q", (0.00, -0.95, 0.20) + j, amp=0.40 * size, sig=(0.012, 0.012))
        shape[0, C["r"]] *= 0.85
        dirs[C["t"]] = unit(dirs[C["t"]] + 0.8 * size * np.array([0.0, -1.0, 0.0]))
    elif region == "lateral":
        _set(dirs, shape, "q", (-0.95, 0.10, 0.10) + j, amp=0.30 * size, sig=(0.011, 0.011))
        shape[0, C["r"]] *= 0.75
        dirs[C["t"]] = unit(dirs[C["t"]] + 0.6 * size * np.array([-1.0, 0.0, 0.0]))


def apply_lvh(dirs: np.ndarray, shape: np.ndarray, rng: np.random.Generator) -> None:
    """Left ventricular hypertrophy: tall R and deep S; half of them with strain (lateral ST-T turned away)."""
    shape[0, [C["r"], C["s"]]] *= rng.uniform(1.4, 1.8)
    if rng.random() < 0.5:
        dirs[C["t"]] = unit(dirs[C["t"]] - 1.2 * dirs[C["r"]])
        _set(dirs, shape, "st", -dirs[C["r"]], amp=rng.uniform(0.05, 0.12), offset=0.1, sig=(0.02, 0.09))
