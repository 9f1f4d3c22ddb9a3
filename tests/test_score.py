"""canopy score: teacher-forced statistics reproduce what the sampler recorded; tokens
outside the support are reported; bad rows are one-line errors; the store and the
metrics read scored rollouts unchanged."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pandas as pd
import pytest

from canopy.cli import main
from canopy.entropy import prompt_metrics
from canopy.models import LoadedModel, ModelSpec
from canopy.prompts import Prompt
from canopy.sampling import SamplingConfig, sample_prompts
from canopy.run import score_to_store
from canopy.score import prepare_rollouts, score_rollouts
from canopy.store import load_rollouts
from sampling_tiny import tiny_model, tiny_tokenizer

SETTINGS = {
    "untruncated": dict(temperature=1.0, top_k=0, top_p=1.0),
    "temperature": dict(temperature=0.7, top_k=0, top_p=1.0),
    "top_k": dict(temperature=1.0, top_k=5, top_p=1.0),
    "top_p": dict(temperature=1.0, top_k=0, top_p=0.8),
    "all": dict(temperature=1.3, top_k=8, top_p=0.9),
}
STATS = ("step_entropy", "step_logprob", "step_entropy_raw", "step_stop_logprob")
PROMPTS = [Prompt("t", "p0", "a b c"), Prompt("t", "p1", "d"), Prompt("u", "p0", "e f g h i j")]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CANOPY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def loaded_tiny(chat=True):
    spec = ModelSpec(name="tiny", family="tiny", variant="fine-tuned", kind="dir",
                     source="/none", chat_template=chat)
    return LoadedModel(model=tiny_model("llama", scale=8.0, eos=[1, 15]),
                       tokenizer=tiny_tokenizer(), spec=spec, stop_ids=[1, 15],
                       fingerprint="x")


def assert_reproduces(sampled: pd.DataFrame, scored: pd.DataFrame, atol: float = 1e-4):
    assert len(scored) == len(sampled)
    for (_, a), (_, b) in zip(sampled.iterrows(), scored.iterrows()):
        assert (a["task"], a["prompt_id"], a["rollout_id"]) == (b["task"], b["prompt_id"], b["rollout_id"])
        assert list(a["token_ids"]) == list(b["token_ids"])
        assert a["length"] == b["length"] and a["truncated"] == b["truncated"]
        assert a["text"] == b["text"]
        for col in STATS:
            assert np.allclose(a[col], b[col], atol=atol, rtol=0), (col, a[col], b[col])
        assert abs(a["summed_entropy"] - b["summed_entropy"]) <= atol * a["length"]
        assert abs(a["surprisal"] - b["surprisal"]) <= atol * a["length"]
        assert b["outside_support"] == 0


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_scorer_reproduces_the_samplers_records(name):
    loaded = loaded_tiny()
    cfg = SamplingConfig(rollouts=4, max_new_tokens=10, seed=3, batch_size=5, **SETTINGS[name])
    sampled = sample_prompts(loaded, PROMPTS, cfg)
    assert sampled["truncated"].any() and not sampled["truncated"].all()
    # only the ids go in: the scorer recomputes everything else
    given = sampled[["task", "prompt_id", "rollout_id", "prompt_token_ids", "token_ids"]]
    scored = score_rollouts(loaded, given, cfg, batch_size=3)
    assert_reproduces(sampled, scored)


def test_raw_text_rows_render_like_the_sampler():
    loaded = loaded_tiny()
    cfg = SamplingConfig(rollouts=2, max_new_tokens=6, seed=1)
    sampled = sample_prompts(loaded, PROMPTS[:2], cfg)
    # a row as another engine would give it: raw prompt text and the completion's text
    # plus the stop token's id (text cannot carry the stop), task and ids omitted
    rows = []
    for _, r in sampled.iterrows():
        text = [p.text for p in PROMPTS if p.prompt_id == r["prompt_id"] and p.task == r["task"]][0]
        rows.append({"prompt": text, "token_ids": list(map(int, r["token_ids"]))})
    prepared = prepare_rollouts(loaded, pd.DataFrame(rows))
    assert [list(x) for x in prepared["prompt_token_ids"]] == [list(x) for x in sampled["prompt_token_ids"]]
    assert list(prepared["task"]) == ["default"] * 4
    assert list(prepared["prompt_id"]) == ["0", "0", "1", "1"]
    assert list(prepared["rollout_id"]) == [0, 1, 0, 1]
    # completion as text: tokenised without special tokens
    one = prepare_rollouts(loaded, pd.DataFrame([{"prompt": "a", "completion": "b c"}]))
    assert list(one["token_ids"][0]) == [4, 5]


def test_token_outside_the_support_is_counted_never_minus_inf():
    loaded = loaded_tiny()
    sampled = sample_prompts(loaded, PROMPTS, SamplingConfig(rollouts=6, max_new_tokens=8, seed=2))
    strict = SamplingConfig(max_new_tokens=8, top_k=1)  # only the argmax is in the support
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scored = score_rollouts(loaded, sampled, strict)
    summary = [str(w.message) for w in caught if "outside the support" in str(w.message)]
    assert len(summary) == 1 and "\n" not in summary[0]
    assert scored["outside_support"].sum() > 0
    for _, row in scored.iterrows():
        lp = row["step_logprob"]
        assert not np.isneginf(lp).any()
        assert int(np.isnan(lp).sum()) == row["outside_support"]
        assert np.isfinite(row["step_entropy"]).all()
        assert np.isnan(row["surprisal"]) == (row["outside_support"] > 0)


def test_stop_and_truncation_rules():
    loaded = loaded_tiny()
    cfg = SamplingConfig(max_new_tokens=4)
    rows = pd.DataFrame([
        {"prompt_token_ids": [2, 3], "token_ids": [4, 5, 1]},           # stops: length 3
        {"prompt_token_ids": [2, 3], "token_ids": [4, 5, 6, 7, 8, 9]},  # cut at 4, truncated
        {"prompt_token_ids": [2, 3], "token_ids": [4, 5, 6, 7, 1]},     # stop after the cut
        {"prompt_token_ids": [2, 3], "token_ids": [4]},                 # short, no stop
    ])
    scored = score_rollouts(loaded, rows, cfg)
    assert list(scored["length"]) == [3, 4, 4, 1]
    assert list(scored["truncated"]) == [False, True, True, True]
    assert [len(x) for x in scored["step_entropy"]] == [3, 4, 4, 1]
    assert scored["text"][0] == "b c"  # the stop token is not in the text


@pytest.mark.parametrize("row, message", [
    ({"token_ids": [4]}, "give prompt_token_ids"),
    ({"prompt": "a"}, "give token_ids or completion"),
    ({"prompt": "a", "token_ids": [4, 1, 5]}, "follow the stop token"),
    ({"prompt": "a", "token_ids": [4, 99]}, "outside the model's vocabulary"),
    ({"prompt": "a", "token_ids": "4 5"}, "token_ids must be a list"),
    ({"prompt": "a", "token_ids": []}, "rollout row 1: token_ids is empty"),
    ({"prompt": "a", "completion": ""}, "rollout row 1: the completion is empty"),
    ({"prompt": "  ", "token_ids": [4]}, "prompt must be a non-empty string"),
])
def test_bad_rows_are_one_line_errors(row, message):
    with pytest.raises(ValueError, match=message) as info:
        score_rollouts(loaded_tiny(), pd.DataFrame([row]), SamplingConfig())
    assert "\n" not in str(info.value)


def test_score_to_store_resumes_and_feeds_metrics(tmp_path):
    loaded = loaded_tiny()
    cfg = SamplingConfig(rollouts=3, max_new_tokens=8, seed=5, top_k=6)
    sampled = sample_prompts(loaded, PROMPTS, cfg)
    first = score_to_store(loaded, sampled, cfg, tmp_path)
    assert first.attrs["canopy"] == {"reused_prompts": 0, "scored_prompts": 3}
    again = score_to_store(loaded, sampled, cfg, tmp_path)
    assert again.attrs["canopy"] == {"reused_prompts": 3, "scored_prompts": 0}
    manifest = json.loads(next((tmp_path / "tiny").glob("*/manifest.json")).read_text())
    assert manifest["config"]["runtime"]["engine"] == "score"
    stored = load_rollouts(tmp_path)
    metrics = prompt_metrics(stored)
    assert len(metrics) == 3 and np.isfinite(metrics["canopy_entropy"]).all()
    want = prompt_metrics(sampled)
    assert np.allclose(metrics["canopy_entropy"], want["canopy_entropy"], atol=1e-4)


def test_score_command_end_to_end(tmp_path, capsys):
    path = tmp_path / "tiny"
    tiny_model("llama", scale=8.0, eos=[1, 15]).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    file = tmp_path / "r.jsonl"
    file.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "a b", "completion": "c d", "task": "x", "prompt_id": "q"},
        {"prompt": "a b", "token_ids": [5, 1], "task": "x", "prompt_id": "q"}]) + "\n")
    out = tmp_path / "store"
    assert main(["score", "--models", str(path), "--rollouts", str(file), "--top-k", "5",
                 "--max-new-tokens", "8", "--out", str(out), "--device", "cpu",
                 "--threads", "1"]) == 0
    assert "canopy score: 2 rollouts" in capsys.readouterr().out
    table = load_rollouts(out)
    assert list(table["length"]) == [2, 2] and list(table["truncated"]) == [True, False]
    # Parquet input (here: the store's own table) scores the same
    parquet = tmp_path / "r.parquet"
    table[["task", "prompt_id", "rollout_id", "prompt_token_ids", "token_ids"]].to_parquet(parquet)
    assert main(["score", "--models", str(path), "--rollouts", str(parquet), "--top-k", "5",
                 "--max-new-tokens", "8", "--out", str(tmp_path / "store2"), "--device", "cpu",
                 "--threads", "1"]) == 0
    again = load_rollouts(tmp_path / "store2")
    for a, b in zip(table["step_entropy"], again["step_entropy"]):
        assert np.allclose(a, b, atol=1e-6)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n')
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["score", "--models", str(path), "--rollouts", str(bad), "--out", str(out)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err == f"canopy: error: {bad}:1: give token_ids or completion (text)\n"
    # an empty completion text: its line (from 1, blank lines counted) and the fix
    bad.write_text('{"prompt": "a", "token_ids": [3]}\n\n{"prompt": "a", "completion": ""}\n')
    with pytest.raises(SystemExit):
        main(["score", "--models", str(path), "--rollouts", str(bad), "--out", str(out)])
    err = capsys.readouterr().err
    assert err.startswith(f"canopy: error: {bad}:3: the completion is empty")
    assert "token_ids: [ID]" in err and err.count("\n") == 1


def test_score_without_top_k_records_the_documented_default(tmp_path, capsys):
    """`canopy score` without --top-k scores under the top-k its help promises, and the
    store records that value (it once recorded 0, the full distribution)."""
    import re

    from canopy.cli import build_parser

    score = build_parser()._subparsers._group_actions[0].choices["score"]
    promised = int(re.search(r"--top-k TOP_K\s+top-k, 0 = off \(default (\d+)",
                             " ".join(score.format_help().split())).group(1))
    path = tmp_path / "tiny"
    tiny_model("llama", scale=8.0, eos=[1, 15]).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    file = tmp_path / "r.jsonl"
    file.write_text(json.dumps({"prompt": "a b", "token_ids": [5, 6, 1]}) + "\n")
    assert main(["score", "--models", str(path), "--rollouts", str(file), "--out",
                 str(tmp_path / "store"), "--device", "cpu", "--threads", "1"]) == 0
    manifest = json.loads(next((tmp_path / "store").rglob("manifest.json")).read_text())
    assert manifest["config"]["sampling"]["top_k"] == promised == 100
    capsys.readouterr()


@pytest.mark.integration
def test_smollm2_scorer_reproduces_sampler():
    from canopy.models import available, get_spec, load_model
    from canopy.sampling import Runtime

    ok, needs = available(get_spec("smollm2-135m-instruct"))
    if not ok:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"smollm2-135m-instruct is not available under CI: {needs}")
        pytest.skip(f"smollm2-135m-instruct not available: {needs}")
    loaded = load_model("smollm2-135m-instruct", runtime=Runtime(device="cpu", threads=1))
    prompts = [Prompt("demo", "0", "Name a colour."), Prompt("demo", "1", "Say hi.")]
    for settings in SETTINGS.values():
        cfg = SamplingConfig(rollouts=2, max_new_tokens=16, seed=0, **settings)
        sampled = sample_prompts(loaded, prompts, cfg)
        scored = score_rollouts(loaded, sampled, cfg, batch_size=4)
        assert_reproduces(sampled, scored)
