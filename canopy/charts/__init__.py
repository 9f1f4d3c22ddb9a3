"""Altair charts of the book: one module per chapter, shared sizes and colours in
:mod:`canopy.charts.style`. Importing this package enables the offline renderer of
:mod:`canopy.render`.

Each helper takes plain DataFrames and returns an Altair chart; data preparation a
chart needs (``icicle_data``, ``rate_length_data``, …) is beside it so that tests reach
it. The numbers drawn come from :mod:`canopy.pooling`, :mod:`canopy.semantic`,
:mod:`canopy.stats` and :mod:`canopy.simulation`.
"""

from __future__ import annotations

from canopy import render as _render  # noqa: F401  (enables the ``canopy`` renderer)
from canopy.charts.style import COLORS, HEIGHT, WIDTH
from canopy.charts.ch1_canopy import (icicle_data, canopy_chart, length_distribution_chart,
                                      convergence_chart, length_rate_chart, decomposition_chart)
from canopy.charts.ch2_sampling import (rollout_length_chart, truncation_chart,
                                        repetition_chart)
from canopy.charts.ch3_decomposition import (decomposition_share_chart, covariance_split_chart,
                                             bootstrap_delta_chart)
from canopy.charts.ch4_length_rate import (interval_chart, rate_length_data, rate_length_scatter,
                                           position_chart, stop_probability_chart)
from canopy.charts.ch5_semantic import (semantic_bar_chart, bucket_diversity_data,
                                        bucket_diversity_chart, length_diversity_chart,
                                        prompt_strip_chart, rate_diversity_chart)
from canopy.charts.ch6_regressions import (coefficient_data, coefficient_chart,
                                           simulation_intervals, simulation_chart)
from canopy.charts.ch7_finetune import (finetune_loss_data, loss_curve_chart, heldout_loss_chart)

__all__ = [
    "COLORS",
    "HEIGHT",
    "WIDTH",
    "icicle_data",
    "canopy_chart",
    "length_distribution_chart",
    "convergence_chart",
    "length_rate_chart",
    "decomposition_chart",
    "rollout_length_chart",
    "truncation_chart",
    "repetition_chart",
    "decomposition_share_chart",
    "covariance_split_chart",
    "bootstrap_delta_chart",
    "interval_chart",
    "rate_length_data",
    "rate_length_scatter",
    "position_chart",
    "stop_probability_chart",
    "semantic_bar_chart",
    "bucket_diversity_data",
    "bucket_diversity_chart",
    "length_diversity_chart",
    "prompt_strip_chart",
    "rate_diversity_chart",
    "coefficient_data",
    "coefficient_chart",
    "simulation_intervals",
    "simulation_chart",
    "finetune_loss_data",
    "loss_curve_chart",
    "heldout_loss_chart",
]
