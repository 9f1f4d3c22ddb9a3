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
# # Canopy Entropy and its decomposition

# %% [markdown]
# :::{admonition} What this chapter finds
# :class: tip
#
# - Over all tasks, $CE^*$ ranges from {glue:text}`ch3_ce_min:.2f` nats ({glue:text}`ch3_ce_min_model`) to {glue:text}`ch3_ce_max:.2f` nats ({glue:text}`ch3_ce_max_model`); the covariance term's share of it lies between {glue:text}`ch3_cov_min:.1%` and {glue:text}`ch3_cov_max:.1%` across (model, task) cells.
# - Fine-tuned − base, percent change of $CE^*$ over all tasks: {glue:text}`ch3_pct` — the paper's "fine-tuning lowers $CE^*$" is **{glue:text}`ch3_verdict`** here.
# :::

# %% [markdown]
# **Question.** How large is the canopy of each model — the effective number of
# complete rollouts it can produce for a prompt — and is that size carried by *length*
# (many tokens at a typical rate) or by the *co-movement* of length and entropy rate?
# And does fine-tuning change it, beyond what the choice of prompts could explain?
#
# For one prompt, with $M$ rollouts, rollout $i$ of length $N_i$ and summed step entropy
# $H_i = \sum_{t \le N_i} h_t$ ({ref}`Method §2–3 <method-s2>`):
#
# $$\widehat{CE}^* = \frac1M \sum_i H_i, \qquad r_i = H_i / N_i, \qquad
#   \widehat{CE}^* = E[N]\,E[r] + \operatorname{Cov}(N, r)$$
#
# with the population covariance (÷ $M$), an exact identity of the sample. Over prompts
# ({ref}`Method §4 <method-s4>`), linear quantities are unweighted means and the pooled residual
# $C = CE^* - E[N]E[r]$ splits into a within-prompt and a between-prompt part.

# %% tags=["parameters"]
profile = "default"        # a profile of the experiment file: default, quick, ...
experiment_file = None     # None: data/experiments/default.yaml
models = None              # None: the experiment's models; or a list of names/paths
resample = False           # True: sample even when the store holds a model in another configuration
n_boot = 2000              # bootstrap resamples of the prompts
seed = 0                   # bootstrap seed
confidence = 0.95          # level of the bootstrap percentile intervals

# %%
from IPython.display import Markdown, display

from canopy.book import rerun_note
from canopy.display import enable_reader_tables, glue_values
from canopy import charts, entropy, findings, pairs, pooling, report
from canopy.experiment import load_experiment

enable_reader_tables()  # tables in the book's symbols and units (book/notation.md)

experiment = load_experiment(experiment_file, profile, overrides={"models": models})
rollouts = experiment.summaries(progress=False, resample=resample,
                                 text=False)  # one row per rollout, texts left out
prompts = entropy.prompt_metrics(rollouts)       # one row per (model, task, prompt)
pooled = pooling.pool(prompts)                   # one row per (model, task), task "all" too
keys = ["model", "task"]

# %% tags=["remove-input"]
display(Markdown(
    f"Measured: {len(experiment.models)} models ({', '.join(experiment.models)}), "
    f"{prompts.groupby(['task', 'prompt_id']).ngroups} prompts in "
    f"{len(experiment.tasks)} tasks, M = {experiment.sampling.rollouts} rollouts per prompt, "
    f"at most {experiment.sampling.max_new_tokens} new tokens, temperature "
    f"{experiment.sampling.temperature}, top-k {experiment.sampling.top_k}, "
    f"top-p {experiment.sampling.top_p}. All entropies in nats."))

# %% [markdown]
# ## Two estimators of $CE^*$ and their agreement
#
# $CE^* = H(N, Y_{1:N} \mid x)$ has two unbiased Monte-Carlo estimators: the mean summed
# step entropy $\widehat{CE}^*_H$ (the paper's) and the mean surprisal
# $\widehat{CE}^*_S = \operatorname{mean}_i(-\sum_t \log q_t(y_t))$. They estimate the
# same number, so their paired difference $S_i - H_i$ must average to zero within its
# standard error. The check passes when $|\overline{S-H}| \le 4\,\mathrm{se}$; the table
# applies it to each prompt (`n_prompts_agree`) and to the pooled mean. The standard
# errors here are Monte-Carlo errors *given these prompts* (rollout noise only).

# %%
check = pooling.estimator_check(prompts)
check[keys + ["n_prompts", "canopy_entropy", "canopy_entropy_se", "canopy_entropy_surprisal",
              "canopy_entropy_surprisal_se", "estimator_gap", "estimator_gap_se", "gap_z",
              "estimators_agree", "n_prompts_agree"]]

# %% tags=["remove-input"]
display(Markdown(report.estimator_check_text(check, experiment.sampling.rollouts)))

# %% [markdown]
# ## $CE^*$, GenPPL and branching factor per model and task
#
# $\mathrm{GenPPL} = \exp(CE^*/E[N])$ is the per-token perplexity of the whole canopy;
# $\mathrm{BF} = \exp(E[r])$ the exponentiated mean entropy rate. `canopy_entropy_se`
# here is the *prompt-level* standard error (sd over prompts / $\sqrt P$): how much the
# pooled value would move with other prompts of the same kind — with a handful of
# prompts per task it is the dominant uncertainty. `truncation_rate` is repeated because
# a truncated rollout makes $CE^*$ a lower bound (chapter 2), and rep-4 (the share of
# repeated 4-grams, chapter 2) because a model caught in loops has a low entropy rate
# for a reason other than confidence.

# %%
pooled[keys + [c for c in ("n_prompts", "canopy_entropy", "canopy_entropy_se", "mean_length",
                           "mean_entropy_rate", "gen_ppl", "branching_factor",
                           "truncation_rate", "repetition_rate") if c in pooled]]

# %% [markdown]
# ## The decomposition: length term and covariance term
#
# $CE^* = E[N]\,E[r] + C$. If entropy rate did not depend on length, $C$ would be 0
# and $CE^*$ would be "length times rate". A positive $C$ means that rollouts which run
# longer also carry more entropy per token; a negative $C$ that long rollouts are the
# low-entropy ones (repetitive continuations, for instance). The bars show the two
# shares of $CE^*$ (they sum to 100 %; a negative covariance share is drawn left of 0).

# %%
charts.decomposition_share_chart(pooled)

# %%
pooled[keys + ["canopy_entropy", "length_term", "cov_residual", "length_share",
               "cov_share"]]

# %% tags=["remove-input"]
display(Markdown(report.cov_share_text(pooled)))

# %% [markdown]
# ## Within prompts or between prompts?
#
# The pooled residual mixes two things (law of total covariance, {ref}`Method §4 <method-s4>`):
#
# $$C = \underbrace{\operatorname{mean}_p \operatorname{Cov}_p(N, r)}_{\text{within prompts}}
#   + \underbrace{\operatorname{Cov}_{\text{prompts}}(E_p[N], E_p[r])}_{\text{between prompts}}$$
#
# The within part is the co-movement of length and rate among rollouts of the *same*
# prompt — a property of the model's canopy. The between part says that prompts which
# get long answers also get high-rate (or low-rate) answers — a property of the prompt
# set as much as of the model. The paper's pooled decomposition reports only their sum.

# %%
charts.covariance_split_chart(pooled)

# %% [markdown]
# ## Two identities, checked on the numbers
#
# The split above is exact: `split_error` $= CE^* - (E[N]E[r] + \text{within} +
# \text{between})$ is 0 up to floating point. And since
# $\log\mathrm{GenPPL} = CE^*/E[N]$ and $\log\mathrm{BF} = E[r]$,
#
# $$\log \mathrm{GenPPL} - \log \mathrm{BF} = \frac{CE^* - E[N]E[r]}{E[N]} = \frac{C}{E[N]}:$$
#
# GenPPL exceeds the branching factor exactly when length and rate co-move positively.

# %%
identities = pooling.decomposition_identities(pooled)
display(identities[keys + ["log_genppl_minus_log_bf", "cov_over_length", "identity_error",
                           "split_error"]])

# %% tags=["remove-input"]
display(Markdown(report.identities_text(identities)))

# %% [markdown]
# ## Base vs fine-tuned: the paired bootstrap
#
# Only families with both a base and a fine-tuned model are compared (which ones, in
# this run, is said below the next cell). The same prompt indices are
# resampled for both variants, so the interval reflects how the *difference* varies
# with the choice of prompts. `change` says whether the interval for the difference
# lies above 0, below 0, or includes 0. Percent changes are given for positive
# quantities.

# %%
boot = pooling.paired_bootstrap(prompts, n_boot=n_boot, seed=seed, confidence=confidence)

# %% tags=["remove-input"]
display(Markdown(report.pairs_text(
    boot, {spec.name: spec.name for spec in experiment.specs})))

# %%
shown = ["canopy_entropy", "mean_length", "mean_entropy_rate", "gen_ppl", "branching_factor",
         "cov_residual", "within_prompt_cov", "between_prompt_cov", "cov_share",
         "repetition_rate"]
table = report.bootstrap_table(boot, shown) if len(boot) else boot
table

# %%
if len(boot):
    display(charts.bootstrap_delta_chart(
        boot, ["canopy_entropy", "mean_length", "mean_entropy_rate", "gen_ppl",
               "branching_factor"]))
    display(Markdown(report.bootstrap_change_text(table, confidence, n_boot)))
    claim = report.paired_claim(table, "canopy_entropy", "< 0", percent=True, fmt="+.0f")
    why = findings.degeneration_text({"canopy_entropy": claim}, prompts)
    if why:
        display(Markdown(why))
else:
    display(Markdown("No model family has both a base and a fine-tuned variant among the "
                     "models of this run, so there is nothing to pair."))

# %% [markdown]
# ## What this does and does not show
#
# Cheng, Tian & Xu (2026, arXiv 2605.30844) report, across tasks and model families,
# that fine-tuned models show a stronger positive length–rate correlation even when
# total entropy decreases, and read $CE^*$'s decomposition as a measure of how
# efficiently length conveys information. The numbers above are one small replication
# of the *measurement*, not of that finding:

# %% tags=["remove-input"]
origin = pairs.fine_tune_origin_text(prompts)
display(Markdown(
    (f"- {origin[0].upper() + origin[1:]};\n" if origin else "")
    + "- with a handful of prompts per task and $M$ rollouts per prompt, the prompt-level "
    "uncertainty is large; a difference whose interval includes 0 is *not resolved*, not "
    "\"no effect\";\n"
    "- where truncation is frequent, $CE^*$ and $E[N]$ are lower bounds set partly by "
    "$T_{\\max}$, and a base-vs-fine-tuned difference in $CE^*$ can largely be a "
    "difference in stopping behaviour;\n"
    "- where one model repeats itself (rep-4, chapter 2), its low entropy rate is that of "
    "a loop, and a difference in $CE^*$ can largely be a difference in degeneration.\n\n"
    "The length–rate co-movement itself — its correlation, not only the covariance in "
    "nats — is the subject of the next chapter."))

# %% [markdown]
# ## Rerun this chapter

# %% tags=["remove-input"]
rerun_note("03_canopy_entropy", profile=profile, experiment_file=experiment_file, models=models, n_boot=n_boot, seed=seed, confidence=confidence)

# %% tags=["remove-cell"]
# Numbers for the box at the top of the page (MyST-NB glue).
allrows = pooled[pooled["task"] == "all"].set_index("model")["canopy_entropy"]
ce_claim = report.paired_claim(table, "canopy_entropy", "< 0", percent=True, fmt="+.0f") \
    if len(boot) else None
glue_values(ch3_ce_min=allrows.min(), ch3_ce_min_model=allrows.idxmin(),
            ch3_ce_max=allrows.max(), ch3_ce_max_model=allrows.idxmax(),
            ch3_cov_min=pooled["cov_share"].min(), ch3_cov_max=pooled["cov_share"].max(),
            ch3_pct=ce_claim["interval"] if ce_claim else "not measured (no matched pair)",
            ch3_verdict=ce_claim["verdict"] if ce_claim else "undefined")
