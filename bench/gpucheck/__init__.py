"""The phases of ``bench/gpu_check.py``: one module per phase, the budgeted runner and its record in ``record``.

Not part of the installed package: bench/ holds scripts, and ``python bench/gpu_check.py`` puts bench/ on the path.
"""
