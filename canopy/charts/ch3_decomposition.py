"""Charts of chapter 3 (Canopy Entropy and its decomposition): the shares of the two
terms, the within/between split of the covariance, and the paired bootstrap's changes.
"""

from __future__ import annotations

from typing import Sequence

import altair as alt
import numpy as np
import pandas as pd

from canopy.tables import require_columns
from canopy.charts.style import COLORS, SHARE_COLORS, WIDTH, task_order

__all__ = ["decomposition_share_chart", "covariance_split_chart", "bootstrap_delta_chart"]


def decomposition_share_chart(pooled: pd.DataFrame,
                              title: str = "CE* = E[N]·E[r] + C: shares of the two terms"
                              ) -> alt.FacetChart:
    """Stacked horizontal bars of ``length_share`` and ``cov_share`` per model, one panel
    per task. ``pooled`` is :func:`canopy.pooling.pool`'s output; a negative covariance
    share is drawn left of zero (the length share then exceeds 100 %). Tooltips give the
    terms in nats and CE*.
    """
    require_columns(pooled, ["model", "task", "canopy_entropy", "length_term", "cov_residual",
                             "length_share", "cov_share"],
                    "decomposition_share_chart", allow_empty=False)
    labels = {"length_share": "length term E[N]·E[r]", "cov_share": "covariance term C"}
    nats = {"length_share": "length_term", "cov_share": "cov_residual"}
    long = pooled.melt(id_vars=["model", "task", "canopy_entropy"],
                       value_vars=list(labels), var_name="term", value_name="share")
    long["nats"] = [pooled.loc[(pooled["model"] == m) & (pooled["task"] == t), nats[k]].iloc[0]
                    for m, t, k in zip(long["model"], long["task"], long["term"])]
    long["term_label"] = long["term"].map(labels)
    tasks = task_order(long["task"])
    return alt.Chart(long).mark_bar().encode(
        y=alt.Y("model:N", title=None),
        x=alt.X("share:Q", title="share of CE*", axis=alt.Axis(format="%")),
        color=alt.Color("term_label:N", title="term",
                        scale=alt.Scale(domain=list(labels.values()), range=SHARE_COLORS)),
        order=alt.Order("term:N"),
        tooltip=[alt.Tooltip("model:N"), alt.Tooltip("task:N"),
                 alt.Tooltip("term_label:N", title="term"),
                 alt.Tooltip("share:Q", format=".1%"),
                 alt.Tooltip("nats:Q", title="term (nats)", format=".3f"),
                 alt.Tooltip("canopy_entropy:Q", title="CE* (nats)", format=".3f")],
    ).properties(width=WIDTH, height=alt.Step(22)).facet(
        row=alt.Row("task:N", title=None, sort=tasks, header=alt.Header(labelAngle=0, labelAlign="left")),
        title=title)


def covariance_split_chart(pooled: pd.DataFrame,
                           title: str = "C = within-prompt + between-prompt covariance"
                           ) -> alt.FacetChart:
    """Grouped bars: the pooled residual ``C`` split into the mean within-prompt
    covariance of N and r and the covariance across prompts of the prompt means (nats),
    one panel per task. ``pooled`` is :func:`canopy.pooling.pool`'s output."""
    require_columns(pooled, ["model", "task", "within_prompt_cov", "between_prompt_cov",
                             "cov_residual"], "covariance_split_chart", allow_empty=False)
    labels = {"within_prompt_cov": "within prompts", "between_prompt_cov": "between prompts"}
    long = pooled.melt(id_vars=["model", "task", "cov_residual"], value_vars=list(labels),
                       var_name="part", value_name="nats")
    long["part_label"] = long["part"].map(labels)
    tasks = task_order(long["task"])
    return alt.Chart(long).mark_bar().encode(
        y=alt.Y("model:N", title=None),
        yOffset=alt.YOffset("part_label:N", sort=list(labels.values())),
        x=alt.X("nats:Q", title="covariance (nats)"),
        color=alt.Color("part_label:N", title="part",
                        scale=alt.Scale(domain=list(labels.values()),
                                        range=[COLORS["summed_entropy"], COLORS["surprisal"]])),
        tooltip=[alt.Tooltip("model:N"), alt.Tooltip("task:N"),
                 alt.Tooltip("part_label:N", title="part"),
                 alt.Tooltip("nats:Q", format=".4f"),
                 alt.Tooltip("cov_residual:Q", title="C (total)", format=".4f")],
    ).properties(width=WIDTH, height=alt.Step(12)).facet(
        row=alt.Row("task:N", title=None, sort=tasks,
                    header=alt.Header(labelAngle=0, labelAlign="left")), title=title)


def bootstrap_delta_chart(boot: pd.DataFrame, metrics: Sequence[str] | None = None,
                          percent: bool = True,
                          title: str = "Fine-tuned vs base (paired bootstrap over prompts)"
                          ) -> alt.LayerChart:
    """Forest plot of the fine-tuned − base change with its bootstrap CI, per task.

    ``boot`` is :func:`canopy.pooling.paired_bootstrap`'s output. ``percent``: plot
    ``pct_delta`` (positive quantities only; others are dropped) instead of ``delta``.
    One row per (metric, task); a rule marks zero change.
    """
    require_columns(boot, ["family", "task", "metric", "delta", "delta_lo", "delta_hi",
                           "pct_delta", "pct_delta_lo", "pct_delta_hi", "base", "fine_tuned"],
                    "bootstrap_delta_chart", allow_empty=False)
    data = boot if metrics is None else boot[boot["metric"].isin(list(metrics))]
    col = "pct_delta" if percent else "delta"
    data = data[np.isfinite(data[col].to_numpy(dtype=np.float64))].copy()
    if data.empty:
        raise ValueError("bootstrap_delta_chart: no metric with a defined "
                         f"{col} (percent changes exist only for positive quantities)")
    data["row"] = data["metric"] + " · " + data["task"]
    order = list(dict.fromkeys(data["row"]))
    x_title = "change, fine-tuned vs base (%)" if percent else "change, fine-tuned − base"
    base = alt.Chart(data)
    tooltip = [alt.Tooltip("family:N"), alt.Tooltip("metric:N"), alt.Tooltip("task:N"),
               alt.Tooltip("base:Q", format=".3f"), alt.Tooltip("fine_tuned:Q", format=".3f"),
               alt.Tooltip(f"{col}:Q", title="change", format=".2f"),
               alt.Tooltip(f"{col}_lo:Q", title="CI low", format=".2f"),
               alt.Tooltip(f"{col}_hi:Q", title="CI high", format=".2f")]
    y = alt.Y("row:N", title=None, sort=order)
    bars = base.mark_rule(strokeWidth=2).encode(
        y=y, x=alt.X(f"{col}_lo:Q", title=x_title), x2=f"{col}_hi:Q",
        color=alt.Color("metric:N", legend=None), tooltip=tooltip)
    points = base.mark_point(filled=True, size=60).encode(
        y=y, x=f"{col}:Q", color=alt.Color("metric:N", legend=None), tooltip=tooltip)
    zero = alt.Chart(pd.DataFrame({"zero": [0.0]})).mark_rule(
        color=COLORS["exact"], strokeDash=[4, 3]).encode(x="zero:Q")
    return alt.layer(zero, bars, points, title=title).properties(
        width=WIDTH, height=alt.Step(18))
