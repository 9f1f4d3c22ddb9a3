"""The Findings page's measurements: the paper's three claims measured on a rollout
table (:func:`measure_claims`), and, when a verdict goes against the paper while one
model of the pair degenerates into loops, a sentence that says so
(:func:`degeneration_text`).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from canopy.report import paired_claim, ratio_claim

__all__ = ["CLAIMS", "measure_claims", "degeneration_text", "degenerate_share",
           "DEGENERATE_REPETITION"]

#: claim key → (the claim in words, what is measured). Order of the Findings table.
CLAIMS = {
    "canopy_entropy": ("fine-tuning lowers CE*", "Δ CE* (%), all tasks, paired bootstrap"),
    "length_rate_pearson": ("fine-tuning strengthens ρ(N, r)",
                            "Δ ρ(N, r), all tasks, paired bootstrap"),
    "slope_ratio": ("the slope of D on R̄ nearly triples", "(β+η)/β, interaction regression"),
}

#: A model whose pooled rep-4 (:func:`canopy.entropy.repetition_rate`) is at least this
#: (a fifth of its 4-grams repeat an earlier one) is said to degenerate into loops.
DEGENERATE_REPETITION = 0.2


def measure_claims(rollouts: pd.DataFrame, embedding_model: str | None, *,
                   n_boot: int = 2000, seed: int = 0, confidence: float = 0.95,
                   progress: bool = False) -> dict[str, dict | None]:
    """The three claims of :data:`CLAIMS` measured on ``rollouts`` (a rollout table of
    :func:`canopy.store.load_rollouts` with ``text`` for the embeddings): claim key →
    the dict of :func:`canopy.report.paired_claim` (CE* in percent, ρ(N, r) as a
    difference) or :func:`canopy.report.ratio_claim`, or None when not measurable (no
    matched pair; ``embedding_model=None`` skips the slope ratio). Also returns, under
    ``"boot"``, the paired bootstrap table they come from."""
    from canopy import entropy, pooling, report, semantic, stats

    prompts = entropy.prompt_metrics(rollouts)
    boot = pooling.paired_bootstrap(prompts, n_boot=n_boot, seed=seed, confidence=confidence,
                                    metrics=["canopy_entropy", "length_rate_pearson"])
    paired = report.bootstrap_table(boot) if len(boot) else boot
    out: dict = {"boot": boot}
    out["canopy_entropy"] = paired_claim(paired, "canopy_entropy", "< 0", percent=True,
                                         fmt="+.0f") if len(paired) else None
    out["length_rate_pearson"] = paired_claim(paired, "length_rate_pearson", "> 0") \
        if len(paired) else None
    out["slope_ratio"] = None
    if embedding_model is not None:
        embeddings = semantic.embed_rollouts(rollouts, embedding_model, progress=progress)
        panel = stats.build_panel(rollouts, embeddings)
        out["slope_ratio"] = ratio_claim(stats.interaction_regression(panel, level=confidence))
    return out


def degeneration_text(claims: Mapping[str, dict | None], prompts: pd.DataFrame,
                      threshold: float = DEGENERATE_REPETITION) -> str:
    """A sentence for the Findings page when a claim about the pair is contradicted and
    one model of the pair degenerates: its pooled rep-4 (mean over prompts of
    ``repetition_rate``, see :func:`canopy.entropy.prompt_metrics`) is at least
    ``threshold`` and at least twice its partner's. Names the contradicted claims, both
    models and both rep-4 values; '' when no claim is contradicted, no pair is matched,
    rep-4 was not measured (NaN) or neither model degenerates. ``claims``: the output
    of :func:`measure_claims`; ``prompts``: per-prompt metrics of the same rollouts."""
    against = [CLAIMS[k][0] for k in ("canopy_entropy", "length_rate_pearson", "slope_ratio")
               if claims.get(k) and claims[k]["verdict"] == "contradicted"]
    if not against or "repetition_rate" not in prompts.columns:
        return ""
    quoted = ", ".join(f"\u201c{claim}\u201d" for claim in against)
    sentences = []
    for family, fam in prompts.groupby("family", sort=True):
        sides = {v: fam[fam["variant"] == v] for v in ("base", "fine-tuned")}
        if any(side.empty for side in sides.values()):
            continue
        rep = {v: float(side["repetition_rate"].mean()) for v, side in sides.items()}
        name = {v: str(side["model"].iloc[0]) for v, side in sides.items()}
        if not all(np.isfinite(list(rep.values()))):
            continue
        for loops, other in (("base", "fine-tuned"), ("fine-tuned", "base")):
            if rep[loops] >= threshold and rep[loops] >= 2 * rep[other]:
                sentences.append(
                    f"The {loops} model {name[loops]} degenerates into loops: on average "
                    f"{100 * rep[loops]:.0f} % of its 4-grams repeat an earlier one in the "
                    f"same generation (rep-4), against {100 * rep[other]:.0f} % for "
                    f"{name[other]}. Repeating text is nearly deterministic, so its entropy "
                    f"rate is low; the verdict{'s' if len(against) > 1 else ''} "
                    f"{quoted} "
                    f"{'go' if len(against) > 1 else 'goes'} against the paper at least in "
                    f"part because of this degeneration, not only because of fine-tuning "
                    f"as the paper describes it.")
    return " ".join(sentences)


def degenerate_share(rollouts: pd.DataFrame, above: float = 0.5) -> pd.Series:
    """Per model (index), the share of its rollouts whose rep-4
    (:func:`canopy.entropy.repetition_rate`) exceeds ``above``: rollouts that are mostly
    loop. NaN for a model whose rollouts carry no token ids."""
    from canopy.entropy import rollout_repetition

    rep = pd.Series(rollout_repetition(rollouts), index=rollouts.index)
    return rep.groupby(rollouts["model"], sort=True).apply(
        lambda r: float((r > above).mean()) if r.notna().any() else float("nan"))
