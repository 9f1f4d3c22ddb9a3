"""Sizes, colours and orders shared by every chart of the book."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from canopy.tables import task_order

__all__ = ["WIDTH", "HEIGHT", "COLORS", "VARIANT_COLORS", "SHARE_COLORS", "model_scale",
           "task_order", "MAX_ROWS", "thin"]

#: Default chart size in pixels.
WIDTH = 520
HEIGHT = 260
#: Colours of the quantities the chapters draw.
COLORS = {"summed_entropy": "#1b6ca8", "surprisal": "#d9822b", "exact": "#222222",
          "length_term": "#5b8e7d", "cov_term": "#c0504d"}
#: Base and fine-tuned variant.
VARIANT_COLORS = {"base": "#1b6ca8", "fine-tuned": "#d9822b"}
#: The two terms of the decomposition: length term, covariance term.
SHARE_COLORS = [COLORS["length_term"], COLORS["cov_term"]]


def model_scale(frame: pd.DataFrame) -> alt.Scale:
    """A colour scale over every model of ``frame`` (sorted), so that a model keeps its
    colour when some of its values are NaN and left out of the drawing."""
    return alt.Scale(domain=sorted(frame["model"].astype(str).unique()))


#: The most rows a chart carries into the page (Altair's own limit): a store at the
#: paper's scale has far more rollouts and positions than a page can draw.
MAX_ROWS = 5000


def thin(data: pd.DataFrame, limit: int = MAX_ROWS) -> tuple[pd.DataFrame, str]:
    """``data`` itself when it has at most ``limit`` rows, else ``limit`` of them evenly
    spaced in its order (deterministic), with a note for the chart's title saying how
    many are shown; every statistic the page prints is computed on all rows elsewhere."""
    if len(data) <= limit:
        return data, ""
    keep = np.unique(np.linspace(0, len(data) - 1, limit).round().astype(np.int64))
    return data.iloc[keep], f" ({keep.size:,} of {len(data):,} shown, evenly spaced)"
