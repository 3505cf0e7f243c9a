"""The embedded default corpus: the synthetic ECGs, made once into a store and cached.

The cache key holds the generator's version (:data:`ecgfast.data.synthetic.SYNTHETIC_VERSION`), the size, the seed
and the store's rate, so a new generator never reuses an old corpus. The ECGs are made at 500 Hz and resampled by
the prepare pipeline to the store's rate (anti-aliased: the 50/60 Hz powerline noise of the corpus does not fold
into a 100 Hz store). The store lives in ``$ECGFAST_CACHE`` or ``~/.cache/ecgfast``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("ecgfast.train")


def synthetic_store(n_patients: int, seed: int, fs: float = 100.0, workers: int | None = None) -> Path:
    """The folder of the cached synthetic store of ``n_patients`` patients, ``seed``, at ``fs`` Hz, made on first
    use."""
    from ..data.preprocess import PreprocessConfig
    from ..data.synthetic import SYNTHETIC_VERSION, SyntheticReader
    from ..prepare import prepare_store

    root = Path(os.environ.get("ECGFAST_CACHE", Path.home() / ".cache" / "ecgfast"))
    path = root / f"synthetic-v{SYNTHETIC_VERSION}-p{n_patients}-s{seed}-{fs:g}hz"
    if not (path / "store.json").exists():
        log.info("making the synthetic corpus (%d patients, %g Hz) at %s", n_patients, fs, path)
        prepare_store([SyntheticReader(n_patients=n_patients, seed=seed)], path, PreprocessConfig(fs=fs),
                      workers=workers or min(4, os.cpu_count() or 1), progress=False)
    return path


__all__ = ["synthetic_store"]
