"""Shards read on a thread pool (canopy.shardpool): the same results, in the same order,
whatever the thread count."""

from __future__ import annotations

import shutil
import time

import pandas as pd
import pytest

from canopy.profiles import stream_position_profile
from canopy.shardpool import READ_THREADS_ENV, map_in_order, read_threads
from canopy.store import damaged_shards, load_rollouts
from canopy.summaries import load_summaries

from analysis_data import write_synthetic_store


def test_read_threads_default_env_and_bad_counts(monkeypatch):
    monkeypatch.delenv(READ_THREADS_ENV, raising=False)
    assert 1 <= read_threads() <= 8
    assert read_threads(3) == 3
    monkeypatch.setenv(READ_THREADS_ENV, "5")
    assert read_threads() == 5 and read_threads(2) == 2
    for bad in ("0", "-1", "two", "1.5"):
        monkeypatch.setenv(READ_THREADS_ENV, bad)
        with pytest.raises(ValueError, match=rf"^\${READ_THREADS_ENV} = '{bad}': give a "
                                             "positive integer") as info:
            read_threads()
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=r"^threads = 0: give a positive integer"):
        read_threads(0)


def test_map_in_order_keeps_the_order_and_raises_in_turn():
    def slow(i):  # the first items take longest: finished out of order
        time.sleep(0.02 * (5 - i) if i < 5 else 0)
        if i == 7:
            raise KeyError(i)
        return i * i

    for threads in (1, 3):
        got = []
        with pytest.raises(KeyError):
            for value in map_in_order(slow, range(12), threads):
                got.append(value)
        assert got == [i * i for i in range(7)], threads


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "store"
    write_synthetic_store(root, families=("g", "h"), prompts=4)
    return root


def test_results_are_the_same_at_one_and_four_threads(store, monkeypatch):
    results = {}
    for threads in (1, 4):
        monkeypatch.setenv(READ_THREADS_ENV, str(threads))
        for kept in store.glob("*/*/.summaries"):
            shutil.rmtree(kept)  # made again, on these threads
        results[threads] = (load_rollouts(store), load_summaries(store),
                            stream_position_profile(store), load_summaries(store))
    for one, four in zip(results[1], results[4]):
        pd.testing.assert_frame_equal(one, four, check_exact=True)
    rollouts = results[1][0]
    assert len(rollouts) == 2 * 2 * 2 * 4 * 5  # families × models × tasks × prompts × m
    shards = sorted(store.glob("*/*/*/*.parquet"))
    order = [(s.parts[-4], s.parts[-2], s.stem) for s in shards]
    seen = list(dict.fromkeys(zip(rollouts["model"], rollouts["task"], rollouts["prompt_id"])))
    assert seen == order  # shard order, not the order the threads finished in


def test_damaged_shards_are_named_alike_at_one_and_four_threads(store, monkeypatch):
    shards = sorted(store.glob("*/*/*/*.parquet"))
    for shard in (shards[3], shards[11]):
        data = shard.read_bytes()
        shard.write_bytes(data[: len(data) // 2])
    found, messages = {}, {}
    for threads in (1, 4):
        found[threads] = damaged_shards(store, threads=threads)
        with pytest.raises(ValueError) as info:
            load_rollouts(store, threads=threads)
        messages[threads] = str(info.value)
    assert found[1] == found[4] and [p for p, _ in found[1]] == [shards[3], shards[11]]
    assert messages[1] == messages[4] and "2 damaged shard(s)" in messages[1]
