"""Evaluation, the downstream protocol of METHOD.md, in the order a run goes: the settings and the budget rule
(:mod:`.config`), tasks and label fractions (:mod:`.tasks`), segments through an encoder (:mod:`.embed`), the linear
probe (:mod:`.probe`), one cell (:mod:`.protocol`), the run over all cells (:mod:`.run`), scores and reports
(:mod:`.report`), the demo (:mod:`.demo`) and the command lines (:mod:`.cli`: ``ecgfast-eval``, ``ecgfast-embed``).

``python -m ecgfast.eval`` is ``ecgfast-eval``. Names below load on first use (fast ``--help``).
"""

from ..lazy import lazy_exports

_EXPORTS = {"EvalConfig": "config", "BUDGETS": "config", "run_evaluation": "run", "Evaluator": "protocol",
            "load_task": "tasks", "sample_fractions": "tasks", "EvalError": "tasks", "auroc": "report",
            "bootstrap_auroc": "report", "select_probe": "probe", "load_encoder": "embed"}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
