"""Sizes, colours and orders shared by every chart of the book."""

from __future__ import annotations

import altair as alt
import pandas as pd

from canopy.tables import task_order

__all__ = ["WIDTH", "HEIGHT", "COLORS", "VARIANT_COLORS", "SHARE_COLORS", "model_scale",
           "task_order"]

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
