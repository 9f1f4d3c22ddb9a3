"""Data functions behind chapters 2–4 (canopy.entropy, "chapters 2–4" section), each
checked against an independent direct computation (plain loops, pandas, numpy)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from canopy import entropy as E


def _toy_rollouts(seed: int = 0, prompts_per_task: int = 4, m: int = 5, t_max: int = 7):
    """A rollout table with per-step lists, two models of one family and two tasks."""
    rng = np.random.default_rng(seed)
    rows = []
    for model, variant in (("toy-base", "base"), ("toy-ft", "fine-tuned")):
        for task in ("alpha", "beta"):
            for p in range(prompts_per_task):
                for r in range(m):
                    n = int(rng.integers(1, t_max + 1))
                    truncated = n == t_max and rng.random() < 0.7
                    h = rng.uniform(0.0, 3.0, n)
                    lp = -rng.uniform(0.0, 4.0, n)
                    rows.append({
                        "model": model, "family": "toy", "variant": variant, "task": task,
                        "prompt_id": f"p{p}", "rollout_id": r, "length": n,
                        "truncated": bool(truncated),
                        "step_entropy": h.astype(np.float32),
                        "step_logprob": lp.astype(np.float32),
                        "step_entropy_raw": (h + rng.uniform(0, 1, n)).astype(np.float32),
                        "step_stop_logprob": np.log(rng.uniform(1e-4, 1, n)).astype(np.float32),
                        "summed_entropy": float(h.astype(np.float32).astype(np.float64).sum()),
                        "surprisal": float(-lp.astype(np.float32).astype(np.float64).sum()),
                        "text": f"{model} {task} p{p} r{r}\nsecond line",
                    })
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def rollouts():
    return _toy_rollouts()


# ------------------------------------------------------------------ position_profile


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
    prof = E.position_profile(rollouts)
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
    p = E.position_profile(r, all_tasks=False)
    assert list(p["n_active"]) == [2, 2, 1]
    assert list(p["n_stopped"]) == [0, 1, 0]
    np.testing.assert_allclose(p["mean_step_entropy"], [1.5, 2.5, 5.0])
    np.testing.assert_allclose(p["running_entropy_rate"], [1.5, (2.0 + 2.0) / 2, 3.0])
    np.testing.assert_allclose(p["mean_stop_prob"], [0.15, 0.4, 0.4])
    np.testing.assert_allclose(p["stop_fraction"], [0.0, 0.5, 0.0])
    # at t = N the running rate is the rollout's entropy rate r = H/N
    assert p.loc[2, "running_entropy_rate"] == pytest.approx(9.0 / 3)
    # max_position and by_task=False
    q = E.position_profile(r, by_task=False, max_position=2)
    assert list(q["task"].unique()) == ["all"] and q["position"].max() == 2


def test_position_profile_errors(rollouts):
    with pytest.raises(ValueError, match="missing column"):
        E.position_profile(rollouts.drop(columns="step_stop_logprob"))
    bad = rollouts.copy()
    bad.at[0, "step_entropy_raw"] = np.zeros(len(bad.at[0, "step_entropy_raw"]) + 1)
    with pytest.raises(ValueError, match="different lengths"):
        E.position_profile(bad)
    with pytest.raises(ValueError, match="both be False"):
        E.position_profile(rollouts, by_task=False, all_tasks=False)


# --------------------------------------------------------------------- length_summary


def test_length_summary_matches_pandas(rollouts):
    got = E.length_summary(rollouts).set_index(["model", "task"])
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


def test_example_rollouts(rollouts):
    ex = E.example_rollouts(rollouts, "beta", rollout_ids=(0, 2), max_chars=12)
    assert list(ex.columns) == ["toy-base", "toy-ft"] and list(ex.index) == [0, 2]
    assert ex.attrs["prompt_id"] == "p0"
    cell = ex.loc[2, "toy-ft"]
    assert cell.startswith("toy-ft beta") and "…" in cell and "tokens" in cell
    one = E.example_rollouts(rollouts, "alpha", prompt_id="p1", max_chars=1000)
    assert "⏎" in one.loc[0, "toy-base"] and "p1 r0" in one.loc[0, "toy-base"]
    with pytest.raises(ValueError, match="no rollouts"):
        E.example_rollouts(rollouts, "gamma")


# ----------------------------------------------------------- estimators, identities


def test_estimator_check_matches_direct(rollouts):
    prompts = E.prompt_metrics(rollouts)
    got = E.estimator_check(prompts).set_index(["model", "task"])
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
    pooled = E.pool(E.prompt_metrics(rollouts))
    ids = E.decomposition_identities(pooled)
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


# ----------------------------------------------------------------- pooled_bootstrap


def test_pooled_bootstrap_matches_resampling_pool(rollouts):
    prompts = E.prompt_metrics(rollouts)
    metrics = ["canopy_entropy", "length_rate_pearson", "length_rate_kendall", "gen_ppl"]
    n_boot = 30
    got = E.pooled_bootstrap(prompts, metrics=metrics, n_boot=n_boot, seed=3,
                             all_tasks=False, chunk=n_boot)
    # direct: the same generator, one draw of indices per (model, task) in sorted order,
    # then canopy.entropy.pool on the resampled prompt rows
    rng = np.random.default_rng(3)
    for (model, family, variant, task), grp in prompts.groupby(list(E.POOL_KEYS), sort=True):
        n = len(grp)
        idx = rng.integers(0, n, size=(n_boot, n))
        samples = {k: [] for k in metrics}
        for row in idx:
            pooled = E.pool(grp.iloc[row], all_tasks=False).iloc[0]
            for k in metrics:
                samples[k].append(pooled[k])
        point = E.pool(grp, all_tasks=False).iloc[0]
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
    prompts = E.prompt_metrics(rollouts)
    out = E.pooled_bootstrap(prompts, metrics=["mean_length"], n_boot=20)
    assert set(out["task"]) == {"alpha", "beta", "all"}
    assert (out["lo"] <= out["estimate"]).all() and (out["estimate"] <= out["hi"]).all()
    with pytest.raises(ValueError, match="unknown metric"):
        E.pooled_bootstrap(prompts, metrics=["nope"])
    with pytest.raises(ValueError, match="n_boot"):
        E.pooled_bootstrap(prompts, n_boot=0)


# --------------------------------------------------------------- chart helpers


def test_rate_length_data_centres_within_prompts(rollouts):
    from canopy import charts as C

    texts = {("alpha", "p0"): "Write   a\nstory about a very long topic indeed"}
    raw = C.rate_length_data(rollouts, prompt_text=texts, snippet=10)
    np.testing.assert_allclose(raw["entropy_rate"],
                               rollouts["summed_entropy"] / rollouts["length"])
    first = raw[(raw["task"] == "alpha") & (raw["prompt_id"] == "p0")]["prompt"].iloc[0]
    assert first == "Write a st…"
    cen = C.rate_length_data(rollouts, centre=True)
    for (model, task, pid), grp in rollouts.groupby(["model", "task", "prompt_id"]):
        sel = (cen["model"] == model) & (cen["task"] == task) & (cen["prompt_id"] == pid)
        n = grp["length"].to_numpy(float)
        np.testing.assert_allclose(cen.loc[sel, "length"], n - n.mean(), atol=1e-12)
        assert abs(cen.loc[sel, "entropy_rate"].sum()) < 1e-9


def test_chapter_charts_build_with_tooltips(rollouts):
    from canopy import charts as C

    prompts = E.prompt_metrics(rollouts)
    pooled = E.pool(prompts)
    prof = E.position_profile(rollouts)
    boot = E.paired_bootstrap(prompts, n_boot=20)
    built = [
        C.rollout_length_chart(rollouts), C.truncation_chart(E.length_summary(rollouts)),
        C.decomposition_share_chart(pooled), C.covariance_split_chart(pooled),
        C.bootstrap_delta_chart(boot, ["canopy_entropy", "gen_ppl"]),
        C.interval_chart(E.pooled_bootstrap(prompts, ["length_rate_pearson"], n_boot=20)),
        C.rate_length_scatter(C.rate_length_data(rollouts)),
        C.position_chart(prof, min_active=3), C.stop_probability_chart(prof),
    ]
    for chart in built:
        text = str(chart.to_dict())
        assert "tooltip" in text
    with pytest.raises(ValueError, match="no positions"):
        C.position_chart(prof, task="nope")
    with pytest.raises(ValueError, match="missing column"):
        C.truncation_chart(pooled.drop(columns="truncation_rate"))


def test_interval_side_and_bootstrap_table(rollouts):
    sides = E.interval_side([0.1, -2.0, -1.0, np.nan, 0.0], [0.5, -0.1, 1.0, 1.0, 0.0])
    assert list(sides) == ["> 0", "< 0", "includes 0", "undefined", "includes 0"]
    sides = E.interval_side([0.1, 0.1, np.nan], [0.5, 0.5, 1.0], n=[2, 5, 1], min_n=5)
    assert list(sides) == ["too few prompts", "> 0", "undefined"]
    assert E.format_interval(0.1234, -0.5, 1.0) == "+0.12 [-0.50, +1.00]"
    assert E.format_interval(12.0, 10.0, np.nan, fmt=".0f", unit=" %") == "12 % [10, ?]"
    assert E.format_interval(np.nan, 0.0, 1.0) == "undefined"
    boot = E.paired_bootstrap(E.prompt_metrics(rollouts), n_boot=40, seed=1)
    default = E.bootstrap_table(boot)
    few = default["n_prompts"] < E.MIN_BOOTSTRAP_PROMPTS
    assert few.any() and (default.loc[few, "change"] == "too few prompts").all()
    table = E.bootstrap_table(boot, metrics=["gen_ppl", "canopy_entropy"], min_prompts=1)
    assert set(table["metric"]) == {"gen_ppl", "canopy_entropy"}
    assert list(table["metric"][:2]) == ["gen_ppl", "gen_ppl"]
    for _, row in table.iterrows():
        want = ("> 0" if row["delta_lo"] > 0 else "< 0" if row["delta_hi"] < 0
                else "includes 0")
        assert row["change"] == want
        assert row["delta"] == pytest.approx(row["fine_tuned"] - row["base"])
