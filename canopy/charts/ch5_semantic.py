"""Charts of chapter 5 (semantic diversity), and the scatter of D against the entropy
rate that chapter 6 shows again by variant.
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from canopy.tables import require_columns
from canopy.charts.style import HEIGHT, VARIANT_COLORS, WIDTH, model_scale, task_order

__all__ = ["semantic_bar_chart", "bucket_diversity_data", "bucket_diversity_chart",
           "length_diversity_chart", "prompt_strip_chart", "rate_diversity_chart"]


_BUCKET_LABELS = {"diversity_short": "short", "diversity_medium": "medium",
                  "diversity_long": "long"}


def semantic_bar_chart(pooled: pd.DataFrame, metric: str = "diversity",
                       title: str | None = None, axis_title: str | None = None) -> alt.Chart:
    """Grouped bars of a pooled semantic measure: one group per task, one bar per model.

    ``pooled`` is :func:`canopy.semantic.pool_semantic`'s output (or any table with
    ``model``, ``task`` and ``metric``). NaN values are left out (no bar).
    """
    require_columns(pooled, ["model", "task", metric], "pooled table")
    data = pooled[["model", "task", metric]].copy()
    data = data[np.isfinite(data[metric].to_numpy(dtype=np.float64))]
    extra = [c for c in ("variant", "n_prompts", "n_rollouts") if c in pooled.columns]
    data = data.join(pooled.loc[data.index, extra])
    tasks = task_order(pooled["task"])
    return alt.Chart(data, title=title or f"{metric} by model and task").mark_bar().encode(
        x=alt.X("task:N", title="task", sort=tasks, axis=alt.Axis(labelAngle=0)),
        xOffset=alt.XOffset("model:N"),
        y=alt.Y(f"{metric}:Q", title=axis_title or metric),
        color=alt.Color("model:N", title="model", scale=model_scale(pooled)),
        tooltip=[alt.Tooltip("model:N"), alt.Tooltip("task:N"),
                 alt.Tooltip(f"{metric}:Q", format=".4f"),
                 *[alt.Tooltip(f"{c}:{'N' if c == 'variant' else 'Q'}") for c in extra]],
    ).properties(width=WIDTH, height=HEIGHT)


def bucket_diversity_data(pooled: pd.DataFrame, task: str = "all") -> pd.DataFrame:
    """Long table of the length-bucketed diversity of one ``task`` (``"all"``: pooled
    over tasks): one row per (model, bucket) with ``bucket`` (short, medium, long),
    ``bucket_order`` (0, 1, 2) and ``diversity`` (NaN kept: a bucket of < 2 rollouts)."""
    require_columns(pooled, ["model", "task", *_BUCKET_LABELS], "pooled table")
    rows = pooled[pooled["task"] == task]
    if rows.empty:
        raise ValueError(f"no rows for task {task!r}; tasks: {sorted(pooled['task'].unique())}")
    long = rows[["model", *_BUCKET_LABELS]].melt(
        id_vars=["model"], value_vars=list(_BUCKET_LABELS), var_name="column",
                     value_name="diversity")
    long["bucket"] = long["column"].map(_BUCKET_LABELS)
    long["bucket_order"] = long["column"].map({c: i for i, c in enumerate(_BUCKET_LABELS)})
    return (long.drop(columns="column").sort_values(["model", "bucket_order"])
            .reset_index(drop=True)[["model", "bucket", "bucket_order", "diversity"]])


def bucket_diversity_chart(pooled: pd.DataFrame, task: str = "all",
                           title: str = "Diversity within length buckets") -> alt.LayerChart:
    """Lines and points of ``D`` in the short, medium and long thirds of each prompt's
    rollouts, one line per model (:func:`bucket_diversity_data`)."""
    data = bucket_diversity_data(pooled, task)
    scale = model_scale(data)
    data = data[np.isfinite(data["diversity"].to_numpy(dtype=np.float64))]
    enc = dict(x=alt.X("bucket:N", title="length bucket (thirds of each prompt's rollouts)",
                       sort=list(_BUCKET_LABELS.values()), axis=alt.Axis(labelAngle=0),
                       scale=alt.Scale(domain=list(_BUCKET_LABELS.values()))),
               y=alt.Y("diversity:Q", title="D within the bucket", scale=alt.Scale(zero=False)),
               color=alt.Color("model:N", title="model", scale=scale),
               tooltip=[alt.Tooltip("model:N"), alt.Tooltip("bucket:N"),
                        alt.Tooltip("diversity:Q", title="D", format=".4f")])
    base = alt.Chart(data)
    return alt.layer(base.mark_line(), base.mark_point(filled=True, size=60),
                     title=title).encode(**enc).properties(width=WIDTH, height=HEIGHT)


def length_diversity_chart(pooled: pd.DataFrame, measure: str = "pearson",
                           title: str | None = None) -> alt.LayerChart:
    """Pooled co-movement of length and per-rollout diversity, ρ(N, d), per model and
    task (points on [−1, 1], a rule at 0). ``measure``: pearson, spearman or kendall."""
    if measure not in ("pearson", "spearman", "kendall"):
        raise ValueError(f"measure must be 'pearson', 'spearman' or 'kendall', got {measure!r}")
    col = f"length_diversity_{measure}"
    require_columns(pooled, ["model", "task", col], "pooled table")
    data = pooled[["model", "task", col]].rename(columns={col: "value"})
    scale = model_scale(data)
    data = data[np.isfinite(data["value"].to_numpy(dtype=np.float64))]
    points = alt.Chart(data).mark_point(filled=True, size=80).encode(
        x=alt.X("value:Q", title=f"ρ(N, d) ({measure}, pooled over prompts)",
                scale=alt.Scale(domain=[-1, 1])),
        y=alt.Y("task:N", title="task"),
        yOffset=alt.YOffset("model:N"),
        color=alt.Color("model:N", title="model", scale=scale),
        tooltip=[alt.Tooltip("model:N"), alt.Tooltip("task:N"),
                 alt.Tooltip("value:Q", title=f"ρ(N, d) {measure}", format=".3f")])
    zero = alt.Chart(pd.DataFrame({"x": [0.0]})).mark_rule(color="#888", strokeDash=[4, 3]).encode(
        x="x:Q")
    return alt.layer(zero, points, title=title or "Length and per-rollout diversity").properties(
        width=WIDTH, height=alt.Step(16))


def prompt_strip_chart(table: pd.DataFrame, metric: str = "diversity",
                       title: str | None = None, axis_title: str | None = None) -> alt.Chart:
    """One point per prompt: ``metric`` against model, faceted by nothing, coloured by
    task — shows the spread behind the pooled means. ``table``: per-prompt rows
    (:func:`canopy.semantic.semantic_metrics` or the panel)."""
    require_columns(table, ["model", "task", "prompt_id", metric], "per-prompt table")
    data = table[["model", "task", "prompt_id", metric]].copy()
    data["prompt_id"] = data["prompt_id"].astype(str)
    data = data[np.isfinite(data[metric].to_numpy(dtype=np.float64))]
    return alt.Chart(data, title=title or f"{metric} per prompt").mark_tick(
        thickness=2, size=18).encode(
        y=alt.Y("model:N", title=None),
        x=alt.X(f"{metric}:Q", title=axis_title or metric, scale=alt.Scale(zero=False)),
        color=alt.Color("task:N", title="task"),
        tooltip=[alt.Tooltip("model:N"), alt.Tooltip("task:N"), alt.Tooltip("prompt_id:N"),
                 alt.Tooltip(f"{metric}:Q", format=".4f")],
    ).properties(width=WIDTH, height=alt.Step(40))


def rate_diversity_chart(panel: pd.DataFrame, color: str = "model", fit_lines: bool = True,
                         title: str = "Diversity against entropy rate, one point per prompt"
                         ) -> alt.Chart | alt.LayerChart:
    """Scatter of ``D`` against ``R̄`` (one point per prompt and model), coloured by
    ``color`` (``model`` or ``variant``); with ``fit_lines`` a least-squares line per
    colour group (a raw line: no length, task or prompt adjustment — the regressions of
    chapter 6 make those)."""
    require_columns(panel, ["model", "variant", "task", "prompt_id", "diversity",
                            "mean_entropy_rate", "mean_length", color], "panel")
    data = panel[list(dict.fromkeys(["model", "variant", "task", "prompt_id", "diversity",
                                     "mean_entropy_rate", "mean_length", color]))].copy()
    data["prompt_id"] = data["prompt_id"].astype(str)
    data = data[np.isfinite(data[["diversity", "mean_entropy_rate"]].to_numpy(dtype=np.float64)).all(axis=1)]
    scale = (alt.Scale(domain=list(VARIANT_COLORS), range=list(VARIANT_COLORS.values()))
             if color == "variant" else alt.Scale(domain=sorted(data[color].astype(str).unique())))
    enc_color = alt.Color(f"{color}:N", title=color, scale=scale)
    x = alt.X("mean_entropy_rate:Q", title="R̄ = E[r] (nats per token)", scale=alt.Scale(zero=False))
    y = alt.Y("diversity:Q", title="D (semantic diversity)", scale=alt.Scale(zero=False))
    points = alt.Chart(data).mark_circle(size=60, opacity=0.75).encode(
        x=x, y=y, color=enc_color,
        tooltip=[alt.Tooltip("model:N"), alt.Tooltip("task:N"), alt.Tooltip("prompt_id:N"),
                 alt.Tooltip("diversity:Q", title="D", format=".4f"),
                 alt.Tooltip("mean_entropy_rate:Q", title="R̄", format=".4f"),
                 alt.Tooltip("mean_length:Q", title="N̄", format=".1f")])
    if not fit_lines:
        return points.properties(title=title, width=WIDTH, height=HEIGHT)
    lines = alt.Chart(data).transform_regression(
        "mean_entropy_rate", "diversity", groupby=[color]).mark_line().encode(
        x="mean_entropy_rate:Q", y="diversity:Q", color=enc_color,
        tooltip=[alt.Tooltip(f"{color}:N", title=f"least-squares line: {color}")])
    return alt.layer(points, lines, title=title).properties(width=WIDTH, height=HEIGHT)
