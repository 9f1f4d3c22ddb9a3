"""Tree metrics (METHOD §3–4, §7) against exact enumeration and independent recomputation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from canopy.entropy import (
    PROMPT_KEYS, paired_bootstrap, pool, prompt_metrics, tree_metrics, validate_rollouts,
)
from canopy.toy import examples


def random_rollouts(n_prompts=40, seed=0, model="m", family="f", variant="base",
                    tasks=("t1", "t2"), m_range=(2, 30)):
    """Random rollout table with varying M per prompt, ties in N, truncation."""
    rng = np.random.default_rng(seed)
    frames = []
    for p in range(n_prompts):
        m = int(rng.integers(*m_range))
        n = rng.integers(1, 12, m)
        h = rng.gamma(2.0, 0.5, m) * n * rng.uniform(0.5, 1.5)
        frames.append(pd.DataFrame({
            "model": model, "family": family, "variant": variant,
            "task": tasks[p % len(tasks)], "prompt_id": f"p{p:03d}", "rollout_id": np.arange(m),
            "length": n, "summed_entropy": h, "surprisal": h + rng.normal(0, 0.5, m) ** 2,
            "truncated": n == 11,
        }))
    return pd.concat(frames, ignore_index=True)


# ----------------------------------------------------------- exact vs Monte Carlo


def _sample_metrics(toy, m, seed):
    df = toy.sample(m, seed=seed)
    row = prompt_metrics(df).iloc[0]
    n = df["length"].to_numpy(float)
    r = (df["summed_entropy"] / df["length"]).to_numpy()
    cross = (n - n.mean()) * (r - r.mean())
    return row, {
        "mean_length": n.std(ddof=1) / np.sqrt(m),
        "mean_entropy_rate": r.std(ddof=1) / np.sqrt(m),
        "length_rate_cov_pop": cross.std(ddof=1) / np.sqrt(m),
    }


@pytest.mark.parametrize("name", sorted(examples()))
def test_monte_carlo_within_four_standard_errors_of_enumeration(name):
    toy = examples()[name]
    tree = toy.enumerate()
    row, se = _sample_metrics(toy, 4000, seed=11)
    assert abs(row["canopy_entropy"] - tree.canopy_entropy) <= 4 * row["canopy_entropy_se"]
    assert abs(row["canopy_entropy_surprisal"] - tree.canopy_entropy) \
        <= 4 * row["canopy_entropy_surprisal_se"]
    assert abs(row["mean_length"] - tree.mean_length) <= 4 * se["mean_length"]
    assert abs(row["mean_entropy_rate"] - tree.mean_entropy_rate) <= 4 * se["mean_entropy_rate"] + 1e-12
    assert abs(row["length_rate_cov_pop"] - tree.length_rate_cov) <= 4 * se["length_rate_cov_pop"] + 1e-12
    assert bool(row["estimators_agree"])
    # The truncation rate is a binomial proportion.
    p = tree.truncation_rate
    assert abs(row["truncation_rate"] - p) <= 4 * np.sqrt(p * (1 - p) / 4000) + 1e-12


@pytest.mark.parametrize("name", ["chatty", "truncating"])
def test_standard_errors_shrink_like_inverse_sqrt_m(name):
    toy = examples()[name]
    small = prompt_metrics(toy.sample(1000, seed=3)).iloc[0]
    large = prompt_metrics(toy.sample(16000, seed=4)).iloc[0]
    for col in ("canopy_entropy_se", "canopy_entropy_surprisal_se"):
        ratio = small[col] / large[col]
        assert 3.4 < ratio < 4.6, (col, ratio)  # √(16000/1000) = 4


def test_truncated_toy_is_a_lower_bound_of_the_untruncated_canopy():
    toy = examples()["truncating"]
    short = toy.enumerate()
    longer = type(toy)(toy.tokens, np.log(toy.state_probs[-1]),
                       np.log(toy.state_probs[:-1]), max_length=8).enumerate()
    assert short.truncation_rate > 0.5
    assert short.canopy_entropy < longer.canopy_entropy


# ----------------------------------------------------------------- exact identities


def _assert_rel(a, b, tol=1e-9, scale=None):
    """|a − b| ≤ tol·scale; scale defaults to |b|. A difference of two terms (which can
    be 0) is compared relative to the size of the terms, ``scale``."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    scale = np.abs(b) if scale is None else np.asarray(scale, float)
    assert np.all(np.abs(a - b) <= tol * np.maximum(scale, 1e-300)), (a, b)


def test_decomposition_identity_per_prompt_on_random_and_toy_data():
    tables = [prompt_metrics(random_rollouts(seed=s)) for s in range(3)]
    tables += [prompt_metrics(t.sample(500, seed=1)) for t in examples().values()]
    for pm in tables:
        _assert_rel(pm["length_term"] + pm["length_rate_cov_pop"], pm["canopy_entropy"])
        ok = pm["length_share"].notna()
        _assert_rel(pm.loc[ok, "length_share"] + pm.loc[ok, "cov_share"], 1.0)
        _assert_rel(pm["log_genppl_minus_log_bf"], pm["length_rate_cov_pop"] / pm["mean_length"],
                    scale=pm["canopy_entropy"] / pm["mean_length"])
        _assert_rel(np.log(pm["gen_ppl"]) - np.log(pm["branching_factor"]),
                    pm["length_rate_cov_pop"] / pm["mean_length"], tol=1e-9,
                    scale=pm["canopy_entropy"] / pm["mean_length"])


def test_decomposition_matches_independent_recomputation():
    df = random_rollouts(n_prompts=5, seed=7)
    pm = prompt_metrics(df).set_index("prompt_id")
    for pid, g in df.groupby("prompt_id"):
        n = g["length"].to_numpy(float)
        r = g["summed_entropy"].to_numpy() / n
        row = pm.loc[pid]
        assert row["canopy_entropy"] == pytest.approx(g["summed_entropy"].mean(), rel=1e-12)
        assert row["canopy_entropy_se"] == pytest.approx(
            g["summed_entropy"].std(ddof=1) / np.sqrt(len(g)), rel=1e-10)
        assert row["length_rate_cov_pop"] == pytest.approx(np.cov(n, r, ddof=0)[0, 1], rel=1e-10)
        assert row["length_rate_cov"] == pytest.approx(np.cov(n, r, ddof=1)[0, 1], rel=1e-10)
        assert row["length_rate_pearson"] == pytest.approx(stats.pearsonr(n, r)[0], rel=1e-10)
        assert row["length_rate_spearman"] == pytest.approx(stats.spearmanr(n, r)[0], rel=1e-10)
        assert row["length_rate_kendall"] == pytest.approx(
            stats.kendalltau(n, r, variant="b")[0], rel=1e-10)
        assert row["gen_ppl"] == pytest.approx(np.exp(g["summed_entropy"].mean() / n.mean()))
        assert row["branching_factor"] == pytest.approx(np.exp(r.mean()))


def test_spearman_and_kendall_match_scipy_with_heavy_ties():
    rng = np.random.default_rng(5)
    p = np.repeat(np.arange(200), 17)
    n = rng.integers(1, 4, p.size)  # lengths 1–3: many ties
    h = rng.integers(0, 3, p.size) * n * 0.5 + 0.1 * n  # rates with ties too
    pm = tree_metrics(n, h, h, np.zeros(p.size, bool), prompt=p)
    for k in range(200):
        x, y = n[p == k].astype(float), (h / n)[p == k]
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            assert np.isnan(pm["length_rate_kendall"].iloc[k])
            continue
        assert pm["length_rate_kendall"].iloc[k] == pytest.approx(
            stats.kendalltau(x, y, variant="b")[0], abs=1e-12)
        assert pm["length_rate_spearman"].iloc[k] == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)


def test_pooled_three_term_split_is_exact():
    for seed in range(4):
        pooled = pool(prompt_metrics(random_rollouts(n_prompts=60, seed=seed)))
        _assert_rel(pooled["length_term"] + pooled["cov_residual"], pooled["canopy_entropy"])
        _assert_rel(pooled["within_prompt_cov"] + pooled["between_prompt_cov"], pooled["cov_residual"],
                    scale=pooled["canopy_entropy"])
        _assert_rel(pooled["log_genppl_minus_log_bf"], pooled["cov_residual"] / pooled["mean_length"],
                    scale=pooled["canopy_entropy"] / pooled["mean_length"])


def test_pooled_values_match_hand_computation():
    """Small handmade example: three prompts with M = 4, 5, 3 and a prompt with M = 2."""
    data = {
        "a": ([1, 2, 3, 4], [0.5, 1.6, 3.3, 4.0]),
        "b": ([2, 2, 5, 6, 9], [1.0, 2.2, 4.0, 6.5, 6.3]),
        "c": ([3, 1, 2], [2.0, 0.3, 1.5]),
        "d": ([1, 2], [0.4, 1.0]),
    }
    rows = []
    for pid, (n, h) in data.items():
        for i, (ni, hi) in enumerate(zip(n, h)):
            rows.append(dict(model="m", family="f", variant="base", task="t", prompt_id=pid,
                             rollout_id=i, length=ni, summed_entropy=hi, surprisal=hi,
                             truncated=False))
    pooled = pool(prompt_metrics(pd.DataFrame(rows)), all_tasks=False).iloc[0]

    z, wz, tau_num, tau_w, cov_num, cov_w = [], [], 0.0, 0.0, 0.0, 0.0
    ce, en, er, within = [], [], [], []
    for pid, (n, h) in data.items():
        n, h = np.array(n, float), np.array(h)
        r, m = h / n, len(n)
        ce.append(h.mean()), en.append(n.mean()), er.append(r.mean())
        within.append(np.mean((n - n.mean()) * (r - r.mean())))
        if m >= 3:
            rho = np.corrcoef(n, r)[0, 1]
            if m > 3:
                z.append(np.arctanh(rho)), wz.append(m - 3)
            tau_num += stats.kendalltau(n, r)[0] * m * (m - 1) / 2
            tau_w += m * (m - 1) / 2
            cov_num += np.cov(n, r)[0, 1] * (m - 1)
            cov_w += m - 1
    expected_pearson = np.tanh(np.dot(z, wz) / np.sum(wz))
    assert pooled["length_rate_pearson"] == pytest.approx(expected_pearson, rel=1e-12)
    assert pooled["length_rate_kendall"] == pytest.approx(tau_num / tau_w, rel=1e-12)
    assert pooled["length_rate_cov"] == pytest.approx(cov_num / cov_w, rel=1e-12)
    assert pooled["canopy_entropy"] == pytest.approx(np.mean(ce))
    assert pooled["gen_ppl"] == pytest.approx(np.exp(np.mean(ce) / np.mean(en)))
    assert pooled["branching_factor"] == pytest.approx(np.exp(np.mean(er)))
    assert pooled["within_prompt_cov"] == pytest.approx(np.mean(within))
    assert pooled["between_prompt_cov"] == pytest.approx(np.cov(en, er, ddof=0)[0, 1])
    assert pooled["n_prompts"] == 4


def test_pooled_correlation_nan_with_reason_when_no_prompt_has_weight():
    df = random_rollouts(n_prompts=4, seed=1, m_range=(2, 4))  # M ∈ {2, 3}: weight M−3 ≤ 0
    pooled = pool(prompt_metrics(df), all_tasks=False)
    assert pooled["length_rate_pearson"].isna().all()
    assert pooled["reason"].str.contains("pooled correlations undefined").all()


# ------------------------------------------------------------------ NaN and reasons


def test_undefined_values_are_nan_with_reasons():
    rows = []
    spec = {"one": [(1, 0.5)], "two": [(1, 0.5), (2, 1.0)],
            "constN": [(3, 1.0), (3, 2.0), (3, 0.5)], "zero": [(1, 0.0), (2, 0.0), (3, 0.0)]}
    for pid, pairs in spec.items():
        for i, (n, h) in enumerate(pairs):
            rows.append(dict(model="m", family="f", variant="base", task="t", prompt_id=pid,
                             rollout_id=i, length=n, summed_entropy=h, surprisal=h, truncated=False))
    pm = prompt_metrics(pd.DataFrame(rows)).set_index("prompt_id")
    assert np.isnan(pm.loc["one", "canopy_entropy_se"])
    assert "standard errors undefined" in pm.loc["one", "reason"]
    assert np.isnan(pm.loc["two", "length_rate_pearson"])
    assert "fewer than 3 rollouts" in pm.loc["two", "reason"]
    assert np.isnan(pm.loc["constN", "length_rate_spearman"])
    assert pm.loc["constN", "length_rate_cov"] == 0.0
    assert "length constant" in pm.loc["constN", "reason"]
    assert np.isnan(pm.loc["zero", "length_share"])
    assert "entropy rate constant" in pm.loc["zero", "reason"]
    assert "canopy entropy is 0" in pm.loc["zero", "reason"]
    assert pm.loc["one", "canopy_entropy"] == 0.5
    assert pm["reason"].map(type).eq(str).all()


# ------------------------------------------------------------------------ bootstrap


def _pair(seed=0, n_prompts=30):
    base = random_rollouts(n_prompts, seed=seed, model="g", family="g", variant="base")
    tuned = random_rollouts(n_prompts, seed=seed + 100, model="g-sft", family="g",
                            variant="fine-tuned")
    return prompt_metrics(pd.concat([base, tuned], ignore_index=True))


def test_bootstrap_identical_variants_give_zero_width_delta():
    base = random_rollouts(25, seed=2, model="g", family="g", variant="base")
    tuned = base.assign(model="g-sft", variant="fine-tuned")
    boot = paired_bootstrap(prompt_metrics(pd.concat([base, tuned])), n_boot=300, seed=1)
    assert len(boot) > 0
    defined = boot["base"].notna()
    assert (boot.loc[defined, "delta"] == 0).all()
    assert (boot.loc[defined, "delta_lo"] == 0).all() and (boot.loc[defined, "delta_hi"] == 0).all()
    assert (boot["n_unpaired"] == 0).all()


def test_bootstrap_is_reproducible_and_ci_contains_point_estimate():
    pm = _pair()
    a = paired_bootstrap(pm, n_boot=400, seed=9)
    b = paired_bootstrap(pm, n_boot=400, seed=9)
    c = paired_bootstrap(pm, n_boot=400, seed=10)
    pd.testing.assert_frame_equal(a, b)
    assert not a["delta_lo"].equals(c["delta_lo"])
    for label in ("base", "fine_tuned", "delta"):
        ok = a[label].notna()
        assert (a.loc[ok, f"{label}_lo"] <= a.loc[ok, label]).all()
        assert (a.loc[ok, label] <= a.loc[ok, f"{label}_hi"]).all()
    assert set(a["task"]) == {"t1", "t2", "all"}
    ce = a[(a["metric"] == "canopy_entropy") & (a["task"] == "all")].iloc[0]
    assert ce["pct_delta"] == pytest.approx(100 * ce["delta"] / ce["base"])


def test_bootstrap_uses_the_same_prompt_indices_for_both_variants():
    """With fine-tuned = base + constant on every prompt, every resample's delta is that
    constant; independent resampling would spread it."""
    base = random_rollouts(30, seed=4, model="g", family="g", variant="base")
    tuned = base.assign(model="g-sft", variant="fine-tuned",
                        summed_entropy=base["summed_entropy"] + 0.25)
    boot = paired_bootstrap(prompt_metrics(pd.concat([base, tuned])), n_boot=200, seed=0,
                            metrics=["canopy_entropy"], all_tasks=False)
    assert np.allclose(boot[["delta", "delta_lo", "delta_hi"]].to_numpy(), 0.25)


def test_bootstrap_pairs_on_task_and_prompt_and_counts_unpaired():
    pm = _pair(n_prompts=20)
    pm = pm[~((pm["variant"] == "base") & (pm["prompt_id"] == "p000"))]
    boot = paired_bootstrap(pm, n_boot=50, seed=0)
    assert (boot["n_unpaired"] == 1).all()
    assert boot[boot["task"] == "all"]["n_prompts"].eq(19).all()


# ---------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("change, message", [
    (lambda d: d.drop(columns="surprisal"), "missing column(s): surprisal"),
    (lambda d: d.assign(length=d["length"] * -1), "negative length"),
    (lambda d: d.assign(length=d["length"] + 0.5), "length must be integral"),
    (lambda d: d.assign(length=0), "length 0"),
    (lambda d: d.assign(summed_entropy=-1.0), "negative summed_entropy"),
    (lambda d: d.assign(surprisal=np.nan), "surprisal contains NaN"),
    (lambda d: d.assign(variant="sft"), "variant must be 'base' or 'fine-tuned'"),
    (lambda d: d.assign(rollout_id=0), "duplicate rollout_id"),
    (lambda d: d.assign(truncated="yes"), "truncated must be boolean"),
    (lambda d: d.iloc[:0], "empty"),
])
def test_bad_rollout_tables_raise_one_line_errors(change, message):
    df = random_rollouts(3, seed=0, m_range=(3, 5))
    with pytest.raises(ValueError) as info:
        prompt_metrics(change(df))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_arrays_raise_one_line_errors():
    with pytest.raises(ValueError, match="mismatched array sizes"):
        tree_metrics([1, 2, 3], [0.1, 0.2], [0.1, 0.2, 0.3], [False] * 3)
    with pytest.raises(ValueError, match="one-dimensional"):
        tree_metrics([[1, 2]], [[0.1, 0.2]], [[0.1, 0.2]], [[False, False]])
    with pytest.raises(ValueError, match="per-prompt table is missing"):
        pool(pd.DataFrame({"model": ["m"]}))
    with pytest.raises(ValueError, match="n_boot must be a positive integer"):
        paired_bootstrap(_pair(n_prompts=3), n_boot=0)


def test_validate_accepts_legal_input_and_keys_survive():
    df = random_rollouts(5, seed=3)
    validate_rollouts(df)
    pm = prompt_metrics(df)
    assert list(pm.columns[: len(PROMPT_KEYS)]) == list(PROMPT_KEYS)
    assert len(pm) == 5 and pm["n_rollouts"].sum() == len(df)


def test_bootstrap_rejects_unknown_metric_and_reports_every_pooled_metric():
    pm = _pair(n_prompts=6)
    with pytest.raises(ValueError, match="unknown metric 'entropy'"):
        paired_bootstrap(pm, n_boot=10, metrics=["entropy"])
    boot = paired_bootstrap(pm, n_boot=10, all_tasks=False)
    pooled = pool(pm, all_tasks=False)
    reported = set(boot["metric"])
    numeric = set(pooled.select_dtypes("number").columns) - {
        "n_prompts", "n_rollouts", "canopy_entropy_se", "n_truncation_flagged"}
    assert reported == numeric


def test_large_prompts_use_the_log_linear_kendall_and_agree_with_scipy():
    rng = np.random.default_rng(12)
    # One prompt far above the all-pairs limit next to small ones.
    sizes = [3000, 5, 40]
    p = np.repeat(np.arange(3), sizes)
    n = rng.integers(1, 50, p.size)
    h = rng.gamma(2.0, 1.0, p.size) * n
    pm = tree_metrics(n, h, h, np.zeros(p.size, bool), prompt=p)
    for k in range(3):
        x, y = n[p == k].astype(float), (h / n)[p == k]
        assert pm["length_rate_kendall"].iloc[k] == pytest.approx(
            stats.kendalltau(x, y)[0], abs=1e-12)
        assert pm["length_rate_spearman"].iloc[k] == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)


def test_reason_column_joins_the_rules_that_apply_in_order():
    from canopy.entropy import reason_column

    rules = [(np.array([True, False, True]), "a"), ([False, False, True], "b")]
    assert reason_column(rules, 3) == ["a", "", "a; b"]
    assert reason_column([], 2) == ["", ""]
