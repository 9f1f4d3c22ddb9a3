"""The rollout store: reuse, resume after a crash, corrupt shards, configurations."""

from __future__ import annotations

import json
import warnings

import pandas as pd
import pytest
import torch

import canopy.store as store
from canopy.entropy import prompt_metrics
from canopy.models import resolve_spec
from canopy.prompts import Prompt
from canopy.sampling import SamplingConfig
from canopy.run import sample_to_store
from canopy.store import load_rollouts, shard_path
from sampling_tiny import tiny_model, tiny_tokenizer


PROMPTS = [Prompt("t", "p0", "a b c"), Prompt("t", "p1", "d"), Prompt("u", "p0", "e f g h"),
           Prompt("u", "weird id/2", "k l")]
CFG = SamplingConfig(rollouts=3, max_new_tokens=8, top_k=10, seed=4, batch_size=4)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CANOPY_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "tiny-chat"
    tiny_model("llama", scale=8.0, eos=[1, 15]).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def spec(model_dir):
    return resolve_spec(str(model_dir), variant="fine-tuned")


def canonical(table: pd.DataFrame) -> pd.DataFrame:
    table = table.sort_values(["model", "task", "prompt_id", "rollout_id"])
    table = table.reset_index(drop=True)
    return table.apply(lambda col: col.map(
        lambda v: v.tolist() if hasattr(v, "tolist") and not isinstance(v, (int, float)) else v))


def test_store_writes_shards_and_reuses_them(model_dir, tmp_path):
    out = tmp_path / "rollouts"
    first = sample_to_store(spec(model_dir), PROMPTS, CFG, out, progress=False)
    assert len(first) == 12 and first.attrs["canopy"]["sampled_prompts"] == 4
    shards = sorted(out.rglob("*.parquet"))
    assert len(shards) == 4
    manifest = json.loads(next(out.rglob("manifest.json")).read_text())
    assert manifest["config"]["sampling"]["top_k"] == 10
    assert len(manifest["config"]["fingerprint"]) == 64
    assert {"torch", "transformers", "canopy"} <= set(manifest["package_versions"])
    assert manifest["prompts"]["u/weird id/2"] == PROMPTS[3].sha256()
    mtimes = [p.stat().st_mtime_ns for p in shards]
    again = sample_to_store(spec(model_dir), PROMPTS, CFG, out, progress=False)
    assert again.attrs["canopy"] == {**again.attrs["canopy"], "reused_prompts": 4,
                                     "sampled_prompts": 0}
    assert [p.stat().st_mtime_ns for p in shards] == mtimes
    pd.testing.assert_frame_equal(canonical(first), canonical(again))
    loaded = load_rollouts(out)
    pd.testing.assert_frame_equal(canonical(loaded), canonical(first))
    assert len(prompt_metrics(loaded)) == 4


def test_resume_after_crash_equals_uninterrupted(model_dir, tmp_path, monkeypatch):
    whole = sample_to_store(spec(model_dir), PROMPTS, CFG, tmp_path / "a", progress=False)
    real_write, calls = store.write_shard, []

    def crashing_write(path, table, meta):
        if len(calls) == 2:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.with_name(f".{path.name}.tmp-1").write_bytes(b"PAR1 half a file")
            raise KeyboardInterrupt
        calls.append(path)
        real_write(path, table, meta)

    monkeypatch.setattr(store, "write_shard", crashing_write)
    with pytest.raises(KeyboardInterrupt):
        sample_to_store(spec(model_dir), PROMPTS, CFG, tmp_path / "b", progress=False)
    assert len(list((tmp_path / "b").rglob("*.parquet"))) == 2
    assert len(load_rollouts(tmp_path / "b")) == 6  # the finished shards only
    monkeypatch.setattr(store, "write_shard", real_write)
    resumed = sample_to_store(spec(model_dir), PROMPTS, CFG, tmp_path / "b", progress=False)
    assert resumed.attrs["canopy"]["reused_prompts"] == 2
    pd.testing.assert_frame_equal(canonical(resumed), canonical(whole))
    pd.testing.assert_frame_equal(canonical(load_rollouts(tmp_path / "b")), canonical(whole))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "fewer_rows"])
def test_corrupt_shard_is_detected_and_resampled(model_dir, tmp_path, damage):
    out = tmp_path / "r"
    first = sample_to_store(spec(model_dir), PROMPTS, CFG, out, progress=False)
    config_dir = next(out.rglob("manifest.json")).parent
    victim = shard_path(config_dir, "t", "p1")
    data = victim.read_bytes()
    if damage == "truncate":
        victim.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        victim.write_bytes(b"not a parquet file")
    else:
        import pyarrow.parquet as pq
        table = pq.read_table(victim)
        pq.write_table(table.slice(0, 2), victim)  # metadata still says 3 rollouts
    # reading refuses, naming the shard and the repair, instead of dropping the prompt
    with pytest.raises(ValueError, match=r"1 damaged shard.*t/p1\.parquet.*rerun the `canopy "
                                         r"sample") as info:
        load_rollouts(out)
    assert "\n" not in str(info.value)
    with pytest.warns(UserWarning, match="resampling shard"):
        again = sample_to_store(spec(model_dir), PROMPTS, CFG, out, progress=False)
    assert again.attrs["canopy"]["sampled_prompts"] == 1
    pd.testing.assert_frame_equal(canonical(again), canonical(first))


def test_changed_configuration_never_mixes(model_dir, tmp_path):
    out = tmp_path / "r"
    sample_to_store(spec(model_dir), PROMPTS, CFG, out, progress=False)
    other = SamplingConfig(**{**CFG.__dict__, "temperature": 0.5})
    second = sample_to_store(spec(model_dir), PROMPTS, other, out, progress=False)
    assert len(list(out.rglob("manifest.json"))) == 2
    assert second.attrs["canopy"]["sampled_prompts"] == 4
    with pytest.warns(UserWarning, match="ignoring"):
        loaded = load_rollouts(out)
    assert len(loaded) == 12
    pd.testing.assert_frame_equal(canonical(loaded), canonical(second))
    # batch_size does not change the configuration: shards are reused
    bigger = SamplingConfig(**{**other.__dict__, "batch_size": 16})
    assert sample_to_store(spec(model_dir), PROMPTS, bigger, out,
                           progress=False).attrs["canopy"]["reused_prompts"] == 4


def test_changed_prompt_text_is_resampled(model_dir, tmp_path):
    out = tmp_path / "r"
    sample_to_store(spec(model_dir), PROMPTS, CFG, out, progress=False)
    edited = [*PROMPTS[:1], Prompt("t", "p1", "d e f"), *PROMPTS[2:]]
    with pytest.warns(UserWarning, match="stale"):
        table = sample_to_store(spec(model_dir), edited, CFG, out, progress=False)
    assert table.attrs["canopy"]["sampled_prompts"] == 1
    assert set(table.loc[table["prompt_id"] == "p1", "prompt_text"]) == {"<bos> d e f m "}


def test_in_memory_sampling_equals_store(model_dir, tmp_path):
    mem = sample_to_store(str(model_dir), PROMPTS, CFG, None, progress=False)
    stored = sample_to_store(str(model_dir), PROMPTS, CFG, tmp_path / "r", progress=False)
    assert [list(t) for t in mem["token_ids"]] == [list(t) for t in stored["token_ids"]]
    assert mem["variant"][0] == "base"  # a bare path is a base model …
    assert mem["prompt_text"][0] == "a b c"  # … given the raw prompt
    assert stored["variant"][0] == "base"


def test_load_rollouts_errors(tmp_path):
    with pytest.raises(ValueError, match="no rollouts"):
        load_rollouts(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no rollouts under"):
        load_rollouts(tmp_path / "empty")


def test_metrics_command_reads_the_store(model_dir, tmp_path):
    from canopy.cli import main

    out = tmp_path / "r"
    sample_to_store(spec(model_dir), PROMPTS, CFG, out, progress=False)
    assert main(["metrics", "--rollouts", str(out), "--out", str(tmp_path / "m"),
                 "--n-boot", "0"]) == 0
    assert len(pd.read_csv(tmp_path / "m" / "prompt_metrics.csv")) == 4


def test_bad_arguments(model_dir, tmp_path):
    with pytest.raises(ValueError, match="SamplingConfig"):
        sample_to_store(spec(model_dir), PROMPTS, {"rollouts": 2}, tmp_path)
    with pytest.raises(ValueError, match="no prompts"):
        sample_to_store(spec(model_dir), [], CFG, tmp_path)
    with pytest.raises(ValueError, match="model no-such-model is not registered"):
        sample_to_store("no-such-model", PROMPTS, CFG, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="models must be"):
            sample_to_store([3.5], PROMPTS, CFG, tmp_path)


def test_cached_rollouts_reads_without_loading_and_refuses_stale_results(model_dir, tmp_path):
    from canopy.run import cached_rollouts

    out = tmp_path / "r"
    s = spec(model_dir)
    assert cached_rollouts(s, PROMPTS, CFG, out) is None  # nothing stored yet
    first = sample_to_store(s, PROMPTS, CFG, out, progress=False)
    cached = cached_rollouts(s, PROMPTS, CFG, out)
    pd.testing.assert_frame_equal(canonical(cached), canonical(first))
    assert cached_rollouts(s, PROMPTS + [Prompt("t", "new", "a")], CFG, out) is None
    other = SamplingConfig(**{**CFG.__dict__, "top_k": 5})
    assert cached_rollouts(s, PROMPTS, other, out) is None
    # Rewriting the weights (a re-made model) invalidates the fast path.
    copy = tmp_path / "copy"
    tiny_model("llama", scale=8.0, eos=[1, 15]).save_pretrained(copy)
    tiny_tokenizer().save_pretrained(copy)
    import shutil, time
    time.sleep(0.01)
    for f in copy.glob("*.safetensors"):
        shutil.copy(f, model_dir / f.name)
    assert cached_rollouts(s, PROMPTS, CFG, out) is None
