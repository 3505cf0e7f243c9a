"""Frozen-encoder embeddings of a store, and the L2 logistic regression fitted on them (the fast frozen arm).

How a 10 s record meets a 5 s encoder: a record of T samples is cut into ``T // segment`` adjacent,
non-overlapping segments (two halves for 10 s at 500 Hz and ``segment`` 2500); every segment goes through
the encoder, and a record's value is the mean over its segments. For the classifier that is the mean of
the halves' logits; for an embedding, the mean of the halves' features. The head is linear, so the two
agree: the logit of the mean feature is the mean of the logits.

An embedding is the classifier's input: each stream's lead features averaged into a stream feature, and
the streams averaged, ``(B, 8, segment) -> (B, 2, D) -> (B, D)`` (D = 512 for the paper preset). The
encoder runs in eval mode (BatchNorm running statistics, no dropout), so features are deterministic and
computed once per split; training a linear head on them is the same as training it through the frozen
encoder, only without re-running the encoder at every step.

``ecgfast-embed`` writes ``<out>/<split>.npz`` with ``features`` (N, S, D) float32 per segment and ``rows``
(N,) store rows; ``ecgfast-eval`` reuses those files when their header matches.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import minimize
from scipy.special import expit
from tqdm.auto import tqdm

from .checkpoint import CheckpointError, latest_checkpoint, load_weights
from .data.splits import SPLITS, SplitError
from .data.store import ECGStore, StoreError, atomic_path
from .models.temporalnet import DualStreamTemporalNet, temporalnet_config

SEGMENT = 2500  # samples the encoder sees: 5 s at 500 Hz (METHOD.md)


def resolve_checkpoint(path: str | os.PathLike) -> tuple[Path, str]:
    """(checkpoint folder, model preset) from a run folder (its latest checkpoint) or a checkpoint folder.

    Raises:
        CheckpointError: no weights there, or no config.json naming the model preset.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint or run folder")
    ckpt = path if (path / "model.safetensors").is_file() else latest_checkpoint(path)
    if ckpt is None:
        raise CheckpointError(f"{path}: neither a checkpoint folder (model.safetensors) nor a run folder "
                              "with checkpoints/latest")
    config = ckpt / "config.json"
    try:
        preset = json.loads(config.read_text())["model"]
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{config}: cannot read the model preset ('model' key) of the checkpoint: {exc}") from exc
    return ckpt, str(preset)


def load_encoder(checkpoint: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[DualStreamTemporalNet,
                                                                                             Path, str]:
    """The pretrained dual-stream encoder of ``checkpoint`` (run or checkpoint folder), in eval mode.

    Returns (encoder, checkpoint folder, preset name).
    """
    ckpt, preset = resolve_checkpoint(checkpoint)
    encoder = DualStreamTemporalNet(temporalnet_config(preset))
    load_weights(encoder, ckpt)
    return encoder.to(device).eval(), ckpt, preset


def n_segments(n_samples: int, segment: int = SEGMENT) -> int:
    """How many adjacent ``segment``-sample pieces a record of ``n_samples`` holds (2 for 10 s at 500 Hz)."""
    if segment < 1 or n_samples < segment:
        raise ValueError(f"records of {n_samples} samples cannot hold a {segment}-sample segment")
    return n_samples // segment


def record_segments(x: torch.Tensor, segment: int = SEGMENT) -> torch.Tensor:
    """(B, 8, T) records -> (B, S, 8, segment) adjacent segments, S = T // segment (a tail shorter is dropped)."""
    s = n_segments(x.shape[-1], segment)
    return x[..., : s * segment].unflatten(-1, (s, segment)).transpose(1, 2)


@torch.inference_mode()
def map_records(fn: Callable[[torch.Tensor], torch.Tensor], store: ECGStore, rows: np.ndarray,
                segment: int = SEGMENT, batch_size: int = 128, device: str | torch.device = "cpu",
                progress: bool = False, desc: str = "encode") -> np.ndarray:
    """Apply ``fn`` ((n, 8, segment) -> (n, ...)) to every segment of records ``rows``: (N, S, ...) float32.

    ``batch_size`` counts segments; records are read from the store's memory map a batch at a time.
    """
    s = n_segments(store.n_samples, segment)
    per_batch = max(1, batch_size // s)
    outs = []
    for start in tqdm(range(0, len(rows), per_batch), desc=desc, unit="batch", disable=not progress, leave=False):
        x = torch.from_numpy(store.read_mv(rows[start:start + per_batch])).to(device)  # (b, 8, T) mV
        y = fn(record_segments(x, segment).flatten(0, 1))  # (b*S, ...)
        outs.append(y.float().unflatten(0, (-1, s)).cpu().numpy())
    if not outs:
        return np.zeros((0, s), dtype=np.float32)
    return np.concatenate(outs)


def encode_records(encoder: DualStreamTemporalNet, store: ECGStore, rows: np.ndarray, segment: int = SEGMENT,
                   batch_size: int = 128, device: str | torch.device = "cpu", progress: bool = False,
                   desc: str = "embed") -> np.ndarray:
    """Classifier features (stream features averaged) per segment: (N, S, D) float32, encoder in eval mode."""
    encoder.eval()
    return map_records(lambda seg: encoder(seg).mean(dim=1), store, rows, segment, batch_size, device, progress,
                       desc)


def embedding_header(store: ECGStore, ckpt: Path, segment: int) -> dict:
    """What an embedding file was made from; a file is reused only when this matches exactly."""
    weights = ckpt / "model.safetensors"
    st = weights.stat()
    return {"store": str(store.path.resolve()), "n_records": len(store), "checkpoint": str(ckpt.resolve()),
            "weights_size": st.st_size, "weights_mtime_ns": st.st_mtime_ns, "segment": segment}


def split_embeddings(encoder: DualStreamTemporalNet, store: ECGStore, ckpt: Path, split: str, folder: Path,
                     segment: int = SEGMENT, batch_size: int = 128, device: str | torch.device = "cpu",
                     progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(rows (N,), features (N, S, D)) of one split, from ``folder/<split>.npz`` when it matches, else computed
    and written there (atomically)."""
    header = embedding_header(store, ckpt, segment)
    file = folder / f"{split}.npz"
    if file.is_file():
        with np.load(file, allow_pickle=False) as z:
            if json.loads(str(z["header"])) == header:
                return z["rows"], z["features"]
    rows = store.split_indices(split)
    feats = encode_records(encoder, store, rows, segment, batch_size, device, progress, desc=f"embed {split}")
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(file) as tmp, open(tmp, "wb") as f:
        np.savez(f, rows=rows, features=feats, header=np.array(json.dumps(header, sort_keys=True)))
    return rows, feats


# ---- L2 logistic regression ------------------------------------------------------------------------------------

L2_GRID = (1.0, 0.1, 0.01, 1e-3, 1e-4)  # strongest first: ties on validation AUROC go to the simpler model


def fit_logistic_regression(x: np.ndarray, y: np.ndarray, l2: float, sample_weight: np.ndarray | None = None,
                            max_iter: int = 1000) -> tuple[np.ndarray, float]:
    """L2-penalised logistic regression by L-BFGS: minimises ``sum_i w_i logloss_i / sum_i w_i + l2/2 |coef|^2``.

    The intercept is not penalised. Equals scikit-learn's ``LogisticRegression(C=1 / (l2 * n))`` for unit
    weights. Returns (coef (D,), intercept).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, d = x.shape
    w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    w = w / w.sum()

    def loss_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        z = x @ theta[:d] + theta[d]
        loss = float(w @ (np.logaddexp(0.0, z) - y * z) + 0.5 * l2 * theta[:d] @ theta[:d])
        r = w * (expit(z) - y)  # d loss / d z
        return loss, np.concatenate([x.T @ r + l2 * theta[:d], [r.sum()]])

    res = minimize(loss_grad, np.zeros(d + 1), jac=True, method="L-BFGS-B",
                   options={"maxiter": max_iter, "gtol": 1e-9, "ftol": 1e-12})
    return res.x[:d], float(res.x[d])


@dataclass
class LogisticModel:
    """A fitted regression on standardised embeddings: ``decision_function(x) = ((x - mean) / std) @ coef + b``."""

    mean: np.ndarray  # (D,) training mean of each feature
    std: np.ndarray  # (D,) training std, floored
    coef: np.ndarray  # (D,)
    intercept: float
    l2: float  # the penalty chosen on val
    val_auroc: float

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        """(N, D) record embeddings -> (N,) logits."""
        return ((np.asarray(x, dtype=np.float64) - self.mean) / self.std) @ self.coef + self.intercept


def select_logistic_regression(x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                               balanced: bool = False, grid: tuple[float, ...] = L2_GRID) -> LogisticModel:
    """Fit on (x, y) for every penalty of ``grid`` and keep the best val AUROC (ties: the stronger penalty).

    Features are standardised with the training mean and std, so the penalty treats every feature alike.
    ``balanced`` weighs both classes equally (the regression's analogue of class-balanced batches).
    """
    from .eval_report import auroc

    mean, std = x.mean(axis=0), np.maximum(x.std(axis=0), 1e-6)
    z, z_val = (x - mean) / std, (x_val - mean) / std
    weight = np.where(y == 1, 0.5 / y.sum(), 0.5 / (len(y) - y.sum())) if balanced else None
    best: LogisticModel | None = None
    for l2 in grid:  # strongest penalty first: a strict > keeps it on ties
        coef, icpt = fit_logistic_regression(z, y, l2, weight)
        val = auroc(y_val, z_val @ coef)
        if best is None or val > best.val_auroc:
            best = LogisticModel(mean, std, coef, icpt, l2, val)
    return best


# ---- ecgfast-embed ---------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ecgfast-embed",
        description="Export frozen-encoder embeddings of a store's splits: <out>/<split>.npz with features "
                    "(N, segments, D) and store rows (N,). ecgfast-eval --fast-frozen reuses them.",
        epilog="examples:\n  ecgfast-embed --store stores/ptbxl --checkpoint runs/mimic --out runs/eval/embeddings\n"
               "  ecgfast-embed --store stores/ptbxl --checkpoint runs/mimic/checkpoints/ckpt-00010000 "
               "--out emb --splits test",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True, help="prepared ECG store")
    p.add_argument("--checkpoint", required=True, help="pretraining run folder or checkpoint folder")
    p.add_argument("--out", required=True, help="folder for <split>.npz")
    p.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS)
    p.add_argument("--batch-size", type=int, default=128, help="segments per forward pass")
    p.add_argument("--device", default=None, help="default: cuda if available else cpu")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ecgfast-embed``. Exit codes: 0 done, 2 bad input."""
    args = build_parser().parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        store = ECGStore(args.store)
        encoder, ckpt, _ = load_encoder(args.checkpoint, device)
        for split in args.splits:
            rows, feats = split_embeddings(encoder, store, ckpt, split, Path(args.out), batch_size=args.batch_size,
                                           device=device, progress=args.progress)
            print(f"ecgfast-embed: {split}: {len(rows)} records -> {Path(args.out) / (split + '.npz')} "
                  f"{tuple(feats.shape)}")
    except (StoreError, SplitError, CheckpointError, ValueError, FileNotFoundError) as exc:
        print(f"ecgfast-embed: error: {exc}", file=sys.stderr)
        return 2
    return 0


__all__ = ["L2_GRID", "SEGMENT", "LogisticModel", "encode_records", "fit_logistic_regression", "load_encoder",
           "map_records", "n_segments", "record_segments", "resolve_checkpoint", "select_logistic_regression",
           "split_embeddings"]


if __name__ == "__main__":
    sys.exit(main())
