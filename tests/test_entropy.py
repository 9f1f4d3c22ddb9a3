"""Per-rollout and per-prompt metrics (the Method page, §2–3 and §7) against exact
enumeration and independent recomputation, and the per-position profile."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis_data import assert_rel as _assert_rel
from analysis_data import paired_prompts, random_rollouts
from canopy.entropy import (
    PROMPT_KEYS, entropy_rate, position_profile, prompt_metrics, tree_metrics,
    validate_rollouts,
)
from canopy.pooling import paired_bootstrap, pool
from canopy.toy import examples


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
        paired_bootstrap(paired_prompts(n_prompts=3), n_boot=0)


def test_validate_accepts_legal_input_and_keys_survive():
    df = random_rollouts(5, seed=3)
    validate_rollouts(df)
    pm = prompt_metrics(df)
    assert list(pm.columns[: len(PROMPT_KEYS)]) == list(PROMPT_KEYS)
    assert len(pm) == 5 and pm["n_rollouts"].sum() == len(df)


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


def _profile_loop(rollouts: pd.DataFrame, model: str, task: str) -> pd.DataFrame:
    """Direct per-position loop over rollouts (task 'all' = every task)."""
    sub = rollouts[(rollouts["model"] == model)
                   & ((rollouts["task"] == task) if task != "all" else True)]
    acc: dict[int, dict[str, list]] = {}
    for _, r in sub.iterrows():
        h = [float(x) for x in r["step_entropy"]]
        for t in range(1, len(h) + 1):
            d = acc.setdefault(t, {"h": [], "raw": [], "run": [], "p": [], "stop": []})
            d["h"].append(h[t - 1])
            d["raw"].append(float(r["step_entropy_raw"][t - 1]))
            d["run"].append(sum(h[:t]) / t)
            d["p"].append(math.exp(float(r["step_stop_logprob"][t - 1])))
            d["stop"].append(1 if (t == len(h) and not r["truncated"]) else 0)
    rows = []
    for t in sorted(acc):
        d = acc[t]
        k = len(d["h"])
        rows.append({"position": t, "n_active": k, "n_stopped": sum(d["stop"]),
                     "mean_step_entropy": sum(d["h"]) / k,
                     "mean_step_entropy_raw": sum(d["raw"]) / k,
                     "running_entropy_rate": sum(d["run"]) / k,
                     "mean_stop_prob": sum(d["p"]) / k,
                     "stop_fraction": sum(d["stop"]) / k})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("model,task", [("toy-base", "alpha"), ("toy-ft", "beta"),
                                        ("toy-base", "all")])
def test_position_profile_matches_direct_loop(rollouts, model, task):
    prof = position_profile(rollouts)
    got = prof[(prof["model"] == model) & (prof["task"] == task)].reset_index(drop=True)
    want = _profile_loop(rollouts, model, task)
    assert list(got["position"]) == list(want["position"])
    for col in want.columns:
        np.testing.assert_allclose(got[col].to_numpy(dtype=float),
                                   want[col].to_numpy(dtype=float), rtol=1e-9, atol=1e-9,
                                   err_msg=col)


def test_position_profile_hand_example():
    # Two rollouts: h = (1, 3) stops at t=2; h = (2, 2, 5) truncated at t=3.
    r = pd.DataFrame({
        "model": ["m", "m"], "family": ["f", "f"], "variant": ["base", "base"],
        "task": ["x", "x"], "length": [2, 3], "truncated": [False, True],
        "step_entropy": [[1.0, 3.0], [2.0, 2.0, 5.0]],
        "step_entropy_raw": [[1.5, 3.5], [2.5, 2.5, 5.5]],
        "step_stop_logprob": [[math.log(0.1), math.log(0.5)],
                              [math.log(0.2), math.log(0.3), math.log(0.4)]],
    })
    p = position_profile(r, all_tasks=False)
    assert list(p["n_active"]) == [2, 2, 1]
    assert list(p["n_stopped"]) == [0, 1, 0]
    np.testing.assert_allclose(p["mean_step_entropy"], [1.5, 2.5, 5.0])
    np.testing.assert_allclose(p["running_entropy_rate"], [1.5, (2.0 + 2.0) / 2, 3.0])
    np.testing.assert_allclose(p["mean_stop_prob"], [0.15, 0.4, 0.4])
    np.testing.assert_allclose(p["stop_fraction"], [0.0, 0.5, 0.0])
    # at t = N the running rate is the rollout's entropy rate r = H/N
    assert p.loc[2, "running_entropy_rate"] == pytest.approx(9.0 / 3)
    # max_position and by_task=False
    q = position_profile(r, by_task=False, max_position=2)
    assert list(q["task"].unique()) == ["all"] and q["position"].max() == 2


def test_position_profile_errors(rollouts):
    with pytest.raises(ValueError, match="missing column"):
        position_profile(rollouts.drop(columns="step_stop_logprob"))
    bad = rollouts.copy()
    bad.at[0, "step_entropy_raw"] = np.zeros(len(bad.at[0, "step_entropy_raw"]) + 1)
    with pytest.raises(ValueError, match="different lengths"):
        position_profile(bad)
    with pytest.raises(ValueError, match="both be False"):
        position_profile(rollouts, by_task=False, all_tasks=False)


def test_entropy_rate_is_summed_entropy_over_length_and_feeds_the_prompt_means():
    assert entropy_rate(3.0, 2) == pytest.approx(1.5)
    df = random_rollouts(n_prompts=6, seed=11)
    table = prompt_metrics(df).set_index("prompt_id")
    for pid, grp in df.groupby("prompt_id"):
        rates = [h / n for h, n in zip(grp["summed_entropy"], grp["length"])]
        assert table.loc[pid, "mean_entropy_rate"] == pytest.approx(np.mean(rates), rel=1e-12)
    np.testing.assert_allclose(entropy_rate(df["summed_entropy"], df["length"]),
                               df["summed_entropy"].to_numpy() / df["length"].to_numpy())
