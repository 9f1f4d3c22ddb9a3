"""Charts of chapter 2 (sampling the real models): rollout lengths, truncation and
degeneration (rep-4).
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from canopy.tables import require_columns
from canopy.charts.style import HEIGHT, MAX_ROWS, WIDTH, task_order, thin

__all__ = ["rollout_length_chart", "truncation_chart", "repetition_chart"]


def rollout_length_chart(rollouts: pd.DataFrame, title: str = "Rollout lengths by model"
                         ) -> alt.FacetChart:
    """Histogram of rollout lengths N, one panel per model, bars stacked by task.

    ``rollouts``: the rollout table (only ``model``, ``task``, ``length``, ``truncated``
    are used; counts are aggregated here so the spec stays small). Truncated rollouts
    sit at ``N = max_new_tokens``; the tooltip says how many of a bar are truncated.
    """
    require_columns(rollouts, ["model", "task", "length", "truncated"],
                    "rollout_length_chart", allow_empty=False)
    def counts(table: pd.DataFrame) -> pd.DataFrame:
        return (table.groupby(["model", "task", "length"], sort=True)
                .agg(rollouts=("truncated", "size"), truncated=("truncated", "sum"))
                .reset_index())

    table = rollouts[["model", "task", "length", "truncated"]].assign(
        truncated=rollouts["truncated"].astype(bool))
    data = counts(table)
    if len(data) > MAX_ROWS:  # many distinct lengths (a large store): count per 1/64 of the range
        width = max(1, int(np.ceil(int(table["length"].max()) / 64)))
        data = counts(table.assign(length=(table["length"] // width) * width))
        title += f" (N grouped by {width} tokens)"
    data["length"] = data["length"].astype(int)
    data["truncated"] = data["truncated"].astype(int)
    return alt.Chart(data).mark_bar().encode(
        x=alt.X("length:Q", title="length N (tokens, stop included)",
                bin=alt.Bin(maxbins=32)),
        y=alt.Y("sum(rollouts):Q", title="rollouts"),
        color=alt.Color("task:N", title="task"),
        tooltip=[alt.Tooltip("model:N"), alt.Tooltip("task:N"),
                 alt.Tooltip("length:Q", title="N", bin=alt.Bin(maxbins=32)),
                 alt.Tooltip("sum(rollouts):Q", title="rollouts"),
                 alt.Tooltip("sum(truncated):Q", title="of which truncated")],
    ).properties(width=WIDTH, height=110).facet(
        row=alt.Row("model:N", title=None, header=alt.Header(labelAngle=0, labelAlign="left")),
        title=title)


def truncation_chart(summary: pd.DataFrame, title: str = "Truncation rate (no stop token "
                     "within max_new_tokens)") -> alt.LayerChart:
    """Heat map of the truncation rate per model × task, with the rate written in each cell.

    ``summary`` is :func:`canopy.pooling.length_summary`'s output.
    """
    require_columns(summary, ["model", "task", "truncation_rate", "n_rollouts", "mean_length"],
                    "truncation_chart", allow_empty=False)
    data = summary.assign(label=(100 * summary["truncation_rate"]).round(0).astype(int)
                          .astype(str) + " %")
    tasks = task_order(data["task"])
    base = alt.Chart(data, title=title).encode(
        x=alt.X("task:N", title="task", sort=tasks, axis=alt.Axis(labelAngle=0)),
        y=alt.Y("model:N", title=None))
    tooltip = [alt.Tooltip("model:N"), alt.Tooltip("task:N"),
               alt.Tooltip("truncation_rate:Q", title="truncation rate", format=".1%"),
               alt.Tooltip("n_rollouts:Q", title="rollouts"),
               alt.Tooltip("mean_length:Q", title="mean N", format=".1f")]
    cells = base.mark_rect().encode(
        color=alt.Color("truncation_rate:Q", title="truncated",
                        scale=alt.Scale(domain=[0, 1], scheme="oranges")),
        tooltip=tooltip)
    text = base.mark_text(fontSize=12).encode(
        text="label:N", tooltip=tooltip,
        color=alt.condition("datum.truncation_rate > 0.6", alt.value("white"),
                            alt.value("black")))
    return alt.layer(cells, text).properties(width=alt.Step(80), height=alt.Step(34))


def repetition_chart(rollouts: pd.DataFrame, title: str = "Degeneration: rep-4 against "
                     "the entropy rate, one point per rollout") -> alt.Chart:
    """Scatter of each rollout's rep-4 (share of its 4-grams repeating an earlier one,
    :func:`canopy.entropy.repetition_rate`) against its entropy rate r = H/N (nats per
    token), coloured by model: loops sit at the right, low. ``rollouts``: the rollout
    table with ``token_ids`` (or a ``repetition`` column)."""
    from canopy.entropy import entropy_rate, rollout_repetition

    require_columns(rollouts, ["model", "task", "length", "summed_entropy"],
                    "repetition_chart", allow_empty=False)
    rep = rollout_repetition(rollouts)
    if np.isnan(rep).all():
        raise ValueError("repetition_chart needs token ids: the rollout table has no "
                         "token_ids (or repetition) column; read it with "
                         "canopy.store.load_rollouts")
    data = pd.DataFrame({"model": rollouts["model"].to_numpy(),
                         "task": rollouts["task"].to_numpy(), "rep4": rep,
                         "rate": entropy_rate(rollouts["summed_entropy"], rollouts["length"]),
                         "length": rollouts["length"].to_numpy()})
    data, note = thin(data)
    return alt.Chart(data, title=title + note).mark_circle(size=22, opacity=0.5).encode(
        x=alt.X("rep4:Q", title="rep-4 (share of repeated 4-grams)",
                scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%")),
        y=alt.Y("rate:Q", title="entropy rate r (nats/token)"),
        color=alt.Color("model:N", title="model"),
        tooltip=[alt.Tooltip("model:N"), alt.Tooltip("task:N"),
                 alt.Tooltip("rep4:Q", title="rep-4", format=".0%"),
                 alt.Tooltip("rate:Q", title="r", format=".2f"),
                 alt.Tooltip("length:Q", title="N")],
    ).properties(width=WIDTH, height=HEIGHT)
