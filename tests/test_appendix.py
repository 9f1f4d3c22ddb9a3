"""Chapter 7, the fine-tune appendix, with any experiment: with no model made by
``canopy finetune`` it says what it would show instead of failing; with one it reports
it. The chapter's code is run as a script (no kernel, no book build), its displays
collected; and the prose helpers of canopy.pairs name the models of the data."""

from __future__ import annotations

import IPython.display
import pandas as pd
import pytest

from canopy import REPO_ROOT
from canopy import finetune as ft
from canopy.pairs import (fine_tune_origin_text, matched_pairs, models_text, no_finetune_text,
                          paired_scope_text, unpaired_models)

CHAPTER = REPO_ROOT / "notebooks" / "07_appendix_finetune.py"


def run_chapter(monkeypatch, experiment_file) -> str:
    """Execute chapter 7 with ``experiment_file``; the text of everything it displays."""
    shown = []
    monkeypatch.setattr(IPython.display, "display",
                        lambda *objs, **kw: shown.extend(objs))
    source = CHAPTER.read_text().replace(
        "experiment_file = None", f"experiment_file = {str(experiment_file)!r}", 1)
    exec(compile(source, str(CHAPTER), "exec"), {"__name__": "chapter7"})
    return "\n".join(o.data if isinstance(o, IPython.display.Markdown) else str(o) for o in shown)


def test_appendix_without_a_fine_tune_says_what_it_would_show(tmp_path, monkeypatch):
    monkeypatch.setenv("CANOPY_CACHE", str(tmp_path / "cache"))
    experiment = tmp_path / "own.yaml"
    experiment.write_text("models: [gemma-3-270m, smollm2-135m-instruct]\ntasks: [stories]\n")
    assert ft.experiment_report(["gemma-3-270m", "smollm2-135m-instruct"]) == (None, None)
    text = run_chapter(monkeypatch, experiment)
    assert "fine-tune none" in text
    assert "None of this experiment's models (`gemma-3-270m` and `smollm2-135m-instruct`)" in text
    assert "held-out" in text and "optimiser steps" not in text


def test_appendix_with_a_fine_tune_reports_it(tmp_path, monkeypatch, finetune_report):
    monkeypatch.setenv("CANOPY_CACHE", str(tmp_path / "cache"))
    report = dict(finetune_report, teacher="t", n_train_prompts=3, torch_threads=1)
    report["config"] = dict(report["config"], lora_alpha=32, lora_dropout=0.0, epochs=1,
                            warmup_steps=1, batch_size=2, max_seq_len=64)
    monkeypatch.setattr(ft, "experiment_report", lambda models, name=None: ("x-sft", report))
    experiment = tmp_path / "with.yaml"
    experiment.write_text("models: [gemma-3-270m, gemma-3-270m-sft-quick]\ntasks: [stories]\n")
    text = run_chapter(monkeypatch, experiment)
    assert "fine-tune `x-sft`" in text and "None of this experiment's models" not in text
    assert "3 optimiser steps" in text and "falls by 1.000 nats per token" in text


def model_table(rows):
    return pd.DataFrame(rows, columns=["model", "family", "variant"])


def test_pair_prose_names_the_models_of_the_data():
    table = model_table([("mine-base", "mine", "base"), ("mine-chat", "mine", "fine-tuned"),
                         ("solo", "solo", "fine-tuned"), ("mine-base", "mine", "base")])
    assert matched_pairs(table) == [("mine", "mine-base", "mine-chat")]
    assert unpaired_models(table) == ["solo"]
    assert models_text(table) == ("`mine-base` (base) and `mine-chat` (fine-tuned), family "
                                  "`mine`; `solo` (fine-tuned, no partner here)")
    scope = paired_scope_text(table)
    assert "the `mine` pair (`mine-base` → `mine-chat`)" in scope
    assert "`solo` has no partner" in scope and "gemma" not in scope
    origin = fine_tune_origin_text(table)
    assert "`mine-chat` is the model the experiment names" in origin and "LoRA" not in origin
    default = model_table([("gemma-3-270m", "gemma-3-270m", "base"),
                           ("gemma-3-270m-sft", "gemma-3-270m", "fine-tuned")])
    assert "own small LoRA fine-tune of `gemma-3-270m`" in fine_tune_origin_text(default)
    assert "no partner" not in paired_scope_text(default)
    alone = model_table([("a", "a", "base"), ("b", "b", "fine-tuned")])
    assert paired_scope_text(alone).startswith("No family among this run's models")
    assert fine_tune_origin_text(alone) == ""
    assert "`x`" in no_finetune_text(["x"])
    with pytest.raises(ValueError, match="model table is missing column"):
        matched_pairs(pd.DataFrame({"model": ["a"]}))
