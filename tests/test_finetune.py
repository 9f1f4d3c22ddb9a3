"""Fine-tuning recipe: the loss, the data encoding, the schedule, errors, and (integration)
``canopy finetune --quick`` end to end on the real packaged models."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from canopy.finetune import (
    GEMMA_CHAT_TEMPLATE, PROFILES, FinetuneConfig, _batches, _lr_at, finetune, response_loss,
)


def tiny_gemma():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                              num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                              head_dim=8, max_position_embeddings=64, sliding_window=16)
    return Gemma3ForCausalLM(config).eval()


def test_response_loss_equals_shifted_cross_entropy_of_full_logits():
    model = tiny_gemma()
    rng = np.random.default_rng(0)
    examples = []
    for n in (7, 12, 9):
        ids = list(rng.integers(3, 64, n))
        examples.append((ids, [-100] * 3 + ids[3:]))
    (ids, mask, labels), = list(_batches(examples, 3, 0, np.random.default_rng(1)))
    with torch.no_grad():
        nll, count = response_loss(model, ids, mask, labels)
        logits = model(input_ids=ids, attention_mask=mask).logits
    ref = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 64),
                                            labels[:, 1:].reshape(-1), ignore_index=-100,
                                            reduction="sum")
    assert count == sum(len(y) - 3 for _, y in examples)
    assert float(nll) == pytest.approx(float(ref), rel=1e-5)


def test_batches_pad_right_and_mask_padding():
    examples = [([5, 6, 7], [-100, 6, 7]), ([8, 9], [-100, 9])]
    (ids, mask, labels), = list(_batches(examples, 2, 0, np.random.default_rng(0)))
    for row in range(2):
        n = int(mask[row].sum())
        assert (ids[row, n:] == 0).all() and (labels[row, n:] == -100).all()
        assert ids[row, :n].tolist() in ([5, 6, 7], [8, 9])


def test_learning_rate_warms_up_then_decays_to_zero():
    config = FinetuneConfig(lr=1e-3, warmup_steps=2)
    rates = [_lr_at(s, 10, config) for s in range(10)]
    assert rates[0] == pytest.approx(5e-4) and rates[1] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(rates[1:], rates[2:]))
    assert _lr_at(10, 10, config) == 0.0


def test_bad_settings_and_inputs_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="n_train must be a positive integer"):
        FinetuneConfig(n_train=0)
    with pytest.raises(ValueError, match="teacher_truncated must be 'drop' or 'trim'"):
        FinetuneConfig(teacher_truncated="keep")
    with pytest.raises(ValueError, match="eval_top_k must be an integer"):
        FinetuneConfig(eval_top_k=-1)
    with pytest.raises(ValueError, match="unknown fine-tune profile 'fast'"):
        finetune("fast", progress=False)
    empty = tmp_path / "pool.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="no prompts|has 0 prompts"):
        finetune(FinetuneConfig(pool=str(empty)), progress=False)
    with pytest.raises(FileNotFoundError, match="fine-tuning pool not found"):
        finetune(FinetuneConfig(pool=str(tmp_path / "missing.jsonl")), progress=False)
    with pytest.raises(ValueError, match="unknown model no-such-base"):
        finetune(FinetuneConfig(base="no-such-base"), progress=False)


def test_teacher_pairs_drop_or_trim_responses_that_hit_the_budget():
    import pandas as pd

    from canopy.finetune import teacher_pairs
    from canopy.prompts import Prompt

    prompts = [Prompt("chat", str(i), f"question {i}") for i in range(4)]
    table = pd.DataFrame({  # deliberately not in prompt order
        "task": ["chat"] * 4, "prompt_id": ["3", "1", "0", "2"],
        "text": ["no sentence end at all", " Done. Then more", " Finished answer. ",
                 "   "],
        "truncated": [True, True, False, False]})
    assert teacher_pairs(table, prompts, "drop") == [("question 0", "Finished answer.")]
    assert teacher_pairs(table, prompts, "trim") == [("question 0", "Finished answer."),
                                                     ("question 1", "Done.")]
    with pytest.raises(ValueError, match="'drop' or 'trim'"):
        teacher_pairs(table, prompts, "keep")


def test_chat_template_renders_gemma_turns():
    from jinja2 import Template

    text = Template(GEMMA_CHAT_TEMPLATE).render(
        bos_token="<bos>", add_generation_prompt=True,
        messages=[{"role": "user", "content": " Hi there "}])
    assert text == "<bos><start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n"


def test_one_process_makes_a_fine_tune_at_a_time(tmp_path, monkeypatch):
    """Two makers of one fine-tune (two book builds, two test workers) take turns: the
    second waits for the first's lock and then reuses its result instead of training."""
    import threading

    from canopy import finetune as module
    from canopy.locks import store_lock

    monkeypatch.setenv("CANOPY_CACHE", str(tmp_path / "cache"))
    made = []

    def fake_make(config, key, *args):
        target = args[-2]
        made.append(config.name)
        target.mkdir(parents=True, exist_ok=True)
        (target / "canopy-finetune.json").write_text(json.dumps({"hash": key}))
        return target

    monkeypatch.setattr(module, "_make", fake_make)
    # The hash needs the teacher's pairs and the base's signature: stand-ins here.
    monkeypatch.setattr(module, "_teacher_responses", lambda *a: [("Say hi.", "Hi.")])
    monkeypatch.setattr(module, "_base_signature", lambda name: {"files": [name]})
    lock = tmp_path / "cache" / "finetune" / f".{PROFILES['quick'].name}.lock"
    results = []
    with store_lock(lock):  # another process is making it
        worker = threading.Thread(target=lambda: results.append(
            finetune("quick", progress=False, device="cpu")))
        worker.start()
        worker.join(timeout=3)
        assert worker.is_alive() and made == [], "it must wait for the lock"
    worker.join(timeout=60)
    assert not worker.is_alive() and made == [PROFILES["quick"].name]
    assert finetune("quick", progress=False, device="cpu") == results[0]  # reused
    assert made == [PROFILES["quick"].name]


@pytest.mark.integration
def test_quick_finetune_end_to_end_and_the_result_samples_with_the_chat_template():
    from canopy.models import load_model
    from canopy.prompts import Prompt
    from canopy.sampling import SamplingConfig, sample_prompts

    path = finetune("quick", progress=False)
    report = json.loads((path / "report.json").read_text())
    loss = report["heldout_response_loss"]
    assert loss["fine_tuned"] < loss["base"]
    assert len(report["train_loss"]) >= 1
    assert 106 in report["stop_ids"]  # <end_of_turn>
    # The fine-tune must teach the model to end its turn: with the chat format it stops
    # within the budget more often than the base does on raw prompts.
    stop = report["stop_fraction"]
    assert stop["fine_tuned"] > stop["base"], stop

    loaded = load_model(PROFILES["quick"].name, fingerprint=False)
    assert loaded.spec.variant == "fine-tuned" and loaded.spec.family == "gemma-3-270m"
    assert 106 in loaded.stop_ids and 1 in loaded.stop_ids
    table = sample_prompts(loaded, [Prompt("chat", "0", "Name a colour.")],
                           SamplingConfig(rollouts=2, max_new_tokens=16, seed=1))
    assert table["prompt_text"].iloc[0].startswith("<bos><start_of_turn>user\nName a colour.")
    assert table["prompt_text"].iloc[0].endswith("<start_of_turn>model\n")
    # A rerun with the same configuration does nothing (returns at once).
    assert finetune("quick", progress=False) == path


class _WordTokenizer:
    """Stand-in tokenizer: one id per whitespace-separated word (id = word length)."""

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return f"<user> {messages[0]['content']} <model>"

    def __call__(self, text, add_special_tokens):
        return {"input_ids": [len(w) for w in text.replace("<end_of_turn>", " <end_of_turn>").split()]}


def test_examples_mask_the_prompt_keep_the_end_marker_and_drop_long_ones():
    from canopy.finetune import encode_examples

    pairs = [("a bb", "ccc dddd"), ("a", " ".join(["w"] * 50))]
    kept, dropped = encode_examples(_WordTokenizer(), pairs, max_seq_len=20)
    assert dropped == 1 and len(kept) == 1
    ids, labels = kept[0]
    assert ids == [6, 1, 2, 7, 3, 4, 13]  # <user> a bb <model> ccc dddd <end_of_turn>
    assert labels == [-100, -100, -100, -100, 3, 4, 13]


def test_experiment_report_picks_the_recipe_made_model(monkeypatch, tmp_path):
    """Chapter 7's fine-tune follows from the experiment's models (no profile names)."""
    from canopy import finetune as ft

    monkeypatch.setenv("CANOPY_CACHE", str(tmp_path))
    made = []
    monkeypatch.setattr(ft, "finetune", lambda recipe, progress=False: made.append(recipe.name))
    monkeypatch.setattr(ft, "read_report", lambda name: (_ for _ in ()).throw(FileNotFoundError)
                        if name not in made else {"name": name})
    name, report = ft.experiment_report(["gemma-3-270m", "gemma-3-270m-sft-quick"])
    assert (name, report, made) == ("gemma-3-270m-sft-quick", {"name": "gemma-3-270m-sft-quick"},
                                    ["gemma-3-270m-sft-quick"])
    # No model made by canopy finetune: nothing to report (the appendix says what it would show).
    assert ft.experiment_report(["gemma-3-270m", "smollm2-135m-instruct"]) == (None, None)
    with pytest.raises(ValueError, match="no built-in recipe makes it"):
        ft.experiment_report([], "my-own-sft")
