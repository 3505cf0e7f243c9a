"""Segments of stored records through an encoder: frozen embeddings, and the classifier's scores per record.

How a 10 s record meets a 5 s encoder: a store of T-sample records gives every record S = T // segment segments
(two halves for 10 s at 500 Hz and ``segment`` 2500), taken from its valid samples only
(:func:`ecgfast.data.windows.segment_starts`: adjacent where the record holds them, evenly spread and overlapping
where it is shorter). Every segment goes through the encoder; a record's value is the mean over its segments: for
the classifier the mean of the segments' logits, for an embedding the mean of their features. The head is linear,
so the two agree.

An embedding is the classifier's input: each stream's lead features averaged into a stream feature, and the
streams averaged, ``(B, 8, segment) -> (B, 2, D) -> (B, D)`` (D = 512 for the paper preset). The encoder runs in
eval mode (BatchNorm running statistics, no dropout), so features are deterministic and computed once per split.

``ecgfast-embed`` writes ``<out>/<split>.npz`` with ``features`` (N, S, D) float32 per segment and ``rows`` (N,)
store rows; ``ecgfast-eval`` reuses those files when their header matches. The untrained encoder of the
random-features arm (:func:`random_encoder`) is cached the same way, its header naming the preset and the seed
instead of a checkpoint.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.store import ECGStore, atomic_path
from ..data.windows import segment_starts
from ..models.temporalnet import DualStreamTemporalNet, temporalnet_config
from ..pretrain.checkpoint import CheckpointError, load_weights, resolve_checkpoint, weights_sha256

SEGMENT = 2500  # samples the encoder sees: 5 s at 500 Hz (METHOD.md)
WINDOW_RULE = 2  # version of the segment rule (ecgfast.data.windows); cached embeddings of another are redone


def checkpoint_preset(path: str | os.PathLike) -> tuple[Path, str]:
    """(checkpoint folder, model preset) from a run folder (its newest intact checkpoint) or a checkpoint folder.

    Raises:
        CheckpointError: no intact checkpoint there, or no config.json naming the model preset.
    """
    ckpt = resolve_checkpoint(path)
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
    ckpt, preset = checkpoint_preset(checkpoint)
    encoder = DualStreamTemporalNet(temporalnet_config(preset))
    load_weights(encoder, ckpt)
    return encoder.to(device).eval(), ckpt, preset


def random_encoder(preset: str, seed: int, device: str | torch.device = "cpu") -> DualStreamTemporalNet:
    """The untrained encoder of preset ``preset`` that the random-init arm of seed ``seed`` starts from, in eval mode.

    The random-init arm seeds torch with its seed and builds its classifier, encoder first
    (:meth:`ecgfast.eval.protocol.Evaluator.run_cell`); this builds the same encoder the same way, so the
    random-features control of a seed probes exactly the weights the random-init arm of that seed starts from.
    torch's global random state is left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = DualStreamTemporalNet(temporalnet_config(preset))
    return encoder.to(device).eval()


def n_segments(n_samples: int, segment: int = SEGMENT) -> int:
    """How many segments a record of a store of ``n_samples``-sample records gives (2 for 10 s at 500 Hz)."""
    if segment < 1 or n_samples < segment:
        raise ValueError(f"records of {n_samples} samples cannot hold a {segment}-sample segment")
    return n_samples // segment


def record_segments(x: torch.Tensor, starts: np.ndarray | torch.Tensor, segment: int = SEGMENT) -> torch.Tensor:
    """(B, 8, T) records and (B, S) segment starts -> (B, S, 8, segment)."""
    starts = torch.as_tensor(starts, device=x.device, dtype=torch.long)
    t = starts[..., None] + torch.arange(segment, device=x.device)  # (B, S, segment)
    idx = t[:, :, None, :].expand(-1, -1, x.shape[1], -1)  # (B, S, 8, segment)
    return torch.gather(x[:, None].expand(-1, starts.shape[1], -1, -1), 3, idx)


@torch.inference_mode()
def map_records(fn: Callable[[torch.Tensor], torch.Tensor], store: ECGStore, rows: np.ndarray,
                segment: int = SEGMENT, batch_size: int = 128, device: str | torch.device = "cpu",
                progress: bool = False, desc: str = "encode") -> np.ndarray:
    """Apply ``fn`` ((n, 8, segment) -> (n, ...)) to every segment of records ``rows``: (N, S, ...) float32.

    ``batch_size`` counts segments; records are read from the store's memory map a batch at a time. Every record
    must hold at least one segment of valid samples (``load_task`` leaves the others out).
    """
    s = n_segments(store.n_samples, segment)
    per_batch = max(1, batch_size // s)
    outs = []
    bar = progress and sys.stderr.isatty()  # a bar on a terminal only: no escape codes in log files
    for start in tqdm(range(0, len(rows), per_batch), desc=desc, unit="batch", disable=not bar, leave=False):
        batch = rows[start:start + per_batch]
        x = torch.from_numpy(store.read_mv(batch)).to(device)  # (b, 8, T) mV
        starts = segment_starts(store.valid_length[batch], s, segment)  # (b, S)
        y = fn(record_segments(x, starts, segment).flatten(0, 1))  # (b*S, ...)
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


def embedding_header(store: ECGStore, ckpt: Path | None, segment: int, source: dict | None = None) -> dict:
    """What an embedding file was made from; a file is reused only when this matches exactly. ``source`` describes
    an encoder that is not a checkpoint (the random-features arm's: preset and seed) and replaces ``ckpt``."""
    encoder = dict(source) if source is not None else {"checkpoint_weights": weights_sha256(ckpt)}
    return {"store_content": store.fingerprint(), "n_records": len(store), **encoder, "segment": segment,
            "window_rule": WINDOW_RULE}


def split_embeddings(encoder: DualStreamTemporalNet, store: ECGStore, ckpt: Path | None, split: str, folder: Path,
                     segment: int = SEGMENT, batch_size: int = 128, device: str | torch.device = "cpu",
                     progress: bool = False, rows: np.ndarray | None = None,
                     source: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(rows (N,), features (N, S, D)) of one split's records that hold a segment (or of ``rows``), from
    ``folder/<split>.npz`` when it matches, else computed and written there (atomically). ``source``: see
    :func:`embedding_header`."""
    header = embedding_header(store, ckpt, segment, source)
    file = folder / f"{split}.npz"
    if rows is None:
        rows = store.split_indices(split)
        rows = rows[store.valid_length[rows] >= segment]
    if file.is_file():
        with np.load(file, allow_pickle=False) as z:
            if json.loads(str(z["header"])) == header and np.array_equal(z["rows"], rows):
                return z["rows"], z["features"]
    feats = encode_records(encoder, store, rows, segment, batch_size, device, progress, desc=f"embed {split}")
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(file) as tmp, open(tmp, "wb") as f:
        np.savez(f, rows=rows, features=feats, header=np.array(json.dumps(header, sort_keys=True)))
    return rows, feats


__all__ = ["SEGMENT", "checkpoint_preset", "encode_records", "load_encoder", "map_records", "n_segments",
           "random_encoder", "record_segments", "split_embeddings"]
