"""Pooling over prompts and the bootstraps (the Method page, §4), each checked against
a direct computation (plain loops, pandas, numpy)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis_data import assert_rel as _assert_rel
from analysis_data import paired_prompts, random_rollouts
from canopy.entropy import prompt_metrics
from canopy.pooling import (POOLED_METRICS, estimator_check, decomposition_identities,
                            length_summary, paired_bootstrap, pool, pool_comovement,
                            pooled_bootstrap)
from canopy.tables import POOL_KEYS


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
    pm = paired_prompts()
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
    pm = paired_prompts(n_prompts=20)
    pm = pm[~((pm["variant"] == "base") & (pm["prompt_id"] == "p000"))]
    boot = paired_bootstrap(pm, n_boot=50, seed=0)
    assert (boot["n_unpaired"] == 1).all()
    assert boot[boot["task"] == "all"]["n_prompts"].eq(19).all()


def test_bootstrap_rejects_unknown_metric_and_reports_every_pooled_metric():
    pm = paired_prompts(n_prompts=6)
    with pytest.raises(ValueError, match="unknown metric 'entropy'"):
        paired_bootstrap(pm, n_boot=10, metrics=["entropy"])
    boot = paired_bootstrap(pm, n_boot=10, all_tasks=False)
    pooled = pool(pm, all_tasks=False)
    reported = set(boot["metric"])
    numeric = set(pooled.select_dtypes("number").columns) - {
        "n_prompts", "n_rollouts", "canopy_entropy_se", "n_truncation_flagged"}
    assert reported == numeric


def test_length_summary_matches_pandas(rollouts):
    got = length_summary(rollouts).set_index(["model", "task"])
    for (model, task), grp in rollouts.groupby(["model", "task"]):
        row = got.loc[(model, task)]
        assert row["n_rollouts"] == len(grp)
        assert row["mean_length"] == pytest.approx(grp["length"].mean())
        assert row["median_length"] == pytest.approx(grp["length"].median())
        assert row["truncation_rate"] == pytest.approx(grp["truncated"].mean())
        flagged = sum(g["truncated"].mean() > 0.05 for _, g in grp.groupby("prompt_id"))
        assert row["n_prompts_flagged"] == flagged
    for model, grp in rollouts.groupby("model"):
        assert got.loc[(model, "all"), "truncation_rate"] == pytest.approx(grp["truncated"].mean())
        assert got.loc[(model, "all"), "n_prompts"] == grp.groupby(["task", "prompt_id"]).ngroups


def test_estimator_check_matches_direct(rollouts):
    prompts = prompt_metrics(rollouts)
    got = estimator_check(prompts).set_index(["model", "task"])
    for (model, task), grp in rollouts.groupby(["model", "task"]):
        per = [(g["summed_entropy"].to_numpy(), g["surprisal"].to_numpy())
               for _, g in grp.groupby("prompt_id")]
        p = len(per)
        ce_h = np.mean([h.mean() for h, _ in per])
        se_h = math.sqrt(sum(h.var(ddof=1) / h.size for h, _ in per)) / p
        gap = np.mean([(s - h).mean() for h, s in per])
        se_gap = math.sqrt(sum((s - h).var(ddof=1) / h.size for h, s in per)) / p
        row = got.loc[(model, task)]
        assert row["canopy_entropy"] == pytest.approx(ce_h, rel=1e-12)
        assert row["canopy_entropy_se"] == pytest.approx(se_h, rel=1e-9)
        assert row["estimator_gap"] == pytest.approx(gap, rel=1e-9, abs=1e-12)
        assert row["estimator_gap_se"] == pytest.approx(se_gap, rel=1e-9)
        assert row["estimators_agree"] == (abs(gap) <= 4 * se_gap)
        agree = sum(abs((s - h).mean()) <= 4 * (s - h).std(ddof=1) / math.sqrt(h.size)
                    for h, s in per)
        assert row["n_prompts_agree"] == agree


def test_decomposition_identities_hold(rollouts):
    pooled = pool(prompt_metrics(rollouts))
    ids = decomposition_identities(pooled)
    assert np.all(np.abs(ids["split_error"]) < 1e-9 * ids["canopy_entropy"].abs().max())
    assert np.all(np.abs(ids["identity_error"]) < 1e-9)
    # independent: between-prompt covariance from the prompt means directly
    for (model, task), grp in rollouts.groupby(["model", "task"]):
        h = grp.groupby("prompt_id")["summed_entropy"].mean()
        n = grp.groupby("prompt_id")["length"].mean()
        r = (grp["summed_entropy"] / grp["length"]).groupby(grp["prompt_id"]).mean()
        between = np.mean(n * r) - n.mean() * r.mean()
        row = ids[(ids["model"] == model) & (ids["task"] == task)].iloc[0]
        assert row["between_prompt_cov"] == pytest.approx(between, rel=1e-9, abs=1e-12)
        c = h.mean() - n.mean() * r.mean()
        assert row["cov_over_length"] == pytest.approx(c / n.mean(), rel=1e-9, abs=1e-12)


def test_pooled_bootstrap_matches_resampling_pool(rollouts):
    prompts = prompt_metrics(rollouts)
    metrics = ["canopy_entropy", "length_rate_pearson", "length_rate_kendall", "gen_ppl"]
    n_boot = 30
    got = pooled_bootstrap(prompts, metrics=metrics, n_boot=n_boot, seed=3,
                             all_tasks=False, chunk=n_boot)
    # direct: the same generator, one draw of indices per (model, task) in sorted order,
    # then canopy.pooling.pool on the resampled prompt rows
    rng = np.random.default_rng(3)
    for (model, family, variant, task), grp in prompts.groupby(list(POOL_KEYS), sort=True):
        n = len(grp)
        idx = rng.integers(0, n, size=(n_boot, n))
        samples = {k: [] for k in metrics}
        for row in idx:
            pooled = pool(grp.iloc[row], all_tasks=False).iloc[0]
            for k in metrics:
                samples[k].append(pooled[k])
        point = pool(grp, all_tasks=False).iloc[0]
        for k in metrics:
            mine = got[(got["model"] == model) & (got["task"] == task)
                       & (got["metric"] == k)].iloc[0]
            s = np.array(samples[k], dtype=float)
            s = s[np.isfinite(s)]
            assert mine["estimate"] == pytest.approx(point[k], rel=1e-12, abs=1e-12)
            if k.startswith("length_rate_") and k != "length_rate_kendall":
                defined = grp[k].notna() & (grp["n_rollouts"] > 3)
            elif k == "length_rate_kendall":
                defined = grp[k].notna() & (grp["n_rollouts"] > 1)
            else:
                defined = grp[k].notna() | True
            assert mine["n_defined"] == int(defined.sum())
            assert mine["n_valid"] == s.size
            assert mine["lo"] == pytest.approx(np.percentile(s, 2.5), rel=1e-9, abs=1e-12)
            assert mine["hi"] == pytest.approx(np.percentile(s, 97.5), rel=1e-9, abs=1e-12)


def test_pooled_bootstrap_all_rows_and_errors(rollouts):
    prompts = prompt_metrics(rollouts)
    out = pooled_bootstrap(prompts, metrics=["mean_length"], n_boot=20)
    assert set(out["task"]) == {"alpha", "beta", "all"}
    assert (out["lo"] <= out["estimate"]).all() and (out["estimate"] <= out["hi"]).all()
    with pytest.raises(ValueError, match="unknown metric"):
        pooled_bootstrap(prompts, metrics=["nope"])
    with pytest.raises(ValueError, match="n_boot"):
        pooled_bootstrap(prompts, n_boot=0)


def test_pool_comovement_is_the_one_rule_behind_pool_and_the_bootstrap():
    # By hand: Fisher z with weights M − 3, Kendall weights M(M − 1)/2, covariance M − 1,
    # NaN and zero-weight prompts left out.
    rho = np.array([0.5, -0.2, np.nan, 0.9])
    m = np.array([10, 5, 20, 3])
    w = np.array([7.0, 2.0])
    want = np.tanh((w * np.arctanh(rho[:2])).sum() / w.sum())
    assert pool_comovement(rho, m, "pearson") == pytest.approx(want, rel=1e-12)
    tau_w = m * (m - 1) / 2
    keep = ~np.isnan(rho)
    assert pool_comovement(rho, m, "kendall") == pytest.approx(
        (tau_w[keep] * rho[keep]).sum() / tau_w[keep].sum(), rel=1e-12)
    assert pool_comovement(rho, m, "cov") == pytest.approx(
        ((m[keep] - 1) * rho[keep]).sum() / (m[keep] - 1).sum(), rel=1e-12)
    assert np.isnan(pool_comovement([0.3, np.nan], [3, 10], "spearman"))
    with pytest.raises(ValueError, match="kind must be"):
        pool_comovement(rho, m, "cosine")
    # pool() gives the same pooled correlation as the rule applied to its prompts
    prompts = prompt_metrics(random_rollouts(n_prompts=30, seed=5))
    pooled = pool(prompts).set_index("task")
    for task, grp in [*prompts.groupby("task"), ("all", prompts)]:
        for kind in ("pearson", "spearman", "kendall", "cov"):
            assert pooled.loc[task, f"length_rate_{kind}"] == pytest.approx(
                pool_comovement(grp[f"length_rate_{kind}"], grp["n_rollouts"], kind),
                rel=1e-12)


def test_pooled_metric_names_are_the_columns_of_pool():
    rollouts = random_rollouts(n_prompts=8, seed=2)
    # Without token ids rep-4 is not measured and left out; with them every metric is there.
    assert set(pool(prompt_metrics(rollouts)).columns) & set(POOLED_METRICS) == \
        set(POOLED_METRICS) - {"repetition_rate"}
    rollouts["token_ids"] = [[1, 2, 3, 4, 1, 2, 3, 4]] * len(rollouts)
    assert set(POOLED_METRICS) <= set(pool(prompt_metrics(rollouts)).columns)
