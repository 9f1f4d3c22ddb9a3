"""Altair charts for the book, and the offline renderer that draws them.

Rendering
---------
Every chart is a Vega-Lite spec drawn in the browser by Vega. The book must work with no
network, so nothing comes from a CDN:

- :func:`write_bundle` writes one JavaScript file (Vega, Vega-Lite, Vega-Embed, from
  ``vl-convert-python``) wrapped in a function so that the only global it creates is
  ``window.canopyVega`` (``embed``, ``vega``, ``vegaLite``, ``version``). The Sphinx
  extension in :mod:`canopy.book` writes it to ``book/_static/vega-bundle.js`` and loads
  it in the ``<head>`` of every page, whatever its depth.
- The ``canopy`` Altair renderer (enabled when this module is imported) outputs HTML: a
  ``<div>``, the spec as JSON, and a few lines that call ``canopyVega.embed``. In the
  book build (environment variable ``CANOPY_BOOK=1``, set by ``canopy book``) the page
  already has the bundle. Anywhere else (JupyterLab, VS Code) the bundle is inlined in
  the output, so a chart draws in any trusted notebook with no network (≈0.9 MB per
  chart output: the price of working offline everywhere).
- :func:`save_svg` and :func:`save_png` export a chart with vl-convert (no browser).

Tooltips work (Vega-Embed's tooltip handler is part of the bundle). The action menu
offers SVG/PNG export only: no links to online editors.

Chart helpers
-------------
Small functions, one per figure type the chapters need; each takes plain DataFrames and
returns an ``alt.Chart``. Data preparation a chart needs (``icicle_data``) is here too so
that tests reach it; the estimator study behind the convergence chart is
:func:`canopy.toy.convergence_table`.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Sequence

import altair as alt
import numpy as np
import pandas as pd

from canopy.entropy import require_columns

__all__ = [
    "BUNDLE_NAME", "bundle_source", "write_bundle", "chart_html", "renderer",
    "enable", "save_svg", "save_png", "spec_of",
    "icicle_data", "canopy_chart", "length_distribution_chart",
    "convergence_chart", "length_rate_chart", "decomposition_chart",
]

BUNDLE_NAME = "vega-bundle.js"
#: Vega-Lite version of the specs Altair writes (e.g. "v6.4"): the bundle must match it.
VL_VERSION = ".".join(alt.SCHEMA_VERSION.split(".")[:2])
#: Vega-Embed options used everywhere: export actions only, no online editor links.
EMBED_OPTIONS = {"actions": {"export": True, "source": False, "compiled": False,
                             "editor": False}, "renderer": "svg"}
_GLOBAL = "canopyVega"

# Palette and sizes shared by the chapters.
WIDTH = 520
HEIGHT = 260
COLORS = {"summed_entropy": "#1b6ca8", "surprisal": "#d9822b", "exact": "#222222",
          "length_term": "#5b8e7d", "cov_term": "#c0504d"}


# ------------------------------------------------------------------- the bundle


def bundle_source() -> str:
    """The Vega JavaScript bundle, wrapped so that it defines only ``window.canopyVega``.

    vl-convert's bundle declares its modules at the top level of a script; loaded as is,
    those names would become page globals (and clash with any other script using the
    same short names). Wrapping it in a function keeps them local.
    """
    import vl_convert as vlc

    snippet = (f"window.{_GLOBAL} = {{embed: vegaEmbed, vega: vega, vegaLite: vegaLite, "
               f"version: {json.dumps(VL_VERSION)}}};")
    body = vlc.javascript_bundle(snippet, vl_version=VL_VERSION)
    return ("/* Vega, Vega-Lite and Vega-Embed (BSD-3-Clause), bundled by vl-convert "
            f"{vlc.__version__} for Vega-Lite {VL_VERSION}.\n"
            f"   Defines window.{_GLOBAL} only; written by canopy.charts.write_bundle. */\n"
            f"(function () {{\n{body}\n}})();\n")


def write_bundle(directory: str | os.PathLike) -> Path:
    """Write ``vega-bundle.js`` into ``directory`` unless an identical one is there.

    Returns the path. The file is rewritten only when its content would change (a new
    vl-convert or Altair), so Sphinx's incremental builds stay incremental.
    """
    path = Path(directory) / BUNDLE_NAME
    text = bundle_source()
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return path


# --------------------------------------------------------------------- renderer


def spec_of(chart) -> dict:
    """The Vega-Lite spec (a dict) of an Altair chart or of a spec dict."""
    return chart if isinstance(chart, dict) else chart.to_dict()


def _script_json(obj) -> str:
    """JSON safe to put inside a ``<script>`` element (no ``</script>`` breakout)."""
    return (json.dumps(obj, allow_nan=False, separators=(",", ":"))
            .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


def chart_html(spec: dict, *, inline_bundle: bool = False, element_id: str | None = None) -> str:
    """HTML that draws ``spec`` with ``window.canopyVega``.

    With ``inline_bundle`` the bundle itself is included (for notebooks outside the
    book); otherwise the page must load ``vega-bundle.js`` first. A chart that cannot
    draw says why in place of the chart and logs the error to the console.
    """
    el = element_id or f"canopy-chart-{uuid.uuid4().hex[:12]}"
    bundle = f"<script>{bundle_source()}</script>\n" if inline_bundle else ""
    return (
        f'{bundle}<div id="{el}" class="canopy-chart"></div>\n'
        f'<script type="application/json" id="{el}-spec">{_script_json(spec)}</script>\n'
        "<script>\n(function () {\n"
        f'  var el = document.getElementById("{el}");\n'
        f'  var spec = JSON.parse(document.getElementById("{el}-spec").textContent);\n'
        f"  if (!window.{_GLOBAL}) {{\n"
        '    el.textContent = "This chart needs vega-bundle.js (canopy.charts), which did '
        'not load.";\n'
        '    console.error("canopy chart: window.canopyVega is missing");\n'
        "    return;\n  }\n"
        f"  window.{_GLOBAL}.embed(el, spec, {_script_json(EMBED_OPTIONS)})"
        '.catch(function (err) {\n'
        '    el.textContent = "Chart failed: " + err;\n'
        '    console.error("canopy chart:", err);\n  });\n'
        "})();\n</script>\n"
    )


def in_book_build() -> bool:
    """True while ``canopy book`` executes chapters (the page will load the bundle)."""
    return os.environ.get("CANOPY_BOOK", "") == "1"


def renderer(spec: dict, **_options) -> dict:
    """Altair renderer: a MIME bundle with HTML (see the module docstring) and text."""
    inline = not in_book_build()
    title = spec.get("title")
    if isinstance(title, dict):
        title = title.get("text")
    plain = f"<canopy chart{': ' + str(title) if title else ''}>"
    return {"text/html": chart_html(spec, inline_bundle=inline), "text/plain": plain}


def enable() -> None:
    """Register and enable the ``canopy`` Altair renderer (done on import)."""
    if "canopy" not in alt.renderers.names():
        alt.renderers.register("canopy", renderer)
    alt.renderers.enable("canopy")


enable()


def save_svg(chart, path: str | os.PathLike) -> Path:
    """Write ``chart`` as an SVG file (vl-convert; no browser, no network)."""
    import vl_convert as vlc

    path = Path(path)
    path.write_text(vlc.vegalite_to_svg(spec_of(chart), vl_version=VL_VERSION), encoding="utf-8")
    return path


def save_png(chart, path: str | os.PathLike, scale: float = 2.0) -> Path:
    """Write ``chart`` as a PNG file at ``scale`` × its size (vl-convert)."""
    import vl_convert as vlc

    path = Path(path)
    path.write_bytes(vlc.vegalite_to_png(spec_of(chart), vl_version=VL_VERSION, scale=scale))
    return path


# ------------------------------------------------------------------ the canopy


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


# ------------------------------------------------------------ estimators


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


# ---------------------------------------------------------- length and rate


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


# =====================================================================================
# chapters 5–7: semantic diversity, regressions, the fine-tune appendix
# (appended section; helpers for notebooks/05_semantic.py, 06_regressions.py and
# 07_appendix_finetune.py)
# =====================================================================================

__all__ += [
    "semantic_bar_chart", "bucket_diversity_data", "bucket_diversity_chart",
    "length_diversity_chart", "prompt_strip_chart", "rate_diversity_chart",
    "coefficient_data", "coefficient_chart", "simulation_intervals",
    "simulation_chart", "finetune_loss_data", "loss_curve_chart",
    "finetune_summary", "finetune_config_table", "heldout_loss_chart",
]

_BUCKET_LABELS = {"diversity_short": "short", "diversity_medium": "medium",
                  "diversity_long": "long"}
_VARIANT_COLORS = {"base": "#1b6ca8", "fine-tuned": "#d9822b"}


def _model_scale(frame: pd.DataFrame):
    """A colour scale over every model of ``frame`` (sorted), so that a model keeps its
    colour when some of its values are NaN and left out of the drawing."""
    return alt.Scale(domain=sorted(frame["model"].astype(str).unique()))


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
    tasks = list(dict.fromkeys([t for t in pooled["task"] if t != "all"] +
                               (["all"] if (pooled["task"] == "all").any() else [])))
    return alt.Chart(data, title=title or f"{metric} by model and task").mark_bar().encode(
        x=alt.X("task:N", title="task", sort=tasks, axis=alt.Axis(labelAngle=0)),
        xOffset=alt.XOffset("model:N"),
        y=alt.Y(f"{metric}:Q", title=axis_title or metric),
        color=alt.Color("model:N", title="model", scale=_model_scale(pooled)),
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
    scale = _model_scale(data)
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
    scale = _model_scale(data)
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
    scale = (alt.Scale(domain=list(_VARIANT_COLORS), range=list(_VARIANT_COLORS.values()))
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


def coefficient_data(fits: dict, terms: Sequence[str] | None = None) -> pd.DataFrame:
    """Long table of coefficients from several fits, for :func:`coefficient_chart`.

    ``fits`` maps a label to a fitted result with ``to_frame()`` or ``table`` (a
    :class:`canopy.stats.RegressionResult`, ``InteractionResult`` or ``BetaResult``; only
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


def _report(report) -> dict:
    if not isinstance(report, dict) or "train_loss" not in report:
        raise ValueError("report must be the dict of canopy.finetune.read_report(name)")
    return report


def finetune_loss_data(report: dict, window: int = 5) -> pd.DataFrame:
    """Training loss per optimiser step of a fine-tune report: ``step``, ``epoch``,
    ``loss`` (mean response-token cross-entropy of the batch, nats), ``tokens`` (response
    tokens in the batch), ``lr``, and ``smoothed``: the token-weighted mean loss over the
    last ``window`` steps (fewer at the start)."""
    rep = _report(report)
    if not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"window must be a positive integer, got {window!r}")
    data = pd.DataFrame(rep["train_loss"])
    if data.empty:
        raise ValueError("the report has no training steps")
    require_columns(data, ["step", "loss"], "report['train_loss']")
    if "tokens" not in data.columns:
        data["tokens"] = 1
    for c in ("epoch", "lr"):
        if c not in data.columns:
            data[c] = np.nan
    data = data.sort_values("step").reset_index(drop=True)
    w = data["tokens"].to_numpy(dtype=np.float64)
    lw = data["loss"].to_numpy(dtype=np.float64) * w
    csum_lw, csum_w = np.cumsum(lw), np.cumsum(w)
    lo = np.arange(len(data)) - window
    prev_lw = np.where(lo >= 0, csum_lw[np.maximum(lo, 0)], 0.0)
    prev_w = np.where(lo >= 0, csum_w[np.maximum(lo, 0)], 0.0)
    data["smoothed"] = (csum_lw - prev_lw) / (csum_w - prev_w)
    return data[["step", "epoch", "loss", "tokens", "lr", "smoothed"]]


def loss_curve_chart(data: pd.DataFrame, heldout: dict | None = None,
                     title: str = "Training loss on response tokens") -> alt.LayerChart:
    """Loss per step (points), its token-weighted running mean (line), and optionally the
    held-out response loss of base and fine-tuned model as dashed rules (``heldout``:
    ``report["heldout_response_loss"]``). ``data``: :func:`finetune_loss_data`."""
    require_columns(data, ["step", "loss", "smoothed", "tokens", "lr"], "loss data")
    tooltip = [alt.Tooltip("step:Q"), alt.Tooltip("loss:Q", format=".4f"),
               alt.Tooltip("smoothed:Q", title="running mean", format=".4f"),
               alt.Tooltip("tokens:Q", title="response tokens"),
               alt.Tooltip("lr:Q", title="learning rate", format=".2e")]
    x = alt.X("step:Q", title="optimiser step")
    base = alt.Chart(data)
    layers = [base.mark_point(filled=True, size=30, color=COLORS["summed_entropy"], opacity=0.6)
              .encode(x=x, y=alt.Y("loss:Q", title="cross-entropy (nats per response token)",
                                   scale=alt.Scale(zero=False)), tooltip=tooltip),
              base.mark_line(color=COLORS["summed_entropy"]).encode(x=x, y="smoothed:Q",
                                                                    tooltip=tooltip)]
    if heldout:
        rules = pd.DataFrame({"model": ["base (held out)", "fine-tuned (held out)"],
                              "loss": [float(heldout["base"]), float(heldout["fine_tuned"])]})
        layers.append(alt.Chart(rules).mark_rule(strokeDash=[6, 4]).encode(
            y="loss:Q",
            color=alt.Color("model:N", title="held-out response loss",
                            scale=alt.Scale(domain=list(rules["model"]),
                                            range=["#777777", _VARIANT_COLORS["fine-tuned"]])),
            tooltip=[alt.Tooltip("model:N"), alt.Tooltip("loss:Q", format=".4f")]))
    return alt.layer(*layers, title=title).properties(width=WIDTH, height=HEIGHT)


def finetune_summary(report: dict) -> pd.DataFrame:
    """Held-out comparison of base and fine-tuned model from a fine-tune report: rows
    ``held-out response loss (nats/token)``, ``held-out response perplexity`` (exp of
    the loss), ``stops within <k> tokens`` (fraction of rollouts on the held-out prompts); columns
    ``base``, ``fine_tuned``, ``change`` (fine-tuned − base)."""
    rep = _report(report)
    loss = rep["heldout_response_loss"]
    stop = rep["stop_fraction"]
    k = stop.get("max_new_tokens", "?")
    rows = [("held-out response loss (nats/token)", float(loss["base"]), float(loss["fine_tuned"])),
            ("held-out response perplexity", float(np.exp(loss["base"])),
             float(np.exp(loss["fine_tuned"]))),
            (f"stops within {k} tokens (share of rollouts, {stop.get('n_prompts', '?')} "
             "held-out prompts)",
             float(stop["base"]), float(stop["fine_tuned"]))]
    out = pd.DataFrame(rows, columns=["quantity", "base", "fine_tuned"]).set_index("quantity")
    out["change"] = out["fine_tuned"] - out["base"]
    return out


def finetune_config_table(report: dict) -> pd.DataFrame:
    """The fine-tune's configuration and bookkeeping as a two-column table (``setting``,
    ``value`` as text): every key of ``report["config"]``, then the example counts,
    stop ids, timings (seconds) and the CPU threads used."""
    rep = _report(report)
    rows = [(k, v) for k, v in (rep.get("config") or {}).items()]
    for key in ("n_train_prompts", "n_train_examples", "n_heldout_examples", "stop_ids",
                "torch_threads", "hash"):
        if key in rep:
            rows.append((key, rep[key]))
    for key, value in (rep.get("seconds") or {}).items():
        rows.append((f"seconds: {key}", value))
    return pd.DataFrame([(k, str(v)) for k, v in rows], columns=["setting", "value"]).set_index("setting")


def heldout_loss_chart(report: dict, title: str = "Held-out response loss") -> alt.Chart:
    """Two bars: the mean cross-entropy of the teacher's held-out responses under the base
    and under the fine-tuned model (nats per response token)."""
    rep = _report(report)
    loss = rep["heldout_response_loss"]
    data = pd.DataFrame({"model": ["base", "fine-tuned"],
                         "loss": [float(loss["base"]), float(loss["fine_tuned"])]})
    data["perplexity"] = np.exp(data["loss"])
    return alt.Chart(data, title=title).mark_bar().encode(
        x=alt.X("loss:Q", title="nats per response token"),
        y=alt.Y("model:N", title=None),
        color=alt.Color("model:N", legend=None,
                        scale=alt.Scale(domain=list(_VARIANT_COLORS),
                                        range=list(_VARIANT_COLORS.values()))),
        tooltip=[alt.Tooltip("model:N"), alt.Tooltip("loss:Q", format=".4f"),
                 alt.Tooltip("perplexity:Q", format=".2f")],
    ).properties(width=WIDTH, height=alt.Step(30))


# ====================================================================================
# Chapters 2–4 (sampling, Canopy Entropy and its decomposition, length and entropy
# rate). Appended section: one helper per figure; data preparation that is not only
# reshaping lives in canopy.entropy (length_summary, pooled_bootstrap, position_profile…).
# ====================================================================================

__all__ += [
    "rollout_length_chart", "truncation_chart", "decomposition_share_chart",
    "covariance_split_chart", "bootstrap_delta_chart", "interval_chart",
    "rate_length_data", "rate_length_scatter", "position_chart", "stop_probability_chart",
]

_SHARE_COLORS = [COLORS["length_term"], COLORS["cov_term"]]


def rollout_length_chart(rollouts: pd.DataFrame, title: str = "Rollout lengths by model"
                         ) -> alt.FacetChart:
    """Histogram of rollout lengths N, one panel per model, bars stacked by task.

    ``rollouts``: the rollout table (only ``model``, ``task``, ``length``, ``truncated``
    are used; counts are aggregated here so the spec stays small). Truncated rollouts
    sit at ``N = max_new_tokens``; the tooltip says how many of a bar are truncated.
    """
    require_columns(rollouts, ["model", "task", "length", "truncated"],
                    "rollout_length_chart", allow_empty=False)
    data = (rollouts.assign(truncated=rollouts["truncated"].astype(bool))
            .groupby(["model", "task", "length"], sort=True)
            .agg(rollouts=("truncated", "size"), truncated=("truncated", "sum"))
            .reset_index())
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

    ``summary`` is :func:`canopy.entropy.length_summary`'s output.
    """
    require_columns(summary, ["model", "task", "truncation_rate", "n_rollouts", "mean_length"],
                    "truncation_chart", allow_empty=False)
    data = summary.assign(label=(100 * summary["truncation_rate"]).round(0).astype(int)
                          .astype(str) + " %")
    tasks = [t for t in dict.fromkeys(data["task"]) if t != "all"]
    tasks += ["all"] if "all" in set(data["task"]) else []
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


def decomposition_share_chart(pooled: pd.DataFrame,
                              title: str = "CE* = E[N]·E[r] + C: shares of the two terms"
                              ) -> alt.FacetChart:
    """Stacked horizontal bars of ``length_share`` and ``cov_share`` per model, one panel
    per task. ``pooled`` is :func:`canopy.entropy.pool`'s output; a negative covariance
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
    tasks = [t for t in dict.fromkeys(long["task"]) if t != "all"]
    tasks += ["all"] if "all" in set(long["task"]) else []
    return alt.Chart(long).mark_bar().encode(
        y=alt.Y("model:N", title=None),
        x=alt.X("share:Q", title="share of CE*", axis=alt.Axis(format="%")),
        color=alt.Color("term_label:N", title="term",
                        scale=alt.Scale(domain=list(labels.values()), range=_SHARE_COLORS)),
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
    one panel per task. ``pooled`` is :func:`canopy.entropy.pool`'s output."""
    require_columns(pooled, ["model", "task", "within_prompt_cov", "between_prompt_cov",
                             "cov_residual"], "covariance_split_chart", allow_empty=False)
    labels = {"within_prompt_cov": "within prompts", "between_prompt_cov": "between prompts"}
    long = pooled.melt(id_vars=["model", "task", "cov_residual"], value_vars=list(labels),
                       var_name="part", value_name="nats")
    long["part_label"] = long["part"].map(labels)
    tasks = [t for t in dict.fromkeys(long["task"]) if t != "all"]
    tasks += ["all"] if "all" in set(long["task"]) else []
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

    ``boot`` is :func:`canopy.entropy.paired_bootstrap`'s output. ``percent``: plot
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


def interval_chart(table: pd.DataFrame, title: str = "Pooled estimates with bootstrap CIs",
                   zero: bool = True) -> alt.FacetChart:
    """Estimates with ``[lo, hi]`` intervals per model and task, one panel per metric.

    ``table`` is :func:`canopy.entropy.pooled_bootstrap`'s output (columns ``model``,
    ``task``, ``metric``, ``estimate``, ``lo``, ``hi``, ``n_prompts``). With ``zero`` a
    dashed rule marks 0 (for correlations).
    """
    require_columns(table, ["model", "task", "metric", "estimate", "lo", "hi", "n_prompts"],
                    "interval_chart", allow_empty=False)
    data = table.copy()
    tasks = [t for t in dict.fromkeys(data["task"]) if t != "all"]
    tasks += ["all"] if "all" in set(data["task"]) else []
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
    data["entropy_rate"] = rollouts["summed_entropy"].to_numpy(np.float64) / data["length"]
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
    return alt.vconcat(top, bottom, title=title or f"{_PROFILE_TITLES.get(value, value)}"
                       f" by position (task: {task})")


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
    return alt.layer(lines, points, title=title or
                     f"Stopping along rollouts (task: {task}): model P(stop) and observed stops"
                     ).properties(width=WIDTH, height=HEIGHT)
