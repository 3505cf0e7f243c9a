"""Whether pretraining is learning, beside its loss: measures of the representation of a fixed sample of the store's
*validation* ECGs at step 0 (the random encoder), every ``monitor_every`` steps and at the end (DESIGN.md
"Contracts"). A falling loss says the encoder solves its own task; these say whether what it learns is worth having.

- ``rankme``: the effective rank of the (N, D) matrix of representations (the classifier's input: stream features
  averaged, segments averaged), RankMe (Garrido et al., ICML 2023): ``exp(-sum_k p_k log p_k)`` with
  ``p_k = sigma_k / sum sigma + 1e-7`` over its singular values; k for k equal singular values, 1 for a collapse to
  a line. The matrix is centred first (our choice): the features are ReLU outputs with a large common mean, which
  a linear probe's intercept absorbs but which would dominate the singular values (an untrained tiny encoder:
  about 2 uncentred, about 10 centred, of 64).
- ``alignment`` and ``uniformity`` (Wang and Isola, ICML 2020) of the L2-normalised projections the loss sees:
  ``E ||f(x) - f(y)||^2`` over the two views (x, y) of each ECG, made as training makes them (the run's view mode and
  augmentation, a fixed counter), stream by stream; and ``log E exp(-2 ||f(x) - f(y)||^2)`` over pairs of distinct
  ECGs, averaged over the two views and the streams. Lower is better for both; a collapse has alignment 0 and
  uniformity 0.
- ``probe_<label>``: where the validation ECGs carry labels, a cross-validated linear-probe AUROC per label: the
  probe of :mod:`ecgfast.eval.probe` with a fixed penalty (:data:`PROBE_L2`, so that steps compare) and
  scikit-learn's default tolerance (:data:`PROBE_TOL`: a look, not the evaluation's converged fit), out-of-fold
  scores over :data:`FOLDS` folds grouped by patient, pooled. At most :data:`MAX_LABELS` labels, those with the
  most patients of their rarer class; a label needs :data:`MIN_CLASS_PATIENTS` patients of each class in the sample.
- ``monitor_s``: the seconds the measurement took (the loop leaves them out of its throughput).

The sample is drawn once from the validation split with the run's seed; nothing here reads a training or test
record. The encoder is measured in eval mode (BatchNorm's running statistics, no dropout), as the evaluation's
frozen arm sees it. At step 0, and for the first tens of steps while BatchNorm's running statistics still carry
their initial values, eval-mode outputs are nearly constant: alignment and uniformity near 0 then say that, not that
training collapsed. The encoder is handed back in the mode it came in; torch's random state is not touched (the
views' randomness is counter-based), so a run with the monitor trains exactly as one without it. Only rank 0
measures.
"""

from __future__ import annotations

import csv
import logging
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from threadpoolctl import threadpool_limits

from ..data.store import ECGStore
from ..data.windows import segment_starts, usable
from ..eval.probe import fit_probe
from ..eval.tasks import CODE_LIST_PREFIXES
from ..models.temporalnet import DualStreamTemporalNet
from .config import TrainConfig
from .views import make_views

log = logging.getLogger("ecgfast.train")

VIEW_OFFSET = 1 << 40  # the monitor's augmentation counter: far past any training batch's, the same at every step
PROBE_L2 = 0.01  # the probe's per-sample penalty on standardised features (ecgfast.eval.probe), fixed across steps
PROBE_TOL = 1e-4  # scikit-learn's default tolerance: AUROC to two decimals at a tenth of the evaluation's cost
FOLDS = 5  # cross-validation folds of the probe (fewer when a class has fewer patients)
MAX_LABELS = 8  # labels probed at most
MIN_CLASS_PATIENTS = 3  # patients of each class a label needs in the sample to be probed
CHUNK = 64  # ECGs per forward pass
EPS = 1e-7  # RankMe's epsilon


def rankme(x: np.ndarray | torch.Tensor, eps: float = EPS, center: bool = False) -> float:
    """Effective rank of an (N, D) matrix: exp of the entropy of its normalised singular values (Garrido et al.);
    ``center``: of the matrix minus its column means. 0 for a matrix of zeros (nothing spreads)."""
    x = torch.as_tensor(x, dtype=torch.float64)
    s = torch.linalg.svdvals(x - x.mean(dim=0) if center else x)
    if float(s.sum()) == 0.0:
        return 0.0
    p = s / s.sum() + eps
    return float(torch.exp(-(p * torch.log(p)).sum()))


def alignment(a: torch.Tensor, b: torch.Tensor, alpha: float = 2.0) -> float:
    """``mean_i ||a_i - b_i||^alpha`` of positive pairs, rows (N, D) L2-normalised (Wang and Isola)."""
    return float((a - b).norm(dim=1).pow(alpha).mean())


def uniformity(x: torch.Tensor, t: float = 2.0) -> float:
    """``log mean_{i<j} exp(-t ||x_i - x_j||^2)`` over the pairs of distinct rows of ``x`` (N >= 2, D), normalised."""
    d2 = torch.pdist(x.double()).pow(2)  # (N (N - 1) / 2,)
    return float(torch.logsumexp(-t * d2, dim=0) - np.log(d2.numel()))


def probe_auroc(x: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int, folds: int = FOLDS,
                l2: float = PROBE_L2) -> float:
    """Cross-validated AUROC of the linear probe on (x (N, D), y (N,)), folds grouped by patient (``groups``),
    out-of-fold scores pooled; NaN when a training fold lacks a class."""
    per_class = min(len(np.unique(groups[y == c])) for c in (0, 1))
    split = StratifiedGroupKFold(n_splits=min(folds, per_class), shuffle=True, random_state=seed)
    scores = np.empty(len(y))
    for train, test in split.split(x, y, groups):
        if len(np.unique(y[train])) < 2:
            return float("nan")
        scores[test] = fit_probe(x[train], y[train], l2, tol=PROBE_TOL).decision_function(x[test])
    return float(roc_auc_score(y, scores))


def _probe_labels(store: ECGStore, rows: np.ndarray, patients: np.ndarray) -> dict[str, np.ndarray]:
    """{label: (N,) 0/1 or NaN on ``rows``} for the binary labels the sample can probe (module docstring)."""
    found = []
    for name in store.label_names():
        y = store.label(name, fill=0.0 if name.startswith(CODE_LIST_PREFIXES) else np.nan)[rows]
        known = np.isfinite(y)
        if not np.isin(y[known], (0.0, 1.0)).all():
            continue
        rarer = min(len(np.unique(patients[known & (y == c)])) for c in (0.0, 1.0))
        if rarer >= MIN_CLASS_PATIENTS:
            found.append((-rarer, name, y))
    return {name: y for _, name, y in sorted(found)[:MAX_LABELS]}


class PretrainMonitor:
    """Measures an encoder on a fixed sample of validation ECGs (module docstring). Make it with :meth:`for_run`."""

    def __init__(self, store: ECGStore, rows: np.ndarray, config: TrainConfig, segment: int, device: torch.device,
                 autocast: AbstractContextManager | None = None, view_dtype: torch.dtype = torch.float32):
        self.store, self.rows, self.config, self.segment, self.device = store, rows, config, segment, device
        self.autocast, self.view_dtype = autocast or nullcontext(), view_dtype
        self.patients = np.unique(store.patient_ids, return_inverse=True)[1][rows]  # codes, never ids
        self.labels = _probe_labels(store, rows, self.patients)
        self.fields = ("rankme", "alignment", "uniformity", *(f"probe_{n}" for n in self.labels), "monitor_s")
        self.first: dict[str, float] = {}  # the values at step 0
        self.last: dict[str, float] = {}
        self.last_step = 0
        self.dim = 0  # width of the representation, rankme's ceiling

    @classmethod
    def for_run(cls, store: ECGStore, config: TrainConfig, segment: int, device: torch.device,
                autocast: AbstractContextManager | None = None,
                view_dtype: torch.dtype = torch.float32) -> PretrainMonitor | None:
        """The monitor of a run, or None when ``config.monitor_every`` is 0 or the store has fewer than two
        validation ECGs that hold a segment (said in the log)."""
        if not config.monitor_every:
            return None
        rows = store.split_indices("val")
        rows = rows[usable(store.valid_length[rows], segment)]
        if len(rows) < 2:
            log.warning("monitor: %s has %d validation ECG(s) that hold a %d-sample segment; it needs 2: off",
                        store.path, len(rows), segment)
            return None
        rng = np.random.default_rng([config.seed, 0x6D6F6E])  # "mon": the same sample on every resume
        rows = np.sort(rng.choice(rows, min(config.monitor_ecgs, len(rows)), replace=False))
        monitor = cls(store, rows, config, segment, device, autocast, view_dtype)
        log.info("monitor: %d validation ECGs, every %d steps; probes: %s", len(rows), config.monitor_every,
                 ", ".join(monitor.labels) or "none (no validation label with enough patients of each class)")
        return monitor

    @torch.no_grad()
    def _embed(self, encoder: DualStreamTemporalNet) -> tuple[torch.Tensor, np.ndarray]:
        """(projections of both views (2, N, streams, P) L2-normalised, representations (N, D) float64)."""
        s = self.store.n_samples // self.segment
        views, reps = [], []
        for i, start in enumerate(range(0, len(self.rows), CHUNK)):
            chunk = self.rows[start:start + CHUNK]
            valid = self.store.valid_length[chunk]
            q = torch.from_numpy(self.store.read(chunk)).to(self.device)  # (b, 8, T) int16
            gain = torch.from_numpy(self.store.gain[chunk]).to(self.device)
            base = torch.from_numpy(self.store.baseline[chunk]).to(self.device)
            v = make_views(q, gain, base, valid, self.segment, self.config.views, self.config.augment,
                           self.config.seed, VIEW_OFFSET + i, self.view_dtype)  # (2, b, 8, segment)
            x = (q.float() - base[:, None, None]) / gain[:, None, None]  # (b, 8, T) decoded
            starts = torch.from_numpy(segment_starts(valid, s, self.segment)).to(self.device)  # (b, S)
            t = starts[..., None] + torch.arange(self.segment, device=self.device)  # (b, S, segment)
            segs = torch.gather(x[:, None].expand(-1, s, -1, -1), 3,
                                t[:, :, None].expand(-1, -1, x.shape[1], -1))  # (b, S, 8, segment)
            with self.autocast:
                h = encoder(torch.cat([v.flatten(0, 1), segs.flatten(0, 1).to(v.dtype)]))  # (2b + bS, streams, D)
                z = encoder.project(h[:2 * len(chunk)])  # (2b, streams, P)
            views.append(torch.nn.functional.normalize(z.float(), dim=-1).unflatten(0, (2, -1)).cpu())
            reps.append(h[2 * len(chunk):].float().mean(dim=1).unflatten(0, (-1, s)).mean(dim=1).double().cpu())
        return torch.cat(views, dim=1), torch.cat(reps).numpy()

    def measure(self, encoder: DualStreamTemporalNet, step: int) -> dict[str, float]:
        """Every field of :attr:`fields` for ``encoder`` now; the encoder is handed back in the mode it came in."""
        t0 = time.perf_counter()
        was_training = encoder.training
        encoder.eval()
        try:
            z, reps = self._embed(encoder)
        finally:
            encoder.train(was_training)
        n_streams, self.dim = z.shape[2], reps.shape[1]
        out = {"rankme": rankme(reps, center=True),
               "alignment": alignment(z[0].flatten(0, 1), z[1].flatten(0, 1)),  # pairs: (view 1, view 2) per stream
               "uniformity": float(np.mean([uniformity(z[v, :, k]) for v in range(2) for k in range(n_streams)]))}
        with threadpool_limits(1):  # fits of a few hundred rows: BLAS threads only fight the training's threads
            for name, y in self.labels.items():
                known = np.isfinite(y)
                out[f"probe_{name}"] = probe_auroc(reps[known], y[known].astype(int), self.patients[known],
                                                   self.config.seed)
        out["monitor_s"] = round(time.perf_counter() - t0, 3)
        if step == 0:
            self.first = dict(out)
        self.last, self.last_step = out, step
        return out

    def due(self, step: int, total_steps: int) -> bool:
        """Whether the monitor measures after ``step`` (every ``monitor_every`` steps, and the last)."""
        return step % self.config.monitor_every == 0 or step == total_steps

    def maybe(self, encoder: DualStreamTemporalNet, step: int, total_steps: int) -> dict[str, float]:
        """:meth:`measure` when :meth:`due`, else {}: the training loop's one call."""
        return self.measure(encoder, step) if self.due(step, total_steps) else {}

    def start(self, encoder: DualStreamTemporalNet, step: int, metrics_csv: Path) -> dict | None:
        """At step 0: the row of step 0 (``step`` and every field). On a resume: None, and the step-0 values are read
        back from ``metrics_csv`` for :meth:`report_lines`."""
        if step == 0:
            return {"step": 0, **self.measure(encoder, 0)}
        if metrics_csv.is_file():
            with open(metrics_csv, newline="") as f:
                row = next((r for r in csv.DictReader(f) if r.get("step") == "0" and r.get("rankme")), None)
            self.first = {k: float(v) for k, v in (row or {}).items() if k in self.fields and v not in ("", None)}
        return None

    def report_lines(self) -> list[str]:
        """One line per probed label, and one for the effective rank: the value at the last measurement against
        step 0's (the run's end summary)."""
        if not self.last:
            return []

        def line(key: str, what: str, fmt: str) -> str:
            then = self.first.get(key)
            before = f"{then:{fmt}} at step 0" if then is not None and np.isfinite(then) else "step 0 not measured"
            return f"monitor: {what} {self.last[key]:{fmt}} at step {self.last_step} ({before})"

        lines = [line("rankme", f"effective rank (rankme, at most {self.dim}) of the validation representations",
                      ".1f")]
        lines += [line(f"probe_{n}", f"linear-probe AUROC of {n} on validation ECGs", ".3f") for n in self.labels]
        return lines


__all__ = ["CHUNK", "FOLDS", "MAX_LABELS", "PROBE_L2", "PretrainMonitor", "VIEW_OFFSET", "alignment", "probe_auroc",
           "rankme", "uniformity"]
