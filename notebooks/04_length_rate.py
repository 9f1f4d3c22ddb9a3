# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Length and entropy rate

# %% [markdown]
# :::{admonition} What this chapter finds
# :class: tip
#
# - Pooled within-prompt Pearson $\rho(N, r)$ over all tasks ranges from {glue:text}`ch4_rho_min:+.3f` ({glue:text}`ch4_rho_min_model`) to {glue:text}`ch4_rho_max:+.3f` ({glue:text}`ch4_rho_max_model`).
# - Fine-tuned − base difference of $\rho(N, r)$ over all tasks: {glue:text}`ch4_delta` — the paper's "fine-tuning strengthens $\rho(N, r)$" is **{glue:text}`ch4_verdict`** here.
# :::

# %% [markdown]
# **Question.** Within the rollouts of one prompt, do the longer ones carry more entropy
# per token, or less? The correlation $\rho(N, r)$ between length $N_i$ and entropy rate
# $r_i = H_i/N_i$ is the normalised version of the covariance term of chapter 3
# ($\operatorname{Cov}(N, r) = \rho\,\sigma_N\sigma_r$). Cheng, Tian & Xu (2026, arXiv
# 2605.30844) find it more positive for fine-tuned models than for their bases, across
# tasks and model families, and read that as fine-tuned models using length to convey
# information. Here we measure it on our small models, look at the rollouts behind it,
# and follow entropy and stopping token by token.

# %% tags=["parameters"]
profile = "default"        # a profile of the experiment file: default, quick, ...
experiment_file = None     # None: data/experiments/default.yaml
models = None              # None: the experiment's models; or a list of names/paths
resample = False           # True: sample even when the store holds a model in another configuration
n_boot = 2000              # bootstrap resamples of the prompts
seed = 0                   # bootstrap seed
confidence = 0.95          # level of the bootstrap percentile intervals
profile_task = "all"       # task of the per-position charts ("all" pools every task)
min_active = 5             # hide positions with fewer active rollouts than this

# %%
import pandas as pd
from IPython.display import Markdown, display

from canopy.book import rerun_note
from canopy.display import enable_reader_tables, glue_values
from canopy import charts, entropy, pooling, report
from canopy.experiment import load_experiment

enable_reader_tables()  # tables in the book's symbols and units (book/notation.md)

experiment = load_experiment(experiment_file, profile, overrides={"models": models})
rollouts = experiment.summaries(progress=False, resample=resample,
                                 text=False)  # one row per rollout, texts left out
prompts = entropy.prompt_metrics(rollouts)
correlations = ["length_rate_pearson", "length_rate_spearman", "length_rate_kendall"]

# %% tags=["remove-input"]
display(Markdown(
    f"Measured: {', '.join(experiment.models)}; "
    f"{prompts.groupby(['task', 'prompt_id']).ngroups} prompts, "
    f"M = {experiment.sampling.rollouts} rollouts per prompt, "
    f"T_max = {experiment.sampling.max_new_tokens} tokens."))

# %% [markdown]
# ## $\rho(N, r)$ by model and task
#
# Correlations are computed *within* each prompt, then pooled over prompts with prompt
# effects removed ({ref}`Method §4 <method-s4>`): Pearson and Spearman through Fisher's $z$ with weights
# $M_p - 3$, Kendall's $\tau_b$ with weights $M_p(M_p-1)/2$. A prompt whose lengths are
# all equal (for instance, every rollout truncated at $T_{\max}$) has no defined
# correlation and drops out. Intervals: percentile bootstrap over prompts, one model at a
# time (`canopy.pooling.pooled_bootstrap`), so they also cover the model without a base.

# %%
rho = pooling.pooled_bootstrap(prompts, metrics=correlations, n_boot=n_boot, seed=seed,
                               confidence=confidence)
rho["side"] = report.interval_side(rho["lo"], rho["hi"], rho["n_defined"])
charts.interval_chart(rho, title=f"Pooled ρ(N, r) with {confidence:.0%} bootstrap intervals")

# %%
rho

# %%
pear = rho[(rho["metric"] == "length_rate_pearson") & (rho["task"] == "all")].set_index("model")

# %% tags=["remove-input"]
display(Markdown("Pooled Pearson $\\rho(N, r)$ over all tasks: " + "; ".join(
    f"`{m}` {report.format_interval(row.estimate, row.lo, row.hi)} ({row.n_defined} of "
    f"{row.n_prompts} prompts with a defined correlation; {row.side})"
    for m, row in pear.iterrows()) + ". 'includes 0' means the sign is not resolved with "
    f"these prompts; 'too few prompts' that fewer than {report.MIN_BOOTSTRAP_PROMPTS} "
    "prompts have a defined correlation (a prompt drops out when all its rollouts have "
    "the same length, typically all truncated, or when M ≤ 3 for Pearson and Spearman), so "
    "no interval is meaningful; 'undefined' that none has."))

# %% [markdown]
# ### Paired: does fine-tuning move $\rho(N, r)$?
#
# For the family with both variants, the paired bootstrap (same prompts resampled for
# both) gives the fine-tuned − base difference of each pooled correlation.

# %%
boot = pooling.paired_bootstrap(prompts, n_boot=n_boot, seed=seed, confidence=confidence,
                                metrics=correlations)
paired = report.bootstrap_table(boot, correlations) if len(boot) else boot
paired.drop(columns=[c for c in paired.columns if c.startswith("pct_")])

# %% tags=["remove-input"]
if len(paired):
    p = paired[paired["metric"] == "length_rate_pearson"].set_index("task")
    display(Markdown(
        "Fine-tuned − base, pooled Pearson: " + "; ".join(
            f"{t}: {report.format_interval(row.delta, row.delta_lo, row.delta_hi)} "
            f"({row.change})" for t, row in p.iterrows())
        + ". The paper's finding corresponds to a difference above 0; whether these small "
        "models reproduce it is read off the intervals, and an interval that includes 0 "
        "neither confirms nor contradicts it."))
else:
    display(Markdown("No model family has both a base and a fine-tuned variant among the "
                     "models of this run, so there is no paired comparison."))

# %% [markdown]
# ## The rollouts behind the correlation
#
# One point per rollout, one panel per model; open circles are truncated rollouts
# (stuck at $N = T_{\max}$). Hover for the prompt. The first chart shows raw values; the
# raw cloud mixes prompts (a prompt with long answers shifts all its points right), so
# the second subtracts each prompt's means: what remains is the within-prompt
# co-movement that the pooled correlations measure.

# %%
prompt_text = {(p.task, p.prompt_id): p.text for p in experiment.prompts()}
charts.rate_length_scatter(charts.rate_length_data(rollouts, prompt_text))

# %%
charts.rate_length_scatter(charts.rate_length_data(rollouts, prompt_text, centre=True),
                           centred=True,
                           title="Within prompts: deviations from each prompt's E[N] and E[r]")

# %% [markdown]
# ## Entropy along the rollout
#
# Where along a rollout is the entropy spent? For each token position $t$ we average,
# over the rollouts still active at $t$ ($N_i \ge t$), the running entropy rate
# $\frac1t\sum_{s\le t} h_s$ — at $t = N_i$ it equals the rollout's $r_i$ — and the step
# entropy $h_t$ itself. The lower panel counts the active rollouts: as short rollouts
# finish, later positions describe only the long ones, so a trend along $t$ mixes what
# happens *within* rollouts with *which* rollouts are still running (a selection
# effect that is itself the length–rate co-movement seen from another side). Positions
# with fewer than `min_active` active rollouts are hidden.

# %%
profile_table = experiment.position_profile(progress=False, resample=resample)  # streamed
charts.position_chart(profile_table, "running_entropy_rate", task=profile_task,
                      min_active=min_active)

# %%
charts.position_chart(profile_table, "mean_step_entropy", task=profile_task,
                      min_active=min_active)

# %% [markdown]
# The sampling distribution $q_t$ differs from the raw model distribution when top-k or
# top-p cut its tail; the raw entropy $h_t^{\mathrm{raw}}$ (temperature 1, no truncation)
# is recorded alongside. Their gap, by position, is what the decoding settings remove.

# %%
charts.position_chart(profile_table, "mean_step_entropy_raw", task=profile_task,
                      min_active=min_active)

# %% [markdown]
# ## When do rollouts stop?
#
# The line is the raw model's probability of emitting a stop token at $t$,
# $\exp(\log \sum_{v \in \text{stop}} p_t(v))$, averaged over the active rollouts; the
# diamonds are the fraction of active rollouts that actually stopped at $t$ (drawn
# where it is above 0). The two need not match exactly: sampling uses $q_t$, not the raw
# distribution, and each diamond rests on few rollouts.

# %%
charts.stop_probability_chart(profile_table, task=profile_task, min_active=min_active)

# %%
stops = profile_table[profile_table["task"] == profile_task]
first = stops.groupby("model").first()
total = stops.groupby("model")[["n_stopped"]].sum()
started = first["n_active"]

# %% tags=["remove-input"]
display(Markdown("Rollouts that emitted a stop token within $T_{\\max}$: " + "; ".join(
    f"`{m}` {int(total.loc[m, 'n_stopped'])} of {int(started[m])}"
    for m in started.index) + ". A model whose stop probability stays near 0 until "
    "$T_{\\max}$ has its length set by the limit, and its $\\rho(N, r)$ rests on the few "
    "rollouts that stopped early."))

# %% [markdown]
# ## What this does and does not show
#
# - $\rho(N, r)$ is measured within prompts on $M$ rollouts each, then pooled; with small
#   $M$ each per-prompt correlation is very noisy and Fisher weights $M-3$ are small, so
#   the pooled value rests on few effective observations. The intervals say how far.
# - Truncation censors length: rollouts cut at $T_{\max}$ all share one $N$, which
#   deflates the variance of $N$ and can hide or fake co-movement.
# - Base and fine-tuned models are prompted differently (raw text vs chat template), as
#   in the paper; part of any difference is the format of the answer.
# - The paper's result concerns models of billions of parameters and a large prompt
#   set; 135M–270M models and a few dozen prompts can illustrate the measurement and
#   show whether the same sign appears here, not establish or refute the finding.

# %% [markdown]
# ## Rerun this chapter

# %% tags=["remove-input"]
rerun_note("04_length_rate", profile=profile, experiment_file=experiment_file, models=models, n_boot=n_boot, seed=seed, confidence=confidence, profile_task=profile_task, min_active=min_active)

# %% tags=["remove-cell"]
# Numbers for the box at the top of the page (MyST-NB glue).
rho_all = pear["estimate"]
rho_claim = report.paired_claim(paired, "length_rate_pearson", "> 0") if len(paired) else None
glue_values(ch4_rho_min=rho_all.min(), ch4_rho_min_model=rho_all.idxmin(),
            ch4_rho_max=rho_all.max(), ch4_rho_max_model=rho_all.idxmax(),
            ch4_delta=rho_claim["interval"] if rho_claim else "not measured (no matched pair)",
            ch4_verdict=rho_claim["verdict"] if rho_claim else "undefined")
