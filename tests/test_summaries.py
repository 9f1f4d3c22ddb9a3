"""Per-rollout summaries kept beside the shards (canopy.summaries) and `canopy metrics`."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import canopy.summaries as summaries
from canopy.cli import main
from canopy.entropy import prompt_metrics, repetition_rate
from canopy.pooling import paired_bootstrap, pool
from canopy.store import load_rollouts
from canopy.summaries import METRIC_COLUMNS, load_summaries, summary_path

from analysis_data import write_synthetic_store


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "store"
    write_synthetic_store(root)
    return root


def test_summaries_equal_the_full_table(store):
    full = load_rollouts(store)
    summary = load_summaries(store)
    stored = [c for c in METRIC_COLUMNS if c != "repetition"]  # computed in summaries
    pd.testing.assert_frame_equal(summary[stored], full[stored], check_exact=True)
    assert summary["text"].tolist() == full["text"].tolist()
    for i, row in full.iterrows():  # independent recomputation, rollout by rollout
        raw = math.fsum(float(x) for x in row["step_entropy_raw"])
        assert abs(summary.loc[i, "summed_entropy_raw"] - raw) <= 1e-12 * max(raw, 1e-300)
        assert summary.loc[i, "final_stop_logprob"] == float(row["step_stop_logprob"][-1])
        assert summary.loc[i, "distinct_tokens"] == len(set(row["token_ids"].tolist()))
        assert summary.loc[i, "repetition"] == repetition_rate(row["token_ids"], 4)
    assert 0 < (summary["repetition"] > 0).mean() < 1  # both kinds of rollouts are there


def test_summaries_are_kept_and_remade_when_the_shard_changes(store, monkeypatch):
    load_summaries(store)
    shards = sorted(store.glob("*/*/*/*.parquet"))
    assert all(summary_path(p).is_file() for p in shards)
    computed = []
    real = summaries.summarize
    monkeypatch.setattr(summaries, "summarize", lambda arrow: computed.append(1) or real(arrow))
    again = load_summaries(store)
    assert computed == []  # all read from the kept files
    # a shard written again with other values (same configuration): its summary is
    # made again
    other = store.parent / "other"
    write_synthetic_store(other, seed=5)
    target = shards[0]
    target.write_bytes((other / target.relative_to(store)).read_bytes())
    model_dir = store / target.relative_to(store).parts[0]
    fresh = load_summaries(model_dir)
    assert computed == [1]
    theirs = load_summaries(other / model_dir.name)
    before = again[again["model"] == model_dir.name].reset_index(drop=True)
    replaced = (fresh["task"] == target.parent.name) & (fresh["prompt_id"] == target.stem)
    assert replaced.sum() == 5
    pd.testing.assert_frame_equal(fresh[replaced], theirs[replaced])
    pd.testing.assert_frame_equal(fresh[~replaced], before[~replaced])
    assert not fresh[replaced].equals(before[replaced])
    # a cut kept summary, and one whose digest does not match, are made again
    computed.clear()
    whole = load_summaries(store)
    kept = summary_path(shards[-1])
    kept.write_bytes(kept.read_bytes()[:-100])
    pd.testing.assert_frame_equal(load_summaries(store), whole)
    assert computed == [1]


    arrow = pq.read_table(kept)
    changed = arrow.set_column(arrow.column_names.index("length"), "length",
                               pa.array(arrow.column("length").to_numpy() + 1))
    pq.write_table(changed.replace_schema_metadata(arrow.schema.metadata), kept)
    pd.testing.assert_frame_equal(load_summaries(store), whole)
    assert computed == [1, 1]


def test_a_damaged_shard_is_named_even_with_a_kept_summary(store):
    load_summaries(store)
    shard = sorted(store.glob("*/*/*/*.parquet"))[2]
    data = bytearray(shard.read_bytes())
    data[100] ^= 0x01  # inside the first data page
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"1 damaged shard.*{shard.parent.name}/{shard.name}"):
        load_summaries(store)


def test_canopy_metrics_equals_the_full_load_path(store, tmp_path):
    out = tmp_path / "metrics"
    assert main(["metrics", "--rollouts", str(store), "--out", str(out), "--n-boot", "50"]) in (0, None)
    prompts = prompt_metrics(load_rollouts(store))  # today's path: every step loaded
    pd.testing.assert_frame_equal(pd.read_parquet(out / "prompt_metrics.parquet"), prompts,
                                  check_exact=False, rtol=1e-12)
    pd.testing.assert_frame_equal(pd.read_parquet(out / "pooled_metrics.parquet"), pool(prompts),
                                  check_exact=False, rtol=1e-12)
    pd.testing.assert_frame_equal(pd.read_parquet(out / "bootstrap.parquet"),
                                  paired_bootstrap(prompts, n_boot=50, seed=0),
                                  check_exact=False, rtol=1e-12)


def test_repetition_of_hand_made_rollouts():
    ids = np.array([1, 2, 3, 4, 1, 2, 3, 4, 1,   7, 7, 7,   5, 6, 5, 6, 5], dtype=np.int64)
    row = np.repeat([0, 1, 2], [9, 3, 5])
    rep = summaries._repetition(ids, row, 3, 4)
    assert rep.tolist() == [repetition_rate(ids[:9]), 0.0, repetition_rate(ids[12:])]
    assert rep[0] == 1 - 4 / 6 and rep[2] == 0.0  # 5 6 5 6 5: two distinct 4-grams


def test_unknown_summary_columns(store):
    with pytest.raises(ValueError, match="unknown summary columns \\['nope'\\]"):
        load_summaries(store, ["model", "nope"])
