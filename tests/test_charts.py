"""The chart helpers of canopy.charts: the data they prepare (checked against a direct
computation) and the charts they build (tooltips, NaN handling, one-line errors)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from analysis_data import study_table as _study
from canopy import charts
from canopy.entropy import position_profile, prompt_metrics
from canopy.pooling import length_summary, paired_bootstrap, pool, pooled_bootstrap
from canopy.simulation import simulate_panel, simulation_study
from canopy.stats import RegressionResult, interaction_regression



def test_rate_length_data_centres_within_prompts(rollouts):
    from canopy import charts as C

    texts = {("alpha", "p0"): "Write   a\nstory about a very long topic indeed"}
    raw = C.rate_length_data(rollouts, prompt_text=texts, snippet=10)
    np.testing.assert_allclose(raw["entropy_rate"],
                               rollouts["summed_entropy"] / rollouts["length"])
    first = raw[(raw["task"] == "alpha") & (raw["prompt_id"] == "p0")]["prompt"].iloc[0]
    assert first == "Write a st…"
    cen = C.rate_length_data(rollouts, centre=True)
    for (model, task, pid), grp in rollouts.groupby(["model", "task", "prompt_id"]):
        sel = (cen["model"] == model) & (cen["task"] == task) & (cen["prompt_id"] == pid)
        n = grp["length"].to_numpy(float)
        np.testing.assert_allclose(cen.loc[sel, "length"], n - n.mean(), atol=1e-12)
        assert abs(cen.loc[sel, "entropy_rate"].sum()) < 1e-9


def test_chapter_charts_build_with_tooltips(rollouts):
    from canopy import charts as C

    prompts = prompt_metrics(rollouts)
    pooled = pool(prompts)
    prof = position_profile(rollouts)
    boot = paired_bootstrap(prompts, n_boot=20)
    built = [
        C.rollout_length_chart(rollouts), C.truncation_chart(length_summary(rollouts)),
        C.decomposition_share_chart(pooled), C.covariance_split_chart(pooled),
        C.bootstrap_delta_chart(boot, ["canopy_entropy", "gen_ppl"]),
        C.interval_chart(pooled_bootstrap(prompts, ["length_rate_pearson"], n_boot=20)),
        C.rate_length_scatter(C.rate_length_data(rollouts)),
        C.position_chart(prof, min_active=3), C.stop_probability_chart(prof),
    ]
    for chart in built:
        text = str(chart.to_dict())
        assert "tooltip" in text
    with pytest.raises(ValueError, match="no positions"):
        C.position_chart(prof, task="nope")
    with pytest.raises(ValueError, match="missing column"):
        C.truncation_chart(pooled.drop(columns="truncation_rate"))


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


def test_finetune_loss_data_token_weighted_running_mean(finetune_report):
    d = charts.finetune_loss_data(finetune_report, window=2)
    assert list(d["step"]) == [1, 2, 3]                     # sorted by step
    # step 1: 3.0; step 2: (3·100 + 2·300)/400; step 3 (window 2): (2·300 + 1·100)/400
    assert d["smoothed"].tolist() == pytest.approx([3.0, 900 / 400, 700 / 400])
    whole = charts.finetune_loss_data(finetune_report, window=10)
    assert whole["smoothed"].iloc[-1] == pytest.approx((300 + 600 + 100) / 500)
    with pytest.raises(ValueError, match="window"):
        charts.finetune_loss_data(finetune_report, window=0)
    with pytest.raises(ValueError, match="read_report"):
        charts.finetune_loss_data({"no": "loss"})


def test_finetune_charts(finetune_report):
    rep = finetune_report
    spec = charts.loss_curve_chart(charts.finetune_loss_data(rep),
                                   rep["heldout_response_loss"]).to_dict()
    assert len(spec["layer"]) == 3 and "tooltip" in json.dumps(spec)
    assert "tooltip" in json.dumps(charts.heldout_loss_chart(rep).to_dict())


def test_charts_of_a_large_store_carry_at_most_max_rows():
    """A store at the paper's scale: the page gets at most MAX_ROWS rows per chart, the
    title says so, and the length histogram still counts every rollout."""
    from canopy.charts.style import MAX_ROWS, thin

    rng = np.random.default_rng(0)
    n = 3 * MAX_ROWS
    table = pd.DataFrame({"model": np.repeat(["a", "b"], n // 2 + 1)[:n], "task": "t",
                          "prompt_id": "p", "rollout_id": np.arange(n),
                          "length": rng.integers(1, 4000, n),
                          "truncated": rng.random(n) < 0.1})
    table["summed_entropy"] = table["length"] * 0.5
    table["repetition"] = rng.random(n)
    shown, note = thin(table)
    assert len(shown) == MAX_ROWS and f"of {n:,} shown" in note
    assert shown["rollout_id"].iloc[0] == 0 and shown["rollout_id"].iloc[-1] == n - 1
    assert thin(table.head(10))[1] == "" and len(thin(table.head(10))[0]) == 10
    spec = charts.rollout_length_chart(table).to_dict()
    rows = spec["datasets"][next(iter(spec["datasets"]))]
    assert len(rows) <= MAX_ROWS and "grouped by" in json.dumps(spec["title"])
    assert sum(r["rollouts"] for r in rows) == n
    assert sum(r["truncated"] for r in rows) == int(table["truncated"].sum())
    spec = charts.repetition_chart(table).to_dict()
    assert len(spec["datasets"][next(iter(spec["datasets"]))]) == MAX_ROWS
