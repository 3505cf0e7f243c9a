"""bench/ptbxl_mini_report.py: the fraction table the recorded PTB-XL results are read from (means over tasks per
seed, gains paired by seed, unusable cells left out, cap stops counted), and the script end to end on a run folder;
bench/pretraining_seeds.py: the same gain per pretraining seed, and its check that the runs were evaluated alike."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import pretraining_seeds  # noqa: E402  (bench/ is not a package)
import ptbxl_mini_report as report  # noqa: E402

from ecgfast.eval.config import ARMS  # noqa: E402
from ecgfast.eval.report import seed_interval  # noqa: E402

TASKS = ("superclass:MI", "superclass:NORM", "rhythm:AFIB")
SEEDS = range(5)


def _results(rng: np.random.Generator) -> pd.DataFrame:
    """Cells for 2 fractions x 3 tasks x 5 seeds x 4 arms with random AUROCs; one (task, seed) at 1 % unusable."""
    rows = []
    for fraction in (1.0, 100.0):
        for task in TASKS:
            for seed in SEEDS:
                usable = not (fraction == 1.0 and task == "rhythm:AFIB" and seed == 2)
                for arm in ARMS:
                    rows.append({"task": task, "arm": arm, "fraction": fraction, "seed": seed,
                                 "test_auroc": float(rng.uniform(0.5, 0.9)), "usable": usable,
                                 "stopped_by": "cap" if (arm == "random" and seed == 0 and fraction == 100.0)
                                 else ("patience" if arm in ("random", "finetuned") else "converged")})
    return pd.DataFrame(rows)


def _row(table: str, label: str) -> list[str]:
    line = next(line for line in table.splitlines() if line.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_fraction_table_matches_a_by_hand_computation():
    rng = np.random.default_rng(0)
    results = _results(rng)
    table = report.fraction_table(results)
    for fraction, label in ((1.0, "1 %"), (100.0, "100 %")):
        cells = _row(table, label)
        block = results[(results["fraction"] == fraction) & results["usable"]]
        # each seed: the mean over its usable tasks; then a t-interval over seeds
        per_seed = {arm: block[block["arm"] == arm].groupby("seed")["test_auroc"].mean() for arm in ARMS}
        for i, arm in enumerate(ARMS, start=1):
            m, lo, hi = seed_interval(per_seed[arm])
            assert cells[i] == f"{m:.3f} [{lo:.3f}, {hi:.3f}]"
        # the gains are paired by seed: the interval of the per-seed differences, not a difference of intervals
        for j, (arm, control) in enumerate((("frozen", "random-features"), ("finetuned", "random"))):
            m, lo, hi = seed_interval(per_seed[arm] - per_seed[control])
            assert cells[len(ARMS) + 1 + j] == f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}]"
    assert _row(table, "100 %")[-1] == f"{len(TASKS)} of {len(TASKS) * len(SEEDS) * len(ARMS)}"
    assert _row(table, "1 %")[-1] == f"0 of {len(TASKS) * len(SEEDS) * len(ARMS)}"


def test_an_unusable_cell_does_not_move_the_mean():
    rng = np.random.default_rng(1)
    results = _results(rng)
    before = _row(report.fraction_table(results), "1 %")
    bad = (results["fraction"] == 1.0) & (results["task"] == "rhythm:AFIB") & (results["seed"] == 2)
    results.loc[bad, "test_auroc"] = 0.0  # an unusable cell's score, however wild, is not read
    assert _row(report.fraction_table(results), "1 %") == before


def test_a_missing_arm_prints_a_dash():
    results = _results(np.random.default_rng(2))
    cells = _row(report.fraction_table(results[results["arm"] != "random-features"]), "1 %")
    assert cells[ARMS.index("random-features") + 1] == "-"
    assert cells[len(ARMS) + 1] == "-"  # frozen - random-features has no control
    assert cells[len(ARMS) + 2] != "-"


def test_the_script_copies_the_reports_and_names_the_tasks(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    run, out = tmp_path / "run", tmp_path / "out"
    (run / "eval").mkdir(parents=True)
    _results(np.random.default_rng(3)).to_csv(run / "eval" / "results.csv", index=False)
    (run / "eval" / "summary.md").write_text("# summary\n")
    assert report.main([str(run), str(out)]) == 0
    assert (out / "results.csv").is_file() and (out / "summary.md").read_text() == "# summary\n"
    tables = (out / "tables.md").read_text()
    assert "mean over the tasks (MI, NORM, AFIB)" in tables
    assert "| 100 % |" in tables and tables in capsys.readouterr().out


# ---- bench/pretraining_seeds.py: frozen - random features per pretraining seed -----------------------------------


def _seed_runs(tmp_path: Path, rng: np.random.Generator) -> tuple[dict[int, Path], dict[int, pd.DataFrame]]:
    """Two evaluations of encoders of pretraining seeds 1 and 2: the same random-features cells, other frozen ones."""
    base = _results(rng)
    runs, tables = {}, {}
    for p in (1, 2):
        t = base.copy()
        frozen = t["arm"] == "frozen"
        t.loc[frozen, "test_auroc"] = rng.uniform(0.5, 0.9, int(frozen.sum()))
        (tmp_path / f"p{p}").mkdir()
        t.to_csv(tmp_path / f"p{p}" / "results.csv", index=False)
        runs[p], tables[p] = tmp_path / f"p{p}", t
    return runs, tables


def test_pretraining_seed_table_matches_a_by_hand_computation(tmp_path: Path):
    runs, tables = _seed_runs(tmp_path, np.random.default_rng(1))
    text = pretraining_seeds.seed_table(pretraining_seeds.load_runs(runs))
    for p, t in tables.items():
        for fraction in (1.0, 100.0):
            line = next(x for x in text.splitlines() if x.startswith(f"| {p} | {fraction:g} % |"))
            block = t[(t["fraction"] == fraction) & t["usable"]]
            by = {arm: block[block["arm"] == arm].groupby("seed")["test_auroc"].mean()  # usable tasks, per seed
                  for arm in ("frozen", "random-features")}
            m, lo, hi = seed_interval(by["frozen"] - by["random-features"])  # paired by eval seed
            assert line.rstrip(" |").endswith(f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}]"), line
    assert text.count("| AFIB, MI, NORM |") == 4  # the tasks judged, named without their family


def test_pretraining_seeds_refuses_runs_evaluated_otherwise(tmp_path: Path):
    runs, tables = _seed_runs(tmp_path, np.random.default_rng(2))
    t = tables[2]
    t.loc[(t["arm"] == "random-features").idxmax(), "test_auroc"] += 0.01  # another evaluation of the control
    t.to_csv(runs[2] / "results.csv", index=False)
    with pytest.raises(SystemExit, match="random-features cells differ from those of pretraining seed 1"):
        pretraining_seeds.load_runs(runs)
    t[t["arm"] != "frozen"].to_csv(runs[2] / "results.csv", index=False)
    with pytest.raises(SystemExit, match=r"no \['frozen'\] cells"):
        pretraining_seeds.load_runs(runs)


def test_pretraining_seeds_script_writes_its_tables(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    runs, _ = _seed_runs(tmp_path, np.random.default_rng(3))
    assert pretraining_seeds.main([f"{p}={f}" for p, f in runs.items()] + ["--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "pretraining_seeds.md").read_text()
    assert "| task | labels | seed 1 | seed 2 |" in text and "| AFIB | 100 % |" in text
    assert text.strip() in capsys.readouterr().out
