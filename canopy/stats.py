"""The panel and the confound-controlled regressions (METHOD §6), with statsmodels.

The panel has one row per (task, prompt, family, variant). Required columns (names in
words; tables label them with METHOD's symbols):

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
"""

from __future__ import annotations

import functools
import html
import os
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from .entropy import PROMPT_KEYS, prompt_metrics, require_columns

__all__ = [
    "PANEL_COLUMNS",
    "SYMBOLS",
    "build_panel",
    "check_panel",
    "main_regression",
    "interaction_regression",
    "curvature_check",
    "beta_regression",
    "fit_beta_glmm_r",
    "r_glmmtmb_available",
    "fieller_interval",
    "simulate_panel",
    "simulation_study",
    "simulation_summary",
    "RegressionResult",
    "InteractionResult",
    "SlopeRatio",
    "CurvatureResult",
    "BetaResult",
]

PANEL_COLUMNS = ("task", "prompt_uid", "family", "fine_tuned", "diversity",
                 "mean_entropy_rate", "mean_length")

#: METHOD §6 symbols for the terms of the fits (tables show them in a ``symbol`` column).
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

_TABLE_COLUMNS = ["symbol", "estimate", "se", "z", "p", "ci_low", "ci_high"]


# ------------------------------------------------------------------ result objects


def _notes_html(notes: list[str]) -> str:
    if not notes:
        return ""
    items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return f"<p><b>Notes</b></p><ul>{items}</ul>"


def _fmt_table(table: pd.DataFrame) -> str:
    return table.to_html(float_format=lambda v: f"{v:.4g}", na_rep="—")


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
        return (f"<p><b>{html.escape(self._header())}</b></p>" + _fmt_table(self.table)
                + _notes_html(self.notes))

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
                + _fmt_table(self.shifts) + _notes_html(self.notes))

    def __str__(self) -> str:
        notes = "".join(f"\n  note: {n}" for n in self.notes)
        return f"{self.summary()}\n{self.shifts.to_string()}{notes}"


@dataclass
class BetaResult:
    """A beta regression on ``D`` (statsmodels or glmmTMB).

    ``table``: one row per coefficient with a ``part`` column (``mean``: logit of E[D];
    ``dispersion``: log of the precision φ), index ``term``. ``differences``: how this
    fit differs from the paper's glmmTMB specification. ``available`` is False when the
    backend could not run (``notes`` says why).
    """

    backend: str
    table: pd.DataFrame
    n_obs: int
    available: bool
    converged: bool
    notes: list[str] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)
    loglik: float = np.nan
    model: Any = field(default=None, repr=False)

    def coef(self, term: str, part: str = "mean") -> pd.Series:
        rows = self.table[(self.table.index == term) & (self.table["part"] == part)]
        if rows.empty:
            raise KeyError(f"term {term!r} ({part}) not in this fit; terms: "
                           f"{list(self.table.index[self.table['part'] == part])}")
        return rows.iloc[0]

    def to_frame(self) -> pd.DataFrame:
        return self.table.copy()

    def _repr_html_(self) -> str:
        status = ("unavailable" if not self.available else
                  "converged" if self.converged else "DID NOT CONVERGE")
        head = f"<p><b>Beta regression on D ({html.escape(self.backend)}; n = {self.n_obs}; {status})</b></p>"
        diff = ("" if not self.differences else "<p><b>Differs from the paper's glmmTMB "
                "specification</b></p><ul>" + "".join(
                    f"<li>{html.escape(d)}</li>" for d in self.differences) + "</ul>")
        return head + _fmt_table(self.table) + _notes_html(self.notes) + diff

    def __str__(self) -> str:
        body = self.table.to_string(float_format=lambda v: f"{v:.4g}") if len(self.table) else "(no table)"
        notes = "".join(f"\n  note: {n}" for n in self.notes)
        diffs = "".join(f"\n  differs: {d}" for d in self.differences)
        return f"Beta regression ({self.backend}, n = {self.n_obs})\n{body}{notes}{diffs}"


# ----------------------------------------------------------------------------- panel


def check_panel(panel: pd.DataFrame, extra: tuple[str, ...] = ()) -> None:
    """Raise a one-line ``ValueError`` unless ``panel`` has the columns of METHOD §6."""
    require_columns(panel, (*PANEL_COLUMNS, *extra), "panel", allow_empty=False,
                    hint="build it with canopy.stats.build_panel or simulate_panel")
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
    from .semantic import semantic_metrics

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


def _both_variant_families(data: pd.DataFrame) -> tuple[list[str], list[str]]:
    per = data.groupby("family")["fine_tuned"].nunique()
    return sorted(per.index[per == 2]), sorted(per.index[per < 2])


def _aliased(x: pd.DataFrame, tol: float = 1e-9) -> list[str]:
    """Columns of ``x`` that are linear combinations of the columns before them."""
    keep: list[int] = []
    dropped = []
    arr = x.to_numpy(dtype=np.float64)
    scale = np.maximum(np.abs(arr).max(axis=0), 1e-300)
    arr = arr / scale
    for j in range(arr.shape[1]):
        cand = keep + [j]
        s = np.linalg.svd(arr[:, cand], compute_uv=False)
        if s.size and s[-1] > tol * max(s[0], 1.0) * np.sqrt(arr.shape[0]):
            keep.append(j)
        else:
            dropped.append(x.columns[j])
    return dropped


def _wald_table(params: pd.Series, bse: pd.Series, level: float) -> pd.DataFrame:
    crit = sps.norm.ppf(0.5 + level / 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = params / bse
    table = pd.DataFrame({
        "symbol": [SYMBOLS.get(t, "") for t in params.index],
        "estimate": params.to_numpy(dtype=float),
        "se": bse.to_numpy(dtype=float),
        "z": z.to_numpy(dtype=float),
        "p": 2 * sps.norm.sf(np.abs(z.to_numpy(dtype=float))),
        "ci_low": (params - crit * bse).to_numpy(dtype=float),
        "ci_high": (params + crit * bse).to_numpy(dtype=float),
    }, index=pd.Index(list(params.index), name="term"))
    return table


def _empty_table() -> pd.DataFrame:
    return pd.DataFrame(columns=_TABLE_COLUMNS, index=pd.Index([], name="term"))


def _warning_notes(caught, notes: list[str]) -> bool:
    """Append captured warnings to ``notes``; return True if one says non-convergence."""
    failed = False
    seen = set()
    for w in caught:
        msg = str(w.message).strip()
        if msg in seen:
            continue
        seen.add(msg)
        low = msg.lower()
        if "boundary" in low:
            continue  # statsmodels' test is absolute (< 0.01); _fit_mixed checks it relatively
        if "converge" in low or "singular" in low or "hessian" in low:
            failed = failed or "converge" in low
            notes.append(f"statsmodels warned: {msg}")
        elif issubclass(w.category, (RuntimeWarning, UserWarning)):
            notes.append(f"warning during fit: {msg}")
    return failed


def _fit_mixedlm(model, reml: bool, caught: list, notes: list[str]):
    """``model.fit`` with statsmodels' gradient optimisers; if they fail, once more with
    Powell's derivative-free method, kept when it converges at least as high a
    likelihood. The gradient methods fail typically when the prompt variance sits at its
    boundary 0, where the likelihood's gradient is not zero; Powell handles that case.
    The failed attempt's warnings (recorded in ``caught``) are then dropped, with a note.
    """
    start = len(caught)
    res = model.fit(reml=reml)
    if res.converged:
        return res
    end = len(caught)
    try:
        retry = model.fit(reml=reml, method=["powell"])
    except (np.linalg.LinAlgError, ValueError):
        return res
    if retry.converged and retry.llf >= res.llf - 1e-8 * max(1.0, abs(res.llf)):
        del caught[start:end]
        notes.append("the gradient optimisers did not converge; Powell's derivative-free "
                     "method did (log-likelihood "
                     f"{retry.llf:.4f} vs {res.llf:.4f}), and its fit is used")
        return retry
    return res


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
        return result_cls(method=method, table=_empty_table(), fitted=False, converged=False,
                          **common)
    design = smf.ols(formula, data)  # the formula API builds the design matrix
    x = pd.DataFrame(design.exog, columns=design.exog_names)
    drop = _aliased(x)
    if drop:
        notes.append(f"not identifiable in this design, dropped: {', '.join(drop)}")
        x = x.drop(columns=drop)
    y = pd.Series(design.endog, name="diversity")
    k = x.shape[1]
    if n_obs - k < 2 or (n_groups < n_obs and n_obs - k < 3):
        notes.append(f"too few rows ({n_obs}) for {k} fixed effects and the variance "
                     "components: not fitted")
        return result_cls(method=method, table=_empty_table(), fitted=False, converged=False,
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
                res = _fit_mixedlm(sm.MixedLM(y, x, groups=data["prompt_uid"].to_numpy()),
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
            return result_cls(method=method, table=_empty_table(), fitted=False,
                              converged=False, **common)
    if _warning_notes(caught, notes):
        converged = False
    if not converged and not any("converge" in n for n in notes):
        notes.append("the optimiser did not converge: estimates are unreliable")
    if np.isfinite(pvar) and pvar <= 1e-4 * rvar:
        notes.append(f"prompt random-intercept variance at the boundary ({pvar:.2g} ≈ 0): "
                     "prompts add no variance beyond the residual")
    return result_cls(method=method, table=_wald_table(params, bse, level), fitted=True,
                      converged=converged, prompt_var=pvar, residual_var=rvar, loglik=llf,
                      model=res, **common)


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


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")


# --------------------------------------------------------------------- regressions


def main_regression(panel: pd.DataFrame, level: float = 0.95) -> RegressionResult:
    """``D ~ R̄ + N̄ + C(task) + C(family)×C(variant) + (1 | prompt_uid)``, REML.

    Does entropy rate predict diversity beyond length? All families enter (a family
    with one variant just has no interaction cell). ``C(variant)`` is coded as
    ``fine_tuned`` (treatment coding, base = 0), so the table's ``mean_entropy_rate`` row is
    the slope of R̄.
    """
    _check_level(level)
    notes: list[str] = []
    data = _prepare(panel, (), notes)
    terms = ["mean_entropy_rate", "mean_length", *_design_terms(data, notes, "main")]
    formula = "diversity ~ " + " + ".join(terms)
    res = _fit_mixed("main regression", formula, data, True, notes, level)
    res.table["symbol"] = res.table["symbol"].replace({"β (R̄)": "R̄", "τ (FT)": "FT"})
    return res


def _interaction_data(panel: pd.DataFrame, notes: list[str], needed=()):
    data = _prepare(panel, needed, notes)
    both, single = _both_variant_families(data)
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
    _check_level(level)
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
    _check_level(level)
    notes: list[str] = []
    data, both, single = _interaction_data(panel, notes)
    if not both:
        notes.append("no family has both variants: the interaction is not identifiable; "
                     "not fitted")
        return InteractionResult(name="interaction regression", formula="", method="REML",
                                 table=_empty_table(), n_obs=0, n_groups=0, fitted=False,
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
    """Linear vs quadratic in the centred rate ``R_c = R̄ − mean(R̄)`` (METHOD §6), ML.

    Linear: ``D ~ R_c × FT + N̄ + C(task) + C(family) + (1|prompt_uid)``; quadratic adds
    ``R_c² + R_c²·FT``. Likelihood-ratio test with df = 2 (the number of added terms that
    are identified). ``shifts`` reports how far β (``rate_c``) and η (``rate_c:fine_tuned``)
    move, in units of the linear fit's SE.
    """
    _check_level(level)
    notes: list[str] = []
    data, both, single = _interaction_data(panel, notes)
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


# ------------------------------------------------------------------ beta regression

BETA_CLIP = 1e-6


def _natural_spline(x: np.ndarray, df: int, knots_from: np.ndarray | None = None) -> np.ndarray:
    """Natural cubic spline basis without intercept, ``(n, df)``: the same function space
    as R's ``splines::ns(x, df)`` (boundary knots at the range, ``df − 1`` interior knots
    at the quantiles ``k/df``), in the truncated-power form (ESL eq. 5.4–5.5)."""
    ref = x if knots_from is None else knots_from
    knots = np.quantile(ref, np.linspace(0, 1, df + 1))  # type-7 quantiles, as R's default
    knots = np.unique(knots)
    cols = [x]
    last = knots[-1]

    def d(k):
        return (np.maximum(x - knots[k], 0) ** 3 - np.maximum(x - last, 0) ** 3) / (last - knots[k])

    for k in range(len(knots) - 2):
        cols.append(d(k) - d(len(knots) - 2))
    basis = np.column_stack(cols)
    # Unit-scale columns (same span) so the optimisers see a well-conditioned design.
    scale = basis.std(axis=0) if basis.shape[0] > 1 else np.ones(basis.shape[1])
    return basis / np.where(scale > 0, scale, 1.0)


def _beta_frame(panel: pd.DataFrame, notes: list[str]):
    """Interaction panel with D clipped, R_sc and invN_sc (standardised, ddof = 1)."""
    data, both, single = _interaction_data(panel, notes)
    data = data.copy()
    clipped = ((data["diversity"] < BETA_CLIP) | (data["diversity"] > 1 - BETA_CLIP)).sum()
    if clipped:
        notes.append(f"{int(clipped)} value(s) of D clipped to [{BETA_CLIP:g}, 1 − {BETA_CLIP:g}]")
    data["D"] = data["diversity"].clip(BETA_CLIP, 1 - BETA_CLIP)
    for out, col in (("R_sc", data["mean_entropy_rate"]), ("invN_sc", 1.0 / data["mean_length"])):
        sd = col.std(ddof=1) if len(col) > 1 else 0.0
        data[out] = (col - col.mean()) / sd if sd > 0 else 0.0
    return data, both, single


_BETA_DIFFERENCES = [
    "no random intercept for prompt: prompt-clustered (sandwich) standard errors instead",
    "family enters the mean model as fixed effects instead of a random intercept (1|family)",
    "natural splines: same function space as R's ns() (same knots), different basis, so "
    "only the spline-free terms (R_sc, R_sc:fine_tuned, task, …) are comparable term by term",
]


def beta_regression(panel: pd.DataFrame, level: float = 0.95, cluster: bool = True,
                    maxiter: int = 2000) -> BetaResult:
    """Beta regression (logit mean, log precision) on ``D`` with statsmodels ``BetaModel``.

    Mean: ``R_sc × FT + ns(invN_sc, 4) × FT + task + family``; precision (φ, log link):
    ``FT × task + ns(invN_sc, 3) + R_sc × FT + family`` — the paper's glmmTMB
    specification (METHOD §6) with the differences listed in ``differences``. Only families
    with both variants. SEs are clustered by prompt when ``cluster``. Rows of ``table``
    ``R_sc`` (β) and ``R_sc:fine_tuned`` (η) are on the logit scale per SD of R̄.
    """
    from statsmodels.othermod.betareg import BetaModel

    _check_level(level)
    notes: list[str] = []
    data, both, single = _beta_frame(panel, notes)
    diffs = list(_BETA_DIFFERENCES)
    if not both or len(data) == 0:
        notes.append("no family has both variants: not fitted")
        return BetaResult("statsmodels BetaModel", _empty_beta_table(), len(data), True, False,
                          notes, diffs)
    mean_x, prec_x = _beta_designs(data, notes)
    drop_m, drop_p = _aliased(mean_x), _aliased(prec_x)
    if drop_m:
        notes.append(f"mean model: not identifiable, dropped: {', '.join(drop_m)}")
        mean_x = mean_x.drop(columns=drop_m)
    if drop_p:
        notes.append(f"dispersion model: not identifiable, dropped: {', '.join(drop_p)}")
        prec_x = prec_x.drop(columns=drop_p)
    k = mean_x.shape[1] + prec_x.shape[1]
    if len(data) - k < 2:
        notes.append(f"too few rows ({len(data)}) for {k} coefficients: not fitted")
        return BetaResult("statsmodels BetaModel", _empty_beta_table(), len(data), True, False,
                          notes, diffs)
    groups = pd.factorize(data["prompt_uid"])[0]
    if cluster and groups.max() + 1 <= k:
        notes.append(f"only {groups.max() + 1} prompt clusters for {k} coefficients: the "
                     "clustered covariance is rank-deficient and its SEs are unreliable")
    fit_kw = dict(cov_type="cluster", cov_kwds={"groups": groups}) if cluster else {}
    if not cluster:
        diffs[0] = "no random intercept for prompt and no clustering: model-based SEs"
    model = BetaModel(data["D"].to_numpy(), mean_x, exog_precision=prec_x)
    try:
        res, converged, caught = _fit_beta(model, maxiter, fit_kw)
    except (np.linalg.LinAlgError, ValueError) as exc:
        notes.append(f"fit failed: {type(exc).__name__}: {exc}")
        return BetaResult("statsmodels BetaModel", _empty_beta_table(), len(data), True,
                          False, notes, diffs, model=model)
    if _warning_notes(caught, notes):
        converged = False
    if not converged and not any("converge" in n for n in notes):
        notes.append("the optimiser did not converge: estimates are unreliable")
    params = pd.Series(np.asarray(res.params), index=[*mean_x.columns, *prec_x.columns])
    bse = pd.Series(np.asarray(res.bse), index=params.index)
    table = _wald_table(params, bse, level)
    table.insert(0, "part", ["mean"] * mean_x.shape[1] + ["dispersion"] * prec_x.shape[1])
    table.index = [*mean_x.columns, *prec_x.columns]
    table.index.name = "term"
    table.loc[table["part"] == "dispersion", "symbol"] = ""
    return BetaResult("statsmodels BetaModel", table, len(data), True, converged, notes, diffs,
                      loglik=float(res.llf), model=res)


def _fit_beta(model, maxiter: int, fit_kw: dict):
    """BFGS; when it stops short (often precision loss at the optimum), polish with Newton
    from its end point and keep Newton's fit if it converged to at least the same
    likelihood. Returns the fit, whether it converged, and the warnings of the kept fit."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = model.fit(maxiter=maxiter, disp=False, **fit_kw)
    if res.mle_retvals.get("converged", False):
        return res, True, caught
    with warnings.catch_warnings(record=True) as caught2:
        warnings.simplefilter("always")
        try:
            polished = model.fit(start_params=res.params, method="newton", maxiter=100,
                                 disp=False, **fit_kw)
        except (np.linalg.LinAlgError, ValueError):
            polished = None
    if (polished is not None and polished.mle_retvals.get("converged", False)
            and polished.llf >= res.llf - 1e-6 and np.all(np.isfinite(polished.bse))):
        return polished, True, caught2
    return res, False, caught


def _empty_beta_table() -> pd.DataFrame:
    return pd.DataFrame(columns=["part", *_TABLE_COLUMNS], index=pd.Index([], name="term"))


def _beta_designs(data: pd.DataFrame, notes: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    ft = data["fine_tuned"].to_numpy(dtype=np.float64)
    r = data["R_sc"].to_numpy(dtype=np.float64)
    inv = data["invN_sc"].to_numpy(dtype=np.float64)
    tasks = pd.get_dummies(data["task"], prefix="task", prefix_sep="[T.", drop_first=True,
                           dtype=float)
    tasks.columns = [c + "]" for c in tasks.columns]
    fams = pd.get_dummies(data["family"], prefix="family", prefix_sep="[T.", drop_first=True,
                          dtype=float)
    fams.columns = [c + "]" for c in fams.columns]
    if tasks.shape[1] == 0:
        notes.append("one task: no task effects (mean and dispersion)")
    if fams.shape[1] == 0:
        notes.append("one family: no family effects (mean and dispersion)")
    ns4 = _natural_spline(inv, 4) if np.ptp(inv) > 0 else np.zeros((len(inv), 0))
    ns3 = _natural_spline(inv, 3) if np.ptp(inv) > 0 else np.zeros((len(inv), 0))
    if ns4.shape[1] == 0:
        notes.append("mean length constant: no length spline")
    mean_x = pd.DataFrame({"Intercept": 1.0, "R_sc": r, "fine_tuned": ft, "R_sc:fine_tuned": r * ft},
                          index=data.index)
    for j in range(ns4.shape[1]):
        mean_x[f"ns(invN_sc, 4){j + 1}"] = ns4[:, j]
    for j in range(ns4.shape[1]):
        mean_x[f"ns(invN_sc, 4){j + 1}:fine_tuned"] = ns4[:, j] * ft
    mean_x = pd.concat([mean_x, tasks, fams], axis=1)
    prec_x = pd.DataFrame({"Intercept": 1.0, "fine_tuned": ft}, index=data.index)
    prec_x = pd.concat([prec_x, tasks, tasks.mul(ft, axis=0).add_suffix(":fine_tuned")], axis=1)
    for j in range(ns3.shape[1]):
        prec_x[f"ns(invN_sc, 3){j + 1}"] = ns3[:, j]
    prec_x["R_sc"] = r
    prec_x["R_sc:fine_tuned"] = r * ft
    prec_x = pd.concat([prec_x, fams], axis=1)
    return mean_x, prec_x


# --------------------------------------------------------------------- the R path

_R_SCRIPT = r"""
args <- commandArgs(trailingOnly = TRUE)
suppressPackageStartupMessages({library(glmmTMB); library(splines)})
d <- read.csv(args[1], stringsAsFactors = FALSE)
d$task <- factor(d$task); d$family <- factor(d$family); d$prompt_uid <- factor(d$prompt_uid)
one_task <- nlevels(d$task) < 2; one_family <- nlevels(d$family) < 2
cond <- "D ~ R_sc * fine_tuned + ns(invN_sc, df = 4) * fine_tuned"
if (!one_task) cond <- paste(cond, "+ task")
cond <- paste(cond, "+ (1 | prompt_uid)")
if (!one_family) cond <- paste(cond, "+ (1 | family)")
disp <- if (one_task) "~ fine_tuned" else "~ fine_tuned * task"
disp <- paste(disp, "+ ns(invN_sc, df = 3) + R_sc * fine_tuned")
if (!one_family) disp <- paste(disp, "+ family")
msgs <- character(0)
fit <- withCallingHandlers(
  glmmTMB(as.formula(cond), dispformula = as.formula(disp), data = d,
          family = beta_family(link = "logit")),
  warning = function(w) { msgs <<- c(msgs, conditionMessage(w)); invokeRestart("muffleWarning") })
s <- summary(fit)$coefficients
out <- function(m, part) data.frame(term = rownames(m), part = part, estimate = m[, 1],
                                    se = m[, 2], row.names = NULL)
res <- rbind(out(s$cond, "mean"), out(s$disp, "dispersion"))
write.csv(res, args[2], row.names = FALSE)
conv <- isTRUE(fit$fit$convergence == 0) && isTRUE(fit$sdr$pdHess)
info <- data.frame(converged = conv, loglik = as.numeric(logLik(fit)),
                   formula = cond, dispformula = disp,
                   messages = paste(unique(msgs), collapse = " | "))
write.csv(info, args[3], row.names = FALSE)
"""


@functools.lru_cache(maxsize=8)
def r_glmmtmb_available(rscript: str = "Rscript") -> tuple[bool, str]:
    """Whether ``Rscript`` and the R package glmmTMB can be used, and why not if not
    (checked once per process and executable name)."""
    exe = shutil.which(rscript)
    if exe is None:
        return False, (f"{rscript} not found: install R (Debian: apt-get install r-base-core "
                       "r-cran-glmmtmb) to run the paper's glmmTMB specification")
    try:
        proc = subprocess.run([exe, "-e", "suppressPackageStartupMessages(library(glmmTMB))"],
                              capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"cannot run {rscript}: {exc}"
    if proc.returncode != 0:
        return False, ("the R package glmmTMB is not installed (Debian: apt-get install "
                       "r-cran-glmmtmb; or install.packages('glmmTMB'))")
    return True, ""


def fit_beta_glmm_r(panel: pd.DataFrame, rscript: str = "Rscript", level: float = 0.95,
                    timeout: float = 600) -> BetaResult:
    """The paper's exact beta GLMM in R (glmmTMB), via a CSV and ``Rscript``.

    Mean: ``logit E[D] ~ R_sc × FT + ns(invN_sc, 4) × FT + task + (1|prompt_uid) +
    (1|family)``; dispersion ``~ FT × task + ns(invN_sc, 3) + R_sc × FT + family``, on the
    same prepared data (families with both variants, D clipped, standardised R_sc and
    invN_sc) as :func:`beta_regression`; terms a design cannot carry (one task / one
    family) are left out with a note. ``FT`` is the 0/1 column, equivalent to R's
    treatment coding of ``variant``. Returns a :class:`BetaResult` with the same table
    layout (``fine_tuned``, ``R_sc:fine_tuned``, …), or ``available=False`` with the
    reason when R or glmmTMB is missing. Python never requires R.
    """
    _check_level(level)
    notes: list[str] = []
    ok, why = r_glmmtmb_available(rscript)
    if not ok:
        return BetaResult("R glmmTMB", _empty_beta_table(), 0, False, False, [why])
    data, both, single = _beta_frame(panel, notes)
    if not both or len(data) == 0:
        notes.append("no family has both variants: not fitted")
        return BetaResult("R glmmTMB", _empty_beta_table(), len(data), True, False, notes)
    if data["task"].nunique() < 2:
        notes.append("one task: no task effects (mean and dispersion)")
    if data["family"].nunique() < 2:
        notes.append("one family: no (1|family) and no family dispersion effects")
    cols = ["D", "R_sc", "invN_sc", "fine_tuned", "task", "family", "prompt_uid"]
    with tempfile.TemporaryDirectory(prefix="canopy-glmmtmb-") as tmp:
        tmp = Path(tmp)
        data[cols].to_csv(tmp / "panel.csv", index=False)
        (tmp / "fit.R").write_text(_R_SCRIPT)
        try:
            proc = subprocess.run([shutil.which(rscript), str(tmp / "fit.R"),
                                   str(tmp / "panel.csv"), str(tmp / "coef.csv"),
                                   str(tmp / "info.csv")], capture_output=True, text=True,
                                  timeout=timeout, env={**os.environ, "LC_ALL": "C"})
        except subprocess.TimeoutExpired:
            notes.append(f"Rscript did not finish within {timeout:g} s: not fitted")
            return BetaResult("R glmmTMB", _empty_beta_table(), len(data), True, False, notes)
        if proc.returncode != 0 or not (tmp / "coef.csv").exists():
            err = (proc.stderr.strip().splitlines() or ["no message"])[-1]
            notes.append(f"glmmTMB fit failed: {err}")
            return BetaResult("R glmmTMB", _empty_beta_table(), len(data), True, False, notes)
        coef = pd.read_csv(tmp / "coef.csv")
        info = pd.read_csv(tmp / "info.csv", keep_default_na=False).iloc[0]
    coef["term"] = coef["term"].map(_r_term)
    coef = coef.set_index("term")
    table = pd.concat([
        _wald_table(g["estimate"], g["se"], level).assign(part=part)
        for part, g in coef.groupby("part", sort=False)])
    table = table[["part", *_TABLE_COLUMNS]]
    table.loc[table["part"] == "dispersion", "symbol"] = ""
    table.index.name = "term"
    converged = str(info["converged"]).upper() == "TRUE"
    if info["messages"]:
        notes.append(f"glmmTMB warned: {info['messages']}")
    if not converged:
        notes.append("glmmTMB did not converge or its Hessian is not positive definite")
    notes.append(f"R formula: {info['formula']}; dispformula: {info['dispformula']}")
    return BetaResult("R glmmTMB", table, len(data), True, converged, notes,
                      loglik=float(pd.to_numeric(info["loglik"], errors="coerce")))


def _r_term(term: str) -> str:
    """R coefficient names → the names of :func:`beta_regression`."""
    t = term.replace("(Intercept)", "Intercept")
    t = t.replace("ns(invN_sc, df = 4)", "ns(invN_sc, 4)").replace("ns(invN_sc, df = 3)",
                                                                    "ns(invN_sc, 3)")
    parts = []
    for p in t.split(":"):
        for factor in ("task", "family"):
            if p.startswith(factor) and not p.startswith(factor + "["):
                p = f"{factor}[T.{p[len(factor):]}]"
        parts.append(p)
    # put fine_tuned last, as in the Python names
    if "fine_tuned" in parts and len(parts) == 2 and parts[0] == "fine_tuned":
        parts = parts[::-1]
    return ":".join(parts)


# ------------------------------------------------------------------ simulation


def simulate_panel(n_prompts: int = 40, n_tasks: int = 2, n_families: int = 2,
                   beta: float = 0.08, eta: float = 0.16, tau: float = -0.1,
                   gamma: float = -5e-4, curvature: float = 0.0, prompt_sd: float = 0.05,
                   noise_sd: float = 0.03, rate_sd: float = 0.3,
                   length_confounding: float = 0.6, single_variant_families: int = 0,
                   seed: int | None = 0) -> pd.DataFrame:
    """A synthetic panel with known coefficients, for tests and the simulation study.

    Each prompt ``p`` has a latent openness ``z_p ~ N(0, 1)`` that raises both its entropy
    rate and (with strength ``length_confounding``) its length, so omitting ``N̄`` would
    bias the slope; and a random intercept ``u_p ~ N(0, prompt_sd²)`` independent of the
    regressors. For every family ``f`` and variant:

    - ``R̄ = 1.5 + 0.1 f + 0.15 FT + rate_sd (0.7 z_p + 0.7 ξ)``, ``ξ ~ N(0, 1)``;
    - ``N̄ = 120 exp(0.4 length_confounding z_p + 0.25 ν)`` tokens, ``ν ~ N(0, 1)``;
    - ``D = 0.25 + β R̄ + τ FT + η R̄ FT + γ N̄ + curvature (R̄ − 1.5)² + 0.03 task
      − 0.02 f + u_p + ε``, ``ε ~ N(0, noise_sd²)``.

    The last ``single_variant_families`` families have the base variant only. Truth is in
    ``panel.attrs["truth"]`` (``beta, eta, tau, gamma, ratio, curvature``).
    """
    if n_prompts < 1 or n_tasks < 1 or n_families < 1:
        raise ValueError("n_prompts, n_tasks and n_families must be at least 1")
    if not 0 <= single_variant_families <= n_families:
        raise ValueError("single_variant_families must be between 0 and n_families")
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n_prompts)
    u = rng.normal(scale=prompt_sd, size=n_prompts)
    task_idx = np.arange(n_prompts) % n_tasks
    frames = []
    for f in range(n_families):
        variants = (0,) if f >= n_families - single_variant_families else (0, 1)
        for ft in variants:
            rate = 1.5 + 0.1 * f + 0.15 * ft + rate_sd * (0.7 * z + 0.7 * rng.normal(size=n_prompts))
            length = 120 * np.exp(0.4 * length_confounding * z + 0.25 * rng.normal(size=n_prompts))
            d = (0.25 + beta * rate + tau * ft + eta * rate * ft + gamma * length
                 + curvature * (rate - 1.5) ** 2 + 0.03 * task_idx - 0.02 * f + u
                 + rng.normal(scale=noise_sd, size=n_prompts))
            frames.append(pd.DataFrame({
                "model": f"fam{f}-{'ft' if ft else 'base'}", "family": f"fam{f}",
                "variant": "fine-tuned" if ft else "base", "task": [f"task{t}" for t in task_idx],
                "prompt_id": np.arange(n_prompts), "fine_tuned": ft,
                "diversity": d, "mean_entropy_rate": rate, "mean_length": length}))
    panel = pd.concat(frames, ignore_index=True)
    panel.insert(5, "prompt_uid", panel["task"] + "/" + panel["prompt_id"].astype(str))
    panel.attrs["truth"] = {"beta": beta, "eta": eta, "tau": tau, "gamma": gamma,
                            "ratio": (beta + eta) / beta if beta else np.nan,
                            "curvature": curvature}
    return panel


def simulation_study(n_seeds: int = 200, level: float = 0.95, first_seed: int = 0,
                     progress: bool = False, **simulate_kwargs) -> pd.DataFrame:
    """Fit :func:`interaction_regression` to ``n_seeds`` panels of :func:`simulate_panel`.

    One row per seed: ``beta``, ``beta_low``, ``beta_high``, ``eta``, ``eta_low``,
    ``eta_high``, ``ratio``, ``ratio_low``, ``ratio_high``, ``ratio_kind``, the
    ``covers_beta``/``covers_eta``/``covers_ratio`` flags against the truth, and
    ``converged``. The mean of a ``covers_*`` column estimates the coverage, with binomial
    standard error sqrt(c(1−c)/n_seeds). ``simulate_kwargs`` go to :func:`simulate_panel`.
    """
    from tqdm.auto import tqdm

    rows = []
    for seed in tqdm(range(first_seed, first_seed + n_seeds), disable=not progress,
                     desc="simulating"):
        panel = simulate_panel(seed=seed, **simulate_kwargs)
        truth = panel.attrs["truth"]
        res = interaction_regression(panel, level=level)
        row = {"seed": seed, "converged": res.converged}
        for key, term in (("beta", "mean_entropy_rate"), ("eta", "mean_entropy_rate:fine_tuned")):
            if term in res.table.index:
                est, lo, hi = res.table.loc[term, ["estimate", "ci_low", "ci_high"]]
            else:
                est = lo = hi = np.nan
            row.update({key: est, f"{key}_low": lo, f"{key}_high": hi,
                        f"covers_{key}": bool(lo <= truth[key] <= hi)})
        ratio = res.ratio
        row.update(ratio=np.nan if ratio is None else ratio.estimate,
                   ratio_low=np.nan if ratio is None else ratio.ci_low,
                   ratio_high=np.nan if ratio is None else ratio.ci_high,
                   ratio_kind="" if ratio is None else ratio.kind,
                   covers_ratio=bool(ratio is not None and ratio.covers(truth["ratio"])))
        rows.append(row)
    out = pd.DataFrame(rows)
    out.attrs["truth"] = simulate_panel(n_prompts=1, seed=0, **{
        k: v for k, v in simulate_kwargs.items() if k != "n_prompts"}).attrs["truth"]
    return out


# ---------------------------------------------------- simulation summary (chapter 6)

_SIM_PARAMETERS = (("beta", "β"), ("eta", "η"), ("ratio", "(β+η)/β"))


def simulation_summary(study: pd.DataFrame, truth: dict | None = None,
                       level: float = 0.95) -> pd.DataFrame:
    """Summarise :func:`simulation_study`: one row per parameter (β, η, (β+η)/β).

    ``truth`` defaults to ``study.attrs["truth"]``. Columns: ``symbol``, ``truth``,
    ``n_fits`` (seeds with a finite estimate), ``n_converged``, ``mean``, ``median``,
    ``bias`` (mean − truth), ``sd`` (ddof = 1), ``rmse``, ``median_abs_error``,
    ``coverage`` (share of the fits whose interval contains the truth; for the ratio,
    the Fieller set, which covers everything when it is the whole line), ``coverage_se``
    (binomial, sqrt(c(1−c)/n_fits)), ``coverage_check``: ``"nominal"`` when the coverage
    is within two binomial SEs at the nominal rate, sqrt(level(1−level)/n_fits), of
    ``level`` (the intervals' level in the study), else ``"low"`` (intervals too narrow)
    or ``"high"`` (conservative); and ``bounded_share`` (share of bounded intervals; 1
    for β and η). The ratio's mean and RMSE are dominated by the fits where β is near 0
    (the ratio has no finite moments then); read its median and median absolute error.
    NaN where no seed gave an estimate.
    """
    needed = [c for key, _ in _SIM_PARAMETERS for c in (key, f"covers_{key}")]
    require_columns(study, (*needed, "converged", "ratio_kind"), "study",
                    hint="make it with canopy.stats.simulation_study")
    _check_level(level)
    truth = study.attrs.get("truth") if truth is None else truth
    if not truth or any(key not in truth for key, _ in _SIM_PARAMETERS):
        raise ValueError("truth must give beta, eta and ratio (simulation_study stores it in "
                         "study.attrs['truth'])")
    rows = []
    for key, symbol in _SIM_PARAMETERS:
        est = pd.to_numeric(study[key], errors="coerce").to_numpy(dtype=np.float64)
        ok = np.isfinite(est)
        n = int(ok.sum())
        t = float(truth[key])
        e = est[ok]
        covers = study[f"covers_{key}"].to_numpy(dtype=bool)[ok]
        cov = float(covers.mean()) if n else np.nan
        bounded = (float((study["ratio_kind"].to_numpy()[ok] == "bounded").mean())
                   if key == "ratio" and n else (1.0 if n else np.nan))
        rows.append({
            "parameter": key, "symbol": symbol, "truth": t, "n_fits": n,
            "n_converged": int(study["converged"].to_numpy(dtype=bool)[ok].sum()),
            "mean": float(e.mean()) if n else np.nan,
            "median": float(np.median(e)) if n else np.nan,
            "bias": float(e.mean() - t) if n else np.nan,
            "sd": float(e.std(ddof=1)) if n > 1 else np.nan,
            "rmse": float(np.sqrt(np.mean((e - t) ** 2))) if n else np.nan,
            "median_abs_error": float(np.median(np.abs(e - t))) if n else np.nan,
            "coverage": cov,
            "coverage_se": float(np.sqrt(cov * (1 - cov) / n)) if n else np.nan,
            "coverage_check": ("" if not n else "nominal" if abs(cov - level) <= 2 * np.sqrt(
                level * (1 - level) / n) else "low" if cov < level else "high"),
            "bounded_share": bounded,
        })
    return pd.DataFrame(rows).set_index("parameter")
