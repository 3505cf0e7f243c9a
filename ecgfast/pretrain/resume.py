"""What ``--resume`` may change: the run's length, logging and system settings; never what it trains on.

A resumed run must be the run that was begun, or its checkpoint, its provenance and every number computed from
them would describe a run that never happened. :func:`check_resume` compares the settings of the checkpoint
(its ``config.json``) with the resuming command's, and the store's content (fingerprint) with the stores the run
has read:

- :data:`SAFE_TO_CHANGE` may change (how long, how often to log or save, workers, device, memory mode, compile):
  the changes are returned, for ``history.jsonl`` and the log;
- anything else (the store's content, model, augmentation, views, loss, batch, learning rate and schedule shape,
  seed, precision) is refused with every changed setting named, old and new value. Start a new run (another
  ``--out``) to train with other settings.

A store moved to another path with the same content is the same store: its path is a safe change. A setting that
a newer ecgfast added is compared with its default, which is what the older run did.
"""

from __future__ import annotations

from .config import TrainConfig, to_dict
from .provenance import Provenance

#: Settings a resume may change. Length (max_steps, epochs) reshapes the cosine decay's remaining part.
SAFE_TO_CHANGE = frozenset({"max_steps", "epochs", "workers", "loader", "device", "compile", "memory", "memory_chunk",
                            "out", "ckpt_every", "log_every", "max_nonfinite", "progress", "monitor_every",
                            "monitor_ecgs", "peak_tflops", "store"})


class ResumeError(ValueError):
    """``--resume`` with settings or a store that would change what the run trains on."""


def flatten(settings: dict, prefix: str = "") -> dict:
    """``{"augment": {"spatial": True}}`` -> ``{"augment.spatial": True}``; lists stay values."""
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _fingerprints(provenance: Provenance | dict | None) -> list[str]:
    if provenance is None:
        return []
    if isinstance(provenance, Provenance):
        return [s["store_fingerprint"] for s in provenance.info["sources"]]
    return [provenance["store_fingerprint"]] if "store_fingerprint" in provenance else []


def check_resume(saved: dict, now: dict, saved_precision: str | None, precision: str,
                 saved_provenance: Provenance | dict | None, store_fingerprint: str) -> dict[str, tuple]:
    """The safe changes ``{setting: (old, new)}`` of a resume, after refusing any other.

    Args:
        saved, now: the checkpoint's settings and the resuming command's (``to_dict`` form, sections nested).
        saved_precision, precision: "bf16" or "fp32" as the run trained and as the resume would (None: unknown,
            a checkpoint of an older ecgfast).
        saved_provenance: the checkpoint's provenance (its stores' fingerprints).
        store_fingerprint: the fingerprint of the store the resume reads.

    Raises:
        ResumeError: naming every setting that would change what is trained on, or the changed store.
    """
    old, new = flatten(saved), flatten(now)
    defaults = flatten(to_dict(TrainConfig()))
    for key in set(new) - set(old):  # a setting newer than the checkpoint: its default is what the run did
        if key in defaults:
            old[key] = defaults[key]
    changed = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
    unsafe = {k: v for k, v in changed.items() if k not in SAFE_TO_CHANGE}
    if saved_precision is not None and saved_precision != precision:
        unsafe["precision (bf16 autocast)"] = (saved_precision, precision)
    problems = [f"{k}: {a!r} -> {b!r}" for k, (a, b) in unsafe.items()]
    seen = _fingerprints(saved_provenance)
    if seen and store_fingerprint not in seen:
        problems.insert(0, f"store content: fingerprint {seen[-1]} -> {store_fingerprint} (other records, checksums "
                           "or splits than the run was pretrained on)")
    if problems:
        raise ResumeError("--resume refused: these settings differ from the run's and would change what it trains "
                          f"on: {'; '.join(problems)}. Resume with the run's settings (its config.toml), or start a "
                          "new run in another --out")
    return {k: v for k, v in changed.items() if k in SAFE_TO_CHANGE}


__all__ = ["ResumeError", "SAFE_TO_CHANGE", "check_resume", "flatten"]
