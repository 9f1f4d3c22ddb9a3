"""canopy.tables: the table checks, NaN reasons, task scopes and orders."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from canopy.tables import (ALL_TASKS, concat_rows, matched_families, reason_column,
                           require_columns, task_order, task_scopes)


def test_reason_column_joins_the_rules_that_apply_in_order():
    from canopy.entropy import reason_column

    rules = [(np.array([True, False, True]), "a"), ([False, False, True], "b")]
    assert reason_column(rules, 3) == ["a", "", "a; b"]
    assert reason_column([], 2) == ["", ""]


def test_require_columns_says_what_is_missing_and_where_a_right_table_comes_from():
    frame = pd.DataFrame({"a": [1], "b": [2]})
    require_columns(frame, ["a", "b"], "t")
    with pytest.raises(ValueError, match=r"^t is missing column\(s\): c, d \(make it\)$"):
        require_columns(frame, ["a", "c", "d"], "t", hint="make it")
    with pytest.raises(ValueError, match="t must be a pandas DataFrame, got list"):
        require_columns([1], ["a"], "t")
    with pytest.raises(ValueError, match="t is empty"):
        require_columns(frame.iloc[:0], ["a"], "t", allow_empty=False)


def _frame():
    return pd.DataFrame({"model": ["m", "m", "n", "m", "n"], "task": ["y", "x", "x", "x", "y"],
                         "value": [1, 2, 3, 4, 5]})


def test_task_scopes_each_task_sorted_then_all_tasks_per_model():
    scopes = list(task_scopes(_frame(), ["model", "task"]))
    keys = [k for k, _ in scopes]
    assert keys == [("m", "x"), ("m", "y"), ("n", "x"), ("n", "y"), ("m", ALL_TASKS),
                    ("n", ALL_TASKS)]
    values = {k: sorted(g["value"]) for k, g in scopes}
    assert values[("m", "x")] == [2, 4] and values[("m", "all")] == [1, 2, 4]
    assert values[("n", "all")] == [3, 5]
    only_all = [k for k, _ in task_scopes(_frame(), ["model", "task"], by_task=False)]
    assert only_all == [("m", "all"), ("n", "all")]
    no_all = [k for k, _ in task_scopes(_frame(), ["model", "task"], all_tasks=False)]
    assert no_all == keys[:4]


def test_task_scopes_with_task_as_the_only_key():
    scopes = list(task_scopes(_frame(), ["task"]))
    assert [k for k, _ in scopes] == [("x",), ("y",), ("all",)]
    assert len(scopes[-1][1]) == 5
    assert list(task_scopes(_frame().iloc[:0], ["task"])) == []
    with pytest.raises(ValueError, match="needs 'task'"):
        list(task_scopes(_frame(), ["model"]))


def test_task_order_keeps_first_appearance_with_all_last():
    assert task_order(["b", "all", "a", "b"]) == ["b", "a", "all"]
    assert task_order(pd.Series(["z", "y"])) == ["z", "y"]
    assert task_order([]) == []


def test_matched_families_reads_variant_or_fine_tuned():
    frame = pd.DataFrame({"family": ["g", "g", "s", "h", "h"],
                          "variant": ["base", "fine-tuned", "fine-tuned", "base", "base"]})
    assert matched_families(frame) == (["g"], ["h", "s"])
    panel = pd.DataFrame({"family": ["g", "g", "s"], "fine_tuned": [0, 1, 1]})
    assert matched_families(panel) == (["g"], ["s"])
    with pytest.raises(ValueError, match="missing column"):
        matched_families(pd.DataFrame({"family": ["g"]}))
    assert matched_families(frame.iloc[:0]) == ([], [])


def test_concat_rows_keeps_values_and_dtypes_and_puts_each_text_column_in_one_chunk():
    import pyarrow as pa

    parts = [pa.table({"text": [f"{i}-{j}" * (j + 1) for j in range(3)] + [None],
                       "n": np.arange(4, dtype=np.int64) + i, "x": np.linspace(0, 1, 4),
                       "stop": [True, False, True, False]}).to_pandas() for i in range(5)]
    got = concat_rows(parts)
    plain = pd.concat(parts, ignore_index=True)
    pd.testing.assert_frame_equal(got, plain, check_exact=True)  # values, dtypes, NaN
    assert isinstance(got["text"].array, pd.arrays.ArrowStringArray)
    chunks = pa.Table.from_pandas(got[["text"]], preserve_index=False).column(0).num_chunks
    assert chunks == 1  # plain keeps one chunk per part
    assert pa.Table.from_pandas(plain[["text"]], preserve_index=False).column(0).num_chunks == 5
    rows = [1, 6, 19, 0]  # a selection reads the same rows
    pd.testing.assert_frame_equal(got.iloc[rows], plain.iloc[rows], check_exact=True)
    assert got["text"].iloc[[1, 6]].tolist() == ["0-10-1", "1-21-21-2"]
