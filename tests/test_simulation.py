"""canopy.simulation: simulated panels, the coverage study, its summary, and the
scenarios and verdicts of chapter 6. Expected values are computed here by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis_data import study_table as _study
from canopy.simulation import (coverage_verdict, run_scenarios, scenarios, simulate_panel,
                               simulation_study, simulation_summary)
from canopy.stats import interaction_regression

BETA, ETA = "mean_entropy_rate", "mean_entropy_rate:fine_tuned"


def _covers(row, value):
    return row["ci_low"] <= value <= row["ci_high"]


def test_simulation_summary_by_hand():
    beta = [0.08, 0.1, 0.13, 0.2]          # the last interval misses 0.1
    eta = [0.2, 0.21, np.nan, 0.19]        # one failed fit: left out of every eta statistic
    ratio = [3.5, 2.0, 8.0, 2.9]
    study = _study(beta, eta, ratio, kinds=["bounded", "bounded", "whole line", "two rays"],
                   converged=[True, False, True, True])
    s = simulation_summary(study)
    b = s.loc["beta"]
    e = np.array(beta)
    assert b["n_fits"] == 4 and b["n_converged"] == 3
    assert b["mean"] == pytest.approx(e.mean())
    assert b["bias"] == pytest.approx(e.mean() - 0.1)
    assert b["rmse"] == pytest.approx(np.sqrt(np.mean((e - 0.1) ** 2)))
    assert b["sd"] == pytest.approx(e.std(ddof=1))
    assert b["coverage"] == pytest.approx(0.75)
    assert b["coverage_se"] == pytest.approx(np.sqrt(0.75 * 0.25 / 4))
    assert b["bounded_share"] == 1.0
    h = s.loc["eta"]
    assert h["n_fits"] == 3 and h["n_converged"] == 2  # seed 2 (converged) has no eta
    assert h["median"] == pytest.approx(0.2)
    assert h["coverage"] == pytest.approx(1.0)
    r = s.loc["ratio"]
    assert r["bounded_share"] == pytest.approx(0.5)
    assert r["median_abs_error"] == pytest.approx(np.median(np.abs(np.array(ratio) - 3)))
    # covers: 3.5±1 yes, 2.0±1 yes (3.0 is the edge), whole line yes, 2.9±1 yes
    assert r["coverage"] == pytest.approx(1.0)
    assert list(s["symbol"]) == ["β", "η", "(β+η)/β"]


def test_simulation_summary_coverage_check():
    # 100 fits, nominal 0.95: two binomial SEs at the nominal rate are 2·sqrt(.95·.05/100) ≈ .0436
    n = 100
    beta = np.full(n, 0.1)
    beta[:7] = 0.2         # 7 misses: coverage 0.93, inside 0.95 ± 0.0436 → nominal
    eta = np.full(n, 0.2)
    eta[:20] = 0.4         # 20 misses: coverage 0.80 → low
    study = _study(beta, eta, np.full(n, 3.0))
    s = simulation_summary(study, level=0.95)
    assert s.loc["beta", "coverage"] == pytest.approx(0.93)
    assert s.loc["beta", "coverage_check"] == "nominal"
    assert s.loc["eta", "coverage_check"] == "low"
    assert simulation_summary(study, level=0.5).loc["ratio", "coverage_check"] == "high"
    with pytest.raises(ValueError, match="level"):
        simulation_summary(study, level=95)


def test_simulation_summary_explicit_truth_overrides_attrs():
    study = _study([0.5, 0.5], [0.2, 0.2], [3, 3])
    s = simulation_summary(study, truth={"beta": 0.5, "eta": 0.2, "ratio": 1.4})
    assert s.loc["beta", "bias"] == pytest.approx(0.0)
    assert s.loc["ratio", "truth"] == pytest.approx(1.4)


def test_simulation_summary_errors():
    study = _study([0.1], [0.2], [3])
    with pytest.raises(ValueError, match="missing column"):
        simulation_summary(study.drop(columns="covers_eta"))
    bare = study.copy()
    bare.attrs = {}
    with pytest.raises(ValueError, match="truth"):
        simulation_summary(bare)
    with pytest.raises(ValueError, match="DataFrame"):
        simulation_summary([1, 2])


def test_simulation_summary_all_nan_parameter():
    study = _study([np.nan, np.nan], [0.2, 0.2], [np.nan, np.nan])
    s = simulation_summary(study)
    assert s.loc["beta", "n_fits"] == 0
    assert np.isnan(s.loc["beta", "mean"]) and np.isnan(s.loc["beta", "coverage"])


def test_simulation_summary_on_real_study_recovers_truth():
    study = simulation_study(n_seeds=6, n_prompts=60)
    s = simulation_summary(study)
    assert s.loc["beta", "truth"] == pytest.approx(study.attrs["truth"]["beta"])
    assert s.loc["beta", "n_fits"] == 6
    # 60 prompts × 2 families: β and η are estimated within a few of their SEs
    assert abs(s.loc["beta", "bias"]) < 0.05 and abs(s.loc["eta", "bias"]) < 0.05


def test_coverage_of_the_95_percent_intervals_over_50_seeds():
    # 50 independent panels: each coverage count is Binomial(50, 0.95) if the intervals are
    # right (sd 3.1 points). The lower bound 0.84 sits 3.5 sd below 0.95 (P ≈ 0.001 of a
    # false alarm) yet fails an interval that really covers < ~85 %, e.g. one whose SE
    # ignores the prompt effect. The truth is fixed across seeds.
    beta, eta, ratio = 0.08, 0.16, 3.0
    hits = np.zeros(3)
    for seed in range(50):
        res = interaction_regression(simulate_panel(n_prompts=20, seed=seed))
        hits += [_covers(res.coef(BETA), beta), _covers(res.coef(ETA), eta),
                 res.ratio.covers(ratio)]
    rates = hits / 50
    assert np.all(rates >= 0.84), rates
    assert np.all(rates <= 1.0)


def test_simulate_panel_structure():
    panel = simulate_panel(n_prompts=10, n_tasks=3, n_families=2, seed=0)
    assert len(panel) == 40
    assert panel.attrs["truth"]["ratio"] == pytest.approx(3.0)
    assert panel["diversity"].between(0, 1).all()
    # length is confounded with rate across prompts
    means = panel.groupby("prompt_uid")[["mean_entropy_rate", "mean_length"]].mean()
    assert np.corrcoef(means.T)[0, 1] > 0
    with pytest.raises(ValueError):
        simulate_panel(n_prompts=0)


def test_simulation_study_table():
    study = simulation_study(n_seeds=4, n_prompts=15)
    assert len(study) == 4 and study["converged"].all()
    for col in ("beta", "beta_low", "beta_high", "eta", "covers_beta", "covers_eta",
                "ratio", "ratio_kind", "covers_ratio"):
        assert col in study.columns
    assert study.attrs["truth"]["ratio"] == pytest.approx(3.0)


def test_coverage_verdicts_in_words():
    assert coverage_verdict("nominal") == "consistent with the nominal level"
    assert "too narrow" in coverage_verdict("low")
    assert "conservative" in coverage_verdict("high")
    assert coverage_verdict("") == "not estimable"
    with pytest.raises(ValueError, match="coverage check must be one of"):
        coverage_verdict("fine")


def test_scenarios_copy_the_matched_part_of_the_panel():
    panel = simulate_panel(n_prompts=12, n_tasks=3, n_families=2, single_variant_families=1)
    got = scenarios(panel, scale_up=4)
    # the matched family fam0 has 12 prompts in 3 tasks; fam1 (base only) is left out
    assert got == {"1: like our panel": {"n_prompts": 12, "n_tasks": 3, "n_families": 1},
                   "2: 4× the prompts, 2 families": {"n_prompts": 48, "n_tasks": 3,
                                                     "n_families": 2}}
    assert list(scenarios(panel, scale_up=0)) == ["1: like our panel"]
    unmatched = simulate_panel(n_prompts=5, n_tasks=1, n_families=1, single_variant_families=1)
    assert scenarios(unmatched, 0)["1: like our panel"] == {"n_prompts": 5, "n_tasks": 1,
                                                           "n_families": 1}
    with pytest.raises(ValueError, match="scale_up"):
        scenarios(panel, scale_up=-1)
    with pytest.raises(ValueError, match="missing column"):
        scenarios(panel.drop(columns="prompt_uid"))


def test_run_scenarios_is_the_study_and_summary_of_each_design():
    designs = {"a": dict(n_prompts=10, n_tasks=1, n_families=1),
               "b": dict(n_prompts=12, n_tasks=2, n_families=1)}
    studies, summaries = run_scenarios(designs, n_seeds=3, level=0.9, first_seed=5)
    assert list(studies) == list(summaries) == ["a", "b"]
    for name, design in designs.items():
        direct = simulation_study(n_seeds=3, level=0.9, first_seed=5, **design)
        pd.testing.assert_frame_equal(studies[name], direct)
        pd.testing.assert_frame_equal(summaries[name], simulation_summary(direct, level=0.9))
