"""Model specs, the registry, loading (directory, adapter, GGUF), prompt rendering."""

from __future__ import annotations

import os

import pytest
import torch

import canopy.models as models
from canopy.models import (
    REGISTRY, ModelSpec, available, get_spec, list_models, load_model, register,
    resolve_spec, stop_token_ids,
)
from canopy.prompts import render_prompt
from sampling_tiny import tiny_model, tiny_tokenizer



_USER_CACHE = os.environ.get("CANOPY_CACHE")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CANOPY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _registry():
    saved = dict(REGISTRY)
    yield
    REGISTRY.clear()
    REGISTRY.update(saved)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "tiny-base"
    tiny_model("llama", scale=8.0, eos=[1, 15]).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def test_default_registry():
    smol, gemma = get_spec("smollm2-135m-instruct"), get_spec("gemma-3-270m")
    assert (smol.family, smol.variant, smol.chat_template) == ("smollm2-135m", "fine-tuned", True)
    assert (gemma.family, gemma.variant, gemma.chat_template) == ("gemma-3-270m", "base", False)
    names = [row["name"] for row in list_models()]
    assert {"smollm2-135m-instruct", "gemma-3-270m"} <= set(names)


def test_unknown_name_is_one_line_error():
    with pytest.raises(ValueError, match="unknown model nope;") as info:
        get_spec("nope")
    assert "smollm2-135m-instruct" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ValueError, match="model nope is not registered .*not available "
                                         "offline: set HF_HUB_OFFLINE=0 or give a local path"):
        resolve_spec("nope")


def test_bad_specs_rejected():
    with pytest.raises(ValueError, match="variant must be"):
        ModelSpec("x", "x", "chat", "dir", "/x", False)
    with pytest.raises(ValueError, match="kind must be"):
        ModelSpec("x", "x", "base", "zip", "/x", False)
    with pytest.raises(ValueError, match="dtype must be"):
        ModelSpec("x", "x", "base", "dir", "/x", False, dtype="float8")
    with pytest.raises(ValueError, match="adapter spec needs base"):
        ModelSpec("x", "x", "fine-tuned", "adapter", "/x", True)


def test_register_refuses_silent_overwrite():
    spec = ModelSpec("extra", "fam", "base", "dir", "/x", False)
    register(spec)
    assert get_spec("extra") is spec
    with pytest.raises(ValueError, match="already registered"):
        register(ModelSpec("extra", "fam", "fine-tuned", "dir", "/y", True))
    register(ModelSpec("extra", "fam", "fine-tuned", "dir", "/y", True), replace=True)
    assert get_spec("extra").variant == "fine-tuned"


def test_missing_package_names_what_to_install():
    spec = register(ModelSpec("ghost", "ghost", "base", "package", "no_such_pkg_xyz", False,
                              install="pip install ghost-model"))
    ok, needs = available(spec)
    assert not ok and "pip install ghost-model" in needs
    with pytest.raises(ValueError, match="pip install ghost-model"):
        load_model("ghost")


def test_hub_id_offline_is_one_line_error():
    spec = resolve_spec("no-such-org/no-such-model")
    assert spec.kind == "hub" and spec.variant == "base" and not spec.chat_template
    with pytest.raises(ValueError, match="not available offline") as info:
        load_model(spec)
    assert "\n" not in str(info.value)


def test_missing_gguf_and_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        resolve_spec(str(tmp_path / "x.gguf"))
    spec = ModelSpec("d", "d", "base", "dir", str(tmp_path), False)
    with pytest.raises(ValueError, match="no config.json"):
        load_model(spec)


def test_load_directory_and_fingerprint(model_dir):
    spec = resolve_spec(str(model_dir), variant="fine-tuned")
    assert (spec.kind, spec.name, spec.chat_template) == ("dir", "tiny-base", True)
    loaded = load_model(spec)
    assert loaded.stop_ids == [1, 15]
    assert loaded.model.dtype == torch.float32 and not loaded.model.training
    again = load_model(spec)
    assert again.fingerprint == loaded.fingerprint and len(loaded.fingerprint) == 64
    with torch.no_grad():
        loaded.model.model.norm.weight.add_(1e-3)
    assert models.model_fingerprint(loaded.model) != again.fingerprint
    bf16 = load_model(ModelSpec("b", "b", "base", "dir", str(model_dir), False,
                                dtype="bfloat16"))
    assert bf16.model.dtype == torch.bfloat16


def test_adapter_spec_merges_lora(model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    base = tiny_model("llama", scale=8.0, eos=[1, 15])
    lora = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"],
                                           init_lora_weights=False))
    adapter_dir = tmp_path / "cache" / "finetune" / "tiny-sft"
    lora.save_pretrained(adapter_dir)
    ids = torch.tensor([[2, 5, 6, 7]])
    with torch.no_grad():
        want = lora(ids).logits
    register(ModelSpec("tiny-base", "tiny", "base", "dir", str(model_dir), False))
    spec = register(ModelSpec("tiny-sft", "tiny", "fine-tuned", "adapter",
                              "{cache}/finetune/tiny-sft", True, base="tiny-base"))
    assert available(spec) == (True, "")
    loaded = load_model("tiny-sft")
    assert type(loaded.model).__name__ == "LlamaForCausalLM"  # merged, no peft wrapper
    with torch.no_grad():
        got = loaded.model(ids).logits
        plain = load_model("tiny-base").model(ids).logits
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-3)
    missing = register(ModelSpec("tiny-none", "tiny", "fine-tuned", "adapter",
                                 "{cache}/finetune/none", True, base="tiny-base",
                                 install="run `canopy finetune`"))
    ok, needs = available(missing)
    assert not ok and "canopy finetune" in needs


def test_render_prompt_and_stop_ids():
    tok = tiny_tokenizer()
    text, ids = render_prompt(tok, "a b", chat_template=True)
    assert text == "<bos> a b m " and ids == [2, 3, 4, 15]
    text, ids = render_prompt(tok, "a b", chat_template=False)
    assert text == "a b" and ids == [2, 3, 4]
    model = tiny_model("llama", eos=[1, 15])
    assert stop_token_ids(tok, model) == [1, 15]
    model.generation_config.eos_token_id = 7
    assert stop_token_ids(tok, model) == [1, 7]


def _packaged_or_skip(name):
    ok, needs = available(get_spec(name))
    if not ok:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{name} is not available under CI: {needs}")
        pytest.skip(f"{name} not available: {needs}")


@pytest.mark.integration
def test_converted_smollm2_gives_the_gguf_logits(monkeypatch):
    """The safetensors conversion reproduces the GGUF-loaded model's logits exactly."""
    from transformers import AutoModelForCausalLM

    if _USER_CACHE:  # reuse the shared conversion cache
        monkeypatch.setenv("CANOPY_CACHE", _USER_CACHE)
    else:
        monkeypatch.delenv("CANOPY_CACHE")
    _packaged_or_skip("smollm2-135m-instruct")
    spec = get_spec("smollm2-135m-instruct")
    loaded = load_model(spec)
    gguf = models.gguf_path(spec)
    direct = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                  dtype="float32").eval()
    _, ids = render_prompt(loaded.tokenizer, "Name three colours.", True)
    with torch.no_grad():
        a = loaded.model(torch.tensor([ids])).logits
        b = direct(torch.tensor([ids])).logits
    assert torch.equal(a, b)
    assert loaded.stop_ids == [2]
