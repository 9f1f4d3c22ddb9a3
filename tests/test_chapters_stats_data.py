"""Tests of the package functions behind chapters 5–7 (semantic diversity, regressions,
fine-tune appendix): the simulation summary in canopy.stats and the data preparation and
chart helpers of canopy.charts' "chapters 5–7" section.

Expected values are computed independently here (numpy by hand), never taken from an
earlier run of the code.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from canopy import charts
from canopy.stats import (RegressionResult, interaction_regression, simulate_panel,
                          simulation_study, simulation_summary)

TRUTH = {"beta": 0.1, "eta": 0.2, "ratio": 3.0}


def _study(beta, eta, ratio, kinds=None, converged=None, width=0.05):
    beta, eta, ratio = (np.asarray(v, dtype=float) for v in (beta, eta, ratio))
    n = beta.size
    kinds = kinds or ["bounded"] * n
    out = pd.DataFrame({
        "seed": np.arange(n), "converged": converged if converged is not None else [True] * n,
        "beta": beta, "beta_low": beta - width, "beta_high": beta + width,
        "eta": eta, "eta_low": eta - width, "eta_high": eta + width,
        "ratio": ratio, "ratio_low": ratio - 1, "ratio_high": ratio + 1, "ratio_kind": kinds,
    })
    for p in ("beta", "eta", "ratio"):
        out[f"covers_{p}"] = (out[f"{p}_low"] <= TRUTH[p]) & (TRUTH[p] <= out[f"{p}_high"])
    out.loc[out["ratio_kind"] == "whole line", "covers_ratio"] = True
    out.attrs["truth"] = dict(TRUTH)
    return out


# ----------------------------------------------------------------- simulation summary


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


# ------------------------------------------------------------ simulation intervals


def test_simulation_intervals_sorted_and_nan_dropped():
    study = _study([0.3, 0.1, np.nan, 0.2], [0.2, 0.1, 0.3, 0.25], [1, 2, 3, 4])
    d = charts.simulation_intervals(study)
    beta = d[d["parameter"] == "beta"]
    assert list(beta["seed"]) == [1, 3, 0]          # ascending estimate, NaN seed 2 dropped
    assert list(beta["rank"]) == [0, 1, 2]
    assert list(beta["covers"]) == [True, False, False]
    assert (beta["truth"] == 0.1).all() and (beta["symbol"] == "β").all()
    assert np.allclose(beta["ci_high"] - beta["ci_low"], 0.1)
    assert len(d[d["parameter"] == "eta"]) == 4


def test_simulation_intervals_errors():
    study = _study([0.1], [0.2], [3])
    with pytest.raises(ValueError, match="unknown parameter"):
        charts.simulation_intervals(study, parameters=("gamma",))
    with pytest.raises(ValueError, match="missing column"):
        charts.simulation_intervals(study.drop(columns="eta_low"))


def test_simulation_chart_has_tooltips_and_truth():
    study = _study([0.1, 0.12], [0.2, 0.3], [3, 4])
    spec = charts.simulation_chart(study).to_dict()
    text = json.dumps(spec)
    assert "tooltip" in text and len(spec["hconcat"]) == 2
    assert '"truth": 0.2' in text or '"truth":0.2' in text


# ----------------------------------------------------------------- coefficient data


def _table(rows):
    t = pd.DataFrame(rows, columns=["term", "symbol", "estimate", "se", "z", "p", "ci_low",
                                    "ci_high"]).set_index("term")
    return t


def test_coefficient_data_terms_order_and_sources():
    a = _table([("Intercept", "α", 1, .1, 10, 0, .8, 1.2),
                ("mean_entropy_rate", "β (R̄)", .2, .05, 4, 0, .1, .3),
                ("mean_length", "γ (N̄)", -.001, .0005, -2, .04, -.002, 0)])
    fit = RegressionResult(name="x", formula="f", method="REML", table=a, n_obs=10,
                           n_groups=5, fitted=True, converged=True)
    beta_table = _table([("R_sc", "β (R_sc)", .5, .2, 2.5, .01, .1, .9),
                         ("R_sc", "", 9, 1, 9, 0, 7, 11)])
    beta_table.insert(0, "part", ["mean", "dispersion"])
    ratio_row = _table([("slope_ratio", "(β+η)/β", 3, np.nan, np.nan, np.nan, 1, 5)])
    d = charts.coefficient_data({"lmm": fit, "beta": beta_table,
                                 "with ratio": pd.concat([a, ratio_row])})
    assert "Intercept" not in set(d["term"]) and "slope_ratio" not in set(d["term"])
    assert (d.loc[d["fit"] == "beta", "estimate"] == 0.5).all()   # dispersion part dropped
    assert list(d.columns) == ["fit", "term", "symbol", "estimate", "se", "ci_low", "ci_high", "p"]
    kept = charts.coefficient_data({"lmm": fit, "other": a}, terms=["mean_length", "mean_entropy_rate"])
    assert list(kept["term"]) == ["mean_length", "mean_length", "mean_entropy_rate",
                                  "mean_entropy_rate"]
    assert list(kept["fit"]) == ["lmm", "other", "lmm", "other"]


def test_coefficient_data_skips_unfitted_and_rejects_bad_input():
    empty = RegressionResult(name="x", formula="", method="REML",
                             table=_table([]), n_obs=0, n_groups=0, fitted=False,
                             converged=False)
    assert charts.coefficient_data({"none": empty}).empty
    with pytest.raises(ValueError, match="non-empty dict"):
        charts.coefficient_data({})
    with pytest.raises(ValueError, match="no coefficient table"):
        charts.coefficient_data({"bad": 3})


def test_coefficient_chart_from_real_fit():
    res = interaction_regression(simulate_panel(n_prompts=20, seed=1))
    d = charts.coefficient_data({"interaction": res})
    assert set(d["term"]) >= {"mean_entropy_rate", "mean_entropy_rate:fine_tuned",
                              "fine_tuned", "mean_length"}
    row = d.set_index("term").loc["mean_entropy_rate"]
    assert row["estimate"] == pytest.approx(res.table.loc["mean_entropy_rate", "estimate"])
    assert "tooltip" in json.dumps(charts.coefficient_chart(d).to_dict())


# ---------------------------------------------------------------- semantic helpers


def _pooled():
    return pd.DataFrame({
        "model": ["a", "a", "b", "b"], "family": ["f", "f", "g", "g"],
        "variant": ["base", "base", "fine-tuned", "fine-tuned"],
        "task": ["math", "all", "math", "all"], "n_prompts": [2, 2, 2, 2],
        "n_rollouts": [8, 8, 8, 8], "diversity": [.4, .5, .3, np.nan], "vendi": [2., 3, 1.5, 2],
        "diversity_short": [.1, .2, .3, .4], "diversity_medium": [.5, np.nan, .6, .7],
        "diversity_long": [.8, .9, 1., 1.1],
        "length_diversity_pearson": [.1, -.2, np.nan, .3],
        "length_diversity_spearman": [.1, -.2, .5, .3],
        "length_diversity_kendall": [.1, -.2, .5, .3],
    })


def test_bucket_diversity_data_long_format():
    d = charts.bucket_diversity_data(_pooled(), task="all")
    assert list(d["model"]) == ["a"] * 3 + ["b"] * 3
    assert list(d["bucket"]) == ["short", "medium", "long"] * 2
    assert d["diversity"].iloc[0] == pytest.approx(.2) and np.isnan(d["diversity"].iloc[1])
    assert d["diversity"].iloc[5] == pytest.approx(1.1)
    with pytest.raises(ValueError, match="no rows for task"):
        charts.bucket_diversity_data(_pooled(), task="coding")


def test_semantic_charts_drop_nan_and_carry_tooltips():
    pooled = _pooled()
    spec = charts.semantic_bar_chart(pooled, "diversity").to_dict()
    values = next(iter(spec["datasets"].values()))
    assert len(values) == 3                               # the NaN row has no bar
    assert "tooltip" in spec["encoding"]
    spec = charts.length_diversity_chart(pooled).to_dict()
    assert sum(len(v) for v in spec["datasets"].values()) == 3 + 1  # 3 finite + the zero rule
    for chart in (charts.bucket_diversity_chart(pooled),
                  charts.length_diversity_chart(pooled, "kendall")):
        assert "tooltip" in json.dumps(chart.to_dict())
    with pytest.raises(ValueError, match="measure"):
        charts.length_diversity_chart(pooled, "cosine")
    with pytest.raises(ValueError, match="missing column"):
        charts.semantic_bar_chart(pooled, "semantic_entropy")


def test_panel_charts():
    panel = simulate_panel(n_prompts=6, seed=2)
    for chart in (charts.rate_diversity_chart(panel, color="variant"),
                  charts.rate_diversity_chart(panel, fit_lines=False),
                  charts.prompt_strip_chart(panel, "diversity")):
        text = json.dumps(chart.to_dict())
        assert "tooltip" in text
    with pytest.raises(ValueError, match="missing column"):
        charts.rate_diversity_chart(panel.drop(columns="mean_length"))


# ------------------------------------------------------------------ fine-tune report


def _report():
    return {
        "config": {"name": "x-sft", "lora_r": 16, "lr": 5e-4},
        "n_train_examples": 3, "n_heldout_examples": 2, "stop_ids": [1, 106],
        "train_loss": [{"step": s, "epoch": 0, "loss": l, "tokens": t, "lr": 1e-3}
                       for s, l, t in [(2, 2.0, 300), (1, 3.0, 100), (3, 1.0, 100)]],
        "heldout_response_loss": {"base": 3.0, "fine_tuned": 2.0},
        "stop_fraction": {"max_new_tokens": 64, "n_prompts": 8, "base": 0.25, "fine_tuned": 0.75},
        "seconds": {"teacher": 1.5, "train": 10.0, "total": 12.0},
    }


def test_finetune_loss_data_token_weighted_running_mean():
    d = charts.finetune_loss_data(_report(), window=2)
    assert list(d["step"]) == [1, 2, 3]                     # sorted by step
    # step 1: 3.0; step 2: (3·100 + 2·300)/400; step 3 (window 2): (2·300 + 1·100)/400
    assert d["smoothed"].tolist() == pytest.approx([3.0, 900 / 400, 700 / 400])
    whole = charts.finetune_loss_data(_report(), window=10)
    assert whole["smoothed"].iloc[-1] == pytest.approx((300 + 600 + 100) / 500)
    with pytest.raises(ValueError, match="window"):
        charts.finetune_loss_data(_report(), window=0)
    with pytest.raises(ValueError, match="read_report"):
        charts.finetune_loss_data({"no": "loss"})


def test_finetune_summary_and_config():
    s = charts.finetune_summary(_report())
    assert s.iloc[0]["change"] == pytest.approx(-1.0)
    assert s.iloc[1]["base"] == pytest.approx(np.exp(3.0))
    assert s.iloc[2]["fine_tuned"] == pytest.approx(0.75)
    assert "64 tokens" in s.index[2]
    c = charts.finetune_config_table(_report())
    assert c.loc["lora_r", "value"] == "16"
    assert c.loc["seconds: train", "value"] == "10.0"
    assert c.loc["stop_ids", "value"] == "[1, 106]"


def test_finetune_charts():
    rep = _report()
    spec = charts.loss_curve_chart(charts.finetune_loss_data(rep),
                                   rep["heldout_response_loss"]).to_dict()
    assert len(spec["layer"]) == 3 and "tooltip" in json.dumps(spec)
    assert "tooltip" in json.dumps(charts.heldout_loss_chart(rep).to_dict())
