"""The vLLM engine (canopy.vllm_engine) on the real smollm2-135m-instruct, checked against an
independent teacher-forced recomputation with transformers in float32.

Needs vLLM (``make env-vllm``): skipped with the reason when it is missing, failing
instead under ``CI=true``. One engine for the module; short rollouts.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from canopy.sampling import (
    ROLLOUT_SCHEMA_COLUMNS, Prompt, SamplingConfig, entropy, process_logits,
)

pytestmark = pytest.mark.integration

MODEL = "smollm2-135m-instruct"
PROMPTS = [Prompt("demo", "0", "Name a colour and say why you like it."),
           Prompt("demo", "1", "Write one sentence about the sea."),
           Prompt("demo", "2", "What is 7 times 8?")]
#: name -> (temperature, top_k, top_p)
SETTINGS = {"top_k": (0.7, 20, 1.0), "top_p": (1.0, 0, 0.95), "untruncated": (1.0, 0, 1.0)}
TOL = 1e-4  # nats
_BEFORE: dict = {}  # process state before the engine started


def _missing(why: str):
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but the vLLM engine cannot run: {why}")
    pytest.skip(why)


def _runtime(engine: str = "vllm"):
    from canopy.sampling import Runtime
    return Runtime(engine=engine, device="cpu", dtype="float32", threads=1)


@pytest.fixture(scope="module")
def engine():
    try:
        import canopy.vllm_engine as vllm_engine
    except ImportError as exc:
        _missing(f"vLLM is not installed ({exc}); install it with `make env-vllm`")
    from canopy.models import available, get_spec
    ok, needs = available(get_spec(MODEL))
    if not ok:
        _missing(f"{MODEL} not available: {needs}")
    threads = torch.get_num_threads()
    _BEFORE["LD_PRELOAD"] = os.environ.get("LD_PRELOAD")
    loaded = vllm_engine.load(MODEL, _runtime())
    yield loaded
    loaded.close()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(engine):
    """transformers, float32, on the same converted weights."""
    from transformers import AutoModelForCausalLM

    from canopy.models import convert_gguf, get_spec
    return AutoModelForCausalLM.from_pretrained(
        str(convert_gguf(get_spec(MODEL))), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def samples(engine):
    """name -> rollout table (2 prompts × 3 rollouts × ≤ 24 tokens) per setting."""
    from canopy.vllm_engine import sample_prompts
    out = {}
    for name, (t, k, p) in SETTINGS.items():
        cfg = SamplingConfig(rollouts=3, max_new_tokens=24, temperature=t, top_k=k, top_p=p,
                             seed=7, batch_size=6)
        out[name] = sample_prompts(engine, PROMPTS[:2], cfg)
    return out


@torch.no_grad()
def _teacher_forced(model, row, stop_ids):
    """Logits [n, V] (float32) of the distributions the row's tokens were drawn from."""
    prompt = [int(i) for i in row["prompt_token_ids"]]
    tokens = [int(i) for i in row["token_ids"]]
    ids = torch.tensor([prompt + tokens])
    logits = model(input_ids=ids).logits[0].float()
    return logits[len(prompt) - 1: len(prompt) - 1 + len(tokens)]


def _top_m_entropy(x: torch.Tensor, m: int) -> tuple[float, torch.Tensor]:
    """Entropy of softmax over the m largest entries of one row ``x``, and their ids."""
    vals, idx = torch.topk(x, m)
    return float(entropy(torch.log_softmax(vals, -1))), idx


def test_columns_and_bookkeeping(engine, samples):
    stop = set(engine.stop_ids)
    for name, table in samples.items():
        assert list(table.columns) == list(ROLLOUT_SCHEMA_COLUMNS), name
        assert len(table) == 6 and list(table["rollout_id"]) == [0, 1, 2] * 2
        for _, row in table.iterrows():
            ids, n = list(row["token_ids"]), int(row["length"])
            assert n == len(ids) == len(row["step_entropy"]) == len(row["step_logprob"])
            assert 1 <= n <= 24
            assert not any(t in stop for t in ids[:-1])  # no stop before the end
            if row["truncated"]:
                assert n == 24 and ids[-1] not in stop
            else:
                assert ids[-1] in stop
                assert engine.tokenizer.decode(ids[:-1]) == row["text"]
            assert row["summed_entropy"] == pytest.approx(
                float(np.sum(row["step_entropy"], dtype=np.float64)), abs=1e-9)
            assert row["surprisal"] == pytest.approx(
                -float(np.sum(row["step_logprob"], dtype=np.float64)), abs=1e-9)
            assert np.isfinite(row["step_entropy"]).all() and np.isfinite(row["step_logprob"]).all()
            assert (np.asarray(row["step_logprob"]) <= 1e-6).all()


@pytest.mark.parametrize("name", ["top_k", "untruncated"])
def test_statistics_match_transformers_where_support_is_the_same(engine, reference, samples,
                                                                 name):
    """top-k (with a temperature) and untruncated sampling: same support in both engines,
    so every recorded statistic equals the recomputation within 1e-4 nats."""
    t, k, p = SETTINGS[name]
    worst = {"entropy": 0.0, "logprob": 0.0, "raw": 0.0, "stop": 0.0}
    stop = torch.tensor(engine.stop_ids)
    for _, row in samples[name].iterrows():
        logits = _teacher_forced(reference, row, engine.stop_ids)
        tokens = torch.tensor([int(i) for i in row["token_ids"]])
        logp_raw = torch.log_softmax(logits, -1)
        logq, idx = process_logits(logits, t, k, p)
        if idx is None:
            lp = logq.gather(1, tokens[:, None])[:, 0]
        else:
            hit = idx == tokens[:, None]
            assert hit.any(-1).all(), "a sampled token lies outside the top-k support"
            lp = logq.gather(1, hit.float().argmax(-1, keepdim=True))[:, 0]
        pairs = {"entropy": (row["step_entropy"], entropy(logq)),
                 "logprob": (row["step_logprob"], lp),
                 "raw": (row["step_entropy_raw"], entropy(logp_raw)),
                 "stop": (row["step_stop_logprob"], torch.logsumexp(logp_raw[:, stop], -1))}
        for key, (got, want) in pairs.items():
            diff = float(np.max(np.abs(np.asarray(got, dtype=np.float64)
                                       - want.double().numpy())))
            worst[key] = max(worst[key], diff)
    print(f"\n{name}: largest |vLLM - transformers| per statistic (nats): {worst}")
    assert all(v <= TOL for v in worst.values()), worst


def test_top_p_is_vllms_nucleus(engine, reference, samples):
    """top-p: vLLM cuts the nucleus on its own float32 cumulative sum, so the boundary
    token may differ from Canopy's. Every recorded entropy and log q must be that of a
    nucleus one token smaller, equal or larger than Canopy's (within 1e-4 nats), the raw
    statistics must match everywhere, and a different boundary must stay rare."""
    t, k, p = SETTINGS["top_p"]
    stop = torch.tensor(engine.stop_ids)
    steps = differ = 0
    worst = 0.0
    for _, row in samples["top_p"].iterrows():
        logits = _teacher_forced(reference, row, engine.stop_ids)
        logp_raw = torch.log_softmax(logits, -1)
        assert np.allclose(row["step_entropy_raw"], entropy(logp_raw).numpy(), atol=TOL)
        assert np.allclose(row["step_stop_logprob"],
                           torch.logsumexp(logp_raw[:, stop], -1).numpy(), atol=TOL)
        logq, _ = process_logits(logits, t, k, p)
        sizes = torch.isfinite(logq).sum(-1)  # Canopy's nucleus size per step
        x = logits / t
        for s, token in enumerate(int(i) for i in row["token_ids"]):
            m = int(sizes[s])
            got_h, got_lp = float(row["step_entropy"][s]), float(row["step_logprob"][s])
            best = None
            for size in (m, m - 1, m + 1):
                if not 1 <= size <= x.shape[-1]:
                    continue
                h, ids = _top_m_entropy(x[s], size)
                if token not in ids.tolist():
                    continue
                lp = float(torch.log_softmax(x[s][ids], -1)[ids.tolist().index(token)])
                err = max(abs(h - got_h), abs(lp - got_lp))
                if best is None or err < best[0]:
                    best = (err, size)
            assert best is not None, f"step {s}: the sampled token is outside every candidate nucleus"
            worst = max(worst, best[0])
            steps += 1
            differ += best[1] != m
    print(f"\ntop-p {p}: {differ} of {steps} steps with another boundary token than Canopy's; "
          f"largest error against the matching nucleus {worst:.2e} nats")
    assert worst <= TOL
    assert differ <= max(2, steps // 10)


def test_deterministic_per_seed(engine, samples):
    from canopy.vllm_engine import sample_prompts
    t, k, p = SETTINGS["top_k"]
    cfg = SamplingConfig(rollouts=3, max_new_tokens=24, temperature=t, top_k=k, top_p=p,
                         seed=7, batch_size=6)
    again = sample_prompts(engine, PROMPTS[:2], cfg)
    first = samples["top_k"]
    for a, b in zip(first.itertuples(), again.itertuples()):
        assert list(a.token_ids) == list(b.token_ids)
        assert np.allclose(a.step_entropy, b.step_entropy, atol=1e-6)
        assert np.allclose(a.step_logprob, b.step_logprob, atol=1e-6)
    other = sample_prompts(engine, PROMPTS[:2], SamplingConfig(
        rollouts=3, max_new_tokens=24, temperature=t, top_k=k, top_p=p, seed=8, batch_size=6))
    assert [list(x) for x in other["token_ids"]] != [list(x) for x in first["token_ids"]]
    # the rollouts of one prompt are distinct draws
    assert len({tuple(x) for x in first["token_ids"][:3]}) > 1


def test_skip_and_on_prompt(engine):
    from canopy.vllm_engine import sample_prompts
    seen = []
    cfg = SamplingConfig(rollouts=2, max_new_tokens=4, top_k=10, seed=1, batch_size=2)
    table = sample_prompts(engine, PROMPTS, cfg, skip=lambda i: i == 1,
                           on_prompt=lambda i, t: seen.append((i, len(t))))
    assert seen == [(0, 2), (2, 2)]
    assert list(table["prompt_id"]) == ["0", "0", "2", "2"]


def test_refuses_what_it_cannot_record_exactly(engine):
    from vllm import SamplingParams

    from canopy.vllm_capture import KEY, ExactCapture
    from canopy.vllm_engine import sample_prompts
    with pytest.raises(ValueError, match="temperature"):
        sample_prompts(engine, PROMPTS[:1], SamplingConfig(rollouts=1, temperature=1e-6))
    for bad in ({"repetition_penalty": 1.2}, {"min_p": 0.1}, {"logit_bias": {5: 1.0}},
                {"n": 2}, {"min_tokens": 3}):
        with pytest.raises(ValueError, match="exact entropy capture"):
            ExactCapture.validate_params(SamplingParams(extra_args={KEY: 0}, **bad))
    ExactCapture.validate_params(SamplingParams(repetition_penalty=1.2))  # not captured: fine
    with pytest.raises(ValueError, match="duplicate prompt id"):
        sample_prompts(engine, [PROMPTS[0], PROMPTS[0]], SamplingConfig(rollouts=1))


def test_threads_follow_the_runtime_and_stay_settable(engine, samples):
    """The engine ran with the runtime's one thread; vLLM's CPU worker disables
    torch.set_num_threads for the process and extends LD_PRELOAD, and the engine gives
    both back."""
    assert os.environ.get("LD_PRELOAD") == _BEFORE["LD_PRELOAD"]
    assert torch.get_num_threads() == 1
    torch.set_num_threads(2)
    try:
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)


@pytest.mark.parametrize("name", ["top_k", "untruncated"])
def test_canopy_score_reproduces_the_records(engine, samples, name):
    """`canopy score` (teacher-forced, transformers) on vLLM's tokens gives back every
    recorded statistic, length and truncation flag within 1e-4 nats."""
    from canopy.models import load_model
    from canopy.score import score_rollouts

    t, k, p = SETTINGS[name]
    hf = load_model(MODEL, runtime=_runtime("hf"))
    assert hf.fingerprint == engine.fingerprint  # the same weights, named the same way
    cfg = SamplingConfig(rollouts=3, max_new_tokens=24, temperature=t, top_k=k, top_p=p)
    ours = samples[name]
    scored = score_rollouts(hf, ours, cfg).set_index(["prompt_id", "rollout_id"])
    assert (scored["outside_support"] == 0).all()
    for row in ours.itertuples():
        other = scored.loc[(row.prompt_id, row.rollout_id)]
        assert int(other["length"]) == row.length and bool(other["truncated"]) == row.truncated
        for col in ("step_entropy", "step_logprob", "step_entropy_raw", "step_stop_logprob"):
            diff = np.abs(np.asarray(getattr(row, col), dtype=np.float64)
                          - np.asarray(other[col], dtype=np.float64))
            assert diff.max() <= TOL, (col, diff.max())


def test_store_dispatches_to_the_engine_and_resumes(engine, tmp_path):
    """sample_to_store with a vLLM model: shards written under an engine-'vllm'
    configuration, and a rerun reuses them all."""
    import json

    from canopy.run import sample_to_store
    cfg = SamplingConfig(rollouts=2, max_new_tokens=6, top_k=10, seed=3, batch_size=4)
    first = sample_to_store([engine], PROMPTS[:2], cfg, out=tmp_path, progress=False)
    assert first.attrs["canopy"]["sampled_prompts"] == 2 and len(first) == 4
    again = sample_to_store([engine], PROMPTS[:2], cfg, out=tmp_path, progress=False)
    assert again.attrs["canopy"]["reused_prompts"] == 2
    assert [list(x) for x in again["token_ids"]] == [list(x) for x in first["token_ids"]]
    (manifest,) = tmp_path.rglob("manifest.json")
    assert json.loads(manifest.read_text())["config"]["runtime"]["engine"] == "vllm"
