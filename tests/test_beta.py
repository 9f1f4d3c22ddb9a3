"""canopy.beta: the beta regression on D in statsmodels and the paper's glmmTMB path."""

from __future__ import annotations

import os

import numpy as np
import pytest

from canopy import beta as bt
from canopy.beta import beta_regression, fit_beta_glmm_r
from canopy.simulation import simulate_panel


def test_beta_regression_python():
    panel = simulate_panel(n_prompts=40, seed=4)
    res = beta_regression(panel)
    assert res.available and res.converged and res.n_obs == 160
    assert set(res.table["part"]) == {"mean", "dispersion"}
    assert res.coef("R_sc")["estimate"] > 0 and res.coef("R_sc:fine_tuned")["estimate"] > 0
    assert res.coef("R_sc", part="dispersion") is not None
    assert any("clustered" in d for d in res.differences)
    assert any("(1|family)" in d for d in res.differences)
    assert "Differs from the paper" in res._repr_html_()


def test_natural_spline_spans_the_same_space_as_r_ns():
    # With K knots, a natural cubic spline plus a constant has K free parameters; the
    # basis must reproduce any linear function exactly and be linear beyond the knots.
    x = np.linspace(-2, 3, 200)
    basis = bt._natural_spline(x, 4)
    assert basis.shape == (200, 4)
    design = np.column_stack([np.ones_like(x), basis])
    assert np.linalg.matrix_rank(design) == 5
    beyond = bt._natural_spline(np.array([3.0, 4.0, 5.0, 6.0]), 4, knots_from=x)
    assert np.allclose(np.diff(beyond, 2, axis=0), 0, atol=1e-9)


def _r_ready():
    ok, why = bt.r_glmmtmb_available()
    if not ok:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but the R path cannot run: {why}")
        pytest.skip(f"R path not testable here: {why}")


def test_r_glmmtmb_agrees_with_python_beta_regression():
    _r_ready()
    panel = simulate_panel(n_prompts=40, seed=4)
    py = beta_regression(panel)
    r = fit_beta_glmm_r(panel)
    assert r.available and r.backend == "R glmmTMB", r.notes
    assert r.converged, r.notes
    for term in ("R_sc", "R_sc:fine_tuned"):
        a, b = py.coef(term), r.coef(term)
        assert np.sign(a["estimate"]) == np.sign(b["estimate"])
        assert 0.5 < a["estimate"] / b["estimate"] < 2.0, (term, a["estimate"], b["estimate"])
        assert abs(a["estimate"] - b["estimate"]) < 2 * np.hypot(a["se"], b["se"])
    assert any("(1 | family)" in n for n in r.notes)  # the exact spec was run


def test_natural_spline_span_equals_r_ns(tmp_path):
    _r_ready()
    import subprocess

    x = np.random.default_rng(0).normal(size=200)
    np.savetxt(tmp_path / "x.txt", x)
    script = (f"x <- scan('{tmp_path / 'x.txt'}', quiet = TRUE); write.table(cbind("
              f"splines::ns(x, df = 4), splines::ns(x, df = 3)), '{tmp_path / 'ns.txt'}', "
              "row.names = FALSE, col.names = FALSE)")
    subprocess.run(["Rscript", "-e", script], check=True, capture_output=True)
    r_basis = np.loadtxt(tmp_path / "ns.txt")
    for df, target in ((4, r_basis[:, :4]), (3, r_basis[:, 4:])):
        ours = np.column_stack([np.ones_like(x), bt._natural_spline(x, df)])
        coef = np.linalg.lstsq(ours, target, rcond=None)[0]
        assert np.abs(ours @ coef - target).max() < 1e-10


def test_r_path_says_when_r_is_missing():
    res = fit_beta_glmm_r(simulate_panel(n_prompts=5), rscript="no-such-Rscript-here")
    assert not res.available and res.table.empty
    assert "not found" in res.notes[0]
