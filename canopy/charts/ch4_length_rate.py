"""Charts of chapter 4 (length and entropy rate): pooled correlations with intervals,
rate against length per rollout, and the per-position profiles.
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from canopy.tables import require_columns
from canopy.entropy import entropy_rate
from canopy.charts.style import COLORS, HEIGHT, WIDTH, task_order, thin

__all__ = ["interval_chart", "rate_length_data", "rate_length_scatter", "position_chart",
           "stop_probability_chart"]


def interval_chart(table: pd.DataFrame, title: str = "Pooled estimates with bootstrap CIs",
                   zero: bool = True) -> alt.FacetChart:
    """Estimates with ``[lo, hi]`` intervals per model and task, one panel per metric.

    ``table`` is :func:`canopy.pooling.pooled_bootstrap`'s output (columns ``model``,
    ``task``, ``metric``, ``estimate``, ``lo``, ``hi``, ``n_prompts``). With ``zero`` a
    dashed rule marks 0 (for correlations).
    """
    require_columns(table, ["model", "task", "metric", "estimate", "lo", "hi", "n_prompts"],
                    "interval_chart", allow_empty=False)
    data = table.copy()
    tasks = task_order(data["task"])
    tooltip = [alt.Tooltip("model:N"), alt.Tooltip("task:N"), alt.Tooltip("metric:N"),
               alt.Tooltip("estimate:Q", format=".3f"), alt.Tooltip("lo:Q", format=".3f"),
               alt.Tooltip("hi:Q", format=".3f"), alt.Tooltip("n_prompts:Q", title="prompts")]
    y = alt.Y("task:N", title=None, sort=tasks)
    y_off = alt.YOffset("model:N")
    color = alt.Color("model:N", title="model")
    base = alt.Chart()  # data on the facet, so that each panel gets its metric only
    layers = []
    if zero:
        layers.append(base.mark_rule(color=COLORS["exact"], strokeDash=[4, 3])
                      .encode(x=alt.datum(0)))
    layers.append(base.mark_rule(strokeWidth=2).encode(
        y=y, yOffset=y_off, x=alt.X("lo:Q", title="estimate and 95 % interval"), x2="hi:Q",
        color=color, tooltip=tooltip))
    layers.append(base.mark_point(filled=True, size=45).encode(
        y=y, yOffset=y_off, x="estimate:Q", color=color, tooltip=tooltip))
    return alt.layer(*layers).properties(width=260, height=alt.Step(12)).facet(
        column=alt.Column("metric:N", title=None), data=data, title=title)


def rate_length_data(rollouts: pd.DataFrame, prompt_text=None, centre: bool = False,
                     snippet: int = 70) -> pd.DataFrame:
    """Points for :func:`rate_length_scatter`: one row per rollout with ``model``,
    ``task``, ``prompt_id``, ``rollout_id``, ``length``, ``entropy_rate`` = H/N,
    ``truncated`` and ``prompt`` (the first ``snippet`` characters of the prompt text).

    ``prompt_text``: a mapping ``(task, prompt_id) → text`` (e.g. from
    ``Experiment.prompts()``); default: the rendered ``prompt_text`` column when present.
    With ``centre`` the prompt means are subtracted (``length`` and ``entropy_rate``
    become deviations from the prompt's E[N] and E[r]): the within-prompt co-movement
    that the pooled correlations measure.
    """
    require_columns(rollouts, ["model", "task", "prompt_id", "rollout_id", "length",
                               "summed_entropy", "truncated"],
                    "rate_length_data", allow_empty=False)
    if snippet < 1:
        raise ValueError("snippet must be ≥ 1 character")
    data = rollouts[["model", "task", "prompt_id", "rollout_id", "length", "truncated"]].copy()
    data["prompt_id"] = data["prompt_id"].astype(str)
    data["length"] = data["length"].astype(np.float64)
    data["entropy_rate"] = entropy_rate(rollouts["summed_entropy"].to_numpy(np.float64),
                                        data["length"])
    data["truncated"] = data["truncated"].astype(bool)
    if prompt_text is not None:
        texts = [str(prompt_text.get((t, p), "")) for t, p in zip(data["task"], data["prompt_id"])]
    elif "prompt_text" in rollouts.columns:
        texts = [str(t) for t in rollouts["prompt_text"]]
    else:
        texts = [""] * len(data)
    data["prompt"] = [" ".join(t.split())[:snippet] + ("…" if len(" ".join(t.split())) > snippet
                                                        else "") for t in texts]
    if centre:
        keys = ["model", "task", "prompt_id"]
        for col in ("length", "entropy_rate"):
            data[col] = data[col] - data.groupby(keys)[col].transform("mean")
    return data.reset_index(drop=True)


def rate_length_scatter(data: pd.DataFrame, centred: bool = False,
                        title: str = "Entropy rate r against length N, one point per rollout"
                        ) -> alt.FacetChart:
    """Scatter of ``entropy_rate`` against ``length`` per model (one panel each), coloured
    by task, truncated rollouts as open circles. ``data`` is :func:`rate_length_data`'s
    output; ``centred`` only changes the axis titles (pass the same as ``centre``)."""
    require_columns(data, ["model", "task", "prompt_id", "rollout_id", "length", "entropy_rate",
                           "truncated", "prompt"], "rate_length_scatter", allow_empty=False)
    x_title = "N − prompt mean of N" if centred else "length N (tokens)"
    y_title = "r − prompt mean of r" if centred else "entropy rate r = H/N (nats/token)"
    data, note = thin(data)
    title += note
    return alt.Chart(data).mark_point(opacity=0.7, size=30).encode(
        x=alt.X("length:Q", title=x_title, scale=alt.Scale(zero=False)),
        y=alt.Y("entropy_rate:Q", title=y_title, scale=alt.Scale(zero=False)),
        color=alt.Color("task:N", title="task"),
        fill=alt.condition("datum.truncated", alt.value("transparent"), alt.Color("task:N")),
        tooltip=[alt.Tooltip("model:N"), alt.Tooltip("task:N"),
                 alt.Tooltip("prompt_id:N", title="prompt"),
                 alt.Tooltip("prompt:N", title="prompt text"),
                 alt.Tooltip("rollout_id:Q", title="rollout"),
                 alt.Tooltip("length:Q", title="N", format=".1f"),
                 alt.Tooltip("entropy_rate:Q", title="r", format=".3f"),
                 alt.Tooltip("truncated:N")],
    ).properties(width=240, height=200).facet(
        column=alt.Column("model:N", title=None), title=title)


_PROFILE_TITLES = {
    "running_entropy_rate": "running entropy rate Σ_{s≤t} h_s / t (nats/token)",
    "mean_step_entropy": "mean step entropy h_t (nats)",
    "mean_step_entropy_raw": "mean raw entropy h_t^raw (nats)",
    "mean_stop_prob": "mean P(stop at t), raw model",
    "stop_fraction": "fraction of active rollouts that stop at t",
}


def position_chart(profile: pd.DataFrame, value: str = "running_entropy_rate",
                   task: str = "all", min_active: int = 1,
                   title: str | None = None) -> alt.VConcatChart:
    """A per-position curve per model (top) over the number of rollouts still active
    (bottom), for one ``task`` (``"all"`` pools every task).

    ``profile`` is :func:`canopy.entropy.position_profile`'s output; ``value`` one of its
    columns; positions with fewer than ``min_active`` active rollouts are left out (a
    mean over very few rollouts is noise).
    """
    require_columns(profile, ["model", "task", "position", "n_active", value],
                    "position_chart", allow_empty=False)
    data = profile[(profile["task"] == task) & (profile["n_active"] >= min_active)]
    if data.empty:
        raise ValueError(f"position_chart: no positions for task {task!r} with at least "
                         f"{min_active} active rollouts")
    data, note = thin(data)
    tooltip = [alt.Tooltip("model:N"), alt.Tooltip("position:Q", title="t"),
               alt.Tooltip(f"{value}:Q", title=value, format=".3f"),
               alt.Tooltip("n_active:Q", title="active rollouts")]
    x = alt.X("position:Q", title="token position t")
    color = alt.Color("model:N", title="model")
    top = alt.Chart(data).mark_line(point=alt.OverlayMarkDef(size=12)).encode(
        x=x, y=alt.Y(f"{value}:Q", title=_PROFILE_TITLES.get(value, value),
                     scale=alt.Scale(zero=False)),
        color=color, tooltip=tooltip).properties(width=WIDTH, height=HEIGHT)
    bottom = alt.Chart(data).mark_line(interpolate="step-after").encode(
        x=x, y=alt.Y("n_active:Q", title="active rollouts"), color=color,
        tooltip=tooltip).properties(width=WIDTH, height=110)
    return alt.vconcat(top, bottom, title=(title or f"{_PROFILE_TITLES.get(value, value)}"
                                           f" by position (task: {task})") + note)


def stop_probability_chart(profile: pd.DataFrame, task: str = "all", min_active: int = 1,
                           log_scale: bool = True,
                           title: str | None = None) -> alt.LayerChart:
    """The raw model's mean probability of stopping at each position (lines), and the
    fraction of active rollouts that did stop there (points, only where > 0), per model.

    ``profile`` is :func:`canopy.entropy.position_profile`'s output. ``log_scale``: a
    log y axis (stop probabilities span orders of magnitude).
    """
    require_columns(profile, ["model", "task", "position", "n_active", "n_stopped",
                              "mean_stop_prob", "stop_fraction"],
                    "stop_probability_chart", allow_empty=False)
    data = profile[(profile["task"] == task) & (profile["n_active"] >= min_active)]
    if data.empty:
        raise ValueError(f"stop_probability_chart: no positions for task {task!r} with at "
                         f"least {min_active} active rollouts")
    data = data.assign(mean_stop_prob=data["mean_stop_prob"].clip(lower=1e-12))
    data, note = thin(data)
    scale = alt.Scale(type="log") if log_scale else alt.Scale()
    tooltip = [alt.Tooltip("model:N"), alt.Tooltip("position:Q", title="t"),
               alt.Tooltip("mean_stop_prob:Q", title="mean P(stop)", format=".2e"),
               alt.Tooltip("stop_fraction:Q", title="stopped here", format=".3f"),
               alt.Tooltip("n_stopped:Q", title="rollouts stopping"),
               alt.Tooltip("n_active:Q", title="active rollouts")]
    x = alt.X("position:Q", title="token position t")
    color = alt.Color("model:N", title="model")
    lines = alt.Chart(data).mark_line().encode(
        x=x, y=alt.Y("mean_stop_prob:Q", title="probability of stopping at t", scale=scale,
                     axis=alt.Axis(format=".0e" if log_scale else ".2f")),
        color=color, tooltip=tooltip)
    points = alt.Chart(data[data["stop_fraction"] > 0]).mark_point(
        shape="diamond", filled=True, size=40).encode(
        x=x, y=alt.Y("stop_fraction:Q", scale=scale), color=color, tooltip=tooltip)
    return alt.layer(lines, points, title=(title or f"Stopping along rollouts (task: {task}): "
                                           "model P(stop) and observed stops") + note
                     ).properties(width=WIDTH, height=HEIGHT)
