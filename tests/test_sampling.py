"""The decode loop: exact entropies, the right distribution, determinism, bad inputs."""

from __future__ import annotations

import itertools
import math
import os

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import chisquare

from canopy.entropy import prompt_metrics
from canopy.models import LoadedModel, ModelSpec
from canopy.sampling import (
    Prompt, SamplingConfig, entropy, process_logits, rollout_uniforms, sample_batch,
    sample_prompts, plan_batches,
)
from sampling_tiny import tiny_model, tiny_tokenizer


SETTINGS = {
    "untruncated": dict(temperature=1.0, top_k=0, top_p=1.0),
    "temperature": dict(temperature=0.7, top_k=0, top_p=1.0),
    "top_k": dict(temperature=1.0, top_k=5, top_p=1.0),
    "top_p": dict(temperature=1.0, top_k=0, top_p=0.8),
    "all": dict(temperature=1.3, top_k=8, top_p=0.9),
}


def reference_logq(logits: torch.Tensor, temperature: float, top_k: int, top_p: float):
    """Full-vocabulary log q via transformers' own warpers (an independent reference)."""
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

    x = logits.clone()
    if temperature != 1.0:
        x = TemperatureLogitsWarper(temperature)(None, x)
    if top_k > 0:
        x = TopKLogitsWarper(top_k)(None, x)
    if top_p < 1.0:
        x = TopPLogitsWarper(top_p)(None, x)
    return torch.log_softmax(x, -1)


def full_logq(logits, **s):
    logq, idx = process_logits(logits, **s)
    if idx is None:
        return logq
    out = torch.full_like(logits, float("-inf"))
    return out.scatter(1, idx, logq)


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_process_logits_matches_transformers_warpers(name):
    torch.manual_seed(1)
    logits = torch.randn(6, 3000) * 3
    logits[0, :10] = logits[0].max()  # ties at the top
    logits[1] = torch.round(logits[1])  # many ties, as bfloat16 logits have
    got, want = full_logq(logits, **SETTINGS[name]), reference_logq(logits, **SETTINGS[name])
    # rows 2-5 have no ties: the same support; rows 0-1: which tied tokens stay is
    # arbitrary in both, but how many and their probabilities agree
    assert torch.equal(torch.isinf(got[2:]), torch.isinf(want[2:]))
    finite = torch.isfinite(want[2:])
    assert torch.allclose(got[2:][finite], want[2:][finite], atol=1e-5)
    assert torch.allclose(got.sort(-1).values, want.sort(-1).values, atol=1e-5)
    assert torch.allclose(entropy(got), entropy(want), atol=1e-5)


def test_top_p_candidate_search_widens():
    # a flat distribution over 5000 tokens: top-p 0.9 needs 4500 > 1024 candidates
    logits = torch.zeros(2, 5000)
    logq = full_logq(logits, temperature=1.0, top_k=0, top_p=0.9)
    assert int(torch.isfinite(logq).sum(-1)[0]) == 4500
    assert torch.allclose(entropy(logq), torch.tensor(math.log(4500.0)), atol=1e-4)


@pytest.mark.parametrize("vocab", [50, 5000, 262144])
def test_inverse_cdf_draw_matches_reference(vocab):
    from canopy.sampling import _draw

    torch.manual_seed(vocab)
    logits = torch.randn(64, vocab) * 4
    logits[:, ::3] = float("-inf")  # zero-probability tokens inside the support range
    logq = torch.log_softmax(logits, -1)
    u = torch.rand(64, dtype=torch.float64)
    u[0], u[1] = 0.0, 1.0 - 1e-16
    token, lp = _draw(logq, None, u)
    cdf = logq.exp().double().cumsum(-1)
    want = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]
    assert torch.isfinite(lp).all() and (token % 3 != 0).all()
    assert (token[2:] == want[2:]).all()
    assert torch.equal(lp, logq.gather(1, token[:, None])[:, 0])


def teacher_forced(model, prompt, tokens, stop_ids, s):
    """Per-step (entropy, logprob, raw entropy, raw stop logprob) from one full pass."""
    ids = torch.tensor([list(prompt) + list(tokens)])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1: len(prompt) - 1 + len(tokens)].float()
    logq = reference_logq(logits, **s)
    raw = torch.log_softmax(logits, -1)
    lp = logq.gather(1, torch.tensor(tokens)[:, None])[:, 0]
    return entropy(logq), lp, entropy(raw), torch.logsumexp(raw[:, stop_ids], -1)


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_recorded_entropies_equal_teacher_forced(kind, name):
    s = SETTINGS[name]
    model = tiny_model(kind, scale=8.0, eos=[1, 15])
    stop_ids = [1, 15]
    prompts = [[2, 5, 6, 7, 8, 9, 3], [2, 4], [2, 9, 9, 4, 3]]  # different lengths: padding
    counts = [3, 2, 4]
    steps = 12
    u = rollout_uniforms(range(sum(counts)), steps)
    res = sample_batch(model, prompts, counts, u, stop_ids, pad_id=0, **s)
    owner = np.repeat(np.arange(3), counts)
    # each prompt runs once; a row is fed only until it finishes (finished rows dropped)
    assert res.forward_tokens == sum(map(len, prompts)) + int((res.lengths - 1).sum())
    for r in range(sum(counts)):
        n = int(res.lengths[r])
        toks = res.tokens[r, :n].tolist()
        stops = [t in stop_ids for t in toks]
        assert not any(stops[:-1]) and stops[-1] == (not bool(res.truncated[r]))
        assert n == steps or not res.truncated[r]
        h, lp, h_raw, stop_lp = teacher_forced(model, prompts[owner[r]], toks, stop_ids, s)
        assert torch.isfinite(lp).all()
        for got, want in ((res.entropy, h), (res.logprob, lp), (res.entropy_raw, h_raw),
                          (res.stop_logprob, stop_lp)):
            assert torch.allclose(got[r, :n], want, atol=1e-4), (r, got[r, :n], want)


def test_bfloat16_model_samples_with_float32_statistics():
    model = tiny_model("llama", scale=8.0, eos=[1, 15]).to(torch.bfloat16)
    prompt, s = [2, 5, 6], SETTINGS["all"]
    res = sample_batch(model, [prompt], [4], rollout_uniforms(range(4), 6), [1, 15], **s)
    assert res.entropy.dtype == torch.float32 and torch.isfinite(res.logprob).all()
    for r in range(4):
        n = int(res.lengths[r])
        h, lp, _, _ = teacher_forced(model, prompt, res.tokens[r, :n].tolist(), [1, 15], s)
        assert torch.allclose(res.entropy[r, :n], h, atol=0.05)  # bfloat16: close, not exact


def enumerate_tree(model, prompt, stop, vocab, steps, s):
    """Exact H(N, Y), E[N] of the truncated process by walking the whole tree."""
    h_total, mean_len = 0.0, 0.0
    frontier = [((), 0.0)]  # (prefix, log prob)
    for t in range(steps):
        new = []
        for prefix, logp in frontier:
            with torch.no_grad():
                logits = model(torch.tensor([list(prompt) + list(prefix)])).logits[0, -1:].float()
            logq = reference_logq(logits, **s)[0].double()
            for v in range(vocab):
                if not torch.isfinite(logq[v]):
                    continue
                lp = logp + float(logq[v])
                if v == stop or t == steps - 1:
                    h_total -= math.exp(lp) * lp
                    mean_len += math.exp(lp) * (t + 1)
                else:
                    new.append((prefix + (v,), lp))
        frontier = new
    return h_total, mean_len


@pytest.mark.parametrize("name", ["untruncated", "all"])
def test_canopy_entropy_matches_enumeration(name):
    s = dict(SETTINGS[name], top_k=min(SETTINGS[name]["top_k"], 3))
    vocab, stop, steps, m = 4, 3, 4, 3000
    model = tiny_model("llama", vocab=vocab, scale=6.0, seed=3, eos=stop)
    prompt = [2, 0, 1]
    exact_h, exact_n = enumerate_tree(model, prompt, stop, vocab, steps, s)
    res = sample_batch(model, [prompt], [m], rollout_uniforms(range(m), steps), [stop], **s)
    lengths = res.lengths.numpy()
    mask = np.arange(steps)[None, :] < lengths[:, None]
    table = pd.DataFrame({
        "model": "tiny", "family": "tiny", "variant": "base", "task": "t", "prompt_id": "0",
        "rollout_id": np.arange(m), "length": lengths,
        "summed_entropy": (res.entropy.numpy().astype(float) * mask).sum(1),
        "surprisal": -(res.logprob.numpy().astype(float) * mask).sum(1),
        "truncated": res.truncated.numpy()})
    row = prompt_metrics(table).iloc[0]
    assert 0.5 < exact_h  # a non-trivial tree
    assert abs(row["canopy_entropy"] - exact_h) <= 4 * row["canopy_entropy_se"]
    assert abs(row["canopy_entropy_surprisal"] - exact_h) <= 4 * row["canopy_entropy_surprisal_se"]
    se_n = lengths.std(ddof=1) / math.sqrt(m)
    assert abs(lengths.mean() - exact_n) <= 4 * se_n


@pytest.mark.parametrize("name", ["untruncated", "all"])
def test_first_token_frequencies_follow_processed_distribution(name):
    s = SETTINGS[name]
    model = tiny_model("llama", vocab=16, scale=4.0, seed=5)
    prompt, m = [2, 7, 8], 6000
    res = sample_batch(model, [prompt], [m], rollout_uniforms(range(10**6, 10**6 + m), 1),
                       [1], **s)
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0, -1:].float()
    q = reference_logq(logits, **s)[0].double().exp().numpy()
    counts = np.bincount(res.tokens[:, 0].numpy(), minlength=16)
    support = q > 0
    assert counts[~support].sum() == 0
    assert support.sum() >= 3
    assert chisquare(counts[support], q[support] / q[support].sum() * m).pvalue > 1e-3


def loaded_tiny(chat=True, variant="fine-tuned"):
    model = tiny_model("llama", scale=8.0, eos=[1, 15])
    spec = ModelSpec(name="tiny", family="tiny", variant=variant, kind="dir", source="/none",
                     chat_template=chat)
    return LoadedModel(model=model, tokenizer=tiny_tokenizer(), spec=spec, stop_ids=[1, 15],
                       fingerprint="x")


PROMPTS = [Prompt("t", "p0", "a b c"), Prompt("t", "p1", "d"), Prompt("u", "p0", "e f g h i j"),
           Prompt("u", "p2", "k l")]


def test_sample_prompts_table_and_metrics():
    loaded = loaded_tiny()
    cfg = SamplingConfig(rollouts=5, max_new_tokens=10, batch_size=8, top_k=10, seed=1)
    table = sample_prompts(loaded, PROMPTS, cfg)
    assert len(table) == 20
    assert list(table.groupby(["task", "prompt_id"]).size()) == [5, 5, 5, 5]
    for _, row in table.iterrows():
        assert row["length"] == len(row["token_ids"]) == len(row["step_entropy"])
        assert row["summed_entropy"] == pytest.approx(float(np.sum(row["step_entropy"],
                                                                   dtype=np.float64)))
        assert row["surprisal"] == pytest.approx(-float(np.sum(row["step_logprob"],
                                                               dtype=np.float64)))
        assert row["prompt_text"].endswith("m ")  # chat template with generation prompt
        assert "<eos>" not in row["text"]
        assert row["truncated"] == (row["token_ids"][-1] not in (1, 15))
    metrics = prompt_metrics(table)
    assert len(metrics) == 4 and np.isfinite(metrics["canopy_entropy"]).all()


def test_raw_prompt_for_base_models():
    loaded = loaded_tiny(chat=False, variant="base")
    table = sample_prompts(loaded, PROMPTS[:1], SamplingConfig(rollouts=2, max_new_tokens=3))
    assert table["prompt_text"][0] == "a b c"
    assert list(table["prompt_token_ids"][0]) == [2, 3, 4, 5]


def test_deterministic_and_independent_of_batching():
    loaded = loaded_tiny()
    cfg = SamplingConfig(rollouts=6, max_new_tokens=12, temperature=1.2, seed=7, batch_size=16)
    a = sample_prompts(loaded, PROMPTS, cfg)
    b = sample_prompts(loaded, PROMPTS, cfg)
    pd.testing.assert_frame_equal(a, b)
    c = sample_prompts(loaded, PROMPTS, SamplingConfig(**{**cfg.__dict__, "batch_size": 4}))
    assert [list(x) for x in a["token_ids"]] == [list(x) for x in c["token_ids"]]
    assert np.allclose(a["summed_entropy"], c["summed_entropy"], atol=1e-5)
    # one prompt alone gives the rollouts it gets inside a batch
    alone = sample_prompts(loaded, PROMPTS[2:3], cfg)
    assert [list(x) for x in alone["token_ids"]] == [list(x) for x in a["token_ids"][12:18]]
    d = sample_prompts(loaded, PROMPTS, SamplingConfig(**{**cfg.__dict__, "seed": 8}))
    assert [list(x) for x in a["token_ids"]] != [list(x) for x in d["token_ids"]]


def test_truncation_and_max_new_tokens():
    loaded = loaded_tiny()
    table = sample_prompts(loaded, PROMPTS, SamplingConfig(rollouts=4, max_new_tokens=2))
    assert table["length"].max() <= 2
    assert (table.loc[table["truncated"], "length"] == 2).all()


def test_plan_batches_covers_every_row_once():
    for n, m, b in itertools.product([1, 3, 5], [1, 4, 7, 20], [1, 3, 16]):
        rows = [(p, r) for batch in plan_batches(n, m, b) for p, x, y in batch
                for r in range(x, y)]
        assert rows == [(p, r) for p in range(n) for r in range(m)]
        assert all(sum(y - x for _, x, y in batch) <= b for batch in plan_batches(n, m, b))


@pytest.mark.parametrize("kwargs, message", [
    (dict(rollouts=0), "rollouts must be ≥ 1"),
    (dict(rollouts=2.5), "rollouts must be an integer"),
    (dict(max_new_tokens=0), "max_new_tokens must be ≥ 1"),
    (dict(temperature=0), "temperature must be a finite number > 0"),
    (dict(temperature="hot"), "temperature must be a number"),
    (dict(top_k=-1), "top_k must be ≥ 0"),
    (dict(top_p=0), "top_p must be in"),
    (dict(top_p=1.5), "top_p must be in"),
    (dict(seed=-1), "seed must be ≥ 0"),
    (dict(batch_size=0), "batch_size must be ≥ 1"),
])
def test_bad_settings_are_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        SamplingConfig(**kwargs)
    assert "\n" not in str(info.value)


def test_prompt_ids_are_strings_and_text_is_required():
    assert Prompt("t", 3, "a").prompt_id == "3"
    with pytest.raises(ValueError, match="non-empty string"):
        Prompt("t", "x", "  ")


def test_duplicate_prompt_ids_rejected():
    with pytest.raises(ValueError, match="duplicate prompt id"):
        sample_prompts(loaded_tiny(), [PROMPTS[0], PROMPTS[0]], SamplingConfig(rollouts=1))


def _packaged_or_skip(name):
    from canopy.models import available, get_spec
    ok, needs = available(get_spec(name))
    if not ok:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{name} is not available under CI: {needs}")
        pytest.skip(f"{name} not available: {needs}")


@pytest.mark.integration
def test_smollm2_samples_for_real():
    _packaged_or_skip("smollm2-135m-instruct")
    from canopy.models import load_model

    loaded = load_model("smollm2-135m-instruct")
    prompts = [Prompt("demo", "0", "Name a colour."), Prompt("demo", "1", "Say hi.")]
    cfg = SamplingConfig(rollouts=3, max_new_tokens=12, top_k=50, seed=0)
    table = sample_prompts(loaded, prompts, cfg)
    assert len(table) == 6 and (table["length"] >= 1).all()
    assert table["prompt_text"][0].startswith("<|im_start|>")
    assert all(isinstance(t, str) for t in table["text"])
    first = table.iloc[0]
    s = dict(temperature=1.0, top_k=50, top_p=1.0)
    h, lp, h_raw, stop_lp = teacher_forced(loaded.model, list(first["prompt_token_ids"]),
                                           list(first["token_ids"]), loaded.stop_ids, s)
    assert np.allclose(first["step_entropy"], h.numpy(), atol=1e-4)
    assert np.allclose(first["step_logprob"], lp.numpy(), atol=1e-4)
    assert np.isfinite(prompt_metrics(table)["canopy_entropy"]).all()
