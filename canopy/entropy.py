"""Tree metrics: Canopy Entropy, its decomposition, co-movement, pooling, bootstrap.

Implements METHOD §2–4. Everything is in nats. All functions are vectorised over
prompts (numpy ``bincount`` / padded 2-D arrays), so 10,000 prompts × 100 rollouts take
about a second; see ``benchmarks/bench_metrics.py``.

The rollout DataFrame (one row per rollout) has at least these columns:

=================  ======================================================================
``model``          model short name (str)
``family``         model family, e.g. ``gemma-3-270m`` (str)
``variant``        ``base`` or ``fine-tuned`` (str)
``task``           task name, e.g. ``stories`` (str)
``prompt_id``      prompt identifier, unique within a task (str or int)
``rollout_id``     rollout index, unique within a prompt (int)
``length``         ``N``: generated tokens, stop token included (integer ≥ 1)
``summed_entropy`` ``H = Σ_t h_t``: summed step entropy of the sampling distribution
``surprisal``      ``S = −Σ_t log q_t(y_t)``: surprisal of the rollout
``truncated``      True when no stop token came within ``max_new_tokens``
=================  ======================================================================

Undefined results are NaN and the ``reason`` column of the output says why (an empty
string when every value is defined). Illegal input raises a one-line ``ValueError``.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd
from scipy.stats import kendalltau

__all__ = [
    "ROLLOUT_COLUMNS",
    "PROMPT_KEYS",
    "validate_rollouts",
    "tree_metrics",
    "prompt_metrics",
    "pool",
    "paired_bootstrap",
    "comovement",
    "pool_comovement",
    "length_summary",
    "example_rollouts",
    "estimator_check",
    "decomposition_identities",
    "pooled_bootstrap",
    "position_profile",
    "interval_side",
    "format_interval",
    "bootstrap_table",
]

ROLLOUT_COLUMNS = (
    "model", "family", "variant", "task", "prompt_id", "rollout_id",
    "length", "summed_entropy", "surprisal", "truncated",
)
PROMPT_KEYS = ("model", "family", "variant", "task", "prompt_id")
POOL_KEYS = ("model", "family", "variant", "task")
VARIANTS = ("base", "fine-tuned")

#: Fisher z clips correlations at ± this value before ``atanh`` (METHOD §4).
FISHER_CLIP = 0.999999
#: Prompts whose truncation rate exceeds this are flagged (METHOD §3).
TRUNCATION_FLAG_RATE = 0.05
#: Slack for entropies that are zero up to float32 rounding (nats).
_NEGATIVE_TOLERANCE = 1e-6

# Messages for undefined values; joined with "; " in the ``reason`` column.
_R_SE = "fewer than 2 rollouts: standard errors undefined"
_R_FEW = "fewer than 3 rollouts: length-rate correlations undefined"
_R_CONST_N = "length constant: length-rate correlations undefined"
_R_CONST_R = "entropy rate constant: length-rate correlations undefined"
_R_ZERO = "canopy entropy is 0: decomposition shares undefined"


# --------------------------------------------------------------------------- checks


def require_columns(frame, columns, what: str, *, hint: str = "",
                    allow_empty: bool = True) -> None:
    """Raise a one-line ``ValueError`` unless ``frame`` is a DataFrame holding every name
    in ``columns`` (and, with ``allow_empty=False``, at least one row). ``what`` names the
    table in the message; ``hint`` (in parentheses) says where a right one comes from."""
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"{what} must be a pandas DataFrame, got {type(frame).__name__}"
                         + (f" ({hint})" if hint else ""))
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} is missing column(s): {', '.join(missing)}"
                         + (f" ({hint})" if hint else ""))
    if not allow_empty and frame.empty:
        raise ValueError(f"{what} is empty")


def reason_column(rules, n_rows: int) -> list[str]:
    """Per-row explanation of NaN results: the texts of the ``(mask, text)`` rules whose
    boolean mask (length ``n_rows``) is true in that row, joined by ``"; "`` in rule
    order ('' where none applies)."""
    masks = [(np.asarray(mask, dtype=bool), text) for mask, text in rules]
    return ["; ".join(text for mask, text in masks if mask[k]) for k in range(n_rows)]


def _as_1d(name: str, values) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    return arr


def _check_arrays(length, summed_entropy, surprisal, truncated, prompt):
    """Validate per-rollout arrays; return them as float64/bool/int64 arrays."""
    arrays = {
        "length": _as_1d("length", length),
        "summed_entropy": _as_1d("summed_entropy", summed_entropy),
        "surprisal": _as_1d("surprisal", surprisal),
        "truncated": _as_1d("truncated", truncated),
    }
    if prompt is not None:
        arrays["prompt"] = _as_1d("prompt", prompt)
    sizes = {k: v.shape[0] for k, v in arrays.items()}
    if len(set(sizes.values())) != 1:
        detail = ", ".join(f"{k}={n}" for k, n in sizes.items())
        raise ValueError(f"mismatched array sizes: {detail}")
    if sizes["length"] == 0:
        raise ValueError("no rollouts: the input is empty")

    n = arrays["length"]
    if n.dtype == bool or not np.issubdtype(n.dtype, np.number):
        raise ValueError(f"length must be numeric, got dtype {n.dtype}")
    n = n.astype(np.float64)
    if not np.all(np.isfinite(n)):
        raise ValueError("length contains NaN or infinite values")
    if np.any(n != np.round(n)):
        raise ValueError("length must be integral (a count of generated tokens)")
    if np.any(n < 0):
        raise ValueError("negative length: length counts generated tokens and is ≥ 1")
    if np.any(n == 0):
        raise ValueError("length 0: every rollout has at least one token (the stop token counts)")

    out = {"length": n}
    for key in ("summed_entropy", "surprisal"):
        v = arrays[key]
        if v.dtype == bool or not np.issubdtype(v.dtype, np.number):
            raise ValueError(f"{key} must be numeric, got dtype {v.dtype}")
        v = v.astype(np.float64)
        if not np.all(np.isfinite(v)):
            raise ValueError(f"{key} contains NaN or infinite values")
        if np.any(v < -_NEGATIVE_TOLERANCE):
            raise ValueError(f"negative {key}: entropies and surprisals are ≥ 0 nats")
        out[key] = np.maximum(v, 0.0)
    t = arrays["truncated"]
    if t.dtype != bool:
        if t.dtype == object or not np.all(np.isin(t, (0, 1))):
            raise ValueError("truncated must be boolean (True/False or 1/0)")
        t = t.astype(bool)
    out["truncated"] = t
    if prompt is not None:
        out["prompt"] = arrays["prompt"]
    return out


def validate_rollouts(rollouts: pd.DataFrame) -> None:
    """Raise a one-line ``ValueError`` if ``rollouts`` is not a legal rollout table."""
    require_columns(rollouts, ROLLOUT_COLUMNS, "rollout table", allow_empty=False)
    for key in PROMPT_KEYS:
        if rollouts[key].isna().any():
            raise ValueError(f"column {key} has missing values")
    bad = sorted(set(rollouts["variant"].unique()) - set(VARIANTS))
    if bad:
        raise ValueError(f"variant must be 'base' or 'fine-tuned', got {bad[0]!r}")
    _check_arrays(rollouts["length"].to_numpy(), rollouts["summed_entropy"].to_numpy(),
                  rollouts["surprisal"].to_numpy(), rollouts["truncated"].to_numpy(), None)
    dup = rollouts.duplicated(list(PROMPT_KEYS) + ["rollout_id"])
    if dup.any():
        row = rollouts.loc[dup.idxmax()]
        raise ValueError(
            f"duplicate rollout_id {row['rollout_id']!r} in prompt "
            f"{row['prompt_id']!r} (task {row['task']!r}, model {row['model']!r})"
        )
    # One model name per (family, variant), and a model has one family and variant.
    per_model = rollouts.groupby("model")[["family", "variant"]].nunique()
    if (per_model > 1).any(axis=None):
        name = per_model.index[(per_model > 1).any(axis=1)][0]
        raise ValueError(f"model {name!r} appears with more than one family or variant")


# ----------------------------------------------------------------- per-prompt metrics


def _group_sums(codes: np.ndarray, n_groups: int, x: np.ndarray) -> np.ndarray:
    return np.bincount(codes, weights=x, minlength=n_groups)


def _group_ranks(values: np.ndarray, codes: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Average ranks (1-based, ties averaged) of ``values`` within each group.

    One ``lexsort`` over all rows: O(R log R) whatever the group sizes.
    """
    order = np.lexsort((values, codes))
    sv, sc = values[order], codes[order]
    new_run = np.ones(sv.size, dtype=bool)
    new_run[1:] = (sv[1:] != sv[:-1]) | (sc[1:] != sc[:-1])
    run = np.cumsum(new_run) - 1
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    position = np.arange(sv.size) - starts[sc]  # 0-based position within the group
    run_len = np.bincount(run)
    run_rank = position[new_run] + (run_len + 1) / 2.0
    ranks = np.empty(sv.size)
    ranks[order] = run_rank[run]
    return ranks


#: Groups up to this size get Kendall's τ from an all-pairs comparison done for many
#: groups at once; larger groups use scipy's O(M log M) routine one at a time.
KENDALL_PAIRWISE_MAX = 512


def _kendall_pairwise(rank_x, rank_y, codes, counts, chunk_pairs: int = 4_000_000):
    """Kendall τ-b of every group from its average ranks, all pairs at once.

    τ-b = Σ sgn(Δx)sgn(Δy) / sqrt(#pairs untied in x · #pairs untied in y), which is
    scipy's ``kendalltau(variant='b')``. Comparing ranks gives the signs of comparing
    values; doubled average ranks are small integers, so the O(W²) pair work runs on
    int16/int8 arrays of shape (groups in a chunk, W(W−1)/2).
    """
    n_groups = counts.size
    width = int(counts.max())
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    order = np.argsort(codes, kind="stable")
    pos = np.empty_like(codes)
    pos[order] = np.arange(codes.size) - np.repeat(starts, counts)
    dtype = np.int16 if 2 * width < np.iinfo(np.int16).max else np.int32
    rx = np.zeros((n_groups, width), dtype=dtype)
    ry = np.zeros((n_groups, width), dtype=dtype)
    rx[codes, pos] = np.rint(2 * rank_x)
    ry[codes, pos] = np.rint(2 * rank_y)
    i, j = np.triu_indices(width, k=1)
    concordance = np.zeros(n_groups)
    untied_x = np.zeros(n_groups)
    untied_y = np.zeros(n_groups)
    rows = max(1, chunk_pairs // max(1, i.size))
    for lo in range(0, n_groups, rows):
        hi = min(n_groups, lo + rows)
        valid = (j[None, :] < counts[lo:hi, None]).astype(np.int8)  # i < j: j in range ⇒ both
        sx = np.sign(rx[lo:hi, i] - rx[lo:hi, j]).astype(np.int8) * valid
        sy = np.sign(ry[lo:hi, i] - ry[lo:hi, j]).astype(np.int8) * valid
        concordance[lo:hi] = (sx * sy).sum(axis=1, dtype=np.int64)
        untied_x[lo:hi] = np.abs(sx).sum(axis=1, dtype=np.int64)
        untied_y[lo:hi] = np.abs(sy).sum(axis=1, dtype=np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return concordance / np.sqrt(untied_x * untied_y)


def _kendall(x, y, rank_x, rank_y, codes, counts) -> np.ndarray:
    tau = np.full(counts.size, np.nan)
    small = counts <= KENDALL_PAIRWISE_MAX
    if small.any():
        new_code = np.cumsum(small) - 1
        rows = small[codes]
        tau[small] = _kendall_pairwise(rank_x[rows], rank_y[rows], new_code[codes[rows]],
                                       counts[small])
    for g in np.flatnonzero(~small):
        member = codes == g
        tau[g] = kendalltau(x[member], y[member], variant="b").statistic
    return tau


def comovement(x, y, codes, counts, *, rel_tol: float = 1e-12) -> dict[str, np.ndarray]:
    """Co-movement of two per-rollout quantities within each group (METHOD §3).

    ``x``, ``y``: shape (R,) floats; ``codes``: group index of each row in
    ``0..G−1``; ``counts``: shape (G,) rows per group. Returns arrays of shape (G,):
    ``pearson``, ``spearman``, ``kendall`` (τ-b, ties adjusted) — NaN when M < 3 or x or
    y is constant —, ``cov`` (sample, ÷ M−1; NaN when M < 3), ``cov_pop`` (÷ M), and the
    flags ``const_x``, ``const_y``. ``y`` counts as constant when its spread is within
    ``rel_tol`` of its size (rounding); ``x`` only when exactly constant.
    """
    n_groups = counts.size
    m = counts.astype(np.float64)

    def gsum(v):
        return np.bincount(codes, weights=v, minlength=n_groups)

    def centred(v):
        return v - (gsum(v) / m)[codes]

    dx, dy = centred(x), centred(y)
    ss_x, ss_y, sp = gsum(dx * dx), gsum(dy * dy), gsum(dx * dy)
    const_x = ss_x <= 0
    const_y = ss_y <= (rel_tol * np.maximum(np.abs(gsum(y) / m), 1e-300)) ** 2 * m
    undefined = (m < 3) | const_x | const_y
    with np.errstate(invalid="ignore", divide="ignore"):
        pearson = np.where(undefined, np.nan, sp / np.sqrt(ss_x * ss_y))
        rank_x, rank_y = _group_ranks(x, codes, counts), _group_ranks(y, codes, counts)
        qx, qy = centred(rank_x), centred(rank_y)
        spearman = np.where(undefined, np.nan,
                            gsum(qx * qy) / np.sqrt(gsum(qx * qx) * gsum(qy * qy)))
        kendall = np.full(n_groups, np.nan)
        if (~undefined).any():
            kendall = np.where(undefined, np.nan,
                               _kendall(x, y, rank_x, rank_y, codes, counts))
        cov = np.where(m >= 3, sp / np.maximum(m - 1, 1), np.nan)
    return {"pearson": pearson, "spearman": spearman, "kendall": kendall, "cov": cov,
            "cov_pop": sp / m, "const_x": const_x, "const_y": const_y}


def pool_comovement(values: np.ndarray, m: np.ndarray, kind: str) -> float:
    """Pool per-prompt co-movement values over prompts (METHOD §4); NaN entries skipped.

    ``kind``: ``pearson`` / ``spearman`` (Fisher z, weights M−3), ``kendall`` (weights
    M(M−1)/2), ``cov`` (weights M−1). NaN when no prompt has a positive weight.
    """
    values, m = np.asarray(values, dtype=np.float64), np.asarray(m, dtype=np.float64)
    if kind in ("pearson", "spearman"):
        z, w = _fisher_parts(values, m)
        return float(np.tanh((w * z).sum() / w.sum())) if w.sum() > 0 else np.nan
    weight = {"kendall": m * (m - 1) / 2, "cov": m - 1}.get(kind)
    if weight is None:
        raise ValueError(f"kind must be pearson, spearman, kendall or cov, got {kind!r}")
    w = np.where(np.isnan(values), 0.0, np.maximum(weight, 0.0))
    return float((w * np.nan_to_num(values)).sum() / w.sum()) if w.sum() > 0 else np.nan


def tree_metrics(length, summed_entropy, surprisal, truncated, prompt=None) -> pd.DataFrame:
    """Per-prompt tree metrics from per-rollout arrays (METHOD §3).

    Parameters
    ----------
    length, summed_entropy, surprisal, truncated : array-like, shape (R,)
        ``N_i`` (integers ≥ 1), ``H_i`` and ``S_i`` (nats, ≥ 0), truncation flags.
    prompt : array-like, shape (R,), optional
        Prompt label of each rollout; ``None`` treats all rollouts as one prompt.

    Returns
    -------
    DataFrame with one row per prompt (index: prompt label, sorted) and the columns
    described in :func:`prompt_metrics`.
    """
    a = _check_arrays(length, summed_entropy, surprisal, truncated, prompt)
    if prompt is None:
        labels, codes = np.array([0]), np.zeros(a["length"].size, dtype=np.int64)
    else:
        labels, codes = np.unique(a["prompt"], return_inverse=True)
        codes = codes.astype(np.int64)
    n_groups = labels.size
    counts = np.bincount(codes, minlength=n_groups)
    m = counts.astype(np.float64)

    n, h, s, trunc = a["length"], a["summed_entropy"], a["surprisal"], a["truncated"]
    rate = h / n

    def mean(x):
        return _group_sums(codes, n_groups, x) / m

    mean_n, mean_h, mean_s, mean_r = mean(n), mean(h), mean(s), mean(rate)
    gap = s - h
    mean_gap = mean(gap)
    ss_h = _group_sums(codes, n_groups, (h - mean_h[codes]) ** 2)
    ss_s = _group_sums(codes, n_groups, (s - mean_s[codes]) ** 2)
    ss_gap = _group_sums(codes, n_groups, (gap - mean_gap[codes]) ** 2)
    co = comovement(n, rate, codes, counts)
    n_const, r_const = co["const_x"], co["const_y"]
    cov_pop = co["cov_pop"]

    with np.errstate(invalid="ignore", divide="ignore"):
        sample = np.where(m >= 2, 1.0 / np.maximum(m - 1, 1), np.nan)  # 1/(M−1), NaN if M < 2
        se_h = np.sqrt(ss_h * sample / m)
        se_s = np.sqrt(ss_s * sample / m)
        se_gap = np.sqrt(ss_gap * sample / m)
        length_term = mean_n * mean_r
        zero = mean_h <= 0
        length_share = np.where(zero, np.nan, length_term / mean_h)
        cov_share = np.where(zero, np.nan, cov_pop / mean_h)
        agree = np.abs(mean_gap) <= 4.0 * se_gap

    trunc_rate = mean(trunc.astype(np.float64))
    few = counts < 3
    reasons = reason_column([(counts < 2, _R_SE), (few, _R_FEW),
                             (~few & np.asarray(n_const, bool), _R_CONST_N),
                             (~few & np.asarray(r_const, bool), _R_CONST_R),
                             (zero, _R_ZERO)], n_groups)

    out = pd.DataFrame({
        "n_rollouts": counts,
        "canopy_entropy": mean_h,
        "canopy_entropy_se": se_h,
        "canopy_entropy_surprisal": mean_s,
        "canopy_entropy_surprisal_se": se_s,
        "estimator_gap": mean_gap,
        "estimator_gap_se": se_gap,
        "estimators_agree": pd.array(np.where(m >= 2, agree, pd.NA), dtype="boolean"),
        "mean_length": mean_n,
        "mean_entropy_rate": mean_r,
        "sd_length": np.sqrt(_group_sums(codes, n_groups, (n - mean_n[codes]) ** 2) / m),
        "sd_entropy_rate": np.sqrt(_group_sums(codes, n_groups, (rate - mean_r[codes]) ** 2) / m),
        "gen_ppl": np.exp(mean_h / mean_n),
        "branching_factor": np.exp(mean_r),
        "truncation_rate": trunc_rate,
        "truncation_flag": trunc_rate > TRUNCATION_FLAG_RATE,
        "length_rate_pearson": co["pearson"],
        "length_rate_spearman": co["spearman"],
        "length_rate_kendall": co["kendall"],
        "length_rate_cov": co["cov"],
        "length_rate_cov_pop": cov_pop,
        "length_term": length_term,
        "length_share": length_share,
        "cov_share": cov_share,
        "log_genppl_minus_log_bf": mean_h / mean_n - mean_r,
        "reason": reasons,
    }, index=pd.Index(labels, name="prompt"))
    return out


def prompt_metrics(rollouts: pd.DataFrame) -> pd.DataFrame:
    """Per-prompt metrics of a rollout table (METHOD §3): one row per prompt.

    Keys ``model, family, variant, task, prompt_id`` come first, then:

    - ``n_rollouts`` (M); ``canopy_entropy`` = mean H_i (CE*, the primary estimator) and
      ``canopy_entropy_se`` = sd(H_i)/√M; ``canopy_entropy_surprisal`` = mean S_i and its
      ``_se``; ``estimator_gap`` = mean(S_i − H_i) with ``_se``; ``estimators_agree`` =
      |gap| ≤ 4·se (NA when M < 2).
    - ``mean_length`` E[N], ``mean_entropy_rate`` E[r], ``sd_length`` and
      ``sd_entropy_rate`` (population, ÷M), ``gen_ppl`` = exp(CE*/E[N]),
      ``branching_factor`` = exp(E[r]), ``truncation_rate``, ``truncation_flag`` (> 5 %).
    - ``length_rate_pearson``, ``_spearman``, ``_kendall`` (τ-b): NaN when M < 3 or N or
      r is constant. ``length_rate_cov``: sample covariance (÷ M−1), NaN when M < 3 (it is
      0, not NaN, for a constant N or r: a covariance is defined there).
    - The decomposition ``canopy_entropy = length_term + length_rate_cov_pop`` with
      ``length_term`` = E[N]·E[r] and the population covariance; ``length_share`` and
      ``cov_share`` (sum to 1; NaN when CE* = 0); ``log_genppl_minus_log_bf``
      (= cov_pop / E[N]).
    - ``reason``: why any value of the row is NaN ('' when none is).
    """
    validate_rollouts(rollouts)
    keys = list(PROMPT_KEYS)
    codes = rollouts.groupby(keys, sort=True, observed=True).ngroup().to_numpy()
    table = tree_metrics(rollouts["length"].to_numpy(), rollouts["summed_entropy"].to_numpy(),
                         rollouts["surprisal"].to_numpy(), rollouts["truncated"].to_numpy(),
                         prompt=codes)
    # Restore the original key values (prompt_id may be an int) in factorized order.
    first = pd.Series(np.arange(len(rollouts))).groupby(codes).first().to_numpy()
    key_frame = rollouts[keys].iloc[first].reset_index(drop=True)
    return pd.concat([key_frame, table.reset_index(drop=True)], axis=1)


# ----------------------------------------------------------------------- pooling

#: Per-prompt columns that pool as unweighted means over prompts.
_MEAN_COLUMNS = ("canopy_entropy", "canopy_entropy_surprisal", "mean_length",
                 "mean_entropy_rate", "truncation_rate", "length_rate_cov_pop")

#: Positive quantities: the bootstrap also reports their percent change.
POSITIVE_METRICS = ("canopy_entropy", "canopy_entropy_surprisal", "mean_length",
                    "mean_entropy_rate", "gen_ppl", "branching_factor")


def _fisher_parts(rho: np.ndarray, m: np.ndarray):
    z = np.arctanh(np.clip(rho, -FISHER_CLIP, FISHER_CLIP))
    w = np.where(np.isnan(rho), 0.0, np.maximum(m - 3.0, 0.0))
    return np.where(w > 0, z, 0.0), w


def _pool_parts(prompts: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per-prompt arrays that every pooled metric is a function of (sums over prompts)."""
    m = prompts["n_rollouts"].to_numpy(dtype=np.float64)
    parts = {c: prompts[c].to_numpy(dtype=np.float64) for c in _MEAN_COLUMNS}
    parts["length_x_rate"] = parts["mean_length"] * parts["mean_entropy_rate"]
    for name in ("pearson", "spearman"):
        z, w = _fisher_parts(prompts[f"length_rate_{name}"].to_numpy(dtype=np.float64), m)
        parts[f"{name}_wz"], parts[f"{name}_w"] = w * z, w
    for name, col, weight in (("kendall", "length_rate_kendall", m * (m - 1) / 2),
                              ("cov", "length_rate_cov", m - 1)):
        v = prompts[col].to_numpy(dtype=np.float64)
        w = np.where(np.isnan(v), 0.0, np.maximum(weight, 0.0))
        parts[f"{name}_wv"], parts[f"{name}_w"] = w * np.nan_to_num(v), w
    return parts


def _pooled_from_parts(parts: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
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
        for name in ("pearson", "spearman"):
            w = parts[f"{name}_w"][idx].sum(axis=1)
            out[f"length_rate_{name}"] = np.where(
                w > 0, np.tanh(parts[f"{name}_wz"][idx].sum(axis=1) / w), np.nan)
        for name, col in (("kendall", "length_rate_kendall"), ("cov", "length_rate_cov")):
            w = parts[f"{name}_w"][idx].sum(axis=1)
            out[col] = np.where(w > 0, parts[f"{name}_wv"][idx].sum(axis=1) / w, np.nan)
    return out


#: Names of the pooled metrics, in output order.
_POOLED_METRICS = (
    "canopy_entropy", "canopy_entropy_surprisal", "mean_length", "mean_entropy_rate",
    "truncation_rate", "gen_ppl", "branching_factor", "length_term", "cov_residual",
    "within_prompt_cov", "between_prompt_cov", "length_share", "cov_share",
    "log_genppl_minus_log_bf", "length_rate_pearson", "length_rate_spearman",
    "length_rate_kendall", "length_rate_cov",
)


def _pool_reason(pooled: dict[str, np.ndarray]) -> str:
    why = []
    if np.isnan(pooled["length_rate_pearson"][0]):
        why.append("no prompt with M > 3 and a defined correlation: pooled correlations undefined")
    elif np.isnan(pooled["length_rate_kendall"][0]):
        why.append("no prompt with a defined Kendall tau: pooled tau undefined")
    if np.isnan(pooled["length_share"][0]):
        why.append("canopy entropy is 0: shares undefined")
    return "; ".join(why)


def _check_prompt_table(prompts: pd.DataFrame) -> None:
    needed = [*PROMPT_KEYS, "n_rollouts", *_MEAN_COLUMNS, "length_rate_pearson",
              "length_rate_spearman", "length_rate_kendall", "length_rate_cov"]
    require_columns(prompts, needed, "per-prompt table", allow_empty=False,
                    hint="build it with canopy.entropy.prompt_metrics")


def pool(prompts: pd.DataFrame, all_tasks: bool = True) -> pd.DataFrame:
    """Pool per-prompt metrics over prompts (METHOD §4): one row per (model, task).

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
    prompt of every task.
    """
    _check_prompt_table(prompts)
    rows = []
    scopes = [(keys, grp) for keys, grp in prompts.groupby(list(POOL_KEYS), sort=True)]
    if all_tasks:
        for keys, grp in prompts.groupby(["model", "family", "variant"], sort=True):
            scopes.append(((*keys, "all"), grp))
    for keys, grp in scopes:
        parts = _pool_parts(grp)
        pooled = {k: float(v[0]) for k, v in
                  _pooled_from_parts(parts, np.arange(len(grp))[None, :]).items()}
        ce = grp["canopy_entropy"].to_numpy(dtype=np.float64)
        row = dict(zip(POOL_KEYS, keys))
        row.update(n_prompts=len(grp), n_rollouts=int(grp["n_rollouts"].sum()))
        row.update(pooled)
        row["canopy_entropy_se"] = (float(np.std(ce, ddof=1) / np.sqrt(ce.size))
                                    if ce.size > 1 else np.nan)
        row["n_truncation_flagged"] = int(grp["truncation_flag"].sum()) \
            if "truncation_flag" in grp else 0
        row["reason"] = _pool_reason({k: np.array([v]) for k, v in pooled.items()})
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------- bootstrap


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
        unknown = sorted(set(metrics) - set(_POOLED_METRICS))
        if unknown:
            raise ValueError(f"unknown metric {unknown[0]!r}; choose from "
                             f"{', '.join(_POOLED_METRICS)}")
    return metrics, (100 * (1 - confidence) / 2, 100 * (1 + confidence) / 2)


def paired_bootstrap(prompts: pd.DataFrame, n_boot: int = 2000, seed: int = 0,
                     confidence: float = 0.95, all_tasks: bool = True,
                     metrics: Iterable[str] | None = None, chunk: int = 250) -> pd.DataFrame:
    """Paired bootstrap of every pooled metric, base vs fine-tuned (METHOD §4).

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
    rng = np.random.default_rng(seed)
    rows = []
    for family, fam in prompts.groupby("family", sort=True):
        if set(fam["variant"]) != set(VARIANTS):
            continue
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
        scopes = [(task, grp) for task, grp in paired.groupby("task", sort=True)]
        if all_tasks and len(paired):
            scopes.append(("all", paired))
        for task, grp in scopes:
            sides = []
            for suffix in ("_b", "_f"):
                cols = {c[: -len(suffix)]: grp[c] for c in grp.columns if c.endswith(suffix)}
                sides.append(_pool_parts(pd.DataFrame(cols)))
            n = len(grp)
            point = [_pooled_from_parts(p, np.arange(n)[None, :]) for p in sides]
            names = list(point[0]) if metrics is None else list(metrics)
            boot = {k: ([], []) for k in names}
            done = 0
            while done < n_boot:  # chunks bound memory at chunk × n_prompts per metric
                b = min(chunk, n_boot - done)
                idx = rng.integers(0, n, size=(b, n))
                for s, p in enumerate(sides):
                    res = _pooled_from_parts(p, idx)
                    for k in names:
                        boot[k][s].append(res[k])
                done += b
            for k in names:
                bs, fs = (np.concatenate(v) for v in boot[k])
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


# ====================================================================================
# Chapters 2–4: data the book chapters show (sampling summary, estimator check,
# decomposition identities, bootstrap over prompts, per-position profiles).
# ====================================================================================


def _scopes(frame: pd.DataFrame, keys: list[str], all_tasks: bool):
    """(key tuple, sub-frame) per group of ``keys``, plus task ``"all"`` per model."""
    out = [(k if isinstance(k, tuple) else (k,), g)
           for k, g in frame.groupby(keys, sort=True, observed=True)]
    if all_tasks:
        by_model = [c for c in keys if c != "task"]
        for k, g in frame.groupby(by_model, sort=True, observed=True):
            k = k if isinstance(k, tuple) else (k,)
            full = dict(zip(by_model, k))
            full["task"] = "all"
            out.append((tuple(full[c] for c in keys), g))
    return out


def length_summary(rollouts: pd.DataFrame, all_tasks: bool = True) -> pd.DataFrame:
    """Lengths and truncation per (model, task): one row each (chapter 2).

    Columns: ``model, family, variant, task, n_prompts, n_rollouts``, ``mean_length``
    (over rollouts), ``median_length``, ``min_length``, ``max_length``,
    ``truncation_rate`` (fraction of rollouts with no stop token within ``max_new_tokens``)
    and ``n_prompts_flagged`` (prompts whose own truncation rate exceeds 5 %, METHOD §3).
    With ``all_tasks`` each model also gets a ``task == "all"`` row.
    """
    validate_rollouts(rollouts)
    rows = []
    for keys, grp in _scopes(rollouts, list(POOL_KEYS), all_tasks):
        n = grp["length"].to_numpy(dtype=np.float64)
        trunc = grp["truncated"].to_numpy().astype(bool)
        per_prompt = grp.assign(_t=trunc).groupby(["task", "prompt_id"])["_t"].mean()
        row = dict(zip(POOL_KEYS, keys))
        row.update(n_prompts=int(per_prompt.size), n_rollouts=int(n.size),
                   mean_length=float(n.mean()), median_length=float(np.median(n)),
                   min_length=int(n.min()), max_length=int(n.max()),
                   truncation_rate=float(trunc.mean()),
                   n_prompts_flagged=int((per_prompt > TRUNCATION_FLAG_RATE).sum()))
        rows.append(row)
    return pd.DataFrame(rows)


def example_rollouts(rollouts: pd.DataFrame, task: str, prompt_id=None, rollout_ids=(0, 1),
                     models: Iterable[str] | None = None, max_chars: int = 400) -> pd.DataFrame:
    """Rollouts of one prompt side by side: one row per rollout id, one column per model.

    ``prompt_id`` None picks the first prompt (sorted) of ``task`` that every requested
    model has. Each cell is the decoded text (stop token stripped), newlines shown as
    ``⏎``, cut at ``max_chars`` characters (``…``), followed by ``[N tokens, r = …]`` and
    ``truncated`` when no stop token came. ``df.attrs['prompt_id']`` holds the prompt.
    """
    require_columns(rollouts, ["model", "task", "prompt_id", "rollout_id", "text", "length",
                               "summed_entropy", "truncated"], "rollout table")
    names = list(models) if models is not None else list(dict.fromkeys(rollouts["model"]))
    sub = rollouts[(rollouts["task"] == task) & rollouts["model"].isin(names)]
    if sub.empty:
        raise ValueError(f"no rollouts for task {task!r} and models {names}")
    if prompt_id is None:
        have = sub.groupby("prompt_id")["model"].nunique()
        common = sorted(have.index[have == len(names)].astype(str))
        if not common:
            raise ValueError(f"no prompt of task {task!r} has rollouts from every model {names}")
        prompt_id = common[0]
    sub = sub[sub["prompt_id"].astype(str) == str(prompt_id)]
    if sub.empty:
        raise ValueError(f"no rollouts for prompt {prompt_id!r} of task {task!r}")
    if max_chars < 1:
        raise ValueError("max_chars must be ≥ 1")

    def cell(row) -> str:
        text = str(row["text"]).replace("\r", "").replace("\n", " ⏎ ").strip()
        if len(text) > max_chars:
            text = text[:max_chars].rstrip() + " …"
        rate = row["summed_entropy"] / row["length"]
        tail = f"[{int(row['length'])} tokens, r = {rate:.2f} nats/token"
        tail += ", truncated]" if row["truncated"] else "]"
        return f"{text} {tail}"

    sub = sub[sub["rollout_id"].isin(list(rollout_ids))]
    table = (sub.assign(cell=[cell(r) for _, r in sub.iterrows()])
             .pivot(index="rollout_id", columns="model", values="cell"))
    table = table.reindex(columns=[m for m in names if m in table.columns])
    table.columns.name = None
    table.attrs["prompt_id"] = str(prompt_id)
    table.attrs["task"] = task
    return table


def estimator_check(prompts: pd.DataFrame, all_tasks: bool = True) -> pd.DataFrame:
    """Both CE* estimators pooled over prompts, with rollout-level SEs (chapter 3).

    Per (model, task): ``canopy_entropy`` (mean over prompts of ĈE*_H) and
    ``canopy_entropy_surprisal`` (of ĈE*_S), each with ``*_se`` =
    sqrt(Σ_p se_p²) / P — the Monte-Carlo error of the pooled mean given the prompts
    (rollouts independent across prompts); ``estimator_gap`` = mean over prompts of
    mean(S − H) with its ``estimator_gap_se`` the same way, ``gap_z`` = gap / se,
    ``estimators_agree`` = |gap| ≤ 4·se (METHOD §3's check applied to the pooled mean),
    and ``n_prompts_agree`` of ``n_prompts`` prompts passing the per-prompt check.
    The prompt-level SE of :func:`pool` (sd over prompts / √P) answers another question:
    how much CE* would move with other prompts.
    """
    _check_prompt_table(prompts)
    require_columns(prompts, ["canopy_entropy_se", "canopy_entropy_surprisal_se",
                              "estimator_gap", "estimator_gap_se", "estimators_agree"],
                    "per-prompt table")
    rows = []
    for keys, grp in _scopes(prompts, list(POOL_KEYS), all_tasks):
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
    require_columns(pooled, need, "pooled table", hint="build it with canopy.entropy.pool")
    keys = [c for c in POOL_KEYS if c in pooled.columns]
    out = pooled[keys + need[:5]].copy()
    out["split_error"] = (pooled["canopy_entropy"] - pooled["length_term"]
                          - pooled["within_prompt_cov"] - pooled["between_prompt_cov"])
    out["log_genppl_minus_log_bf"] = np.log(pooled["gen_ppl"]) - np.log(pooled["branching_factor"])
    out["cov_over_length"] = pooled["cov_residual"] / pooled["mean_length"]
    out["identity_error"] = out["log_genppl_minus_log_bf"] - out["cov_over_length"]
    return out.reset_index(drop=True)


def pooled_bootstrap(prompts: pd.DataFrame, metrics: Iterable[str] | None = None,
                     n_boot: int = 2000, seed: int = 0, confidence: float = 0.95,
                     all_tasks: bool = True, chunk: int = 250) -> pd.DataFrame:
    """Bootstrap over prompts of pooled metrics, one model at a time (METHOD §4).

    For every (model, task) — plus ``task == "all"`` when ``all_tasks`` — prompts are
    resampled with replacement ``n_boot`` times and each pooled metric recomputed exactly
    as :func:`pool` does. Returns one row per (model, task, metric): ``estimate`` (the
    point estimate on all prompts), percentile CI ``lo``/``hi`` at ``confidence``,
    ``n_prompts``, ``n_defined`` (prompts that enter the pooled value: for the
    correlations and ``length_rate_cov`` those with a defined value and a positive
    weight — Pearson and Spearman need M > 3 —, else all) and ``n_valid`` (bootstrap
    draws where the metric was defined; a pooled correlation is NaN in a draw whose
    prompts all have undefined correlations). With few defined prompts the percentile
    interval is degenerate: read it with :func:`interval_side`'s ``n``.
    Unlike :func:`paired_bootstrap` this needs no partner model, so it covers models
    without a base (e.g. ``smollm2-135m-instruct``).
    """
    _check_prompt_table(prompts)
    metrics, tails = _bootstrap_settings(n_boot, confidence, metrics)
    names = list(_POOLED_METRICS) if metrics is None else metrics
    rng = np.random.default_rng(seed)
    rows = []
    for keys, grp in _scopes(prompts, list(POOL_KEYS), all_tasks):
        parts = _pool_parts(grp)
        n = len(grp)
        point = _pooled_from_parts(parts, np.arange(n)[None, :])
        weights = {"length_rate_pearson": "pearson_w", "length_rate_spearman": "spearman_w",
                   "length_rate_kendall": "kendall_w", "length_rate_cov": "cov_w"}
        boot = {k: [] for k in names}
        done = 0
        while done < n_boot:
            b = min(chunk, n_boot - done)
            res = _pooled_from_parts(parts, rng.integers(0, n, size=(b, n)))
            for k in names:
                boot[k].append(res[k])
            done += b
        for k in names:
            sample = np.concatenate(boot[k])
            row = dict(zip(POOL_KEYS, keys))
            n_defined = int((parts[weights[k]] > 0).sum()) if k in weights else n
            row.update(metric=k, n_prompts=n, n_defined=n_defined, n_boot=n_boot,
                       n_valid=int(np.isfinite(sample).sum()),
                       estimate=float(point[k][0]),
                       lo=_percentile(sample, tails[0]), hi=_percentile(sample, tails[1]))
            rows.append(row)
    return pd.DataFrame(rows, columns=[*POOL_KEYS, "metric", "n_prompts", "n_defined",
                                       "n_boot", "n_valid", "estimate", "lo", "hi"])


#: Columns of :func:`position_profile`'s output after the keys.
PROFILE_COLUMNS = ("position", "n_active", "n_stopped", "mean_step_entropy",
                   "mean_step_entropy_raw", "running_entropy_rate", "mean_stop_prob",
                   "stop_fraction")


def position_profile(rollouts: pd.DataFrame, by_task: bool = True, all_tasks: bool = True,
                     max_position: int | None = None) -> pd.DataFrame:
    """How entropy and stopping evolve with the token position t (chapter 4).

    ``rollouts`` needs the per-step list columns ``step_entropy``, ``step_entropy_raw``
    and ``step_stop_logprob`` (one value per generated token, the stop token included,
    as :mod:`canopy.sampling` writes them) besides ``model, family, variant, task``.
    A rollout is *active* at position t (1-based) when its length N ≥ t. One row per
    (model, task, t) — task ``"all"`` pools every task (when ``all_tasks``; with
    ``by_task=False`` only that row) — with, over the rollouts active at t:

    - ``n_active``; ``n_stopped``: how many of them emit a stop token at t;
    - ``mean_step_entropy``: mean of h_t (sampling distribution, nats);
    - ``mean_step_entropy_raw``: mean of the raw model entropy at t;
    - ``running_entropy_rate``: mean of (Σ_{s≤t} h_s) / t, the entropy rate of the
      prefix up to t (at t = N_i it is the rollout's r_i);
    - ``mean_stop_prob``: mean of exp(step_stop_logprob), the raw model's probability of
      stopping at t (temperature 1, no top-k/top-p);
    - ``stop_fraction`` = n_stopped / n_active, the empirical stopping hazard (truncated
      rollouts never stop).

    Every rollout weighs the same (prompts with more active rollouts weigh more at t).
    The set of active rollouts shrinks with t, so a change along t mixes a change within
    rollouts with a change of *which* rollouts are still running; ``n_active`` says how
    many values each mean rests on. ``max_position`` drops positions beyond it.
    Vectorised: the lists are concatenated once (no Python loop over rollouts).
    """
    need = ["model", "family", "variant", "task", "length", "truncated", "step_entropy",
            "step_entropy_raw", "step_stop_logprob"]
    require_columns(rollouts, need, "rollout table", allow_empty=False,
                    hint="per-step lists come from canopy.sampling")
    if not by_task and not all_tasks:
        raise ValueError("by_task and all_tasks cannot both be False: nothing to group by")
    if max_position is not None and (isinstance(max_position, bool) or max_position < 1):
        raise ValueError(f"max_position must be a positive integer or None, got {max_position!r}")

    lengths = np.array([len(v) for v in rollouts["step_entropy"]], dtype=np.int64)
    for col in ("step_entropy_raw", "step_stop_logprob"):
        other = np.array([len(v) for v in rollouts[col]], dtype=np.int64)
        if not np.array_equal(other, lengths):
            raise ValueError(f"{col} and step_entropy have different lengths in some rollout")
    if not np.array_equal(lengths, rollouts["length"].to_numpy(dtype=np.int64)):
        raise ValueError("the per-step lists do not have `length` entries in some rollout")

    h = np.concatenate([np.asarray(v, dtype=np.float64) for v in rollouts["step_entropy"]])
    h_raw = np.concatenate([np.asarray(v, dtype=np.float64) for v in rollouts["step_entropy_raw"]])
    p_stop = np.exp(np.concatenate([np.asarray(v, dtype=np.float64)
                                    for v in rollouts["step_stop_logprob"]]))
    row = np.repeat(np.arange(len(rollouts)), lengths)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    position = np.arange(h.size) - np.repeat(starts, lengths) + 1          # 1-based t
    cum = np.cumsum(h)
    running = (cum - np.repeat(cum[starts] - h[starts], lengths)) / position  # Σ_{s≤t} h_s / t
    truncated = rollouts["truncated"].to_numpy().astype(bool)
    stops_here = (position == lengths[row]) & ~truncated[row]

    steps = pd.DataFrame({
        "position": position, "h": h, "h_raw": h_raw, "running": running, "p_stop": p_stop,
        "stopped": stops_here.astype(np.int64),
        **{k: rollouts[k].to_numpy()[row] for k in ("model", "family", "variant", "task")},
    })
    if max_position is not None:
        steps = steps[steps["position"] <= max_position]
    frames = []
    keys = ["model", "family", "variant"]
    if by_task:
        frames.append(steps)
    if all_tasks:
        frames.append(steps.assign(task="all"))
    steps = pd.concat(frames, ignore_index=True)
    g = steps.groupby([*keys, "task", "position"], sort=True)
    out = g.agg(n_active=("h", "size"), n_stopped=("stopped", "sum"),
                mean_step_entropy=("h", "mean"), mean_step_entropy_raw=("h_raw", "mean"),
                running_entropy_rate=("running", "mean"), mean_stop_prob=("p_stop", "mean"))
    out = out.reset_index()
    out["stop_fraction"] = out["n_stopped"] / out["n_active"]
    return out[[*keys, "task", *PROFILE_COLUMNS]]


#: Fewer prompts than this: a bootstrap over prompts cannot say much (it takes only a
#: handful of distinct values), and :func:`interval_side` says so instead of a sign.
MIN_BOOTSTRAP_PROMPTS = 5


def interval_side(lo, hi, n=None, min_n: int = MIN_BOOTSTRAP_PROMPTS) -> np.ndarray:
    """Where an interval ``[lo, hi]`` lies relative to 0, element-wise: ``"> 0"`` when
    lo > 0, ``"< 0"`` when hi < 0, ``"includes 0"`` otherwise, ``"undefined"`` when
    either end is NaN, and ``"too few prompts"`` where ``n`` (the prompts behind the
    interval, optional) is below ``min_n``. For bootstrap CIs of a difference or a
    correlation."""
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    out = np.where(lo > 0, "> 0", np.where(hi < 0, "< 0", "includes 0")).astype(object)
    out = np.atleast_1d(out)
    if n is not None:
        few = np.broadcast_to(np.asarray(n, dtype=np.float64) < min_n, out.shape)
        out[few] = "too few prompts"
    out[np.atleast_1d(np.isnan(lo) | np.isnan(hi))] = "undefined"
    return out


def format_interval(estimate, lo, hi, fmt: str = "+.2f", unit: str = "") -> str:
    """``"estimate<unit> [lo, hi]"`` with ``fmt``, or ``"undefined"`` when the estimate is
    NaN (an interval end that is NaN prints as ``?``). For sentences in the chapters."""
    def one(x) -> str:
        return "?" if x is None or not np.isfinite(x) else format(float(x), fmt)

    if estimate is None or not np.isfinite(estimate):
        return "undefined"
    return f"{one(estimate)}{unit} [{one(lo)}, {one(hi)}]"


def bootstrap_table(boot: pd.DataFrame, metrics: Iterable[str] | None = None,
                    min_prompts: int = MIN_BOOTSTRAP_PROMPTS) -> pd.DataFrame:
    """A readable view of :func:`paired_bootstrap`'s output (chapters 3–4).

    Keeps ``family, task, metric, n_prompts, base, fine_tuned, delta, delta_lo,
    delta_hi, pct_delta, pct_delta_lo, pct_delta_hi`` (rows of ``metrics`` only, in
    that order, when given) and adds ``change`` = :func:`interval_side` of the delta's
    CI: ``"> 0"`` (fine-tuned higher at this confidence), ``"< 0"`` (lower) or
    ``"includes 0"`` (no difference resolved with these prompts), ``"too few prompts"``
    when fewer than ``min_prompts`` paired prompts stand behind it, ``"undefined"``.
    """
    cols = ["family", "task", "metric", "n_prompts", "base", "fine_tuned", "delta",
            "delta_lo", "delta_hi", "pct_delta", "pct_delta_lo", "pct_delta_hi"]
    require_columns(boot, cols, "bootstrap table",
                    hint="build it with canopy.entropy.paired_bootstrap")
    out = boot[cols].copy()
    if metrics is not None:
        order = {m: i for i, m in enumerate(metrics)}
        out = out[out["metric"].isin(order)]
        out = out.assign(_o=out["metric"].map(order)).sort_values(
            ["family", "_o"], kind="stable").drop(columns="_o")
    out["change"] = interval_side(out["delta_lo"], out["delta_hi"], out["n_prompts"],
                                  min_prompts)
    return out.reset_index(drop=True)
