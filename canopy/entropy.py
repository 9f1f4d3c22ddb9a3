"""Per-rollout and per-prompt metrics: Canopy Entropy, its decomposition, co-movement.

Implements §2–3 of the book's Method page (``book/method.md``). Everything is in nats.
All functions are vectorised over prompts (numpy ``bincount`` / padded 2-D arrays), so
10,000 prompts × 100 rollouts take about a second; see ``benchmarks/bench_metrics.py``.
Pooling over prompts (§4) is :mod:`canopy.pooling`.

The rollout DataFrame (one row per rollout) has at least these columns
(:data:`canopy.tables.ROLLOUT_COLUMNS`):

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

import numpy as np
import pandas as pd
from scipy.stats import kendalltau

from canopy.profiles import PROFILE_COLUMNS, PositionAccumulator, check_profile_options
from canopy.tables import (PROMPT_KEYS, ROLLOUT_COLUMNS, VARIANTS, reason_column,
                           require_columns)

__all__ = [
    "ROLLOUT_COLUMNS",
    "PROMPT_KEYS",
    "PROFILE_COLUMNS",
    "validate_rollouts",
    "entropy_rate",
    "repetition_rate",
    "rollout_repetition",
    "tree_metrics",
    "prompt_metrics",
    "comovement",
    "position_profile",
]

#: Prompts whose truncation rate exceeds this are flagged (Method §3).
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




def entropy_rate(summed_entropy, length):
    """The entropy rate ``r = H / N`` (nats per token) of each rollout: ``summed_entropy``
    and ``length`` are scalars, arrays or Series of the same shape (Method §2)."""
    return summed_entropy / length


# ----------------------------------------------------------------- per-prompt metrics


def repetition_rate(token_ids, n: int = 4) -> float:
    """rep-n of one rollout: the share of its n-grams (consecutive windows of ``n`` token
    ids, stop token included) that repeat an n-gram seen earlier in the same rollout,
    ``1 − |distinct n-grams| / |n-grams|`` — the seq-rep-n of Welleck et al. (2019).
    0 for a rollout with no repeated n-gram or fewer than ``n`` tokens; near 1 for a
    rollout caught in a loop (``a b c d a b c d …``). A fraction in [0, 1), no unit."""
    ids = [int(t) for t in token_ids]
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    windows = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    return 1.0 - len(set(windows)) / len(windows) if windows else 0.0


def rollout_repetition(rollouts: pd.DataFrame, n: int = 4) -> np.ndarray:
    """rep-n (:func:`repetition_rate`) of every rollout of a rollout table, shape (R,):
    its ``repetition`` column when present, else computed from ``token_ids``; all NaN
    when the table has neither (e.g. summaries without token ids)."""
    if "repetition" in rollouts.columns:
        return rollouts["repetition"].to_numpy(dtype=np.float64)
    if "token_ids" not in rollouts.columns:
        return np.full(len(rollouts), np.nan)
    return np.array([repetition_rate(ids, n) for ids in rollouts["token_ids"]], dtype=np.float64)


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
    """Co-movement of two per-rollout quantities within each group (Method §3).

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



def tree_metrics(length, summed_entropy, surprisal, truncated, prompt=None) -> pd.DataFrame:
    """Per-prompt tree metrics from per-rollout arrays (Method §3).

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
    rate = entropy_rate(h, n)

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
    """Per-prompt metrics of a rollout table (Method §3): one row per prompt.

    Keys ``model, family, variant, task, prompt_id`` come first, then:

    - ``n_rollouts`` (M); ``canopy_entropy`` = mean H_i (CE*, the primary estimator) and
      ``canopy_entropy_se`` = sd(H_i)/√M; ``canopy_entropy_surprisal`` = mean S_i and its
      ``_se``; ``estimator_gap`` = mean(S_i − H_i) with ``_se``; ``estimators_agree`` =
      |gap| ≤ 4·se (NA when M < 2).
    - ``mean_length`` E[N], ``mean_entropy_rate`` E[r], ``sd_length`` and
      ``sd_entropy_rate`` (population, ÷M), ``gen_ppl`` = exp(CE*/E[N]),
      ``branching_factor`` = exp(E[r]), ``repetition_rate`` = mean rep-4 over the
      prompt's rollouts (:func:`repetition_rate`; NaN when the table has neither
      ``token_ids`` nor ``repetition``), ``truncation_rate``, ``truncation_flag`` (> 5 %).
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
    rep = rollout_repetition(rollouts)
    table.insert(table.columns.get_loc("truncation_rate"), "repetition_rate",
                 _group_sums(codes, len(table), rep) / table["n_rollouts"].to_numpy())
    # Restore the original key values (prompt_id may be an int) in factorized order.
    first = pd.Series(np.arange(len(rollouts))).groupby(codes).first().to_numpy()
    key_frame = rollouts[keys].iloc[first].reset_index(drop=True)
    return pd.concat([key_frame, table.reset_index(drop=True)], axis=1)



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
    Streamed (:class:`canopy.profiles.PositionAccumulator`): a few hundred rollouts' steps
    at a time, never the whole table's; for a store too large to load, see
    :func:`canopy.profiles.stream_position_profile`.
    """
    need = ["model", "family", "variant", "task", "length", "truncated", "step_entropy",
            "step_entropy_raw", "step_stop_logprob"]
    require_columns(rollouts, need, "rollout table", allow_empty=False,
                    hint="per-step lists come from canopy.sampling")
    check_profile_options(by_task, all_tasks, max_position)
    lengths = np.array([len(v) for v in rollouts["step_entropy"]], dtype=np.int64)
    for col in ("step_entropy_raw", "step_stop_logprob"):
        other = np.array([len(v) for v in rollouts[col]], dtype=np.int64)
        if not np.array_equal(other, lengths):
            raise ValueError(f"{col} and step_entropy have different lengths in some rollout")
    if not np.array_equal(lengths, rollouts["length"].to_numpy(dtype=np.int64)):
        raise ValueError("the per-step lists do not have `length` entries in some rollout")
    accumulator = PositionAccumulator(max_position)
    accumulator.add_table(rollouts)
    return accumulator.table(by_task, all_tasks)
