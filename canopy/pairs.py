"""What the chapters say about the models, taken from the data: which base and
fine-tuned models form a matched pair, which models stand alone, and where a fine-tune
came from — so that no chapter names the default pair or "our own LoRA fine-tune" unless
that is what the run holds.

A *model table* is any table with the columns ``model``, ``family`` and ``variant``
(rollouts, per-prompt metrics, pooled metrics).
"""

from __future__ import annotations

from typing import Iterable

import pandas as pd

from canopy.tables import MODEL_KEYS, require_columns

__all__ = ["matched_pairs", "unpaired_models", "models_text", "paired_scope_text",
           "fine_tune_origin_text", "no_finetune_text"]


def _code(names: Iterable[str]) -> str:
    """```a```, ```a`` and ``b```, ```a``, ``b`` and ``c```."""
    names = [f"`{n}`" for n in names]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1] \
        if names else ""


def _models(table: pd.DataFrame) -> pd.DataFrame:
    require_columns(table, list(MODEL_KEYS), "model table")
    return table[list(MODEL_KEYS)].drop_duplicates().sort_values(list(MODEL_KEYS))


def matched_pairs(table: pd.DataFrame) -> list[tuple[str, str, str]]:
    """``(family, base model, fine-tuned model)`` of every family of ``table`` with
    exactly one model of each variant, sorted by family."""
    models = _models(table)
    pairs = []
    for family, fam in models.groupby("family", sort=True):
        base = fam.loc[fam["variant"] == "base", "model"].tolist()
        tuned = fam.loc[fam["variant"] == "fine-tuned", "model"].tolist()
        if len(base) == 1 and len(tuned) == 1:
            pairs.append((str(family), str(base[0]), str(tuned[0])))
    return pairs


def unpaired_models(table: pd.DataFrame) -> list[str]:
    """Models of ``table`` outside every matched pair, sorted."""
    paired = {m for _, b, f in matched_pairs(table) for m in (b, f)}
    return sorted(str(m) for m in _models(table)["model"] if m not in paired)


def models_text(table: pd.DataFrame) -> str:
    """The run's models with their roles, e.g. "`a` (base) and `b` (fine-tuned), family
    `f`; `c` (fine-tuned, no base here)"."""
    parts = [f"`{b}` (base) and `{f}` (fine-tuned), family `{fam}`"
             for fam, b, f in matched_pairs(table)]
    models = _models(table).set_index("model")
    for m in unpaired_models(table):
        variant = models.loc[m, "variant"]
        variant = variant.iloc[0] if isinstance(variant, pd.Series) else variant
        parts.append(f"`{m}` ({variant}, no partner here)")
    return "; ".join(parts)


def paired_scope_text(table: pd.DataFrame) -> str:
    """Which models a base-vs-fine-tuned comparison covers and which it leaves out, in
    one or two sentences (chapters 3, 4 and 6)."""
    pairs = matched_pairs(table)
    alone = unpaired_models(table)
    if not pairs:
        return ("No family among this run's models has both a base and a fine-tuned model "
                f"({_code(alone)}), so nothing is compared here.")
    names = [f"the `{fam}` pair (`{b}` → `{f}`)" for fam, b, f in pairs]
    text = ("Only families with both variants are compared: here "
            + (names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1])
            + ".")
    if alone:
        text += (f" {_code(alone)} {'has' if len(alone) == 1 else 'have'} no partner among "
                 "this run's models, so "
                 + ("it appears" if len(alone) == 1 else "they appear")
                 + " in the tables above but not here.")
    return text


def fine_tune_origin_text(table: pd.DataFrame) -> str:
    """Where each compared fine-tuned model came from: made by this project's
    ``canopy finetune`` (a small LoRA fine-tune, appendix) or given by the experiment
    (its training is outside what this book measured). '' without a matched pair."""
    from canopy.finetune import recipe_for

    sentences = []
    for _, base, tuned in matched_pairs(table):
        recipe = recipe_for(tuned)
        if recipe is not None:
            sentences.append(
                f"the fine-tuned `{tuned}` is this project's own small LoRA fine-tune of "
                f"`{base}` on a teacher's responses (`canopy finetune`, Appendix), not an "
                "industrial instruction-tuned model")
        else:
            sentences.append(
                f"the fine-tuned `{tuned}` is the model the experiment names as `{base}`'s "
                "fine-tuned partner; how it was trained is outside what this book measured, "
                "so a difference here is about that fine-tune of that model")
    return "; ".join(sentences)


def no_finetune_text(models: Iterable[str]) -> str:
    """The appendix's text for an experiment with no model made by ``canopy finetune``:
    what the chapter would show and how to get it."""
    return ("None of this experiment's models (" + _code(models) + ") is made by "
            "`canopy finetune`, so there is no fine-tune of this project's to report. With "
            "one, this appendix shows how it was made (the recipe and its settings), its "
            "training loss, and whether it is a real fine-tune: the response loss of base and "
            "fine-tuned model on held-out teacher responses and how often each stops within "
            "the token budget. To see it, add `gemma-3-270m-sft` (or, for the quick profile, "
            "`gemma-3-270m-sft-quick`) to the experiment's models, or pass "
            "`-p finetune_name NAME` for a fine-tune made with `canopy finetune`.")
