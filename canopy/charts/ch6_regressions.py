"""Charts of chapter 6 (the regressions): coefficients of several fits side by side
and the simulation study's intervals.
"""

from __future__ import annotations

from typing import Sequence

import altair as alt
import numpy as np
import pandas as pd

from canopy.tables import require_columns
from canopy.charts.style import HEIGHT, WIDTH

__all__ = ["coefficient_data", "coefficient_chart", "simulation_intervals", "simulation_chart"]


def coefficient_data(fits: dict, terms: Sequence[str] | None = None) -> pd.DataFrame:
    """Long table of coefficients from several fits, for :func:`coefficient_chart`.

    ``fits`` maps a label to a fitted result with ``to_frame()`` or ``table`` (a
    :class:`canopy.stats.RegressionResult`, ``InteractionResult`` or :class:`canopy.beta.BetaResult`; only
    its ``mean`` part), or directly to such a table. ``terms``: keep these terms (in this
    order; others dropped); default all but the intercept. Columns: ``fit``, ``term``,
    ``symbol``, ``estimate``, ``se``, ``ci_low``, ``ci_high``, ``p``. Unfitted or empty
    fits contribute no rows; the slope-ratio row of an interaction fit is left out.
    """
    if not isinstance(fits, dict) or not fits:
        raise ValueError("fits must be a non-empty dict {label: fitted result or table}")
    frames = []
    for label, fit in fits.items():
        table = fit if isinstance(fit, pd.DataFrame) else getattr(fit, "table", None)
        if not isinstance(table, pd.DataFrame):
            raise ValueError(f"fit {label!r} has no coefficient table")
        table = table.copy()
        if "part" in table.columns:
            table = table[table["part"] == "mean"]
        table = table.drop(index=[t for t in ("slope_ratio",) if t in table.index])
        if table.empty:
            continue
        table.index.name = "term"
        table = table.reset_index()
        table.insert(0, "fit", str(label))
        frames.append(table)
    cols = ["fit", "term", "symbol", "estimate", "se", "ci_low", "ci_high", "p"]
    if not frames:
        return pd.DataFrame(columns=cols)
    out = pd.concat(frames, ignore_index=True)
    for c in cols:
        if c not in out.columns:
            out[c] = np.nan if c != "symbol" else ""
    out["symbol"] = out["symbol"].fillna("").astype(str)
    if terms is None:
        out = out[out["term"] != "Intercept"]
    else:
        order = {t: i for i, t in enumerate(terms)}
        out = out[out["term"].isin(order)]
        out = out.assign(_o=out["term"].map(order)).sort_values(["_o", "fit"], kind="stable").drop(columns="_o")
    return out[cols].reset_index(drop=True)


def coefficient_chart(data: pd.DataFrame, title: str = "Estimates with 95 % confidence intervals"
                      ) -> alt.LayerChart:
    """Forest plot: one row per term (labelled by symbol and term), one colour per fit;
    point = estimate, bar = confidence interval, dashed rule at 0.

    ``data`` is :func:`coefficient_data`'s output. Terms on very different scales share
    one axis; pass ``terms`` to :func:`coefficient_data` to keep comparable ones.
    """
    require_columns(data, ["fit", "term", "symbol", "estimate", "ci_low", "ci_high"],
                    "coefficient data")
    d = data.copy()
    d["label"] = d["term"]  # symbols differ between fits (main vs interaction): label by term
    d = d[np.isfinite(d["estimate"].to_numpy(dtype=np.float64))]
    order = list(dict.fromkeys(d["label"]))
    y = alt.Y("label:N", title=None, sort=order)
    tooltip = [alt.Tooltip("fit:N"), alt.Tooltip("term:N"), alt.Tooltip("symbol:N"),
               alt.Tooltip("estimate:Q", format=".4g"), alt.Tooltip("ci_low:Q", format=".4g"),
               alt.Tooltip("ci_high:Q", format=".4g")]
    if "p" in d.columns:
        tooltip.append(alt.Tooltip("p:Q", format=".3g"))
    color = alt.Color("fit:N", title="fit")
    base = alt.Chart(d)
    bars = base.mark_rule(strokeWidth=2).encode(
        y=y, yOffset=alt.YOffset("fit:N"), x=alt.X("ci_low:Q", title="estimate"), x2="ci_high:Q",
        color=color, tooltip=tooltip)
    points = base.mark_point(filled=True, size=60).encode(
        y=y, yOffset=alt.YOffset("fit:N"), x="estimate:Q", color=color, tooltip=tooltip)
    zero = alt.Chart(pd.DataFrame({"x": [0.0]})).mark_rule(color="#888", strokeDash=[4, 3]).encode(
        x="x:Q")
    return alt.layer(zero, bars, points, title=title).properties(width=WIDTH, height=alt.Step(22))


def simulation_intervals(study: pd.DataFrame, truth: dict | None = None,
                         parameters: Sequence[str] = ("beta", "eta")) -> pd.DataFrame:
    """Long table of the simulation study's intervals, for :func:`simulation_chart`.

    One row per (parameter, seed) with a finite estimate: ``parameter``, ``symbol``,
    ``seed``, ``estimate``, ``ci_low``, ``ci_high``, ``truth``, ``covers`` (bool) and
    ``rank`` (0-based position of the estimate within its parameter, ascending: the
    x axis of a caterpillar plot). ``truth`` defaults to ``study.attrs["truth"]``.
    """
    symbols = {"beta": "β", "eta": "η", "ratio": "(β+η)/β"}
    bad = [p for p in parameters if p not in symbols]
    if bad:
        raise ValueError(f"unknown parameter(s) {bad}; choose from {list(symbols)}")
    require_columns(study, ["seed", *[c for p in parameters
                                      for c in (p, f"{p}_low", f"{p}_high", f"covers_{p}")]],
                    "simulation study")
    truth = study.attrs.get("truth") if truth is None else truth
    if not truth or any(p not in truth for p in parameters):
        raise ValueError("truth must give every parameter (simulation_study stores it in "
                         "study.attrs['truth'])")
    frames = []
    for p in parameters:
        f = pd.DataFrame({"parameter": p, "symbol": symbols[p], "seed": study["seed"].to_numpy(),
                          "estimate": pd.to_numeric(study[p], errors="coerce").to_numpy(dtype=np.float64),
                          "ci_low": pd.to_numeric(study[f"{p}_low"], errors="coerce").to_numpy(dtype=np.float64),
                          "ci_high": pd.to_numeric(study[f"{p}_high"], errors="coerce").to_numpy(dtype=np.float64),
                          "truth": float(truth[p]),
                          "covers": study[f"covers_{p}"].to_numpy(dtype=bool)})
        f = f[np.isfinite(f["estimate"].to_numpy())].sort_values(["estimate", "seed"], kind="stable")
        f["rank"] = np.arange(len(f))
        frames.append(f)
    return pd.concat(frames, ignore_index=True)


def simulation_chart(study: pd.DataFrame, truth: dict | None = None,
                     parameters: Sequence[str] = ("beta", "eta"),
                     title: str = "Simulated fits: intervals sorted by estimate, truth dashed"
                     ) -> alt.HConcatChart:
    """Caterpillar plots, one per parameter: every seed's 95 % interval sorted by its
    estimate, coloured by whether it covers the truth (dashed rule)."""
    data = simulation_intervals(study, truth, parameters)
    panels = []
    for p in parameters:
        d = data[data["parameter"] == p]
        if d.empty:
            continue
        sym = d["symbol"].iloc[0]
        color = alt.Color("covers:N", title="interval covers the truth",
                          scale=alt.Scale(domain=[True, False], range=["#5b8e7d", "#c0504d"]))
        tooltip = [alt.Tooltip("seed:Q"), alt.Tooltip("estimate:Q", format=".4f"),
                   alt.Tooltip("ci_low:Q", format=".4f"), alt.Tooltip("ci_high:Q", format=".4f"),
                   alt.Tooltip("covers:N")]
        x = alt.X("rank:Q", title="seeds, sorted by estimate", axis=alt.Axis(labels=False, ticks=False),
                  scale=alt.Scale(domain=[-1, len(d)], nice=False))
        base = alt.Chart(d)
        bars = base.mark_rule(opacity=0.7).encode(
            x=x, y=alt.Y("ci_low:Q", title=f"{sym}: estimate and 95 % CI",
                         scale=alt.Scale(zero=False)), y2="ci_high:Q", color=color, tooltip=tooltip)
        pts = base.mark_point(filled=True, size=12, color="#222").encode(
            x=x, y="estimate:Q", tooltip=tooltip)
        rule = alt.Chart(pd.DataFrame({"truth": [float(d["truth"].iloc[0])]})).mark_rule(
            strokeDash=[6, 4], color="#222").encode(
            y="truth:Q", tooltip=[alt.Tooltip("truth:Q", title=f"true {sym}", format=".4f")])
        panels.append(alt.layer(bars, pts, rule).properties(width=WIDTH / 2, height=HEIGHT,
                                                            title=f"{sym} (true value dashed)"))
    if not panels:
        raise ValueError("no finite estimates to plot")
    return alt.hconcat(*panels, title=title)
