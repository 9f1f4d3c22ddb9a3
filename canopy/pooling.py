"""Pooling over prompts and the bootstraps over prompts (§4 of the book's Method page).

One model, one task — or every task at once, the scope ``task == "all"`` of
:func:`canopy.tables.task_scopes`. Linear quantities pool as unweighted means over
prompts, ``exp`` is applied after averaging, and every co-movement measure pools by one
rule (:func:`comovement_weights` and :func:`pooled_comovement`), used alike by
:func:`pool`, by the bootstraps and by :func:`canopy.semantic.pool_semantic`.
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import pandas as pd

from canopy.entropy import TRUNCATION_FLAG_RATE, rollout_repetition, validate_rollouts
from canopy.tables import (POOL_KEYS, PROMPT_KEYS, matched_families, require_columns,
                           task_scopes)

__all__ = [
    "POSITIVE_METRICS",
    "POOLED_METRICS",
    "comovement_weights",
    "pooled_comovement",
    "pool_comovement",
    "pool",
    "estimator_check",
    "decomposition_identities",
    "length_summary",
    "paired_bootstrap",
    "pooled_bootstrap",
]

#: Fisher z clips correlations at ± this value before ``atanh`` (Method §4).
FISHER_CLIP = 0.999999

#: Per-prompt columns that pool as unweighted means over prompts.
_MEAN_COLUMNS = ("canopy_entropy", "canopy_entropy_surprisal", "mean_length",
                 "mean_entropy_rate", "truncation_rate", "length_rate_cov_pop",
                 "repetition_rate")

#: Positive quantities: the bootstrap also reports their percent change.
POSITIVE_METRICS = ("canopy_entropy", "canopy_entropy_surprisal", "mean_length",
                    "mean_entropy_rate", "gen_ppl", "branching_factor")

#: Names of the pooled metrics, in output order.
POOLED_METRICS = (
    "canopy_entropy", "canopy_entropy_surprisal", "mean_length", "mean_entropy_rate",
    "truncation_rate", "repetition_rate", "gen_ppl", "branching_factor", "length_term",
    "cov_residual",
    "within_prompt_cov", "between_prompt_cov", "length_share", "cov_share",
    "log_genppl_minus_log_bf", "length_rate_pearson", "length_rate_spearman",
    "length_rate_kendall", "length_rate_cov",
)

# ------------------------------------------------------------ the pooled-correlation rule

#: Per-prompt weight of each co-movement measure as a function of M (Method §4).
_WEIGHTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "pearson": lambda m: m - 3.0,
    "spearman": lambda m: m - 3.0,
    "kendall": lambda m: m * (m - 1) / 2,
    "cov": lambda m: m - 1,
}
#: Measures pooled on Fisher's z scale (``atanh``, back with ``tanh``).
_FISHER = ("pearson", "spearman")


def comovement_weights(values, m, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """The parts of the pooled co-movement rule, per prompt: ``(w·v, w)``.

    ``values``: per-prompt Pearson/Spearman correlations, Kendall τ or sample covariances
    (shape (P,), NaN = undefined); ``m``: rollouts per prompt, shape (P,). Weights ``w``
    are M−3 (Pearson, Spearman; ``v`` = Fisher z of the value clipped at ±``FISHER_CLIP``),
    M(M−1)/2 (Kendall) or M−1 (covariance; ``v`` = the value), clipped at 0; a NaN value
    weighs 0.
    """
    if kind not in _WEIGHTS:
        raise ValueError(f"kind must be pearson, spearman, kendall or cov, got {kind!r}")
    values, m = np.asarray(values, dtype=np.float64), np.asarray(m, dtype=np.float64)
    w = np.where(np.isnan(values), 0.0, np.maximum(_WEIGHTS[kind](m), 0.0))
    if kind in _FISHER:
        v = np.where(w > 0, np.arctanh(np.clip(values, -FISHER_CLIP, FISHER_CLIP)), 0.0)
    else:
        v = np.nan_to_num(values)
    return w * v, w


def pooled_comovement(weighted, weights, kind: str, idx=None) -> np.ndarray:
    """The pooled value Σ w·v / Σ w (``tanh`` of it for Pearson and Spearman) from the
    parts of :func:`comovement_weights`: over all prompts when ``idx`` is None (a 0-d
    array), else for each row of prompt indices ``idx`` (shape (B, P')) → shape (B,).
    NaN where the weights sum to 0."""
    if idx is None:
        num, den = weighted.sum(), weights.sum()
    else:
        num, den = weighted[idx].sum(axis=1), weights[idx].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = num / den
    if kind in _FISHER:
        ratio = np.tanh(ratio)
    return np.where(den > 0, ratio, np.nan)


def pool_comovement(values, m, kind: str) -> float:
    """Pool per-prompt co-movement values over prompts (Method §4); NaN entries skipped.

    ``kind``: ``pearson`` / ``spearman`` (Fisher z, weights M−3), ``kendall`` (weights
    M(M−1)/2), ``cov`` (weights M−1). NaN when no prompt has a positive weight.
    """
    return float(pooled_comovement(*comovement_weights(values, m, kind), kind))


# ------------------------------------------------------------------- pooled metrics


def _pool_parts(prompts: pd.DataFrame) -> dict:
    """Per-prompt arrays that every pooled metric is a function of (sums over prompts)."""
    m = prompts["n_rollouts"].to_numpy(dtype=np.float64)
    parts: dict = {c: prompts[c].to_numpy(dtype=np.float64) if c in prompts.columns
                   else np.full(len(prompts), np.nan) for c in _MEAN_COLUMNS}  # rep-4: optional
    parts["length_x_rate"] = parts["mean_length"] * parts["mean_entropy_rate"]
    for kind in _WEIGHTS:
        parts[kind] = comovement_weights(prompts[f"length_rate_{kind}"], m, kind)
    return parts


def _pooled_from_parts(parts: dict, idx: np.ndarray) -> dict[str, np.ndarray]:
    """Pooled metrics for each row of prompt indices ``idx`` (shape (B, P')) → arrays (B,)."""
    mean = {k: parts[k][idx].mean(axis=1) for k in (*_MEAN_COLUMNS, "length_x_rate")}
    ce, en, er = mean["canopy_entropy"], mean["mean_length"], mean["mean_entropy_rate"]
    length_term = en * er
    between = mean["length_x_rate"] - length_term
    residual = ce - length_term
    out = {
        "canopy_entropy": ce,
        "canopy_entropy_surprisal": mean["canopy_entropy_surprisal"],
        "mean_length": en,
        "mean_entropy_rate": er,
        "truncation_rate": mean["truncation_rate"],
        "repetition_rate": mean["repetition_rate"],
        "gen_ppl": np.exp(ce / en),
        "branching_factor": np.exp(er),
        "length_term": length_term,
        "cov_residual": residual,
        "within_prompt_cov": mean["length_rate_cov_pop"],
        "between_prompt_cov": between,
    }
    with np.errstate(invalid="ignore", divide="ignore"):
        out["length_share"] = np.where(ce > 0, length_term / ce, np.nan)
        out["cov_share"] = np.where(ce > 0, residual / ce, np.nan)
        out["log_genppl_minus_log_bf"] = ce / en - er
    for kind in _WEIGHTS:
        out[f"length_rate_{kind}"] = pooled_comovement(*parts[kind], kind, idx)
    return out


def _pool_reason(pooled: dict[str, float]) -> str:
    why = []
    if np.isnan(pooled["length_rate_pearson"]):
        why.append("no prompt with M > 3 and a defined correlation: pooled correlations undefined")
    elif np.isnan(pooled["length_rate_kendall"]):
        why.append("no prompt with a defined Kendall tau: pooled tau undefined")
    if np.isnan(pooled["length_share"]):
        why.append("canopy entropy is 0: shares undefined")
    return "; ".join(why)


def _check_prompt_table(prompts: pd.DataFrame) -> None:
    needed = [*PROMPT_KEYS, "n_rollouts", *_MEAN_COLUMNS, "length_rate_pearson",
              "length_rate_spearman", "length_rate_kendall", "length_rate_cov"]
    require_columns(prompts, needed, "per-prompt table", allow_empty=False,
                    hint="build it with canopy.entropy.prompt_metrics")


def _all_prompts(n: int) -> np.ndarray:
    """The index set "every prompt once": shape (1, n)."""
    return np.arange(n)[None, :]


def pool(prompts: pd.DataFrame, all_tasks: bool = True) -> pd.DataFrame:
    """Pool per-prompt metrics over prompts (Method §4): one row per (model, task).

    Linear quantities are unweighted means over prompts; ``gen_ppl`` and
    ``branching_factor`` apply ``exp`` after averaging. Correlations pool with prompt
    effects removed (Fisher z with weights M−3 for Pearson and Spearman, weights
    M(M−1)/2 for Kendall, M−1 for the sample covariance; NaN prompts skipped).

    The pooled decomposition ``canopy_entropy = length_term + cov_residual`` splits the
    residual exactly as ``cov_residual = within_prompt_cov + between_prompt_cov``: the
    mean within-prompt population covariance plus the population covariance over
    prompts of the prompt means. ``canopy_entropy_se`` here is sd over prompts / √P
    (uncertainty from the choice of prompts).

    With ``all_tasks`` each model also gets a row with ``task == "all"`` pooling every
    prompt of every task. ``repetition_rate`` (mean rep-4) is left out when no prompt
    has it (rollouts without token ids).
    """
    _check_prompt_table(prompts)
    names = _default_metrics(prompts)
    rows = []
    for keys, grp in task_scopes(prompts, POOL_KEYS, all_tasks):
        pooled = {k: float(v[0]) for k, v in
                  _pooled_from_parts(_pool_parts(grp), _all_prompts(len(grp))).items()
                  if k in names}
        ce = grp["canopy_entropy"].to_numpy(dtype=np.float64)
        row = dict(zip(POOL_KEYS, keys))
        row.update(n_prompts=len(grp), n_rollouts=int(grp["n_rollouts"].sum()))
        row.update(pooled)
        row["canopy_entropy_se"] = (float(np.std(ce, ddof=1) / np.sqrt(ce.size))
                                    if ce.size > 1 else np.nan)
        row["n_truncation_flagged"] = int(grp["truncation_flag"].sum()) \
            if "truncation_flag" in grp else 0
        row["reason"] = _pool_reason(pooled)
        rows.append(row)
    return pd.DataFrame(rows)


def estimator_check(prompts: pd.DataFrame, all_tasks: bool = True) -> pd.DataFrame:
    """Both CE* estimators pooled over prompts, with rollout-level SEs (chapter 3).

    Per (model, task): ``canopy_entropy`` (mean over prompts of ĈE*_H) and
    ``canopy_entropy_surprisal`` (of ĈE*_S), each with ``*_se`` =
    sqrt(Σ_p se_p²) / P — the Monte-Carlo error of the pooled mean given the prompts
    (rollouts independent across prompts); ``estimator_gap`` = mean over prompts of
    mean(S − H) with its ``estimator_gap_se`` the same way, ``gap_z`` = gap / se,
    ``estimators_agree`` = |gap| ≤ 4·se (Method §3's check applied to the pooled mean),
    and ``n_prompts_agree`` of ``n_prompts`` prompts passing the per-prompt check.
    The prompt-level SE of :func:`pool` (sd over prompts / √P) answers another question:
    how much CE* would move with other prompts.
    """
    _check_prompt_table(prompts)
    require_columns(prompts, ["canopy_entropy_se", "canopy_entropy_surprisal_se",
                              "estimator_gap", "estimator_gap_se", "estimators_agree"],
                    "per-prompt table")
    rows = []
    for keys, grp in task_scopes(prompts, POOL_KEYS, all_tasks):
        p = len(grp)
        row = dict(zip(POOL_KEYS, keys))
        row["n_prompts"] = p
        for col in ("canopy_entropy", "canopy_entropy_surprisal", "estimator_gap"):
            row[col] = float(grp[col].to_numpy(dtype=np.float64).mean())
            se = grp[f"{col}_se"].to_numpy(dtype=np.float64)
            row[f"{col}_se"] = float(np.sqrt(np.sum(se ** 2)) / p)
        with np.errstate(invalid="ignore", divide="ignore"):
            row["gap_z"] = row["estimator_gap"] / row["estimator_gap_se"]
        row["estimators_agree"] = bool(abs(row["estimator_gap"]) <= 4 * row["estimator_gap_se"])
        row["n_prompts_agree"] = int(grp["estimators_agree"].fillna(False).astype(bool).sum())
        rows.append(row)
    return pd.DataFrame(rows)


def decomposition_identities(pooled: pd.DataFrame) -> pd.DataFrame:
    """The identities of the pooled decomposition, checked numerically (chapter 3).

    ``pooled`` is :func:`pool`'s output. Per row: ``canopy_entropy``, ``length_term``,
    ``within_prompt_cov``, ``between_prompt_cov``, ``cov_residual`` and

    - ``split_error`` = CE* − (E[N]E[r] + within + between) (0 up to rounding);
    - ``log_genppl_minus_log_bf`` = log GenPPL − log BF (from the exponentiated values),
      ``cov_over_length`` = C / E[N], and ``identity_error`` their difference.
    """
    need = ["canopy_entropy", "length_term", "within_prompt_cov", "between_prompt_cov",
            "cov_residual", "mean_length", "gen_ppl", "branching_factor"]
    require_columns(pooled, need, "pooled table", hint="build it with canopy.pooling.pool")
    keys = [c for c in POOL_KEYS if c in pooled.columns]
    out = pooled[keys + need[:5]].copy()
    out["split_error"] = (pooled["canopy_entropy"] - pooled["length_term"]
                          - pooled["within_prompt_cov"] - pooled["between_prompt_cov"])
    out["log_genppl_minus_log_bf"] = np.log(pooled["gen_ppl"]) - np.log(pooled["branching_factor"])
    out["cov_over_length"] = pooled["cov_residual"] / pooled["mean_length"]
    out["identity_error"] = out["log_genppl_minus_log_bf"] - out["cov_over_length"]
    return out.reset_index(drop=True)


def length_summary(rollouts: pd.DataFrame, all_tasks: bool = True) -> pd.DataFrame:
    """Lengths and truncation per (model, task): one row each (chapter 2).

    Columns: ``model, family, variant, task, n_prompts, n_rollouts``, ``mean_length``
    (over rollouts), ``median_length``, ``min_length``, ``max_length``,
    ``truncation_rate`` (fraction of rollouts with no stop token within ``max_new_tokens``),
    ``n_prompts_flagged`` (prompts whose own truncation rate exceeds 5 %, Method §3) and
    ``repetition_rate`` (mean rep-4 over rollouts, :func:`canopy.entropy.repetition_rate`;
    NaN without token ids). With ``all_tasks`` each model also gets a ``task == "all"`` row.
    """
    validate_rollouts(rollouts)
    rollouts = rollouts.assign(_rep=rollout_repetition(rollouts))
    rows = []
    for keys, grp in task_scopes(rollouts, POOL_KEYS, all_tasks):
        n = grp["length"].to_numpy(dtype=np.float64)
        trunc = grp["truncated"].to_numpy().astype(bool)
        per_prompt = grp.assign(_t=trunc).groupby(["task", "prompt_id"])["_t"].mean()
        row = dict(zip(POOL_KEYS, keys))
        row.update(n_prompts=int(per_prompt.size), n_rollouts=int(n.size),
                   mean_length=float(n.mean()), median_length=float(np.median(n)),
                   min_length=int(n.min()), max_length=int(n.max()),
                   truncation_rate=float(trunc.mean()),
                   n_prompts_flagged=int((per_prompt > TRUNCATION_FLAG_RATE).sum()),
                   repetition_rate=float(grp["_rep"].mean()))
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------- bootstraps


def _default_metrics(prompts: pd.DataFrame) -> list[str]:
    """:data:`POOLED_METRICS`, less rep-4 when no prompt has it (rollouts without token
    ids): a bootstrap of nothing but NaN says nothing."""
    measured = "repetition_rate" in prompts.columns and prompts["repetition_rate"].notna().any()
    return [k for k in POOLED_METRICS if measured or k != "repetition_rate"]


def _percentile(samples: np.ndarray, q: float) -> float:
    finite = samples[np.isfinite(samples)]
    return float(np.percentile(finite, q)) if finite.size else np.nan


def _bootstrap_settings(n_boot, confidence, metrics) -> tuple[list[str] | None, tuple[float, float]]:
    """Check the bootstrap arguments; return the metric names (``None`` = all) and the
    percentile tails of the ``confidence`` interval."""
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if metrics is not None:
        metrics = list(metrics)
        unknown = sorted(set(metrics) - set(POOLED_METRICS))
        if unknown:
            raise ValueError(f"unknown metric {unknown[0]!r}; choose from "
                             f"{', '.join(POOLED_METRICS)}")
    return metrics, (100 * (1 - confidence) / 2, 100 * (1 + confidence) / 2)


def _resample(rng: np.random.Generator, n: int, n_boot: int, chunk: int,
              statistic: Callable[[np.ndarray], dict]) -> dict[object, np.ndarray]:
    """``statistic`` of ``n_boot`` resamples of ``n`` prompts (with replacement), drawn in
    chunks of at most ``chunk`` so memory stays at chunk × n per value: ``statistic``
    maps prompt indices (b, n) to a dict of arrays (b,); the result concatenates them."""
    out: dict[object, list] = {}
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        for key, values in statistic(rng.integers(0, n, size=(b, n))).items():
            out.setdefault(key, []).append(values)
        done += b
    return {key: np.concatenate(v) for key, v in out.items()}


def paired_bootstrap(prompts: pd.DataFrame, n_boot: int = 2000, seed: int = 0,
                     confidence: float = 0.95, all_tasks: bool = True,
                     metrics: Iterable[str] | None = None, chunk: int = 250) -> pd.DataFrame:
    """Paired bootstrap of every pooled metric, base vs fine-tuned (Method §4).

    For each family with both variants, prompts are paired on (task, prompt_id); prompt
    indices are resampled with replacement and the *same* indices are used for both
    variants. Per (family, task) — plus ``task == "all"`` when ``all_tasks`` — returns
    one row per metric with the point estimates ``base``, ``fine_tuned``, ``delta`` =
    fine-tuned − base, ``pct_delta`` = 100·delta/base (positive quantities only, else
    NaN), and percentile CIs ``*_lo``/``*_hi`` at ``confidence``. ``n_unpaired`` counts
    prompts present in only one variant (left out). A family whose variants share no
    prompt is skipped.
    """
    _check_prompt_table(prompts)
    metrics, tails = _bootstrap_settings(n_boot, confidence, metrics)
    names = _default_metrics(prompts) if metrics is None else metrics
    rng = np.random.default_rng(seed)
    rows = []
    for family in matched_families(prompts)[0]:
        fam = prompts[prompts["family"] == family]
        base = fam[fam["variant"] == "base"]
        tuned = fam[fam["variant"] == "fine-tuned"]
        for side in (base, tuned):
            if side["model"].nunique() > 1:
                raise ValueError(f"family {family!r} has several models of one variant: "
                                 f"{sorted(side['model'].unique())}; bootstrap one pair at a time")
        pair_keys = ["task", "prompt_id"]
        paired = base.merge(tuned, on=pair_keys, suffixes=("_b", "_f"), how="inner")
        paired = paired.sort_values(pair_keys, kind="stable")
        n_unpaired = len(base) + len(tuned) - 2 * len(paired)
        for (task,), grp in task_scopes(paired, ["task"], all_tasks):
            sides = []
            for suffix in ("_b", "_f"):
                cols = {c[: -len(suffix)]: grp[c] for c in grp.columns if c.endswith(suffix)}
                sides.append(_pool_parts(pd.DataFrame(cols)))
            n = len(grp)
            point = [_pooled_from_parts(p, _all_prompts(n)) for p in sides]

            def both_sides(idx, sides=sides):
                res = [_pooled_from_parts(p, idx) for p in sides]
                return {(s, k): res[s][k] for s in (0, 1) for k in names}

            boot = _resample(rng, n, n_boot, chunk, both_sides)
            for k in names:
                bs, fs = boot[(0, k)], boot[(1, k)]
                b0, f0 = float(point[0][k][0]), float(point[1][k][0])
                row = {"family": family, "task": task, "metric": k,
                       "base_model": base["model"].iloc[0], "fine_tuned_model": tuned["model"].iloc[0],
                       "n_prompts": n, "n_unpaired": n_unpaired, "n_boot": n_boot,
                       "base": b0, "fine_tuned": f0, "delta": f0 - b0}
                positive = k in POSITIVE_METRICS
                with np.errstate(invalid="ignore", divide="ignore"):
                    pct = 100.0 * (fs - bs) / bs
                row["pct_delta"] = 100.0 * (f0 - b0) / b0 if positive and b0 > 0 else np.nan
                for label, sample in (("base", bs), ("fine_tuned", fs), ("delta", fs - bs),
                                      ("pct_delta", pct if positive else np.full_like(bs, np.nan))):
                    row[f"{label}_lo"] = _percentile(sample, tails[0])
                    row[f"{label}_hi"] = _percentile(sample, tails[1])
                rows.append(row)
    columns = ["family", "task", "metric", "base_model", "fine_tuned_model", "n_prompts",
               "n_unpaired", "n_boot", "base", "fine_tuned", "delta", "pct_delta",
               "base_lo", "base_hi", "fine_tuned_lo", "fine_tuned_hi", "delta_lo", "delta_hi",
               "pct_delta_lo", "pct_delta_hi"]
    return pd.DataFrame(rows, columns=columns)


def pooled_bootstrap(prompts: pd.DataFrame, metrics: Iterable[str] | None = None,
                     n_boot: int = 2000, seed: int = 0, confidence: float = 0.95,
                     all_tasks: bool = True, chunk: int = 250) -> pd.DataFrame:
    """Bootstrap over prompts of pooled metrics, one model at a time (Method §4).

    For every (model, task) — plus ``task == "all"`` when ``all_tasks`` — prompts are
    resampled with replacement ``n_boot`` times and each pooled metric recomputed exactly
    as :func:`pool` does. Returns one row per (model, task, metric): ``estimate`` (the
    point estimate on all prompts), percentile CI ``lo``/``hi`` at ``confidence``,
    ``n_prompts``, ``n_defined`` (prompts that enter the pooled value: for the
    correlations and ``length_rate_cov`` those with a defined value and a positive
    weight — Pearson and Spearman need M > 3 —, else all) and ``n_valid`` (bootstrap
    draws where the metric was defined; a pooled correlation is NaN in a draw whose
    prompts all have undefined correlations). With few defined prompts the percentile
    interval is degenerate: read it with :func:`canopy.report.interval_side`'s ``n``.
    Unlike :func:`paired_bootstrap` this needs no partner model, so it covers models
    without a base (e.g. ``smollm2-135m-instruct``).
    """
    _check_prompt_table(prompts)
    metrics, tails = _bootstrap_settings(n_boot, confidence, metrics)
    names = _default_metrics(prompts) if metrics is None else metrics
    rng = np.random.default_rng(seed)
    rows = []
    for keys, grp in task_scopes(prompts, POOL_KEYS, all_tasks):
        parts = _pool_parts(grp)
        n = len(grp)
        point = _pooled_from_parts(parts, _all_prompts(n))

        def one_side(idx, parts=parts):
            res = _pooled_from_parts(parts, idx)
            return {k: res[k] for k in names}

        boot = _resample(rng, n, n_boot, chunk, one_side)
        for k in names:
            sample = boot[k]
            kind = k.removeprefix("length_rate_")
            n_defined = int((parts[kind][1] > 0).sum()) if kind in _WEIGHTS else n
            row = dict(zip(POOL_KEYS, keys))
            row.update(metric=k, n_prompts=n, n_defined=n_defined, n_boot=n_boot,
                       n_valid=int(np.isfinite(sample).sum()),
                       estimate=float(point[k][0]),
                       lo=_percentile(sample, tails[0]), hi=_percentile(sample, tails[1]))
            rows.append(row)
    return pd.DataFrame(rows, columns=[*POOL_KEYS, "metric", "n_prompts", "n_defined",
                                       "n_boot", "n_valid", "estimate", "lo", "hi"])
