"""Issue 22: the PTB-XL recipe's pieces at toy size on the shipped ptbxl-mini slice: the validation ablation (each
variant pretrained and probed on fold 9 against random features), the data-size curve, the chosen variant, and no
code path that reads a fold-10 (test) record before the final evaluation."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from ecgfast.data.store import ECGStore
from ecgfast.eval import recipes
from ecgfast.eval.ablation import Variant, ablation_markdown, best_variant, seed_spread, summarize_variant
from ecgfast.eval.cli import main


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ECGFAST_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _toy(recipe: recipes.Recipe) -> recipes.Recipe:
    """The recipe at toy size: a few pretraining steps, two variants, two tasks, two seeds."""
    return dataclasses.replace(
        recipe, pretrain={**recipe.pretrain, "max_steps": 3, "batch_size": 16, "monitor_ecgs": 64},
        variants=tuple(v for v in recipe.variants if v.name in ("recipe", "no-vcg")), tasks=recipe.tasks[:2],
        curve_shares=(0.5, 1.0),
        ablation_evaluate={**recipe.ablation_evaluate, "seeds": 2, "fractions": (100.0,), "n_boot": 50,
                           "eval_batch_size": 256})


def test_the_ablation_and_curve_run_on_ptbxl_mini_and_never_read_a_test_record(shared_ecg, tmp_path, monkeypatch):
    source = shared_ecg / "ptbxl-mini"
    monkeypatch.setitem(recipes.RECIPES, "ptbxl", _toy(recipes.RECIPES["ptbxl"]))
    read_rows: dict[str, list[np.ndarray]] = {}
    real_read = ECGStore.read

    def spy(self, indices):
        read_rows.setdefault(self.path.resolve().name, []).append(np.asarray(indices, dtype=np.int64).reshape(-1))
        return real_read(self, indices)

    monkeypatch.setattr(ECGStore, "read", spy)
    out = tmp_path / "mini"
    assert main(["--recipe", "ptbxl", "--ablation", "--source", str(source), "--out", str(out),
                 "--extra-source", str(shared_ecg / "ptbxl-subset"), "--no-progress"]) == 0
    assert set(read_rows) == {"store", "zstore", "zstore-extra"}
    for name, rows in read_rows.items():
        store = ECGStore(out / name)
        seen, test_rows = set(np.concatenate(rows).tolist()), set(store.split_indices("test").tolist())
        assert seen and not (seen & test_rows), f"{name}: {len(seen & test_rows)} test records were read"
        assert seen & set(store.split_indices("val").tolist())  # the probe and the monitor read validation records
        assert len(test_rows) > 200  # fold 10 is there, unread
    assert ECGStore(out / "store").fs == 100.0

    table = pd.read_csv(out / "ablation.csv")
    assert list(table["variant"]) == ["recipe", "no-vcg"]
    assert table[["val_auroc", "random_features_auroc", "gain"]].notna().all().all()
    assert (table["n_seeds"] == 2).all() and (table["n_tasks"] == 2).all() and (table["steps"] == 3).all()
    chosen = json.loads((out / "chosen.json").read_text())
    assert chosen["chosen"] == best_variant(table) and "Best on validation" in (out / "ablation.md").read_text()
    curve = pd.read_csv(out / "curve.csv")
    assert curve["pretrain_ecgs"].is_monotonic_increasing and curve["pretrain_ecgs"].iloc[-1] > 1000
    assert (out / "curve.png").stat().st_size > 0
    # the z-scored point: the same settings without VCG, on z-scored records alone and with the extra corpus
    zcurve = pd.read_csv(out / "zcurve.csv")
    assert list(zcurve["variant"]) == ["z-source", "z-source-extra"]
    assert zcurve["pretrain_ecgs"].iloc[1] > zcurve["pretrain_ecgs"].iloc[0] + 1000  # the subset's training split
    assert ECGStore(out / "zstore-extra").units == "z" and zcurve["val_auroc"].notna().all()
    # the test run pretrains the chosen variant: its finished encoder from the ablation, nothing trained again
    monkeypatch.setitem(recipes.RECIPES, "ptbxl", dataclasses.replace(recipes.RECIPES["ptbxl"],
                                                                      chosen=chosen["chosen"]))
    cfg = recipes.run_recipe("ptbxl", str(source), out, progress=False)
    assert cfg.checkpoint == str(out / "ablation" / chosen["chosen"] / "pretrain") and not (out / "pretrain").exists()
    assert cfg.score_split == "test" and cfg.arms == ("random", "random-features", "frozen", "finetuned")
    # a cell of the ablation says what it scored: the val split, never a test result
    cell = json.loads(next((out / "ablation" / "recipe" / "val" / "cells").glob("*.json")).read_text())
    assert cell["scored_on"] == "val" and cell["settings"]["score_split"] == "val"
    assert "not test results" in (out / "ablation" / "recipe" / "val" / "summary.md").read_text()


def test_the_variant_summary_pairs_seeds_and_averages_tasks():
    rows = []
    for seed in range(3):
        for task, (frozen, rf) in {"a": (0.8 + 0.01 * seed, 0.7), "b": (0.9, 0.6 + 0.01 * seed)}.items():
            rows += [{"task": task, "arm": "frozen", "fraction": 100.0, "seed": seed, "test_auroc": frozen},
                     {"task": task, "arm": "random-features", "fraction": 100.0, "seed": seed, "test_auroc": rf}]
    (row,) = summarize_variant(pd.DataFrame(rows))
    assert row["val_auroc"] == pytest.approx(np.mean([(0.8 + 0.01 * s + 0.9) / 2 for s in range(3)]))
    assert row["gain"] == pytest.approx(np.mean([(0.8 + 0.01 * s + 0.9) / 2 - (0.7 + 0.6 + 0.01 * s) / 2
                                                 for s in range(3)]))
    assert row["gain_lo"] == pytest.approx(row["gain"]) and row["n_seeds"] == 3  # the paired gain has no spread


def test_the_recipe_pretrains_the_chosen_variant():
    recipe = dataclasses.replace(recipes.RECIPES["ptbxl"], chosen="k1")
    assert recipe.final_pretrain()["k_per_patient"] == 1
    assert dataclasses.replace(recipe, chosen=None).final_pretrain() == recipes.RECIPES["ptbxl"].pretrain
    assert Variant("x", "y").pretrain == {}


def test_a_replicate_is_never_chosen_and_gives_the_seed_spread():
    # the recipe's replicate (another pretraining seed) scores best, yet the best change is chosen; the spread
    # is the largest |recipe - replicate| per fraction
    table = pd.DataFrame([
        {"variant": "recipe", "replicate": False, "fraction": 10.0, "val_auroc": 0.80},
        {"variant": "recipe", "replicate": False, "fraction": 100.0, "val_auroc": 0.86},
        {"variant": "recipe-seed-43", "replicate": True, "fraction": 10.0, "val_auroc": 0.95},
        {"variant": "recipe-seed-43", "replicate": True, "fraction": 100.0, "val_auroc": 0.85},
        {"variant": "k1", "replicate": False, "fraction": 10.0, "val_auroc": 0.81},
        {"variant": "k1", "replicate": False, "fraction": 100.0, "val_auroc": 0.87},
    ])
    assert best_variant(table) == "k1"
    assert seed_spread(table) == pytest.approx({10.0: 0.15, 100.0: 0.01})
    assert seed_spread(table.drop(columns="replicate")) == {}
    text = ablation_markdown(table.assign(change="c", val_lo=np.nan, val_hi=np.nan, gain=0.0, gain_lo=np.nan,
                                          gain_hi=np.nan, monitor_probe_end=0.8, monitor_probe_start=0.7,
                                          rankme_end=10.0, steps=5), "t")
    assert "**k1**" in text and "0.150 at 10 %" in text
    # the ptbxl recipe carries one replicate, and it is the base recipe with only the seed changed
    (rep,) = [v for v in recipes.RECIPES["ptbxl"].variants if v.replicate]
    assert rep.pretrain == {"seed": 43} and recipes.RECIPES["ptbxl"].pretrain["seed"] != 43
