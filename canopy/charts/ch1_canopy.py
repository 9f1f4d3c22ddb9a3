"""Charts of chapter 1 (the generation tree of a toy model): the icicle drawing of the
tree, the length distribution, the estimators' convergence, rate against length and
the two terms of the decomposition. The toy's numbers come from :mod:`canopy.toy`.
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from canopy.charts.style import COLORS, HEIGHT, WIDTH

__all__ = ["icicle_data", "canopy_chart", "length_distribution_chart", "convergence_chart",
           "length_rate_chart", "decomposition_chart"]


def icicle_data(leaves: pd.DataFrame, max_depth: int | None = None) -> pd.DataFrame:
    """Rectangles of an icicle drawing of a generation tree, one row per tree node.

    ``leaves`` is ``ToyTree.leaves`` (columns ``sequence``, tuples of tokens, and
    ``probability``). Leaves are ordered lexicographically, so every prefix owns a
    contiguous interval of total probability; a node at depth ``t`` (its ``t``-th token)
    spans ``[x0, x1)`` with ``x1 − x0 = P(prefix)``. Columns: ``depth`` (1-based),
    ``token``, ``prefix`` (tokens joined by spaces), ``x0``, ``x1``, ``probability``,
    ``is_leaf``. Nodes deeper than ``max_depth`` are left out.
    """
    order = sorted(range(len(leaves)), key=lambda i: tuple(leaves["sequence"].iloc[i]))
    seqs = [tuple(leaves["sequence"].iloc[i]) for i in order]
    probs = leaves["probability"].to_numpy(dtype=np.float64)[order]
    starts = np.concatenate(([0.0], np.cumsum(probs)[:-1]))
    nodes: dict[tuple, list] = {}
    for seq, p, x0 in zip(seqs, probs, starts):
        depth_max = len(seq) if max_depth is None else min(len(seq), max_depth)
        for t in range(1, depth_max + 1):
            key = seq[:t]
            if key in nodes:
                nodes[key][1] += p
            else:
                nodes[key] = [x0, p, t == len(seq)]
    rows = [{"depth": len(k), "token": k[-1], "prefix": " ".join(k), "x0": v[0],
             "x1": v[0] + v[1], "probability": v[1], "is_leaf": v[2]}
            for k, v in nodes.items()]
    return pd.DataFrame(rows, columns=["depth", "token", "prefix", "x0", "x1",
                                       "probability", "is_leaf"])


def canopy_chart(leaves: pd.DataFrame, title: str = "The generation tree",
                 max_depth: int | None = None) -> alt.Chart:
    """Icicle chart of a generation tree: rows are steps, widths are probabilities.

    Each rectangle is a prefix; its width is the probability that a rollout starts with
    it. Hover for the prefix and its probability.
    """
    data = icicle_data(leaves, max_depth=max_depth)
    return alt.Chart(data, title=title).mark_rect(stroke="white", strokeWidth=0.5).encode(
        x=alt.X("x0:Q", title="cumulative probability", scale=alt.Scale(domain=[0, 1])),
        x2="x1:Q",
        y=alt.Y("depth:O", title="step t"),
        color=alt.Color("token:N", title="token"),
        tooltip=[alt.Tooltip("prefix:N", title="prefix"),
                 alt.Tooltip("probability:Q", title="P(prefix)", format=".4f"),
                 alt.Tooltip("is_leaf:N", title="ends here")],
    ).properties(width=WIDTH, height=HEIGHT)


def length_distribution_chart(distribution: pd.Series, title: str = "Length distribution"
                              ) -> alt.Chart:
    """Bars of ``P(N = n)`` from a Series indexed by ``n`` (``ToyTree.length_distribution``)."""
    data = pd.DataFrame({"length": distribution.index.astype(int),
                         "probability": distribution.to_numpy(dtype=np.float64)})
    return alt.Chart(data, title=title).mark_bar(color=COLORS["summed_entropy"]).encode(
        x=alt.X("length:O", title="length N (tokens, stop included)"),
        y=alt.Y("probability:Q", title="P(N = n)"),
        tooltip=[alt.Tooltip("length:O", title="N"),
                 alt.Tooltip("probability:Q", title="P(N = n)", format=".4f")],
    ).properties(width=WIDTH, height=HEIGHT * 0.8)



def convergence_chart(table: pd.DataFrame, exact: float,
                      title: str = "Monte-Carlo estimates of CE* converge to the exact value"
                      ) -> alt.LayerChart:
    """Estimate ± 2 SE against the number of rollouts M (log scale), exact value as a rule.

    ``table`` is :func:`canopy.toy.convergence_table`'s output.
    """
    labels = {"summed_entropy": "mean summed entropy (ĈE*_H)",
              "surprisal": "mean surprisal (ĈE*_S)"}
    data = table.assign(estimator_label=table["estimator"].map(labels))
    # Dodge the two estimators slightly on the log axis so their bars do not overlap.
    data["m_plot"] = data["n_rollouts"] * np.where(data["estimator"] == "surprisal", 1.08, 1 / 1.08)
    color = alt.Color("estimator_label:N", title="estimator",
                      scale=alt.Scale(domain=list(labels.values()),
                                      range=[COLORS["summed_entropy"], COLORS["surprisal"]]))
    x = alt.X("m_plot:Q", title="rollouts M (log scale)", scale=alt.Scale(type="log"))
    tooltip = [alt.Tooltip("estimator_label:N", title="estimator"),
               alt.Tooltip("n_rollouts:Q", title="M"),
               alt.Tooltip("estimate:Q", format=".4f"), alt.Tooltip("se:Q", format=".4f")]
    base = alt.Chart(data)
    bars = base.mark_rule(strokeWidth=2).encode(x=x, y=alt.Y("lo:Q", title="CE* (nats)",
                                                             scale=alt.Scale(zero=False)),
                                                 y2="hi:Q", color=color, tooltip=tooltip)
    points = base.mark_point(filled=True, size=50).encode(x=x, y="estimate:Q", color=color,
                                                          tooltip=tooltip)
    rule = alt.Chart(pd.DataFrame({"exact": [exact], "label": ["exact CE*"]})).mark_rule(
        color=COLORS["exact"], strokeDash=[5, 4]).encode(
        y="exact:Q", tooltip=[alt.Tooltip("exact:Q", title="exact CE*", format=".4f")])
    return alt.layer(rule, bars, points, title=title).properties(width=WIDTH, height=HEIGHT)



def length_rate_chart(leaves: pd.DataFrame, title: str = "Entropy rate against length"
                      ) -> alt.Chart:
    """Scatter of entropy rate ``r = H/N`` against length ``N``, one point per leaf,
    area proportional to its probability (``ToyTree.leaves``)."""
    data = leaves.assign(text=[" ".join(s) for s in leaves["sequence"]])[
        ["text", "length", "entropy_rate", "probability"]]
    return alt.Chart(data, title=title).mark_circle(
        color=COLORS["summed_entropy"], opacity=0.6).encode(
        x=alt.X("length:Q", title="length N", scale=alt.Scale(zero=False)),
        y=alt.Y("entropy_rate:Q", title="entropy rate r = H/N (nats per token)"),
        size=alt.Size("probability:Q", title="P(leaf)", scale=alt.Scale(range=[10, 600])),
        tooltip=[alt.Tooltip("text:N", title="rollout"), alt.Tooltip("length:Q", title="N"),
                 alt.Tooltip("entropy_rate:Q", title="r", format=".4f"),
                 alt.Tooltip("probability:Q", title="P", format=".4f")],
    ).properties(width=WIDTH, height=HEIGHT)


def decomposition_chart(table: pd.DataFrame, label: str = "name",
                        title: str = "CE* = E[N]·E[r] + Cov(N, r)") -> alt.Chart:
    """Horizontal stacked bars of the two terms of the decomposition, one bar per row.

    ``table`` has columns ``label`` (bar name), ``length_term`` (E[N]E[r]) and
    ``cov_term`` (Cov(N, r)); a negative covariance is drawn to the left of zero.
    """
    terms = {"length_term": "E[N]·E[r]", "cov_term": "Cov(N, r)"}
    long = table.melt(id_vars=[label], value_vars=list(terms), var_name="term",
                      value_name="nats")
    long["term_label"] = long["term"].map(terms)
    return alt.Chart(long, title=title).mark_bar().encode(
        y=alt.Y(f"{label}:N", title=None),
        x=alt.X("sum(nats):Q", title="nats"),
        color=alt.Color("term_label:N", title="term",
                        scale=alt.Scale(domain=list(terms.values()),
                                        range=[COLORS["length_term"], COLORS["cov_term"]])),
        order=alt.Order("term:N"),
        tooltip=[alt.Tooltip(f"{label}:N"), alt.Tooltip("term_label:N", title="term"),
                 alt.Tooltip("nats:Q", format=".4f")],
    ).properties(width=WIDTH, height=alt.Step(28))
