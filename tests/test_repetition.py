"""rep-4, the degeneration measure: hand-enumerated n-gram counts, its per-prompt and
pooled means, and the Findings sentence that uses it (shown when it applies, absent
when not)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from canopy.entropy import prompt_metrics, repetition_rate
from canopy.findings import degeneration_text
from canopy.pooling import paired_bootstrap, pool


def test_repetition_rate_counts_repeated_ngrams_by_hand():
    # 1 2 3 4 1 2 3 4 1 2 3 4: 9 windows of 4; distinct ones are 1234 2341 3412 4123.
    assert repetition_rate([1, 2, 3, 4] * 3) == pytest.approx(1 - 4 / 9)
    # 5 5 5 5 5 5: 3 windows, all (5 5 5 5): 2 of 3 repeat the first.
    assert repetition_rate([5] * 6) == pytest.approx(2 / 3)
    # No window repeats; shorter than n: no 4-gram, so none repeated.
    assert repetition_rate([1, 2, 3, 4, 5, 6, 7]) == 0.0
    assert repetition_rate([1, 2, 3]) == 0.0 and repetition_rate([]) == 0.0
    # rep-2 of 7 8 7 8 9: windows 78 87 78 89 → 3 distinct of 4.
    assert repetition_rate([7, 8, 7, 8, 9], n=2) == pytest.approx(1 / 4)
    with pytest.raises(ValueError, match="n must be at least 1"):
        repetition_rate([1, 2], n=0)


def rollout_table(loops: dict[str, float], n_prompts: int = 6, m: int = 4, seed: int = 0):
    """A rollout table of one pair (family ``fam``): ``loops[variant]`` is the share of
    rollouts that are a loop ``1 2 3 4 1 2 3 4 …`` (rep-4 = 1 − 4/13 for 16 tokens); the
    others are 16 distinct tokens (rep-4 = 0)."""
    rng = np.random.default_rng(seed)
    rows = []
    for variant, model in (("base", "b"), ("fine-tuned", "f")):
        for p in range(n_prompts):
            for i in range(m):
                loop = (p * m + i) < loops[variant] * n_prompts * m
                ids = [1, 2, 3, 4] * 4 if loop else list(range(10, 26))
                rows.append({"model": model, "family": "fam", "variant": variant,
                             "task": "t", "prompt_id": f"p{p}", "rollout_id": i,
                             "length": 16, "summed_entropy": float(rng.uniform(1, 30)),
                             "surprisal": float(rng.uniform(1, 30)), "truncated": False,
                             "token_ids": ids})
    return pd.DataFrame(rows)


def test_per_prompt_and_pooled_repetition_are_means_of_rollout_values():
    table = rollout_table({"base": 0.5, "fine-tuned": 0.0})
    per_rollout = np.array([repetition_rate(ids) for ids in table["token_ids"]])
    prompts = prompt_metrics(table)
    for (model, pid), grp in table.groupby(["model", "prompt_id"]):
        row = prompts[(prompts["model"] == model) & (prompts["prompt_id"] == pid)].iloc[0]
        assert row["repetition_rate"] == pytest.approx(per_rollout[grp.index].mean())
    pooled = pool(prompts).set_index(["model", "task"])
    assert pooled.loc[("b", "all"), "repetition_rate"] == pytest.approx(
        0.5 * (1 - 4 / 13))
    assert pooled.loc[("f", "all"), "repetition_rate"] == 0.0
    boot = paired_bootstrap(prompts, n_boot=50, metrics=["repetition_rate"])
    row = boot[boot["task"] == "all"].iloc[0]
    assert row["delta"] == pytest.approx(-0.5 * (1 - 4 / 13))
    assert row["delta_lo"] <= row["delta"] <= row["delta_hi"]
    # Without token ids (e.g. summaries) rep-4 is NaN, not an error.
    assert prompt_metrics(table.drop(columns="token_ids"))["repetition_rate"].isna().all()


def claim(verdict):
    return {"verdict": verdict, "estimate": 1.0, "lo": 0.5, "hi": 1.5, "n_prompts": 6,
            "interval": "", "prompts_needed": 6}


def test_findings_sentence_appears_only_when_a_contradicted_verdict_meets_degeneration():
    looping_base = prompt_metrics(rollout_table({"base": 1.0, "fine-tuned": 0.0}))
    contradicted = {"canopy_entropy": claim("contradicted"),
                    "length_rate_pearson": claim("supported"), "slope_ratio": None}
    text = degeneration_text(contradicted, looping_base)
    assert text.startswith("The base model b degenerates into loops")
    assert "69 %" in text and "0 % for f" in text  # 1 − 4/13 = 0.69
    assert "fine-tuning lowers CE*" in text and "ρ(N, r)" not in text
    # Absent when nothing is contradicted ...
    supported = {k: (claim("supported") if v else None) for k, v in contradicted.items()}
    assert degeneration_text(supported, looping_base) == ""
    # ... when neither model loops ...
    calm = prompt_metrics(rollout_table({"base": 0.0, "fine-tuned": 0.0}))
    assert degeneration_text(contradicted, calm) == ""
    # ... when both loop alike, and when rep-4 was not measured.
    both = prompt_metrics(rollout_table({"base": 1.0, "fine-tuned": 1.0}))
    assert degeneration_text(contradicted, both) == ""
    assert degeneration_text(contradicted, looping_base.drop(columns="repetition_rate")) == ""
    # The fine-tuned side can be the one that loops.
    looping_tuned = prompt_metrics(rollout_table({"base": 0.0, "fine-tuned": 0.5}))
    assert degeneration_text(contradicted, looping_tuned).startswith(
        "The fine-tuned model f degenerates into loops")


def test_chapter2_repetition_chart_and_length_summary():
    from canopy import charts
    from canopy.pooling import length_summary

    table = rollout_table({"base": 0.5, "fine-tuned": 0.0})
    summary = length_summary(table).set_index(["model", "task"])
    assert summary.loc[("b", "all"), "repetition_rate"] == pytest.approx(0.5 * (1 - 4 / 13))
    assert summary.loc[("f", "all"), "repetition_rate"] == 0.0
    spec = charts.repetition_chart(table).to_dict()
    values = next(iter(spec["datasets"].values()))
    assert sorted({round(v["rep4"], 6) for v in values}) == [0.0, round(1 - 4 / 13, 6)]
    assert "tooltip" in str(spec["encoding"])
    with pytest.raises(ValueError, match="needs token ids"):
        charts.repetition_chart(table.drop(columns="token_ids"))


def test_degenerate_share_counts_mostly_looping_rollouts():
    from canopy.findings import degenerate_share

    table = rollout_table({"base": 0.25, "fine-tuned": 0.0})  # loops: rep-4 = 0.69 > 0.5
    share = degenerate_share(table)
    assert share["b"] == pytest.approx(0.25) and share["f"] == 0.0
    assert degenerate_share(table, above=0.7)["b"] == 0.0
    assert degenerate_share(table.drop(columns="token_ids")).isna().all()
