"""Tests of canopy.stats (the Method page, §6).

Simulation sizes are chosen so the whole file runs in well under a minute: panels of 20
prompts × 2 families × 2 variants (80 rows) fit in ~20 ms with MixedLM.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from canopy import stats as st
from canopy.beta import beta_regression
from canopy.simulation import simulate_panel
from canopy.stats import (build_panel, curvature_check, fieller_interval,
                          interaction_regression, main_regression)

BETA, ETA = "mean_entropy_rate", "mean_entropy_rate:fine_tuned"


def _covers(row, value):
    return row["ci_low"] <= value <= row["ci_high"]


def test_interaction_recovers_known_coefficients_at_fixed_seed():
    # Each estimate must lie within 4 of its SEs of the truth (and the ratio within the
    # Fieller set at the same level): a correct fit misses one of these five with
    # probability < 4e-4, so the test does not rest on the seed's luck, while a biased
    # estimator or a wrong SE still fails it (the estimates here are ≤ 1.6 SE off).
    level = 1 - 2 * sps.norm.sf(4)
    panel = simulate_panel(n_prompts=40, seed=7)
    truth = panel.attrs["truth"]
    res = interaction_regression(panel, level=level)
    assert res.fitted and res.converged
    assert res.n_obs == 160 and res.n_groups == 40
    assert _covers(res.coef(BETA), truth["beta"])
    assert _covers(res.coef(ETA), truth["eta"])
    assert _covers(res.coef("fine_tuned"), truth["tau"])
    assert _covers(res.coef("mean_length"), truth["gamma"])
    np.testing.assert_allclose(res.coef(BETA)["ci_high"] - res.coef(BETA)["estimate"],
                               4 * res.coef(BETA)["se"])
    assert res.coef(BETA)["symbol"].startswith("β") and res.coef(ETA)["symbol"].startswith("η")
    assert res.ratio.covers(truth["ratio"])  # two rays here: β is < 4 SE from 0
    assert res.prompt_var > 0
    frame = res.to_frame()
    assert {"estimate", "se", "p", "ci_low", "ci_high", "symbol"} <= set(frame.columns)
    assert "slope_ratio" in frame.index
    html = res._repr_html_()
    assert "η (R̄·FT)" in html and "Fieller" in html


def test_main_regression_controls_for_length():
    panel = simulate_panel(n_prompts=40, seed=3, length_confounding=1.0)
    res = main_regression(panel)
    assert res.fitted and res.method == "REML"
    assert {"mean_entropy_rate", "mean_length", "fine_tuned",
            "C(family)[T.fam1]:fine_tuned", "C(task)[T.task1]"} <= set(res.table.index)
    assert res.coef("mean_length")["ci_high"] < 0  # γ < 0 recovered


def test_lrt_size_and_power_over_100_seeds():
    # Without curvature the LRT (df = 2) should reject at 5 % in roughly 5 % of panels
    # (the ML LRT runs a little above 5 % with 20 prompts). [1, 13] of 100 holds
    # Binomial(100, p) with probability ≥ 0.98 for any true size p in [0.04, 0.07] (0.994
    # at 0.05), so the band does not rest on the seeds' luck; a test of the wrong df or
    # a sign error in the LR statistic still falls outside it. 6 of 100 here.
    size = np.mean([curvature_check(simulate_panel(n_prompts=20, seed=1000 + s)).p_value < 0.05
                    for s in range(100)])
    assert 0.01 <= size <= 0.13, size
    power = np.mean([curvature_check(simulate_panel(n_prompts=20, seed=2000 + s,
                                                    curvature=0.25)).p_value < 0.05
                     for s in range(100)])
    assert power >= 0.90, power  # 100 of 100 here; ≥ 90 with probability 0.989 at p = 0.95


def test_curvature_check_reports_ml_fits_and_shifts():
    res = curvature_check(simulate_panel(n_prompts=30, seed=5))
    assert res.linear.method == "ML" and res.quadratic.method == "ML"
    assert res.df == 2 and 0 <= res.p_value <= 1
    assert res.lr_stat == pytest.approx(2 * (res.quadratic.loglik - res.linear.loglik))
    assert list(res.shifts.index) == ["rate_c", "rate_c:fine_tuned"]
    row = res.shifts.loc["rate_c"]
    assert row["shift_in_se"] == pytest.approx((row["quadratic"] - row["linear"]) / row["linear_se"])
    assert "rate_c_sq:fine_tuned" in res.quadratic.table.index
    assert "LRT" in res._repr_html_()


def test_fieller_matches_its_defining_inequality():
    a, b, va, vb, cab = 0.24, 0.08, 0.0004, 0.0002, 0.0001
    r = fieller_interval(a, b, va, vb, cab)
    assert r.bounded and r.ci_low < a / b < r.ci_high
    z2 = sps.norm.ppf(0.975) ** 2
    for theta in (r.ci_low, r.ci_high):  # endpoints solve the equality
        assert (a - theta * b) ** 2 == pytest.approx(z2 * (va - 2 * theta * cab + theta ** 2 * vb))


def test_fieller_unbounded_when_beta_interval_contains_zero():
    r = fieller_interval(0.2, 0.01, 0.0004, 0.0004, 0.0001)  # b/se(b) = 0.5
    assert not r.bounded and r.kind == "two rays" and "contains 0" in r.note
    assert r.covers(1e6) and r.covers(-1e6) and not r.covers((r.ci_low + r.ci_high) / 2)
    whole = fieller_interval(0.01, 0.01, 0.04, 0.04, 0.0)
    assert whole.kind == "whole line" and whole.covers(123.0)
    # In the regression: a base slope of 0 gives an interval for β containing 0 here,
    # and the ratio is reported unbounded, with a note saying why.
    res = interaction_regression(simulate_panel(n_prompts=20, beta=0.0, eta=0.16, seed=11))
    b = res.coef(BETA)
    assert b["ci_low"] <= 0 <= b["ci_high"]
    assert not res.ratio.bounded
    assert any("contains 0" in n for n in res.notes)
    assert "∞" in res.ratio.interval_text()


def test_one_family_one_task():
    panel = simulate_panel(n_prompts=20, n_families=1, n_tasks=1, seed=2)
    res = interaction_regression(panel)
    assert res.fitted
    assert "one task: no task effects" in res.notes
    assert "one family: no family effects" in res.notes
    assert not any(t.startswith("C(") for t in res.table.index)
    main = main_regression(panel)
    assert "one family: no family effects" in main.notes
    beta = beta_regression(panel)
    assert any("one task" in n for n in beta.notes) and any("one family" in n for n in beta.notes)
    curv = curvature_check(panel)
    assert "one task: no task effects" in curv.notes


def test_family_with_one_variant_enters_main_regression_only():
    panel = simulate_panel(n_prompts=20, n_families=3, single_variant_families=1, seed=2)
    inter = interaction_regression(panel)
    assert inter.excluded_families == ["fam2"] and inter.families == ["fam0", "fam1"]
    assert any("one variant left out" in n and "fam2" in n for n in inter.notes)
    assert inter.n_obs == 80
    main = main_regression(panel)
    assert main.n_obs == 100
    assert any("C(family)[T.fam2]:fine_tuned" in n for n in main.notes)  # aliased, dropped


def test_no_family_with_both_variants_and_too_few_rows():
    base_only = simulate_panel(n_prompts=10, seed=1, single_variant_families=2)
    res = interaction_regression(base_only)
    assert not res.fitted and res.table.empty and res.ratio is None
    assert any("no family has both variants" in n for n in res.notes)
    main = main_regression(base_only)
    assert "one variant only: no variant effects" in main.notes
    tiny = simulate_panel(n_prompts=2, n_families=1, n_tasks=1, seed=1)
    small = interaction_regression(tiny)
    assert not small.fitted and any("too few rows" in n for n in small.notes)
    assert "not fitted" in str(small)
    assert not beta_regression(tiny).converged
    one_row_each = main_regression(base_only[base_only["family"] == "fam0"])
    assert one_row_each.method == "OLS"
    assert any("random intercept is not identifiable" in n for n in one_row_each.notes)


def test_nonconvergence_is_reported(monkeypatch):
    from statsmodels.regression.mixed_linear_model import MixedLM
    from statsmodels.tools.sm_exceptions import ConvergenceWarning

    original = MixedLM.fit

    def failing_fit(self, *args, **kwargs):
        res = original(self, *args, **kwargs)
        warnings.warn("Gradient optimization failed to converge", ConvergenceWarning)
        res.converged = False
        return res

    monkeypatch.setattr(MixedLM, "fit", failing_fit)
    res = interaction_regression(simulate_panel(n_prompts=20, seed=1))
    assert res.fitted and not res.converged
    assert any("failed to converge" in n for n in res.notes)
    assert "DID NOT CONVERGE" in res._repr_html_()
    assert "did not converge" in res.ratio.note


def test_missing_columns_and_bad_values_raise_one_line_errors():
    panel = simulate_panel(n_prompts=5)
    with pytest.raises(ValueError, match="missing column.*mean_length") as info:
        interaction_regression(panel.drop(columns="mean_length"))
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="fine_tuned must be 0/1"):
        main_regression(panel.assign(fine_tuned=2))
    with pytest.raises(ValueError, match="diversity must be numeric"):
        main_regression(panel.assign(diversity="high"))
    with pytest.raises(ValueError, match="level"):
        interaction_regression(panel, level=95)
    nan_panel = panel.copy()
    nan_panel.loc[0, "diversity"] = np.nan
    assert any("NaN diversity" in n for n in main_regression(nan_panel).notes)


def test_build_panel_from_rollouts_and_embeddings():
    rng = np.random.default_rng(0)
    rows = []
    for fam in ("a", "b"):
        for variant in ("base", "fine-tuned"):
            for task in ("t1", "t2"):
                for p in range(3):
                    for i in range(4):
                        rows.append({"model": f"{fam}-{variant}", "family": fam,
                                     "variant": variant, "task": task, "prompt_id": p,
                                     "rollout_id": i, "length": int(rng.integers(2, 30)),
                                     "summed_entropy": float(rng.uniform(1, 20)),
                                     "surprisal": float(rng.uniform(1, 20)), "truncated": False,
                                     "text": f"t{i}"})
    rollouts = pd.DataFrame(rows)
    emb = rng.normal(size=(len(rollouts), 6))
    panel = build_panel(rollouts, emb)
    assert len(panel) == 2 * 2 * 2 * 3
    assert not panel.duplicated(["task", "prompt_id", "family", "variant"]).any()
    for col in (*st.PANEL_COLUMNS, "canopy_entropy", "vendi", "semantic_entropy",
                "length_rate_pearson", "reason"):
        assert col in panel.columns
    assert set(panel["prompt_uid"]) == {f"{t}/{p}" for t in ("t1", "t2") for p in range(3)}
    assert (panel["fine_tuned"] == (panel["variant"] == "fine-tuned")).all()
    from canopy.semantic import semantic_metrics
    sem = semantic_metrics(rollouts, emb)
    assert np.allclose(panel["diversity"].to_numpy(), sem["diversity"].to_numpy())
    assert build_panel(rollouts, sem)["diversity"].equals(panel["diversity"])
    res = main_regression(panel)
    assert res.fitted
    two_models = rollouts.copy()
    two_models.loc[two_models["model"] == "a-base", "model"] = "a-base-2"
    two_models = pd.concat([rollouts, two_models[two_models["model"] == "a-base-2"]])
    with pytest.raises(ValueError, match="several base models"):
        build_panel(two_models, rng.normal(size=(len(two_models), 6)))


def _boundary_data():
    """No prompt effect at all: the prompt variance's optimum is its boundary 0."""
    rng = np.random.default_rng(1)
    n = 32
    data = pd.DataFrame({"prompt_uid": np.repeat(np.arange(n), 3),
                         "a": rng.normal(size=3 * n), "b": rng.uniform(20, 128, 3 * n)})
    data["diversity"] = 0.2 + 0.27 * data["a"] - 0.001 * data["b"] + \
        rng.normal(scale=0.1, size=3 * n)
    return data


def _assert_equals_ols(res, data):
    # With a zero prompt variance the fixed effects are the OLS ones (independent fit).
    import statsmodels.api as sm

    x = sm.add_constant(data[["a", "b"]]).rename(columns={"const": "Intercept"})
    ols = sm.OLS(data["diversity"], x).fit()
    np.testing.assert_allclose(res.table["estimate"].loc[["Intercept", "a", "b"]],
                               ols.params[["Intercept", "a", "b"]], rtol=1e-6, atol=1e-8)
    assert res.prompt_var <= 1e-6 * res.residual_var


def _first_fit_fails(monkeypatch, how):
    """Make MixedLM's first (gradient) fit fail as statsmodels reports it: ``"not
    converged"`` (every gradient method failed) or ``"converged after retry"`` (BFGS
    failed, and L-BFGS then reported convergence — the path OpenBLAS's SkylakeX and
    Prescott kernels take on this data). Later fits (Powell) run unchanged."""
    from statsmodels.regression.mixed_linear_model import MixedLM
    from statsmodels.tools.sm_exceptions import ConvergenceWarning

    original = MixedLM.fit
    calls = []

    def fit(self, *args, **kwargs):
        calls.append(kwargs.get("method"))
        res = original(self, *args, **kwargs)
        if len(calls) == 1:
            warnings.warn("Maximum Likelihood optimization failed to converge. Check "
                          "mle_retvals", ConvergenceWarning)
            if how == "not converged":
                warnings.warn("Gradient optimization failed, |grad| = 1.257507",
                              ConvergenceWarning)
                res.converged = False
            else:
                warnings.warn("Retrying MixedLM optimization with lbfgs", ConvergenceWarning)
                res.converged = True
        return res

    monkeypatch.setattr(MixedLM, "fit", fit)
    return calls


@pytest.mark.parametrize("how", ["not converged", "converged after retry"])
def test_mixed_fit_at_the_variance_boundary_converges_and_equals_ols(monkeypatch, how):
    # The first fit is forced to fail (whether statsmodels' gradient optimisers fail on
    # this data depends on the BLAS kernel): the retry with Powell's method must run,
    # converge, replace the failed attempt's warnings, and give the OLS fixed effects.
    data = _boundary_data()
    calls = _first_fit_fails(monkeypatch, how)
    notes: list[str] = []
    res = st._fit_mixed("boundary", "diversity ~ a + b", data, True, notes)
    assert calls == [None, ["powell"]]
    assert res.fitted and res.converged, notes
    assert any("Powell" in n for n in notes) and any("boundary" in n for n in notes)
    assert not any("statsmodels warned" in n or "did not converge: estimates" in n
                   for n in notes), notes
    _assert_equals_ols(res, data)


def test_mixed_fit_at_the_variance_boundary_unforced_equals_ols():
    # The same data on whatever path this machine's BLAS takes: converged, OLS estimates.
    data = _boundary_data()
    notes: list[str] = []
    res = st._fit_mixed("boundary", "diversity ~ a + b", data, True, notes)
    assert res.fitted and res.converged, notes
    _assert_equals_ols(res, data)
