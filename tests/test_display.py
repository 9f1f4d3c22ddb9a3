"""Tables for readers (canopy.display): headers from the one mapping, rounding, merged
intervals, no index, the raw data one click away, and the notation page in step."""

from __future__ import annotations

import base64
import re

import numpy as np
import pandas as pd
import pytest

from canopy import REPO_ROOT
from canopy.display import COLUMNS, SNAKE_CASE, header, notation_table, reader_table


def _headers(html: str) -> list[str]:
    shown = html.split("<details", 1)[0]
    return re.findall(r"<th[^>]*>(.*?)</th>", shown)


def test_headers_come_from_the_mapping_with_units():
    assert header("canopy_entropy") == "CE* (nats)"
    assert header("mean_entropy_rate") == "R̄ = E[r] (nats/token)"
    assert header("length_rate_pearson") == "ρ(N, r)"
    assert header("truncation_rate") == "truncated (%)"
    assert header("some_new_column") == "some new column"  # unknown: never snake_case


def test_reader_table_rounds_merges_intervals_and_drops_the_index():
    df = pd.DataFrame({"model": ["a", "b"], "task": ["all", "x"],
                       "canopy_entropy": [12.3456, np.nan], "truncation_rate": [0.1234, 1.0],
                       "delta": [-0.5, 0.25], "delta_lo": [-1.0, -0.125], "delta_hi": [-0.1, 0.5],
                       "n_prompts": [10, 3], "extra_thing": [0.00001, 0.00002]},
                      index=[7, 9])
    t = reader_table(df)
    assert list(t.table.columns) == ["model", "task", "CE* (nats)", "truncated (%)",
                                     "Δ = fine-tuned − base [interval]", "P (prompts)",
                                     "extra thing"]
    assert t.table.iloc[0].tolist() == ["a", "all", "12.35", "12", "−0.500 [−1.000, −0.100]",
                                        "10", "1.0e-05"]
    assert t.table.iloc[1, 2] == "—" and t.table.iloc[1, 3] == "100"
    html = t._repr_html_()
    heads = _headers(html)
    assert heads == list(t.table.columns)
    assert not any(SNAKE_CASE.match(h) for h in heads)
    assert ">7<" not in html.split("<details", 1)[0]  # no index column
    # the raw data stays one click away: the DataFrame itself and a CSV with every column
    assert t.data is df
    csv = base64.b64decode(re.search(r"base64,([^\"]+)", html).group(1)).decode()
    assert "delta_lo" in csv and "12.3456" in csv


def test_reader_table_estimate_with_ci_and_metric_values_as_symbols():
    df = pd.DataFrame({"metric": ["length_rate_pearson", "unknown_metric"],
                       "estimate": [0.2, 0.3], "lo": [0.1, -0.2], "hi": [0.3, 0.4]})
    t = reader_table(df)
    assert list(t.table.columns) == ["quantity", "estimate [interval]"]
    assert t.table["quantity"].tolist() == ["ρ(N, r)", "unknown_metric"]
    assert t.table.iloc[0, 1] == "0.200 [0.100, 0.300]"
    named = pd.DataFrame({"estimate": [1.0]}, index=pd.Index(["x"], name="term"))
    assert list(reader_table(named).table.columns) == ["term", "estimate"]
    with pytest.raises(ValueError, match="no column 'nope'"):
        reader_table(df, ["nope"])


def test_notation_page_documents_every_mapped_column():
    page = (REPO_ROOT / "book" / "notation.md").read_text()
    for name in COLUMNS:
        assert f"`{name}`" in page, name
    assert notation_table() in page, "book/notation.md is out of date: paste notation_table()"
