"""Charts of chapter 7 (the fine-tune appendix): the training loss and the held-out loss.
The appendix's tables are :func:`canopy.report.finetune_summary` and
:func:`canopy.report.finetune_config_table`.
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from canopy.tables import require_columns
from canopy.report import check_report
from canopy.charts.style import COLORS, HEIGHT, VARIANT_COLORS, WIDTH

__all__ = ["finetune_loss_data", "loss_curve_chart", "heldout_loss_chart"]


def finetune_loss_data(report: dict, window: int = 5) -> pd.DataFrame:
    """Training loss per optimiser step of a fine-tune report: ``step``, ``epoch``,
    ``loss`` (mean response-token cross-entropy of the batch, nats), ``tokens`` (response
    tokens in the batch), ``lr``, and ``smoothed``: the token-weighted mean loss over the
    last ``window`` steps (fewer at the start)."""
    rep = check_report(report)
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
                                            range=["#777777", VARIANT_COLORS["fine-tuned"]])),
            tooltip=[alt.Tooltip("model:N"), alt.Tooltip("loss:Q", format=".4f")]))
    return alt.layer(*layers, title=title).properties(width=WIDTH, height=HEIGHT)



def heldout_loss_chart(report: dict, title: str = "Held-out response loss") -> alt.Chart:
    """Two bars: the mean cross-entropy of the teacher's held-out responses under the base
    and under the fine-tuned model (nats per response token)."""
    rep = check_report(report)
    loss = rep["heldout_response_loss"]
    data = pd.DataFrame({"model": ["base", "fine-tuned"],
                         "loss": [float(loss["base"]), float(loss["fine_tuned"])]})
    data["perplexity"] = np.exp(data["loss"])
    return alt.Chart(data, title=title).mark_bar().encode(
        x=alt.X("loss:Q", title="nats per response token"),
        y=alt.Y("model:N", title=None),
        color=alt.Color("model:N", legend=None,
                        scale=alt.Scale(domain=list(VARIANT_COLORS),
                                        range=list(VARIANT_COLORS.values()))),
        tooltip=[alt.Tooltip("model:N"), alt.Tooltip("loss:Q", format=".4f"),
                 alt.Tooltip("perplexity:Q", format=".2f")],
    ).properties(width=WIDTH, height=alt.Step(30))
