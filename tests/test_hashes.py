"""Everything that changes a rollout or a fine-tune is in its hash: raw prompts start
with BOS whatever the tokenizer's conversion did, the configuration record keeps the
tokenizer's definition and a probe prompt's ids, rollouts of an older algorithm version
are resampled, and the fine-tune's hash moves with each of its inputs."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest

from canopy import finetune
from canopy.models import PROBE_PROMPT, available, get_spec, render_prompt, resolve_spec, tokenizer_record
from canopy.prompts import Prompt
from canopy.sampling import ALGORITHM_VERSION, SamplingConfig
from canopy.store import cached_rollouts, config_hash, config_record, sample_to_store
from sampling_tiny import WORDS, tiny_model, tiny_tokenizer


def word_tokenizer(*, adds_bos: bool, bos: str = "<bos>", words=WORDS):
    """A word-level tokenizer over ``words`` (eos ``<eos>``), which adds ``bos`` in front
    of raw text only when ``adds_bos`` (as transformers 4.57's Gemma conversion did, and
    5.x's does not)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if adds_bos:
        core.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", special_tokens=[(bos, words.index(bos))])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>",
                                   eos_token="<eos>", bos_token=bos)


def test_raw_prompts_start_with_bos_once_whatever_the_conversion_did():
    # WORDS: <pad> 0, <eos> 1, <bos> 2, a 3, b 4, ...
    for adds in (False, True):
        _, ids = render_prompt(word_tokenizer(adds_bos=adds), "a b", chat_template=False)
        assert ids == [2, 3, 4]
    # A tokenizer whose BOS is its EOS (GPT-2 style) gets nothing put in front.
    _, ids = render_prompt(word_tokenizer(adds_bos=False, bos="<eos>"), "a b", False)
    assert ids == [3, 4]
    # Chat-templated prompts are left as the template writes them (this one has <bos>).
    _, ids = render_prompt(tiny_tokenizer(), "a b", chat_template=True)
    assert ids == [2, 3, 4, 15]


def test_tokenizer_record_tells_conversions_apart_and_probes_the_rendering():
    with_bos = tokenizer_record(word_tokenizer(adds_bos=True), chat_template=False)
    without = tokenizer_record(word_tokenizer(adds_bos=False), chat_template=False)
    assert with_bos["definition_sha256"] != without["definition_sha256"]
    # PROBE_PROMPT's words are outside WORDS: unknown words map to <pad> (0).
    n_words = len(PROBE_PROMPT.split())
    assert with_bos["probe_ids"] == without["probe_ids"] == [2] + [0] * n_words
    more = tokenizer_record(word_tokenizer(adds_bos=True, words=WORDS + ["z"]), False)
    assert more["vocab"] == len(WORDS) + 1 and more["definition_sha256"] != with_bos["definition_sha256"]
    chat = tokenizer_record(tiny_tokenizer(), chat_template=True)
    assert chat["probe_ids"][0] == 2 and chat["probe_ids"][-1] == 15  # "<bos> … m "
    assert chat["chat_template_sha256"] != with_bos["chat_template_sha256"]


CFG = SamplingConfig(rollouts=2, max_new_tokens=4, top_k=10, seed=1, batch_size=4)
PROMPTS = [Prompt("t", "p0", "a b c"), Prompt("t", "p1", "d")]


def test_store_records_the_tokenizer_and_resamples_an_older_algorithm(tmp_path, monkeypatch):
    monkeypatch.setenv("CANOPY_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "tiny-base"
    tiny_model("llama", scale=8.0, eos=[1, 15]).save_pretrained(path)
    word_tokenizer(adds_bos=False).save_pretrained(path)
    spec = resolve_spec(str(path))
    out = tmp_path / "store"
    table = sample_to_store(spec, PROMPTS, CFG, out, progress=False)
    assert all(list(ids)[:1] == [2] for ids in table["prompt_token_ids"])  # BOS put first
    model_dir = next(p for p in out.iterdir() if p.is_dir())
    current = json.loads((model_dir / "current.json").read_text())["config_hash"]
    manifest_path = model_dir / current / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    record = manifest["config"]
    assert record["algorithm_version"] == ALGORITHM_VERSION == 2
    assert record["tokenizer"]["probe_ids"][0] == 2
    assert config_hash(record) == manifest["config_hash"]
    assert cached_rollouts(spec, PROMPTS, CFG, out) is not None
    # A store written by algorithm version 1 (raw prompts without BOS) is not reused.
    manifest["config"]["algorithm_version"] = 1
    manifest_path.write_text(json.dumps(manifest))
    assert cached_rollouts(spec, PROMPTS, CFG, out) is None


def test_config_hash_moves_with_the_tokenizer_definition():
    from canopy.models import LoadedModel

    model = tiny_model("llama", eos=[1, 15])
    records = [config_record(LoadedModel(model=model, tokenizer=word_tokenizer(adds_bos=adds),
                                         spec=resolve_spec("org/x-local"),
                                         stop_ids=[1, 15], fingerprint="f"), CFG)
               for adds in (False, True)]
    assert records[0]["tokenizer"]["probe_ids"] == records[1]["tokenizer"]["probe_ids"]
    assert config_hash(records[0]) != config_hash(records[1])


def test_finetune_hash_moves_with_everything_that_changes_the_result():
    config = finetune.PROFILES["quick"]
    runtime = {"engine": "hf", "device_type": "cpu", "dtype": "float32", "threads": 1}
    base = {"converted": ["/c/models/gemma-3-270m/.canopy-converted.json", 10, 5]}
    pairs = [("Say hi.", "Hi."), ("Count to two.", "One, two.")]
    key = finetune.finetune_hash(config, "pool", runtime, base, pairs)
    assert key == finetune.finetune_hash(config, "pool", dict(runtime), dict(base), list(pairs))
    changed = [
        finetune.finetune_hash(replace(config, seed=config.seed + 1), "pool", runtime, base, pairs),
        finetune.finetune_hash(config, "other pool", runtime, base, pairs),
        finetune.finetune_hash(config, "pool", {**runtime, "threads": 2}, base, pairs),
        finetune.finetune_hash(config, "pool", {**runtime, "device_type": "cuda",
                                                "threads": None}, base, pairs),
        finetune.finetune_hash(config, "pool", runtime, {"converted": ["x", 10, 6]}, pairs),
        finetune.finetune_hash(config, "pool", runtime, base, pairs[:1]),
        finetune.finetune_hash(config, "pool", runtime, base, [pairs[0], ("Count to two.", "One.")]),
    ]
    assert len(set(changed + [key])) == len(changed) + 1


@pytest.mark.integration
def test_packaged_gemma_raw_prompt_ids_start_with_bos():
    """The packaged gemma-3-270m's converted tokenizer adds no BOS under transformers 5;
    the rendered raw prompt starts with ``<bos>`` all the same."""
    from transformers import AutoTokenizer

    from canopy.models import convert_gguf

    spec = get_spec("gemma-3-270m")
    ok, needs = available(spec)
    if not ok:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"gemma-3-270m is not available under CI: {needs}")
        pytest.skip(f"gemma-3-270m not available: {needs}")
    tok = AutoTokenizer.from_pretrained(str(convert_gguf(spec)))
    assert tok.convert_ids_to_tokens(tok.bos_token_id) == "<bos>"
    _, ids = render_prompt(tok, "Write one sentence about rain.", chat_template=False)
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
