"""Tests of canopy.fitting, each against an independent computation."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from canopy import fitting as ft


def test_check_level_names_the_bad_value():
    ft.check_level(0.95)
    for bad in (0, 1, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"level must be in \(0, 1\), got"):
            ft.check_level(bad)


def test_aliased_columns_finds_exact_combinations_only():
    rng = np.random.default_rng(0)
    x = pd.DataFrame({"one": np.ones(30), "a": rng.normal(size=30), "b": rng.normal(size=30)})
    x["a_plus_b"] = x["a"] + 1e3 * x["b"]    # different scales: aliased all the same
    x["c"] = x["a"] + rng.normal(scale=1e-3, size=30)  # nearly, not exactly, aliased
    x["two"] = 2.0
    assert ft.aliased_columns(x) == ["a_plus_b", "two"]
    assert ft.aliased_columns(x[["one", "a"]]) == []


def test_wald_table_matches_the_normal_formulas():
    params = pd.Series([1.0, -0.5, 0.0], index=["x", "y", "z"])
    bse = pd.Series([0.5, 0.25, 0.0], index=params.index)
    table = ft.wald_table(params, bse, 0.9, {"x": "β"})
    assert list(table.columns) == ft.TABLE_COLUMNS and table.index.name == "term"
    assert list(table["symbol"]) == ["β", "", ""]
    crit = sps.norm.ppf(0.95)
    np.testing.assert_allclose(table.loc[["x", "y"], "z"], [2.0, -2.0])
    np.testing.assert_allclose(table.loc[["x", "y"], "p"], [2 * sps.norm.sf(2.0)] * 2)
    np.testing.assert_allclose(table.loc["x", ["ci_low", "ci_high"]],
                               [1.0 - 0.5 * crit, 1.0 + 0.5 * crit])
    assert np.isnan(table.loc["z", "z"]) and np.isnan(table.loc["z", "p"])  # 0/0: NaN


def test_empty_table_has_the_columns():
    assert list(ft.empty_table().columns) == ft.TABLE_COLUMNS
    assert list(ft.empty_table(("part",)).columns) == ["part", *ft.TABLE_COLUMNS]
    assert len(ft.empty_table()) == 0


def test_warning_notes_flags_non_convergence_and_skips_duplicates():
    from statsmodels.tools.sm_exceptions import ConvergenceWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.warn("The MLE may be on the boundary of the parameter space.",
                      ConvergenceWarning)
        warnings.warn("something odd", RuntimeWarning)
        warnings.warn("something odd", RuntimeWarning)
    notes: list[str] = []
    assert not ft.warning_notes(caught, notes)
    assert notes == ["warning during fit: something odd"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.warn("Gradient optimization failed to converge", ConvergenceWarning)
    assert ft.warning_notes(caught, notes) and "statsmodels warned" in notes[-1]


def test_notes_and_table_html():
    assert ft.notes_html([]) == ""
    assert "<li>a &lt; b</li>" in ft.notes_html(["a < b"])
    assert ft.table_html(ft.empty_table()) == "<p>(no table)</p>"
    table = ft.wald_table(pd.Series([1.0], index=["x"]), pd.Series([0.5], index=["x"]), 0.95)
    assert "estimate" in ft.table_html(table)


def _boundary_model():
    """A MixedLM whose prompt variance's optimum is its boundary 0 (no prompt effect)."""
    import statsmodels.api as sm

    rng = np.random.default_rng(1)
    n = 32
    x = sm.add_constant(pd.DataFrame({"a": rng.normal(size=3 * n),
                                      "b": rng.uniform(20, 128, 3 * n)}))
    y = 0.2 + 0.27 * x["a"] - 0.001 * x["b"] + rng.normal(scale=0.1, size=3 * n)
    return sm.MixedLM(y, x, groups=np.repeat(np.arange(n), 3)), sm.OLS(y, x).fit()


@pytest.mark.parametrize("how", ["not converged", "converged after retry", "clean"])
def test_fit_mixedlm_retries_with_powell_after_a_failed_gradient_method(monkeypatch, how):
    from statsmodels.regression.mixed_linear_model import MixedLM
    from statsmodels.tools.sm_exceptions import ConvergenceWarning

    model, ols = _boundary_model()
    original = MixedLM.fit
    calls = []

    def fit(self, *args, **kwargs):
        calls.append(kwargs.get("method"))
        if len(calls) > 1:
            return original(self, *args, **kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = original(self, *args, **kwargs)
        if how == "not converged":
            warnings.warn("Gradient optimization failed, |grad| = 1.2", ConvergenceWarning)
        elif how == "converged after retry":
            warnings.warn("Maximum Likelihood optimization failed to converge. Check "
                          "mle_retvals", ConvergenceWarning)
            warnings.warn("Retrying MixedLM optimization with lbfgs", ConvergenceWarning)
        res.converged = how != "not converged"
        return res

    monkeypatch.setattr(MixedLM, "fit", fit)
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = ft.fit_mixedlm(model, True, caught, notes)
        failed = ft.warning_notes(caught, notes)
    if how == "clean":  # a fit that converged at once is kept, no retry
        assert calls == [None] and notes == [] and res.converged
        return
    assert calls == [None, ["powell"]]
    assert res.converged and not failed
    assert len(notes) == 1 and "Powell" in notes[0], notes
    # At the boundary the REML fixed effects are the OLS ones (independent fit).
    np.testing.assert_allclose(res.fe_params, ols.params, rtol=1e-6, atol=1e-8)


def test_fit_mixedlm_keeps_the_gradient_fit_when_powell_does_no_better(monkeypatch):
    from statsmodels.regression.mixed_linear_model import MixedLM
    from statsmodels.tools.sm_exceptions import ConvergenceWarning

    model, _ = _boundary_model()
    original = MixedLM.fit

    def fit(self, *args, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = original(self, *args, **kwargs)
        if kwargs.get("method") == ["powell"]:
            res.converged = False  # Powell fails
        else:
            warnings.warn("Retrying MixedLM optimization with lbfgs", ConvergenceWarning)
            res.converged = True
        return res

    monkeypatch.setattr(MixedLM, "fit", fit)
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = ft.fit_mixedlm(model, True, caught, notes)
    assert res.converged and caught == []
    assert len(notes) == 1 and "no higher likelihood" in notes[0]


def test_statsmodels_still_says_retrying_when_a_gradient_method_fails():
    # fit_mixedlm recognises "converged only after a failed gradient method" by this
    # warning of statsmodels' MixedLM.fit; a real fit whose BFGS is stopped after one
    # iteration must still emit it (else a statsmodels upgrade would silently disable
    # the Powell retry on that path).
    model, _ = _boundary_model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(reml=True, method=["bfgs", "lbfgs"], maxiter=1)
    assert any(str(w.message) == "Retrying MixedLM optimization with lbfgs" for w in caught)
