"""Beta regression on the semantic diversity ``D`` (the bounded-outcome robustness
check of §6 of the book's Method page): statsmodels in Python, and the paper's exact
glmmTMB specification in R when ``Rscript`` with glmmTMB is installed (Python never
requires R).
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

from canopy.fitting import (TABLE_COLUMNS, aliased_columns, check_level, empty_table,
                            notes_html, table_html, wald_table, warning_notes)
from canopy.stats import SYMBOLS, matched_panel

__all__ = ["BETA_CLIP", "BetaResult", "beta_regression", "fit_beta_glmm_r",
           "r_glmmtmb_available"]


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
        return head + table_html(self.table) + notes_html(self.notes) + diff

    def __str__(self) -> str:
        body = self.table.to_string(float_format=lambda v: f"{v:.4g}") if len(self.table) else "(no table)"
        notes = "".join(f"\n  note: {n}" for n in self.notes)
        diffs = "".join(f"\n  differs: {d}" for d in self.differences)
        return f"Beta regression ({self.backend}, n = {self.n_obs})\n{body}{notes}{diffs}"


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
    data, both, single = matched_panel(panel, notes)
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
    specification (Method §6) with the differences listed in ``differences``. Only families
    with both variants. SEs are clustered by prompt when ``cluster``. Rows of ``table``
    ``R_sc`` (β) and ``R_sc:fine_tuned`` (η) are on the logit scale per SD of R̄.
    """
    from statsmodels.othermod.betareg import BetaModel

    check_level(level)
    notes: list[str] = []
    data, both, single = _beta_frame(panel, notes)
    diffs = list(_BETA_DIFFERENCES)
    if not both or len(data) == 0:
        notes.append("no family has both variants: not fitted")
        return BetaResult("statsmodels BetaModel", _empty_beta_table(), len(data), True, False,
                          notes, diffs)
    mean_x, prec_x = _beta_designs(data, notes)
    drop_m, drop_p = aliased_columns(mean_x), aliased_columns(prec_x)
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
    if warning_notes(caught, notes):
        converged = False
    if not converged and not any("converge" in n for n in notes):
        notes.append("the optimiser did not converge: estimates are unreliable")
    params = pd.Series(np.asarray(res.params), index=[*mean_x.columns, *prec_x.columns])
    bse = pd.Series(np.asarray(res.bse), index=params.index)
    table = wald_table(params, bse, level, SYMBOLS)
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
    return empty_table(("part",))


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
    check_level(level)
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
        wald_table(g["estimate"], g["se"], level, SYMBOLS).assign(part=part)
        for part, g in coef.groupby("part", sort=False)])
    table = table[["part", *TABLE_COLUMNS]]
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
