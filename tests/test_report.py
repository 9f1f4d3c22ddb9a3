"""What the chapters display (canopy.report): intervals in words, readable tables, and
the sentences with numbers, each checked against the numbers it is given."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from canopy.entropy import prompt_metrics
from canopy.pooling import paired_bootstrap
from canopy.report import (MIN_BOOTSTRAP_PROMPTS, bootstrap_table, example_rollouts,
                           finetune_config_table, finetune_summary, format_interval,
                           interval_side)


def test_example_rollouts(rollouts):
    ex = example_rollouts(rollouts, "beta", rollout_ids=(0, 2), max_chars=12)
    assert list(ex.columns) == ["toy-base", "toy-ft"] and list(ex.index) == [0, 2]
    assert ex.attrs["prompt_id"] == "p0"
    cell = ex.loc[2, "toy-ft"]
    assert cell.startswith("toy-ft beta") and "…" in cell and "tokens" in cell
    one = example_rollouts(rollouts, "alpha", prompt_id="p1", max_chars=1000)
    assert "⏎" in one.loc[0, "toy-base"] and "p1 r0" in one.loc[0, "toy-base"]
    with pytest.raises(ValueError, match="no rollouts"):
        example_rollouts(rollouts, "gamma")


def test_interval_side_and_bootstrap_table(rollouts):
    sides = interval_side([0.1, -2.0, -1.0, np.nan, 0.0], [0.5, -0.1, 1.0, 1.0, 0.0])
    assert list(sides) == ["> 0", "< 0", "includes 0", "undefined", "includes 0"]
    sides = interval_side([0.1, 0.1, np.nan], [0.5, 0.5, 1.0], n=[2, 5, 1], min_n=5)
    assert list(sides) == ["too few prompts", "> 0", "undefined"]
    assert format_interval(0.1234, -0.5, 1.0) == "+0.12 [-0.50, +1.00]"
    assert format_interval(12.0, 10.0, np.nan, fmt=".0f", unit=" %") == "12 % [10, ?]"
    assert format_interval(np.nan, 0.0, 1.0) == "undefined"
    boot = paired_bootstrap(prompt_metrics(rollouts), n_boot=40, seed=1)
    default = bootstrap_table(boot)
    few = default["n_prompts"] < MIN_BOOTSTRAP_PROMPTS
    assert few.any() and (default.loc[few, "change"] == "too few prompts").all()
    table = bootstrap_table(boot, metrics=["gen_ppl", "canopy_entropy"], min_prompts=1)
    assert set(table["metric"]) == {"gen_ppl", "canopy_entropy"}
    assert list(table["metric"][:2]) == ["gen_ppl", "gen_ppl"]
    for _, row in table.iterrows():
        want = ("> 0" if row["delta_lo"] > 0 else "< 0" if row["delta_hi"] < 0
                else "includes 0")
        assert row["change"] == want
        assert row["delta"] == pytest.approx(row["fine_tuned"] - row["base"])


def test_finetune_summary_and_config(finetune_report):
    s = finetune_summary(finetune_report)
    assert s.iloc[0]["change"] == pytest.approx(-1.0)
    assert s.iloc[1]["base"] == pytest.approx(np.exp(3.0))
    assert s.iloc[2]["fine_tuned"] == pytest.approx(0.75)
    assert "64 tokens" in s.index[2]
    c = finetune_config_table(finetune_report)
    assert c.loc["lora_r", "value"] == "16"
    assert c.loc["seconds: train", "value"] == "10.0"
    assert c.loc["stop_ids", "value"] == "[1, 106]"


# ------------------------------------------------------------- chapter 3 sentences


def test_chapter3_sentences_carry_the_numbers_of_their_tables(rollouts):
    from canopy.pooling import decomposition_identities, estimator_check, pool
    from canopy.report import (bootstrap_change_text, cov_share_text, estimator_check_text,
                               identities_text, pairs_text)

    prompts = prompt_metrics(rollouts)
    check = estimator_check(prompts)
    cells = check[check["task"] != "all"]
    text = estimator_check_text(check, 5)
    assert text.startswith(f"The pooled check passes in {int(cells['estimators_agree'].sum())} "
                           f"of {len(cells)} (model, task) cells")
    assert f"of {int(cells['n_prompts'].sum())} prompts" in text
    assert "M = 5 rollouts (4 degrees of freedom)" in text

    pooled = pool(prompts)
    text = cov_share_text(pooled)
    base_all = pooled[(pooled["model"] == "toy-base") & (pooled["task"] == "all")].iloc[0]
    assert f"`toy-base` {base_all['cov_share']:+.1%} ({base_all['cov_residual']:+.3f} nats" in text
    assert f"ranges from {pooled['cov_share'].min():+.1%} to {pooled['cov_share'].max():+.1%}" in text

    ids = decomposition_identities(pooled)
    assert identities_text(ids) == (
        f"Largest |identity_error|: {ids['identity_error'].abs().max():.1e}; largest "
        f"|split_error|: {ids['split_error'].abs().max():.1e} nats.")

    boot = paired_bootstrap(prompts, n_boot=30, seed=0)
    assert pairs_text(boot, {"toy-base": "toy-base", "toy-ft": "toy-ft", "solo": "solo-1"}) == (
        "Pairs compared: `toy-base` → `toy-ft`. Not paired: `solo`.")
    assert pairs_text(boot.iloc[:0], {"a": "a"}) == "Pairs compared: none. Not paired: `a`."

    table = bootstrap_table(boot)
    text = bootstrap_change_text(table, 0.95, 30)
    assert text.startswith("95% intervals from 30 resamples of the paired prompts.")
    ce = table[table["metric"] == "canopy_entropy"].set_index("task")
    for task, row in ce.iterrows():
        want = format_interval(row.pct_delta, row.pct_delta_lo, row.pct_delta_hi, "+.0f", " %")
        assert f"{task} ({int(row.n_prompts)} prompts): {want} — {row.change}" in text
    assert f"fewer than {MIN_BOOTSTRAP_PROMPTS} prompts" in text


# ------------------------------------------------------------- chapter 5 sentences


def _semantic_pooled():
    return pd.DataFrame({
        "model": ["a", "a", "b", "b"], "task": ["math", "all", "math", "all"],
        "n_prompts": [2, 3, 2, 3], "diversity": [.4, .5, .3, .25],
        "diversity_short": [.1, .2, .3, .4], "diversity_medium": [.5, np.nan, .6, np.nan],
        "diversity_long": [.8, .9, 1., 1.1],
        "length_diversity_pearson": [.1, -.2, np.nan, np.nan],
    })


def test_chapter5_sentences_carry_the_numbers_of_their_tables():
    from canopy.report import (clusters_text, diversity_extremes_text, length_diversity_text,
                               missing_buckets_text)

    pooled = _semantic_pooled()
    text = diversity_extremes_text(pooled)
    assert text.startswith("Over all tasks, `a` has the highest mean D (0.500) and `b` the "
                           "lowest (0.250). Each value is a mean over 3 prompts;")
    assert missing_buckets_text(pooled, 4).startswith(
        "**No value for the medium bucket(s):** with M = 4 rollouts")
    assert missing_buckets_text(pooled.fillna(0.5), 4) == ""
    text = length_diversity_text(pooled, "pearson", 4)
    assert text.startswith("Pooled over all tasks (pearson): `a` -0.200; `b` undefined.")
    assert "from only 4 rollouts per prompt" in text
    none = pooled.assign(length_diversity_pearson=np.nan)
    assert length_diversity_text(none, "pearson", 4).startswith(
        "No pooled ρ(N, d) is defined: with M = 4 rollouts")
    per_prompt = pd.DataFrame({"model": ["a", "a", "b"], "n_clusters": [1, 2, 4]})
    assert clusters_text(per_prompt, 4) == ("Mean number of meaning clusters per prompt (out "
                                            "of 4 rollouts): `a` 1.50, `b` 4.00.")
    with pytest.raises(ValueError, match="missing column"):
        diversity_extremes_text(pooled.drop(columns="n_prompts"))


# ------------------------------------------------------------- chapter 6 sentences


def test_chapter6_sentences_on_real_fits():
    from canopy.report import curvature_text, design_text, families_text, main_slope_text
    from canopy.simulation import simulate_panel
    from canopy.stats import curvature_check, interaction_regression, main_regression

    panel = simulate_panel(n_prompts=20, n_families=2, single_variant_families=1, seed=3)
    assert design_text(panel).startswith(
        f"{len(panel)} rows, 20 prompts, 2 tasks. Families with both a base and a fine-tuned "
        "model: `fam0`. Families with one variant only: `fam1` — they enter the main regression")
    main = main_regression(panel)
    r = main.coef("mean_entropy_rate")
    text = main_slope_text(main, 0.95)
    assert text.startswith(f"Slope of R̄: {r['estimate']:+.4f} per nat/token (SE {r['se']:.4f}, "
                           f"95 % CI [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]")
    excludes = r["ci_low"] > 0 or r["ci_high"] < 0
    assert ("The interval excludes 0." in text) == excludes
    inter = interaction_regression(panel)
    assert families_text(inter) == "Families in the fit: `fam0`; left out (one variant): `fam1`."
    curv = curvature_check(panel)
    text = curvature_text(curv)
    assert text.startswith(curv.summary() + ". ")
    assert ("Curvature is detectable" in text) == (curv.p_value < 0.05)


def test_chapter6_sentences_for_ratios_failed_fits_and_the_simulation():
    from types import SimpleNamespace

    from canopy.report import (beta_fit_text, coverage_text, main_slope_text, ratio_text,
                               simulation_design_text)
    from canopy.stats import SlopeRatio

    fit = SimpleNamespace(ratio=SlopeRatio(2.5, 1.2, 4.1, "bounded"), converged=True)
    assert ratio_text(fit, 0.95) == ("Slope ratio (β + η)/β = 2.5; 95 % Fieller confidence set "
                                     "bounded: [1.2, 4.1]. The paper's value of about 3 is "
                                     "inside this set.")
    rays = SimpleNamespace(ratio=SlopeRatio(9.0, -1.0, 5.0, "two rays", note="x"),
                           converged=False)
    text = ratio_text(rays, 0.9)
    assert "**unbounded**: (−∞, -1] ∪ [5, ∞), because β's 90 % interval contains 0" in text
    assert "outside this set." in text and "did not converge" in text
    assert ratio_text(SimpleNamespace(ratio=None, converged=True), 0.95) == ""
    unfitted = SimpleNamespace(fitted=False, table=pd.DataFrame(), converged=False)
    assert main_slope_text(unfitted, 0.95).startswith("The main regression could not be fitted")
    assert beta_fit_text(SimpleNamespace(table=pd.DataFrame({"a": [1]}), converged=True,
                                         n_obs=9)) == ""
    assert beta_fit_text(SimpleNamespace(table=pd.DataFrame(), converged=False, n_obs=9)
                         ).startswith("**The statsmodels beta regression was not fitted** on "
                                      "this panel (9 rows;")
    truth = {"beta": 0.08, "eta": 0.16, "ratio": 3.0, "tau": -0.1, "gamma": -5e-4}
    designs = {"1: like our panel": {"n_prompts": 8, "n_tasks": 2, "n_families": 1},
               "2: 4× the prompts, 2 families": {"n_prompts": 32, "n_tasks": 2, "n_families": 2}}
    assert simulation_design_text(truth, 40, designs) == (
        "True values: β = 0.08, η = 0.16, so (β+η)/β = 3; τ = -0.1, γ = -0.0005. 40 simulated "
        "panels per scenario; designs: scenario 1: 8 prompts, 2 tasks, 1 matched family; "
        "scenario 2: 32 prompts, 2 tasks, 2 matched families.")
    summary = pd.DataFrame({
        "coverage": [0.95, 0.9, 0.8], "coverage_se": [0.03, 0.04, 0.05],
        "median": [0.081, 0.17, 2.9], "truth": [0.08, 0.16, 3.0],
        "bounded_share": [1.0, 1.0, 0.55], "median_abs_error": [0.01, 0.02, 1.234],
        "coverage_check": ["nominal", "low", "low"]}, index=["beta", "eta", "ratio"])
    text = coverage_text({"1: like our panel": summary}, 0.95)
    assert text.startswith(
        "- **Scenario 1: like our panel.** Coverage of the 95 % intervals: β 95.0% (± 3.0%), "
        "η 90.0% (± 4.0%), slope ratio 80.0%. Median estimates β 0.081 and η 0.170 against "
        "the truth 0.080 and 0.160. The Fieller set of the ratio was bounded in 55% of the "
        "panels; the typical (median) error of the ratio estimate was 1.23. Coverage of β is "
        "consistent with the nominal level; of η, below the nominal level (intervals too "
        "narrow).\n\nCoverage within about two binomial standard errors")


def test_claim_verdict_and_prompts_to_resolve():
    from canopy.report import claim_verdict, prompts_to_resolve

    assert claim_verdict(-2.0, -0.5, "< 0") == "supported"
    assert claim_verdict(0.5, 2.0, "< 0") == "contradicted"
    assert claim_verdict(-1.0, 1.0, "> 0") == "unresolved at this power"
    assert claim_verdict(np.nan, 1.0, "> 0") == "undefined"
    with pytest.raises(ValueError, match="expected"):
        claim_verdict(0, 1, "positive")
    # estimate 0.1, interval [-0.1, 0.3] from 20 prompts: w = 0.2 = 2·|est| → 4 × 20
    assert prompts_to_resolve(0.1, -0.1, 0.3, 20) == 80
    assert prompts_to_resolve(-0.1, -0.25, 0.2, 10) == np.ceil(10 * (0.3 / 0.1) ** 2)
    assert prompts_to_resolve(0.5, 0.1, 0.9, 12) == 12          # already resolved
    assert np.isnan(prompts_to_resolve(0.0, -1, 1, 12))
    # the rule itself: an interval narrowed by sqrt(P/P') just excludes 0
    est, lo, n = 0.3, -0.6, 7
    need = prompts_to_resolve(est, lo, 1.0, n)
    assert est - (est - lo) * np.sqrt(n / need) >= 0 > est - (est - lo) * np.sqrt(n / (need - 1))


def test_ratio_verdict():
    from canopy.report import ratio_verdict
    from canopy.stats import SlopeRatio

    assert ratio_verdict(SlopeRatio(2.8, 1.5, 4.0, "bounded")) == "supported"
    assert ratio_verdict(SlopeRatio(2.8, 0.5, 4.0, "bounded")) == "unresolved at this power"
    assert ratio_verdict(SlopeRatio(1.1, 0.9, 1.4, "bounded")) == "contradicted"
    assert ratio_verdict(SlopeRatio(5.0, -1.0, 2.0, "two rays")) == "unresolved at this power"
    assert ratio_verdict(None) == "undefined"


def test_paired_claim_and_findings_table(rollouts):
    from canopy.report import findings_table, paired_claim

    prompts = prompt_metrics(rollouts)
    table = bootstrap_table(paired_bootstrap(prompts, n_boot=200, seed=1))
    row = table[(table["metric"] == "canopy_entropy") & (table["task"] == "all")].iloc[0]
    c = paired_claim(table, "canopy_entropy", "< 0")
    assert (c["estimate"], c["lo"], c["hi"]) == (row["delta"], row["delta_lo"], row["delta_hi"])
    assert c["verdict"] == {"< 0": "supported", "> 0": "contradicted"}.get(
        row["change"], "unresolved at this power")
    assert c["interval"] == format_interval(row["delta"], row["delta_lo"], row["delta_hi"], "+.3f")
    assert paired_claim(table, "canopy_entropy", "< 0", task="no such task") is None
    out = findings_table({"lower CE*": ("Δ CE*", c), "missing": ("x", None)})
    assert out.loc[1, "verdict"] == "undefined" and out.loc[0, "estimate"] == c["interval"]
    assert out.loc[0, "prompts"] == str(c["n_prompts"])
