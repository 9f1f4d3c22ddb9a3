"""Streamed position profiles (canopy.profiles) against today's full-table computation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from canopy.entropy import position_profile
from canopy.profiles import PROFILE_COLUMNS, PositionAccumulator, stream_position_profile
from canopy.store import load_rollouts
from canopy.tables import task_scopes

from analysis_data import toy_rollouts, write_synthetic_store


def full_table_profile(rollouts, by_task=True, all_tasks=True, max_position=None):
    """The position profile as canopy computed it before streaming: every step of every
    rollout concatenated, then grouped by position (kept here as the reference)."""
    lengths = np.array([len(v) for v in rollouts["step_entropy"]], dtype=np.int64)
    h = np.concatenate([np.asarray(v, dtype=np.float64) for v in rollouts["step_entropy"]])
    h_raw = np.concatenate([np.asarray(v, dtype=np.float64) for v in rollouts["step_entropy_raw"]])
    p_stop = np.exp(np.concatenate([np.asarray(v, dtype=np.float64)
                                    for v in rollouts["step_stop_logprob"]]))
    row = np.repeat(np.arange(len(rollouts)), lengths)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    position = np.arange(h.size) - np.repeat(starts, lengths) + 1
    cum = np.cumsum(h)
    running = (cum - np.repeat(cum[starts] - h[starts], lengths)) / position
    truncated = rollouts["truncated"].to_numpy().astype(bool)
    stops_here = (position == lengths[row]) & ~truncated[row]
    steps = pd.DataFrame({
        "position": position, "h": h, "h_raw": h_raw, "running": running, "p_stop": p_stop,
        "stopped": stops_here.astype(np.int64),
        **{k: rollouts[k].to_numpy()[row] for k in ("model", "family", "variant", "task")},
    })
    if max_position is not None:
        steps = steps[steps["position"] <= max_position]
    keys = ["model", "family", "variant"]
    parts = []
    for scope, grp in task_scopes(steps, [*keys, "task"], all_tasks, by_task=by_task):
        g = grp.groupby("position", sort=True)
        part = g.agg(n_active=("h", "size"), n_stopped=("stopped", "sum"),
                     mean_step_entropy=("h", "mean"), mean_step_entropy_raw=("h_raw", "mean"),
                     running_entropy_rate=("running", "mean"), mean_stop_prob=("p_stop", "mean"))
        parts.append(part.reset_index().assign(**dict(zip([*keys, "task"], scope))))
    out = pd.concat(parts, ignore_index=True).sort_values([*keys, "task", "position"],
                                                          kind="stable").reset_index(drop=True)
    out["stop_fraction"] = out["n_stopped"] / out["n_active"]
    return out[[*keys, "task", *PROFILE_COLUMNS]]


OPTIONS = [{}, {"by_task": False}, {"all_tasks": False}, {"max_position": 3}]


@pytest.mark.parametrize("options", OPTIONS)
def test_table_profile_equals_the_full_table_computation(options):
    rollouts = toy_rollouts(seed=3, prompts_per_task=6, m=7, t_max=9)
    pd.testing.assert_frame_equal(position_profile(rollouts, **options),
                                  full_table_profile(rollouts, **options),
                                  check_exact=False, rtol=1e-12, check_dtype=True)


@pytest.mark.parametrize("options", OPTIONS)
def test_store_streamed_profile_equals_the_loaded_one(tmp_path, options):
    write_synthetic_store(tmp_path, families=("g", "h"), prompts=4, m=6, t_max=12)
    expected = full_table_profile(load_rollouts(tmp_path), **options)
    pd.testing.assert_frame_equal(stream_position_profile(tmp_path, **options), expected,
                                  check_exact=False, rtol=1e-12)


def test_batches_do_not_change_the_profile():
    """Adding the rollouts in batches of 1, 2 or all at once gives the same sums (up to
    float64 rounding of the order of additions)."""
    rollouts = toy_rollouts(seed=4, prompts_per_task=3, m=5, t_max=6)
    tables = []
    for batch in (1, 2, 1000):
        accumulator = PositionAccumulator()
        accumulator.add_table(rollouts, batch=batch)
        tables.append(accumulator.table())
    for table in tables[1:]:
        pd.testing.assert_frame_equal(table, tables[0], check_exact=False, rtol=1e-13)


def test_running_rate_is_each_rollouts_own_prefix_mean():
    """Two rollouts by hand: running rate at t is the mean over active rollouts of
    (h_1 + … + h_t) / t."""
    accumulator = PositionAccumulator()
    accumulator.add(("m", "f", "base", "t"), [2, 3], [False, True],
                    [1.0, 3.0, 2.0, 2.0, 5.0], [0.0] * 5, [0.0] * 5)
    table = accumulator.table(all_tasks=False)
    assert table["n_active"].tolist() == [2, 2, 1]
    assert table["n_stopped"].tolist() == [0, 1, 0]  # the truncated one never stops
    np.testing.assert_allclose(table["running_entropy_rate"], [(1 + 2) / 2, (2 + 2) / 2, 3.0],
                               rtol=1e-15)
    np.testing.assert_allclose(table["mean_step_entropy"], [1.5, 2.5, 5.0], rtol=1e-15)
    np.testing.assert_allclose(table["mean_stop_prob"], [1.0, 1.0, 1.0], rtol=1e-15)


def test_stream_errors(tmp_path):
    with pytest.raises(ValueError, match="is not a directory"):
        stream_position_profile(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no rollouts under"):
        stream_position_profile(tmp_path / "empty")
    with pytest.raises(ValueError, match="cannot both be False"):
        stream_position_profile(tmp_path, by_task=False, all_tasks=False)


def test_streamed_profile_memory_does_not_grow_with_the_store(tmp_path):
    """Four times the shards (same shard size): the streamed profile's peak of traced
    (numpy and Python) memory stays the same, within 50 %."""
    import tracemalloc

    peaks = []
    for prompts in (2, 8):
        root = tmp_path / f"p{prompts}"
        write_synthetic_store(root, prompts=prompts, m=40, t_max=60, seed=prompts)
        stream_position_profile(root)  # imports and caches warmed
        tracemalloc.start()
        stream_position_profile(root)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.5 * peaks[0], peaks
