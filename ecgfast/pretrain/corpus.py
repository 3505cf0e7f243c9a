"""The embedded default corpus: the synthetic ECGs, made once into a store and cached.

The cache key holds the generator's version (:data:`ecgfast.data.synthetic.SYNTHETIC_VERSION`), the size and the
seed, so a new generator never reuses an old corpus. The store lives in ``$ECGFAST_CACHE`` or ``~/.cache/ecgfast``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("ecgfast.train")


def synthetic_store(n_patients: int, seed: int, workers: int | None = None) -> Path:
    """The folder of the cached synthetic store of ``n_patients`` patients and ``seed``, made on first use."""
    from ..data.synthetic import SYNTHETIC_VERSION, SyntheticReader
    from ..prepare import prepare_store

    root = Path(os.environ.get("ECGFAST_CACHE", Path.home() / ".cache" / "ecgfast"))
    path = root / f"synthetic-v{SYNTHETIC_VERSION}-p{n_patients}-s{seed}"
    if not (path / "store.json").exists():
        log.info("making the synthetic corpus (%d patients) at %s", n_patients, path)
        prepare_store([SyntheticReader(n_patients=n_patients, seed=seed)], path,
                      workers=workers or min(4, os.cpu_count() or 1), progress=False)
    return path


__all__ = ["synthetic_store"]
