"""Data in: the prepare pipeline (:mod:`.pipeline`: read, check, resample, filter, quantise into the int16 store,
patient-level splits) and its command line ``ecgfast-prepare`` (:mod:`.cli`; ``python -m ecgfast.prepare``).

Names below load on first use, so that the command line answers ``--help`` without importing the data stack.
"""

from ..lazy import lazy_exports

_EXPORTS = {"SplitConfig": "pipeline", "prepare_store": "pipeline", "SPLIT_METHODS": "pipeline", "main": "cli",
            "build_parser": "cli"}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
