"""The linear probe of the frozen and random-features arms: scikit-learn's L2 logistic regression on standardised
features, trained to convergence, its penalty chosen on validation AUROC.

Features are standardised with the training mean and standard deviation (``StandardScaler``), so the penalty
treats every feature alike; ``balanced`` weighs both classes equally (the regression's analogue of class-balanced
batches). The penalty ``l2`` is per sample: the fit minimises ``mean_i w_i logloss_i + l2 / 2 |coef|^2`` (the
intercept unpenalised), which is scikit-learn's ``C = 1 / (l2 n)``, so one grid means the same at any training-set
size. The grid is tried strongest first, and a strict improvement is needed to move on, so ties go to the simpler
model. L-BFGS runs until its projected gradient is below ``tol`` (1e-8): a converged fit, whose loss no further
iteration lowers; one that reaches ``max_iter`` instead says so (``converged`` False) and the report flags it like
an end-to-end cell stopped at its step cap.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

L2_GRID = (1.0, 0.1, 0.01, 1e-3, 1e-4)  # per-sample L2 penalties, strongest first
MAX_ITER = 2000  # L-BFGS iterations; 64- to 512-d features of ~1,000 records converge in 10 to 200
TOL = 1e-8  # on the projected gradient


@dataclass
class LinearProbe:
    """A fitted probe: the scaler + logistic regression pipeline, the chosen penalty and its validation AUROC, and
    the L-BFGS iterations of that fit (``converged``: stopped by the tolerance, not by ``MAX_ITER``)."""

    model: Pipeline
    l2: float
    val_auroc: float
    n_iter: int = 0
    converged: bool = True

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        """(N, D) record features -> (N,) logits."""
        return self.model.decision_function(np.asarray(x, dtype=np.float64))


def fit_probe(x: np.ndarray, y: np.ndarray, l2: float, balanced: bool = False, max_iter: int = MAX_ITER,
              tol: float = TOL) -> Pipeline:
    """``StandardScaler`` + ``LogisticRegression(C=1 / (l2 n))`` fitted on (x (N, D), y (N,)); scikit-learn's
    ``ConvergenceWarning`` is silenced here because the caller reads the iteration count instead. A looser ``tol``
    is for a quick look (the pretraining monitor), not for the evaluation's arms."""
    c = 1.0 / (l2 * len(y))
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced" if balanced else None,
                                                               max_iter=max_iter, tol=tol))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(np.asarray(x, dtype=np.float64), np.asarray(y))


def select_probe(x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, balanced: bool = False,
                 grid: tuple[float, ...] = L2_GRID, max_iter: int = MAX_ITER) -> LinearProbe:
    """Fit on (x, y) for every penalty of ``grid`` and keep the best validation AUROC (ties: the stronger one)."""
    best: LinearProbe | None = None
    for l2 in grid:
        model = fit_probe(x, y, l2, balanced, max_iter)
        val = float(roc_auc_score(y_val, model.decision_function(np.asarray(x_val, dtype=np.float64))))
        if best is None or val > best.val_auroc:
            n_iter = int(np.max(model[-1].n_iter_))
            best = LinearProbe(model, l2, val, n_iter, n_iter < max_iter)
    return best


__all__ = ["L2_GRID", "LinearProbe", "MAX_ITER", "TOL", "fit_probe", "select_probe"]
