"""Runtime (engine, device, dtype, threads): the device-side decode loop gives exactly the
rollouts of a straightforward per-step loop, the configuration hash separates runtimes,
no FutureWarning, one-line errors."""

from __future__ import annotations

import os
import sys
import warnings

import numpy as np
import pytest
import torch

from canopy.cli import main
from canopy.experiment import load_experiment
from canopy.models import LoadedModel, ModelSpec, load_model
from canopy.sampling import (
    Prompt, Runtime, SamplingConfig, _draw, default_threads, entropy, process_logits,
    model_forward, rollout_uniforms, sample_batch, sample_prompts,
)
from canopy.engines import config_record
from canopy.run import sample_to_store
from canopy.store import config_hash
from sampling_tiny import tiny_model, tiny_tokenizer

SETTINGS = {
    "untruncated": dict(temperature=1.0, top_k=0, top_p=1.0),
    "all": dict(temperature=1.3, top_k=8, top_p=0.9),
    "top_p": dict(temperature=1.0, top_k=0, top_p=0.8),
}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CANOPY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@torch.no_grad()
def reference_loop(model, prompts, counts, u, stop_ids, s):
    """The straightforward algorithm: each prompt's cache repeated for its rollouts, one
    step at a time, statistics copied to the host every step, a row dropped from the
    batch the step it draws a stop id."""
    from transformers import DynamicCache

    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    cache = DynamicCache(config=model.config)
    logits = model_forward(model, input_ids=ids, attention_mask=mask,
                           position_ids=(mask.cumsum(-1) - 1).clamp(min=0), cache=cache,
                           use_cache=True, logits_to_keep=1).logits[:, -1].float()
    owner = torch.repeat_interleave(torch.arange(len(prompts)), torch.tensor(counts))
    cache.batch_select_indices(owner)
    mask, logits = mask[owner], logits[owner]
    rows, steps = u.shape
    out = {r: {"tokens": [], "h": [], "lp": [], "h_raw": [], "stop": []} for r in range(rows)}
    live = list(range(rows))
    for t in range(steps):
        raw = torch.log_softmax(logits, -1)
        logq, idx = process_logits(logits, **s)
        token, lp = _draw(logq, idx, u[live, t])
        keep = []
        for i, r in enumerate(live):
            rec = out[r]
            rec["tokens"].append(int(token[i]))
            rec["h"].append(entropy(logq[i:i + 1])[0])
            rec["lp"].append(lp[i])
            rec["h_raw"].append(entropy(raw[i:i + 1])[0])
            rec["stop"].append(torch.logsumexp(raw[i, stop_ids], -1))
            if int(token[i]) not in stop_ids:
                keep.append(i)
        if t == steps - 1 or not keep:
            break
        sel = torch.tensor(keep)
        cache.batch_select_indices(sel)
        live = [live[i] for i in keep]
        mask = torch.cat([mask[sel], torch.ones(len(keep), 1, dtype=mask.dtype)], -1)
        logits = model_forward(model, input_ids=token[sel][:, None], attention_mask=mask,
                               position_ids=mask.sum(-1, keepdim=True) - 1, cache=cache,
                               use_cache=True).logits[:, -1].float()
    return out


@pytest.mark.parametrize("check_every", [1, 3, 8])
@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_device_loop_equals_straightforward_loop(name, check_every):
    s = SETTINGS[name]
    model = tiny_model("llama", scale=8.0, eos=[1, 15])
    prompts, counts, stop_ids = [[2, 5, 6, 7, 8, 9, 3], [2, 4], [2, 9, 9, 4, 3]], [3, 2, 4], [1, 15]
    u = rollout_uniforms(range(100, 109), 14)
    got = sample_batch(model, prompts, counts, u, stop_ids, check_every=check_every, **s)
    want = reference_loop(model, prompts, counts, u, stop_ids, s)
    assert any(len(w["tokens"]) < 14 for w in want.values())  # some rows stop early
    assert any(len(w["tokens"]) == 14 for w in want.values()) or name == "untruncated"
    for r, w in want.items():
        n = len(w["tokens"])
        assert int(got.lengths[r]) == n
        assert bool(got.truncated[r]) == (w["tokens"][-1] not in stop_ids)
        assert got.tokens[r, :n].tolist() == w["tokens"]
        for key, ref in (("entropy", "h"), ("logprob", "lp"), ("entropy_raw", "h_raw"),
                         ("stop_logprob", "stop")):
            g, ref_values = getattr(got, key)[r, :n], torch.stack(w[ref]).float()
            if check_every == 1:  # the CPU default: bit-identical, not merely close
                assert torch.equal(g, ref_values), (r, key)
            else:  # rows kept a few steps longer change the batch's GEMM shapes: rounding
                assert torch.allclose(g, ref_values, atol=1e-5, rtol=0), (r, key)
            assert not getattr(got, key)[r, n:].any()  # nothing recorded after the stop
        assert not got.tokens[r, n:].any()


def loaded_tiny(dtype="float32"):
    spec = ModelSpec(name="tiny", family="tiny", variant="fine-tuned", kind="dir",
                     source="/none", chat_template=True, dtype=dtype)
    return LoadedModel(model=tiny_model("llama", scale=8.0, eos=[1, 15]),
                       tokenizer=tiny_tokenizer(), spec=spec, stop_ids=[1, 15],
                       fingerprint="x")


PROMPTS = [Prompt("t", "p0", "a b c"), Prompt("t", "p1", "d")]


def test_sampling_prints_no_future_warning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sample_prompts(loaded_tiny(), PROMPTS, SamplingConfig(rollouts=3, max_new_tokens=6))
    assert not [w for w in caught if issubclass(w.category, FutureWarning)], \
        [str(w.message) for w in caught]


def test_config_hash_separates_engine_device_dtype_threads():
    loaded, cfg = loaded_tiny(), SamplingConfig(rollouts=2)
    runtimes = [Runtime(device="cpu", threads=1), Runtime(device="cpu", threads=2),
                Runtime(device="cpu", threads=1, dtype="bfloat16"),
                Runtime(device="cpu", threads=1, engine="vllm")]
    hashes = [config_hash(config_record(loaded, cfg, r)) for r in runtimes]
    assert len(set(hashes)) == len(hashes)
    record = config_record(loaded, cfg, runtimes[0])["runtime"]
    assert record == {"engine": "hf", "device_type": "cpu", "dtype": "float32", "threads": 1}
    # the same runtime gives the same hash; the score engine is its own configuration
    assert hashes[0] == config_hash(config_record(loaded, cfg, Runtime(device="cpu", threads=1)))
    assert config_hash(config_record(loaded, cfg, runtimes[0], engine="score")) not in hashes


def test_one_and_two_thread_runs_never_share_shards(tmp_path):
    cfg = SamplingConfig(rollouts=2, max_new_tokens=4)
    dirs = []
    for threads in (1, 2):
        torch.set_num_threads(threads)  # a hand-built model runs on torch's current count
        sample_to_store(loaded_tiny(), PROMPTS, cfg, tmp_path, progress=False)
        dirs.append({p.parent.name for p in (tmp_path / "tiny").glob("*/manifest.json")})
    torch.set_num_threads(1)
    assert len(dirs[0]) == 1 and len(dirs[1]) == 2  # the 2-thread run made its own directory
    # back on one thread the 1-thread shards are reused
    table = sample_to_store(loaded_tiny(), PROMPTS, cfg, tmp_path, progress=False)
    assert table.attrs["canopy"]["reused_prompts"] == 2
    # an explicit runtime's thread count is applied and recorded
    sample_to_store(loaded_tiny(), PROMPTS, cfg, tmp_path, progress=False,
                    runtime=Runtime(device="cpu", threads=2))
    assert torch.get_num_threads() == 2
    assert len(list((tmp_path / "tiny").glob("*/manifest.json"))) == 2
    torch.set_num_threads(1)


def test_runtime_validation_and_resolution():
    for kwargs, message in [(dict(engine="tgi"), "engine must be one of hf, vllm"),
                            (dict(device="gpu"), "device must be auto, cpu"),
                            (dict(device="cuda:x"), "device must be"),
                            (dict(dtype="int8"), "dtype must be one of"),
                            (dict(threads=0), "threads must be an integer ≥ 1"),
                            (dict(threads=1.5), "threads must be an integer")]:
        with pytest.raises(ValueError, match=message) as info:
            Runtime(**kwargs)
        assert "\n" not in str(info.value)
    r = Runtime().resolved()
    assert r.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert r.threads == default_threads() >= 1
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            Runtime(device="cuda:1").resolved()


def test_load_model_on_runtime(tmp_path):
    path = tmp_path / "tiny"
    tiny_model("llama", scale=8.0, eos=[1, 15]).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    a = load_model(str(path), runtime=Runtime(device="cpu", dtype="float32", threads=1))
    b = load_model(str(path), runtime=Runtime(device="cpu", dtype="bfloat16", threads=1))
    assert next(a.model.parameters()).dtype == torch.float32
    assert next(b.model.parameters()).dtype == torch.bfloat16
    assert a.fingerprint == b.fingerprint  # it names the weights, not the runtime
    assert b.runtime == Runtime(device="cpu", dtype="bfloat16", threads=1)
    assert torch.get_num_threads() == 1


def test_vllm_engine_missing_is_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "canopy.vllm_engine", None)  # import fails
    with pytest.raises(ValueError, match="make env-vllm") as info:
        sample_to_store([ModelSpec("m", "m", "base", "dir", str(tmp_path), False)], PROMPTS,
                        SamplingConfig(rollouts=1), runtime=Runtime(engine="vllm", device="cpu"))
    assert "\n" not in str(info.value)


def test_cli_runtime_errors(tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a b"}\n')
    model = tmp_path / "tiny"
    tiny_model("llama", scale=8.0, eos=[1, 15]).save_pretrained(model)
    tiny_tokenizer().save_pretrained(model)
    base = ["sample", "--models", str(model), "--prompts", str(prompts),
            "--out", str(tmp_path / "out")]
    capsys.readouterr()  # the model's save progress bar
    for extra, message in [(["--threads", "0"], "threads must be"),
                           (["--device", "tpu"], "device must be auto")]:
        with pytest.raises(SystemExit) as info:
            main(base + extra)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            main(base + ["--device", "cuda"])
        assert "CUDA is not available" in capsys.readouterr().err


def test_experiment_runtime_section(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("models: [m]\ntasks: [t]\nruntime: {device: cpu, threads: 1}\n"
                    "profiles:\n  half: {runtime: {dtype: bfloat16}}\n")
    exp = load_experiment(path, "half", {"threads": 2})
    assert exp.runtime == Runtime(device="cpu", dtype="bfloat16", threads=2)
    assert load_experiment(path).runtime == Runtime(device="cpu", threads=1)
    path.write_text("models: [m]\ntasks: [t]\nruntime: {gpu: true}\n")
    with pytest.raises(ValueError, match="unknown runtime key"):
        load_experiment(path)
    path.write_text("models: [m]\ntasks: [t]\nruntime: {device: gpu}\n")
    with pytest.raises(ValueError, match="runtime: device must be"):
        load_experiment(path)


def _test_device() -> str:
    device = os.environ.get("CANOPY_TEST_DEVICE", "")
    if not device:
        pytest.skip("set CANOPY_TEST_DEVICE=cuda (benchmarks/gpu_check.sh does) to run the "
                    "engine on an accelerator")
    return device


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_engine_on_accelerator_matches_cpu_and_scorer(name):
    """On CANOPY_TEST_DEVICE: the device loop (lagged stop checks) gives the CPU loop's
    tokens (the same uniforms; logits differ only by rounding) with statistics within
    1e-4 nats, and the scorer on that device reproduces them."""
    from canopy.score import score_rollouts

    device = _test_device()
    s = SETTINGS[name]
    cpu = loaded_tiny()
    acc = loaded_tiny()
    acc.model.to(device)
    cfg = SamplingConfig(rollouts=5, max_new_tokens=12, seed=4, batch_size=7, **s)
    want = sample_prompts(cpu, PROMPTS, cfg)
    got = sample_prompts(acc, PROMPTS, cfg)
    assert [list(x) for x in got["token_ids"]] == [list(x) for x in want["token_ids"]]
    for col in ("step_entropy", "step_logprob", "step_entropy_raw", "step_stop_logprob"):
        for a, b in zip(got[col], want[col]):
            assert np.allclose(a, b, atol=1e-4, rtol=0), col
    scored = score_rollouts(acc, got, cfg)
    for col in ("step_entropy", "step_logprob"):
        for a, b in zip(got[col], scored[col]):
            assert np.allclose(a, b, atol=1e-4, rtol=0), col
