"""Everything that changes a rollout or a fine-tune is in its hash: raw prompts get the
BOS their GGUF asks for whatever the tokenizer's conversion did, the configuration record keeps the
tokenizer's definition and a probe prompt's ids, rollouts of an older algorithm version
are resampled, and the fine-tune's hash moves with each of its inputs."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest

from canopy import finetune
from canopy.engines import config_record
from canopy.models import (PROBE_PROMPT, TOKENIZER_NOTE, apply_gguf_bos, available, get_spec,
                           resolve_spec, tokenizer_record)
from canopy.prompts import Prompt, render_prompt
from canopy.run import cached_rollouts, sample_to_store
from canopy.sampling import ALGORITHM_VERSION
from canopy.settings import SamplingConfig
from canopy.store import config_hash
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


def test_a_converted_tokenizer_adds_bos_as_its_gguf_says(tmp_path):
    # WORDS: <pad> 0, <eos> 1, <bos> 2, a 3, b 4, ...
    def note(adds):
        folder = tmp_path / f"note-{adds}"
        folder.mkdir(exist_ok=True)
        (folder / TOKENIZER_NOTE).write_text(json.dumps({"add_bos_token": adds}))
        return folder

    for converted_with_bos in (False, True):  # transformers 5 / 4.57 conversions
        tok = word_tokenizer(adds_bos=converted_with_bos)
        apply_gguf_bos(tok, note(True))
        assert render_prompt(tok, "a b", chat_template=False)[1] == [2, 3, 4]  # BOS once
    tok = word_tokenizer(adds_bos=False)
    apply_gguf_bos(tok, note(False))  # the GGUF says no BOS (SmolLM2)
    assert render_prompt(tok, "a b", chat_template=False)[1] == [3, 4]
    apply_gguf_bos(tok, tmp_path)  # not converted from a GGUF: left as it is
    assert render_prompt(tok, "a b", chat_template=False)[1] == [3, 4]
    # Chat-templated prompts are left as the template writes them (this one has <bos>).
    tok = tiny_tokenizer()
    apply_gguf_bos(tok, note(True))
    assert render_prompt(tok, "a b", chat_template=True)[1] == [2, 3, 4, 15]


def test_tokenizer_record_tells_conversions_apart_and_probes_the_rendering():
    with_bos = tokenizer_record(word_tokenizer(adds_bos=True), chat_template=False)
    without = tokenizer_record(word_tokenizer(adds_bos=False), chat_template=False)
    assert with_bos["definition_sha256"] != without["definition_sha256"]
    # PROBE_PROMPT's words are outside WORDS: unknown words map to <pad> (0).
    n_words = len(PROBE_PROMPT.split())
    assert with_bos["probe_ids"] == [2] + [0] * n_words
    assert without["probe_ids"] == [0] * n_words
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
    (path / TOKENIZER_NOTE).write_text(json.dumps({"add_bos_token": True}))  # as if from a GGUF
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
    assert records[0]["tokenizer"]["probe_ids"] != records[1]["tokenizer"]["probe_ids"]
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
@pytest.mark.parametrize("name, adds_bos", [("gemma-3-270m", True),
                                            ("smollm2-135m-instruct", False)])
def test_packaged_models_get_the_bos_their_gguf_asks_for(name, adds_bos):
    """The packaged gemma-3-270m's GGUF asks for BOS, which transformers 5's conversion
    drops: the loaded tokenizer adds it all the same. SmolLM2's asks for none."""
    from transformers import AutoTokenizer

    from canopy.models import convert_gguf

    spec = get_spec(name)
    ok, needs = available(spec)
    if not ok:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{name} is not available under CI: {needs}")
        pytest.skip(f"{name} not available: {needs}")
    folder = convert_gguf(spec)
    assert json.loads((folder / TOKENIZER_NOTE).read_text()) == {"add_bos_token": adds_bos}
    tok = AutoTokenizer.from_pretrained(str(folder))
    plain = tok("Write one sentence about rain.", add_special_tokens=False)["input_ids"]
    apply_gguf_bos(tok, folder)
    _, ids = render_prompt(tok, "Write one sentence about rain.", chat_template=False)
    assert ids == ([tok.bos_token_id] if adds_bos else []) + plain
