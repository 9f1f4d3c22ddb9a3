"""The panel and the confound-controlled regressions (Method §6), with statsmodels.

The panel has one row per (task, prompt, family, variant). Required columns (names in
words; tables label them with the Method page's symbols):

====================  =====  ==========================================================
``diversity``         D      mean pairwise cosine dissimilarity of the prompt's rollouts
``mean_entropy_rate`` R̄      E[r], nats per token
``mean_length``       N̄      E[N], tokens
``fine_tuned``        FT     1 for the fine-tuned variant, 0 for the base
``family``                   model family (str)
``task``                     task name (str)
``prompt_uid``               ``task/prompt_id``: the random-intercept grouping
====================  =====  ==========================================================

Every fit returns a small dataclass with ``to_frame()`` and an HTML table for notebooks.
Terms a design cannot identify (one family, one task, a missing variant, aliased
columns, too few rows) are dropped and the dropping is written to ``notes``; warnings of
the optimiser are captured into ``notes`` and ``converged`` says whether the fit
converged — never silently.

The beta regression on ``D`` and the R glmmTMB path are :mod:`canopy.beta`; simulated
panels and the coverage study are :mod:`canopy.simulation`; the fitting helpers the three
share (Wald tables, aliased columns, captured warnings, the MixedLM fit with its Powell
retry) are :mod:`canopy.fitting`.
"""

from __future__ import annotations

import html
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from canopy.entropy import prompt_metrics
from canopy.fitting import (aliased_columns, check_level, empty_table, fit_mixedlm,
                            notes_html, table_html, wald_table, warning_notes)
from canopy.semantic import semantic_metrics
from canopy.tables import PROMPT_KEYS, matched_families, require_columns

__all__ = [
    "PANEL_COLUMNS",
    "SYMBOLS",
    "build_panel",
    "check_panel",
    "main_regression",
    "interaction_regression",
    "curvature_check",
    "fieller_interval",
    "RegressionResult",
    "InteractionResult",
    "SlopeRatio",
    "CurvatureResult",
    "matched_panel",
]

PANEL_COLUMNS = ("task", "prompt_uid", "family", "fine_tuned", "diversity",
                 "mean_entropy_rate", "mean_length")

#: Method §6 symbols for the terms of the fits (tables show them in a ``symbol`` column).
SYMBOLS = {
    "Intercept": "α",
    "mean_entropy_rate": "β (R̄)",
    "fine_tuned": "τ (FT)",
    "mean_entropy_rate:fine_tuned": "η (R̄·FT)",
    "mean_length": "γ (N̄)",
    "rate_c": "β (R_c)",
    "rate_c:fine_tuned": "η (R_c·FT)",
    "rate_c_sq": "R_c²",
    "rate_c_sq:fine_tuned": "R_c²·FT",
    "R_sc": "β (R_sc)",
    "R_sc:fine_tuned": "η (R_sc·FT)",
}

# ------------------------------------------------------------------ result objects


@dataclass
class RegressionResult:
    """One fitted (or unfittable) regression.

    ``table``: one row per fixed-effect term (index ``term``) with ``symbol``,
    ``estimate``, ``se``, ``z``, ``p`` (two-sided, normal reference as in statsmodels
    MixedLM), ``ci_low``/``ci_high`` (Wald, ``level``). Empty when ``fitted`` is False.
    ``prompt_var``/``residual_var``: variance of the prompt random intercept and of ε
    (NaN for OLS). ``loglik``: REML or ML log-likelihood per ``method``.
    """

    name: str
    formula: str
    method: str
    table: pd.DataFrame
    n_obs: int
    n_groups: int
    fitted: bool
    converged: bool
    notes: list[str] = field(default_factory=list)
    prompt_var: float = np.nan
    residual_var: float = np.nan
    loglik: float = np.nan
    level: float = 0.95
    model: Any = field(default=None, repr=False)

    def coef(self, term: str) -> pd.Series:
        """The table row of ``term`` (KeyError naming the terms present if absent)."""
        if term not in self.table.index:
            raise KeyError(f"term {term!r} not in this fit; terms: {list(self.table.index)}")
        return self.table.loc[term]

    def to_frame(self) -> pd.DataFrame:
        return self.table.copy()

    def _header(self) -> str:
        status = ("not fitted" if not self.fitted else
                  "converged" if self.converged else "DID NOT CONVERGE")
        return (f"{self.name}: {self.formula} [{self.method}; n = {self.n_obs}, "
                f"prompts = {self.n_groups}; {status}]")

    def _repr_html_(self) -> str:
        return (f"<p><b>{html.escape(self._header())}</b></p>" + table_html(self.table)
                + notes_html(self.notes))

    def __str__(self) -> str:
        body = self.table.to_string(float_format=lambda v: f"{v:.4g}") if len(self.table) else "(no table)"
        notes = "".join(f"\n  note: {n}" for n in self.notes)
        return f"{self._header()}\n{body}{notes}"


@dataclass
class SlopeRatio:
    """Fieller interval for ``(β+η)/β``, the fine-tuned over the base slope.

    ``kind``: ``"bounded"`` (``ci_low``..``ci_high``), ``"two rays"`` (the set is
    ``(−∞, ci_low] ∪ [ci_high, ∞)``) or ``"whole line"`` (``ci_low = −∞``,
    ``ci_high = ∞``). The interval is unbounded exactly when β's Wald interval at the
    same level contains 0.
    """

    estimate: float
    ci_low: float
    ci_high: float
    kind: str
    level: float = 0.95
    note: str = ""

    @property
    def bounded(self) -> bool:
        return self.kind == "bounded"

    def covers(self, value: float) -> bool:
        if self.kind == "bounded":
            return self.ci_low <= value <= self.ci_high
        if self.kind == "two rays":
            return value <= self.ci_low or value >= self.ci_high
        return self.kind == "whole line"

    def interval_text(self) -> str:
        if self.kind == "bounded":
            return f"[{self.ci_low:.3g}, {self.ci_high:.3g}]"
        if self.kind == "two rays":
            return f"(−∞, {self.ci_low:.3g}] ∪ [{self.ci_high:.3g}, ∞)"
        if self.kind == "whole line":
            return "(−∞, ∞)"
        return "undefined"

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([{"symbol": "(β+η)/β", "estimate": self.estimate,
                              "ci_low": self.ci_low, "ci_high": self.ci_high,
                              "interval": self.interval_text(), "kind": self.kind,
                              "note": self.note}], index=pd.Index(["slope_ratio"], name="term"))


@dataclass
class InteractionResult(RegressionResult):
    """The interaction regression plus the slope ratio (:class:`SlopeRatio`).

    ``families``: the families that entered (both variants present);
    ``excluded_families``: those left out (one variant only).
    """

    ratio: SlopeRatio | None = None
    families: list[str] = field(default_factory=list)
    excluded_families: list[str] = field(default_factory=list)

    def to_frame(self) -> pd.DataFrame:
        if self.ratio is None:
            return self.table.copy()
        return pd.concat([self.table, self.ratio.to_frame()[["symbol", "estimate", "ci_low",
                                                               "ci_high"]]])

    def _repr_html_(self) -> str:
        extra = ""
        if self.ratio is not None:
            extra = (f"<p>Slope ratio (β+η)/β = {self.ratio.estimate:.3g}, "
                     f"{int(round(100 * self.ratio.level))} % Fieller interval "
                     f"{html.escape(self.ratio.interval_text())}"
                     f"{' — ' + html.escape(self.ratio.note) if self.ratio.note else ''}</p>")
        return super()._repr_html_() + extra

    def __str__(self) -> str:
        extra = "" if self.ratio is None else (
            f"\n  slope ratio (β+η)/β = {self.ratio.estimate:.4g}, Fieller "
            f"{self.ratio.interval_text()} {self.ratio.note}")
        return super().__str__() + extra


@dataclass
class CurvatureResult:
    """Curvature robustness check: linear vs quadratic in ``R_c`` (ML fits, LRT df = 2).

    ``shifts``: for β and η, the linear and quadratic estimates, ``shift`` = quadratic −
    linear, ``shift_in_se`` = shift / linear SE and ``within_one_se``.
    ``lr_stat``/``p_value`` are NaN when either fit failed.
    """

    linear: RegressionResult
    quadratic: RegressionResult
    lr_stat: float
    df: int
    p_value: float
    shifts: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    def to_frame(self) -> pd.DataFrame:
        return self.shifts.copy()

    def summary(self) -> str:
        return f"LRT quadratic vs linear: χ²({self.df}) = {self.lr_stat:.3f}, p = {self.p_value:.3g}"

    def _repr_html_(self) -> str:
        return (f"<p><b>Curvature check.</b> {html.escape(self.summary())}</p>"
                + table_html(self.shifts) + notes_html(self.notes))

    def __str__(self) -> str:
        notes = "".join(f"\n  note: {n}" for n in self.notes)
        return f"{self.summary()}\n{self.shifts.to_string()}{notes}"



# ----------------------------------------------------------------------------- panel


def check_panel(panel: pd.DataFrame, extra: tuple[str, ...] = ()) -> None:
    """Raise a one-line ``ValueError`` unless ``panel`` has the columns of Method §6."""
    require_columns(panel, (*PANEL_COLUMNS, *extra), "panel", allow_empty=False,
                    hint="build it with canopy.stats.build_panel or "
                    "canopy.simulation.simulate_panel")
    bad = sorted(set(pd.unique(panel["fine_tuned"].astype(object))) - {0, 1, True, False},
                 key=repr)
    if bad:
        raise ValueError(f"fine_tuned must be 0/1, got {bad[0]!r}")
    for col in ("diversity", "mean_entropy_rate", "mean_length"):
        if not pd.api.types.is_numeric_dtype(panel[col]) or pd.api.types.is_bool_dtype(panel[col]):
            raise ValueError(f"panel column {col} must be numeric, got dtype {panel[col].dtype}")


def build_panel(rollouts: pd.DataFrame, embeddings, **semantic_kwargs) -> pd.DataFrame:
    """The regression panel: one row per (task, prompt, family, variant).

    ``rollouts``: the rollout table of :mod:`canopy.entropy` (with ``text`` when a judge
    needs it). ``embeddings``: an ``(R, dim)`` array aligned with the rows (see
    :func:`canopy.semantic.embed_rollouts`) or an already computed
    :func:`canopy.semantic.semantic_metrics` table; ``semantic_kwargs`` go to it.

    Columns: the keys ``model, family, variant, task, prompt_id``, ``prompt_uid``
    (``task/prompt_id``), ``fine_tuned`` (0/1), ``diversity``, ``mean_entropy_rate``,
    ``mean_length``, every other column of ``prompt_metrics`` and ``semantic_metrics``,
    and ``reason`` (both tables' reasons joined). Raises when a (family, variant) has
    more than one model: a panel compares one base with one fine-tuned model per family.
    """
    tree = prompt_metrics(rollouts)
    per_fv = tree.groupby(["family", "variant"])["model"].nunique()
    if (per_fv > 1).any():
        fam, var = per_fv.index[(per_fv > 1).argmax()]
        raise ValueError(f"family {fam!r} has several {var} models; build one panel per "
                         "matched pair (filter the rollouts by model)")
    if isinstance(embeddings, pd.DataFrame):
        sem = embeddings
    else:
        sem = semantic_metrics(rollouts, embeddings, **semantic_kwargs)
    keys = list(PROMPT_KEYS)
    sem = sem.drop(columns=[c for c in ("n_rollouts",) if c in sem.columns])
    panel = tree.merge(sem, on=keys, how="inner", suffixes=("", "_semantic"), validate="1:1")
    if len(panel) != len(tree):
        raise ValueError(f"semantic table matches {len(panel)} of {len(tree)} prompts; "
                         "compute it from the same rollouts")
    panel["reason"] = [("; ".join(r for r in (a, b) if r)) for a, b in
                       zip(panel["reason"], panel.pop("reason_semantic"))]
    panel.insert(5, "prompt_uid", panel["task"].astype(str) + "/" + panel["prompt_id"].astype(str))
    panel.insert(6, "fine_tuned", (panel["variant"] == "fine-tuned").astype(np.int64))
    return panel


# ------------------------------------------------------------------- fitting helpers


def _prepare(panel: pd.DataFrame, needed: tuple[str, ...], notes: list[str]) -> pd.DataFrame:
    check_panel(panel, tuple(c for c in needed if c not in PANEL_COLUMNS))
    cols = list(dict.fromkeys([*PANEL_COLUMNS, *needed]))
    data = panel[cols].copy()
    data["fine_tuned"] = data["fine_tuned"].astype(np.int64)
    for c in ("task", "family", "prompt_uid"):
        data[c] = data[c].astype(str)
    numeric = ["diversity", "mean_entropy_rate", "mean_length"]
    bad = ~np.isfinite(data[numeric].to_numpy(dtype=np.float64)).all(axis=1)
    if bad.any():
        notes.append(f"{int(bad.sum())} row(s) with NaN diversity, rate or length dropped "
                     "(prompts with fewer than 2 rollouts have no diversity)")
        data = data[~bad]
    return data.reset_index(drop=True)


def _fit_mixed(name: str, formula: str, data: pd.DataFrame, reml: bool, notes: list[str],
               level: float = 0.95, result_cls=RegressionResult, **extra) -> RegressionResult:
    """MixedLM with a random prompt intercept; aliased columns dropped with a note; OLS
    (with a note) when no prompt has two rows."""
    import statsmodels.api as sm
    import statsmodels.formula.api as smf

    method = "REML" if reml else "ML"
    n_obs, n_groups = len(data), data["prompt_uid"].nunique()
    common = dict(name=name, formula=formula, n_obs=n_obs, n_groups=n_groups, notes=notes,
                  level=level, **extra)
    if n_obs == 0:
        notes.append("no rows left: not fitted")
        return result_cls(method=method, table=empty_table(), fitted=False, converged=False,
                          **common)
    design = smf.ols(formula, data)  # the formula API builds the design matrix
    x = pd.DataFrame(design.exog, columns=design.exog_names)
    drop = aliased_columns(x)
    if drop:
        notes.append(f"not identifiable in this design, dropped: {', '.join(drop)}")
        x = x.drop(columns=drop)
    y = pd.Series(design.endog, name="diversity")
    k = x.shape[1]
    if n_obs - k < 2 or (n_groups < n_obs and n_obs - k < 3):
        notes.append(f"too few rows ({n_obs}) for {k} fixed effects and the variance "
                     "components: not fitted")
        return result_cls(method=method, table=empty_table(), fitted=False, converged=False,
                          **common)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if n_groups == n_obs:
                notes.append("every prompt has one row: the prompt random intercept is not "
                             "identifiable; fitted by OLS instead")
                res = sm.OLS(y, x).fit()
                method = "OLS"
                params, bse = res.params, res.bse
                converged, pvar, rvar, llf = True, np.nan, float(res.scale), float(res.llf)
            else:
                res = fit_mixedlm(sm.MixedLM(y, x, groups=data["prompt_uid"].to_numpy()),
                                   reml, caught, notes)
                k_fe = res.k_fe
                params, bse = res.fe_params, res.bse_fe
                converged = bool(res.converged)
                pvar = float(np.asarray(res.cov_re).ravel()[0])
                rvar, llf = float(res.scale), float(res.llf)
                if not np.all(np.isfinite(bse.to_numpy()[:k_fe])):
                    notes.append("standard errors not finite (singular information matrix)")
                    converged = False
        except (np.linalg.LinAlgError, ValueError) as exc:
            notes.append(f"fit failed: {type(exc).__name__}: {exc}")
            return result_cls(method=method, table=empty_table(), fitted=False,
                              converged=False, **common)
    if warning_notes(caught, notes):
        converged = False
    if not converged and not any("converge" in n for n in notes):
        notes.append("the optimiser did not converge: estimates are unreliable")
    if np.isfinite(pvar) and pvar <= 1e-4 * rvar:
        notes.append(f"prompt random-intercept variance at the boundary ({pvar:.2g} ≈ 0): "
                     "prompts add no variance beyond the residual")
    return result_cls(method=method, table=wald_table(params, bse, level, SYMBOLS),
                      fitted=True, converged=converged, prompt_var=pvar, residual_var=rvar,
                      loglik=llf, model=res, **common)


def _design_terms(data: pd.DataFrame, notes: list[str], variant_term: str | None) -> list[str]:
    """Task and family terms that the design can identify, with notes for the others."""
    terms = []
    if data["task"].nunique() > 1:
        terms.append("C(task)")
    else:
        notes.append("one task: no task effects")
    n_fam = data["family"].nunique()
    if variant_term == "main":
        both = data["fine_tuned"].nunique() == 2
        if n_fam > 1 and both:
            terms.append("C(family) * fine_tuned")
        elif n_fam > 1:
            terms.append("C(family)")
            notes.append("one variant only: no variant effects")
        elif both:
            terms.append("fine_tuned")
            notes.append("one family: no family effects")
        else:
            notes.append("one family and one variant: no family or variant effects")
    elif n_fam > 1:
        terms.append("C(family)")
    else:
        notes.append("one family: no family effects")
    return terms


# --------------------------------------------------------------------- regressions


def main_regression(panel: pd.DataFrame, level: float = 0.95) -> RegressionResult:
    """``D ~ R̄ + N̄ + C(task) + C(family)×C(variant) + (1 | prompt_uid)``, REML.

    Does entropy rate predict diversity beyond length? All families enter (a family
    with one variant just has no interaction cell). ``C(variant)`` is coded as
    ``fine_tuned`` (treatment coding, base = 0), so the table's ``mean_entropy_rate`` row is
    the slope of R̄.
    """
    check_level(level)
    notes: list[str] = []
    data = _prepare(panel, (), notes)
    terms = ["mean_entropy_rate", "mean_length", *_design_terms(data, notes, "main")]
    formula = "diversity ~ " + " + ".join(terms)
    res = _fit_mixed("main regression", formula, data, True, notes, level)
    res.table["symbol"] = res.table["symbol"].replace({"β (R̄)": "R̄", "τ (FT)": "FT"})
    return res


def matched_panel(panel: pd.DataFrame, notes: list[str], needed: tuple[str, ...] = ()):
    """The checked panel restricted to families with both variants (NaN rows dropped),
    with the families kept and those left out: ``(data, both, single)``. Each dropping is
    appended to ``notes``; ``needed`` names extra required columns."""
    data = _prepare(panel, needed, notes)
    both, single = matched_families(data)
    if single:
        notes.append(f"families with one variant left out (main regression only): "
                     f"{', '.join(single)}")
    return data[data["family"].isin(both)].reset_index(drop=True), both, single


def fieller_interval(a: float, b: float, var_a: float, var_b: float, cov_ab: float,
                     level: float = 0.95) -> SlopeRatio:
    """Fieller confidence set for the ratio ``a / b`` of two normal estimates.

    Solves ``(a − θ b)² ≤ z² (var_a − 2θ cov_ab + θ² var_b)`` with ``z`` the normal
    critical value. Bounded iff ``b² > z² var_b`` (b's Wald interval excludes 0).
    """
    check_level(level)
    z2 = sps.norm.ppf(0.5 + level / 2) ** 2
    est = a / b if b != 0 else np.nan
    qa = b * b - z2 * var_b
    qb = a * b - z2 * cov_ab
    qc = a * a - z2 * var_a
    disc = qb * qb - qa * qc
    if not all(np.isfinite([a, b, var_a, var_b, cov_ab])) or var_a < 0 or var_b < 0:
        return SlopeRatio(est, np.nan, np.nan, "undefined", level,
                          "undefined: non-finite or negative variances")
    if qa > 0:
        root = np.sqrt(max(disc, 0.0))
        return SlopeRatio(est, (qb - root) / qa, (qb + root) / qa, "bounded", level)
    note = "unbounded: the base slope β's confidence interval contains 0"
    if disc > 0 and qa < 0:
        root = np.sqrt(disc)
        lo, hi = sorted(((qb - root) / qa, (qb + root) / qa))
        return SlopeRatio(est, lo, hi, "two rays", level, note)
    return SlopeRatio(est, -np.inf, np.inf, "whole line", level, note)


def interaction_regression(panel: pd.DataFrame, level: float = 0.95) -> InteractionResult:
    """The headline fit (REML):
    ``D ~ R̄ × FT + N̄ + C(task) + C(family) + (1 | prompt_uid)``.

    Rows ``mean_entropy_rate`` (β), ``fine_tuned`` (τ), ``mean_entropy_rate:fine_tuned``
    (η), ``mean_length`` (γ) of ``table``; ``ratio`` is ``(β+η)/β`` with its Fieller
    interval. Only families with both variants enter (the others are listed in
    ``excluded_families`` and a note).
    """
    check_level(level)
    notes: list[str] = []
    data, both, single = matched_panel(panel, notes)
    if not both:
        notes.append("no family has both variants: the interaction is not identifiable; "
                     "not fitted")
        return InteractionResult(name="interaction regression", formula="", method="REML",
                                 table=empty_table(), n_obs=0, n_groups=0, fitted=False,
                                 converged=False, notes=notes, level=level,
                                 families=both, excluded_families=single)
    terms = ["mean_entropy_rate * fine_tuned", "mean_length",
             *_design_terms(data, notes, "interaction")]
    formula = "diversity ~ " + " + ".join(terms)
    res = _fit_mixed("interaction regression", formula, data, True, notes, level,
                     result_cls=InteractionResult, families=both, excluded_families=single)
    b, e = "mean_entropy_rate", "mean_entropy_rate:fine_tuned"
    if res.fitted and b in res.table.index and e in res.table.index:
        cov = _fe_cov(res)
        vbb, vee, vbe = cov.loc[b, b], cov.loc[e, e], cov.loc[b, e]
        beta, eta = res.table.loc[b, "estimate"], res.table.loc[e, "estimate"]
        res.ratio = fieller_interval(beta + eta, beta, vbb + 2 * vbe + vee, vbb, vbb + vbe,
                                     level)
        if not res.converged:
            res.ratio.note = "; ".join(filter(None, [res.ratio.note,
                                                     "the fit did not converge"]))
        if res.ratio.note:
            res.notes.append(f"slope ratio (β+η)/β: {res.ratio.note}")
    elif res.fitted:
        res.notes.append("β or η not identified: no slope ratio")
    return res


def _fe_cov(res: RegressionResult) -> pd.DataFrame:
    cov = res.model.cov_params()
    names = list(res.table.index)
    return pd.DataFrame(np.asarray(cov)[:len(names), :len(names)], index=names, columns=names)


def curvature_check(panel: pd.DataFrame, level: float = 0.95) -> CurvatureResult:
    """Linear vs quadratic in the centred rate ``R_c = R̄ − mean(R̄)`` (Method §6), ML.

    Linear: ``D ~ R_c × FT + N̄ + C(task) + C(family) + (1|prompt_uid)``; quadratic adds
    ``R_c² + R_c²·FT``. Likelihood-ratio test with df = 2 (the number of added terms that
    are identified). ``shifts`` reports how far β (``rate_c``) and η (``rate_c:fine_tuned``)
    move, in units of the linear fit's SE.
    """
    check_level(level)
    notes: list[str] = []
    data, both, single = matched_panel(panel, notes)
    data = data.copy()
    data["rate_c"] = data["mean_entropy_rate"] - data["mean_entropy_rate"].mean()
    data["rate_c_sq"] = data["rate_c"] ** 2
    rest = _design_terms(data, notes, "interaction") if both else []
    lin_f = "diversity ~ " + " + ".join(["rate_c * fine_tuned", "mean_length", *rest])
    quad_f = lin_f + " + rate_c_sq + rate_c_sq:fine_tuned"
    if not both:
        notes.append("no family has both variants: not fitted")
    lin = _fit_mixed("linear (ML)", lin_f, data, False, [], level)
    quad = _fit_mixed("quadratic (ML)", quad_f, data, False, [], level)
    df = len(quad.table) - len(lin.table)
    lr, p = np.nan, np.nan
    if lin.fitted and quad.fitted and lin.method == quad.method:
        lr = 2.0 * (quad.loglik - lin.loglik)
        if lr < 0:
            notes.append(f"LR statistic {lr:.2e} < 0 from optimiser tolerance; set to 0")
            lr = 0.0
        p = float(sps.chi2.sf(lr, df)) if df > 0 else np.nan
        if df != 2:
            notes.append(f"only {df} of the 2 quadratic terms identified: LRT with df = {df}")
    if not (lin.converged and quad.converged):
        notes.append("a fit did not converge: the LRT is unreliable (see linear/quadratic notes)")
    rows = []
    for term in ("rate_c", "rate_c:fine_tuned"):
        if term in lin.table.index and term in quad.table.index:
            le, ls = lin.table.loc[term, ["estimate", "se"]]
            qe, qs = quad.table.loc[term, ["estimate", "se"]]
            shift = qe - le
            rows.append({"term": term, "symbol": SYMBOLS[term][0], "linear": le,
                         "linear_se": ls, "quadratic": qe, "quadratic_se": qs, "shift": shift,
                         "shift_in_se": shift / ls, "within_one_se": bool(abs(shift) <= ls)})
    shifts = pd.DataFrame(rows, columns=["term", "symbol", "linear", "linear_se", "quadratic",
                                         "quadratic_se", "shift", "shift_in_se",
                                         "within_one_se"]).set_index("term")
    return CurvatureResult(lin, quad, float(lr), int(df), float(p) if np.isfinite(p) else np.nan,
                           shifts, notes)
