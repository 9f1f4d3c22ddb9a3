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
# # Confound-controlled regressions

# %% [markdown]
# :::{admonition} What this chapter finds
# :class: tip
#
# - Slope of $D$ on $\bar R$ with length, task and family held fixed: {glue:text}`ch6_slope` per nat/token ({glue:text}`ch6_pct`% interval).
# - Slope ratio $(\beta+\eta)/\beta$ = {glue:text}`ch6_ratio`, Fieller set {glue:text}`ch6_ratio_set`: the paper's "the slope nearly triples under fine-tuning" is **{glue:text}`ch6_verdict`** here.
# :::

# %% [markdown]
# Chapter 5 put semantic diversity $D$ next to the entropy rate $\bar R$. But prompts
# differ, tasks differ, models write texts of different lengths, and length alone changes
# both quantities. **Once length, task, model family and prompt are held fixed, does a
# higher entropy rate still go with more diverse meanings — and is that link stronger
# after fine-tuning?** Cheng, Tian & Xu (2026) report that fine-tuning "nearly triples" the
# strength of this link (arXiv 2605.30844). This chapter fits their regressions to our data, checks them for
# curvature and for the bounded outcome, and then checks the estimators themselves on
# simulated data where the answer is known.

# %% tags=["parameters"]
profile = "default"            # a profile of the experiment file: default, quick, ...
experiment_file = None         # None: data/experiments/default.yaml
models = None                  # None: the experiment's models; or a list of registry names
resample = False               # True: sample even when the store holds a model in another configuration
embedding_model = "all-MiniLM-L6-v2"   # sentence-transformers name, id or local path
level = 0.95                   # confidence level of every interval
run_r = True                   # also fit the paper's glmmTMB model when R and glmmTMB exist
n_sim_seeds = None             # simulated panels per scenario; None: the experiment's simulation_seeds
sim_scale_up = 4               # second scenario: this many times more prompts (0: skip it)
sim_first_seed = 0             # seed of the first simulated panel

# %% tags=["remove-stderr"]
import pandas as pd
from IPython.display import Markdown, display

from canopy.book import rerun_note
from canopy.display import enable_reader_tables, glue_values
from canopy import beta, charts, pairs, report, semantic, simulation, stats
from canopy.experiment import load_experiment
from canopy.tables import matched_families

enable_reader_tables()  # tables in the book's symbols and units (book/notation.md)

pd.set_option("display.precision", 4)
pct = int(round(100 * level))

experiment = load_experiment(experiment_file, profile, overrides={"models": models})
rollouts = experiment.summaries(progress=False, resample=resample)  # one row per rollout
embeddings = semantic.embed_rollouts(rollouts, embedding_model, progress=False)
panel = stats.build_panel(rollouts, embeddings)

# %% tags=["remove-stderr", "remove-input"]
display(Markdown(
    f"**Parameters.** profile `{profile}`, experiment `{experiment.name}`, embedding model "
    f"`{embedding_model}`, level {level}."))

# %% [markdown]
# ## The panel
#
# One row per (task, prompt, model): the prompt's semantic diversity $D$ (chapter 5), its
# mean entropy rate $\bar R = \mathbb{E}[r]$ and mean length $\bar N = \mathbb{E}[N]$
# (chapter 3), the indicator $FT = 1$ for a fine-tuned variant, the model family and the
# prompt key `prompt_uid` = task/prompt.

# %%
display(panel[["model", "family", "variant", "task", "prompt_uid", "fine_tuned", "diversity",
               "mean_entropy_rate", "mean_length"]].head(8))
design = panel.groupby(["family", "variant"]).agg(
    model=("model", "first"), prompts=("prompt_uid", "nunique"),
    mean_D=("diversity", "mean"), mean_rate=("mean_entropy_rate", "mean"),
    mean_length=("mean_length", "mean"))
display(design)
matched = matched_families(panel)[0]

# %% tags=["remove-input"]
display(Markdown(report.design_text(panel)))

# %%
display(charts.rate_diversity_chart(panel, color="model",
                                    title="The raw relation: D against R̄, one point per prompt"))

# %% [markdown]
# ## Main regression: does entropy rate predict diversity beyond length?
#
# A linear mixed model with a random intercept per prompt (REML):
#
# $$D = \alpha + \beta_R\,\bar R + \gamma\,\bar N + \lambda_{\text{task}}
#   + \delta_{\text{family} \times \text{variant}} + u_{\text{prompt}} + \varepsilon,
#   \qquad u \sim \mathcal N(0, \sigma_u^2),\ \varepsilon \sim \mathcal N(0, \sigma^2).$$
#
# The prompt intercept $u$ absorbs everything a prompt does to all models alike (an
# open-ended story prompt invites more diverse answers than a sum), so $\beta_R$ is
# estimated from differences *within* prompts and across prompts net of that shared part.
# Every family enters, also one with a single variant. The fits use statsmodels'
# `MixedLM`. When the prompt variance's best value is its boundary, $\sigma_u^2 = 0$,
# statsmodels' gradient optimisers can stop without converging; the fit is then repeated
# with Powell's derivative-free method, and the notes say so.

# %%
main = stats.main_regression(panel, level=level)
display(main)

# %% tags=["remove-input"]
display(Markdown(report.main_slope_text(main, level)))

# %% [markdown]
# ## Interaction regression: is the link stronger after fine-tuning?
#
# Only matched families (both variants) enter:
#
# $$D = \alpha + \beta\,\bar R + \tau\,FT + \eta\,\bar R\cdot FT + \gamma\,\bar N
#   + \lambda_{\text{task}} + \delta_{\text{family}} + u_{\text{prompt}} + \varepsilon .$$
#
# The base model's slope is $\beta$, the fine-tuned model's slope is $\beta + \eta$, and
# the paper's "fine-tuning nearly triples the correlation strength" reads as
# $(\beta + \eta)/\beta \approx 3$. The ratio's confidence set is Fieller's: the set of
# values $\theta$ for which $(\beta+\eta) - \theta\beta$ is not significantly different
# from 0. It is a finite interval only when $\beta$ itself is clearly away from 0; when
# $\beta$'s interval contains 0, the set is unbounded (two rays or the whole line) — the
# data then cannot say how many times larger one slope is than the other.

# %%
inter = stats.interaction_regression(panel, level=level)
display(inter)

# %%
if inter.fitted:
    rows = [t for t in ("mean_entropy_rate", "fine_tuned", "mean_entropy_rate:fine_tuned",
                        "mean_length") if t in inter.table.index]
    display(inter.table.loc[rows, ["symbol", "estimate", "se", "p", "ci_low", "ci_high"]])
    if inter.ratio is not None:
        display(Markdown(report.ratio_text(inter, level)))
    display(Markdown(report.families_text(inter)))
else:
    display(Markdown("The interaction regression could not be fitted on this panel (see the "
                     "notes above): it needs at least one family with both variants."))

# %%
if matched:
    display(charts.rate_diversity_chart(
        panel[panel["family"].isin(matched)], color="variant",
        title="Matched family: D against R̄ by variant (raw least-squares lines, no controls)"))

# %%
fits = {"main": main, "interaction": inter}
coef = charts.coefficient_data(fits, terms=["mean_entropy_rate", "mean_entropy_rate:fine_tuned",
                                            "fine_tuned"])
if len(coef):
    display(charts.coefficient_chart(coef, f"Slopes and the fine-tuning shift, {pct} % CIs"))

# %% [markdown]
# **How to read this honestly.** With one matched family, the interaction rests on
# comparing two models on the same few dozen prompts (a handful in the quick profile).
# $\eta$ is then a difference of two slopes, each estimated from prompt-to-prompt variation
# in $\bar R$, which is small within a model; its standard error is correspondingly large.
# Whatever the point estimate, a wide interval for $\eta$ or an unbounded set for the ratio
# means the data are *compatible* with a tripling and with no change at all. The paper's
# claim rests on many more prompts and several model families; this chapter shows what our
# one small pair gives, not a replication or a refutation.

# %% [markdown]
# ## Robustness: curvature
#
# If the relation between $D$ and $\bar R$ were curved, a straight-line fit could
# manufacture an interaction (the two variants sit at different ranges of $\bar R$).
# Centre the rate, $R_c = \bar R - \operatorname{mean}(\bar R)$, and compare by a
# likelihood-ratio test (ML fits, so the likelihoods are comparable; 2 degrees of freedom)
#
# $$\text{linear: } D \sim R_c \times FT + \bar N + \dots \qquad
#   \text{quadratic: } \dots + R_c^2 + R_c^2 \cdot FT .$$
#
# The table shows how far $\beta$ and $\eta$ move when the quadratic terms are added, in
# units of their linear-fit standard error.

# %%
curv = stats.curvature_check(panel, level=level)
display(curv)

# %% tags=["remove-input"]
display(Markdown(report.curvature_text(curv)))

# %% [markdown]
# ## Robustness: a bounded outcome (beta regression)
#
# $D$ lives (essentially) in $(0, 1)$, where a linear model can predict impossible values
# and assumes equal variance everywhere. A beta regression models $D \sim \text{Beta}$ with
# mean $\mu$ and precision $\phi$:
#
# $$\operatorname{logit}\mu = \beta\,R_{sc} + \eta\,R_{sc}\cdot FT + \tau\,FT
#   + \operatorname{ns}(1/\bar N)\times FT + \lambda_{\text{task}} + \dots, \qquad
#   \log\phi = FT\times\text{task} + \operatorname{ns}(1/\bar N) + R_{sc}\times FT + \dots$$
#
# with $R_{sc}$ and $1/\bar N$ standardised and $\operatorname{ns}$ a natural cubic spline
# (the paper's specification). Here $\beta$ and $\eta$ are on the logit scale per standard
# deviation of $\bar R$, so only their signs and significance compare with the linear fit.
# statsmodels has no random effects for this model: the Python fit uses prompt-clustered
# standard errors instead (the differences are listed under the table).

# %%
beta_fit = beta.beta_regression(panel, level=level)
display(beta_fit)

# %% tags=["remove-input"]
if report.beta_fit_text(beta_fit):
    display(Markdown(report.beta_fit_text(beta_fit)))

# %%
r_ok, r_why = beta.r_glmmtmb_available()
if run_r and r_ok:
    glmm = beta.fit_beta_glmm_r(panel, level=level)
    display(Markdown("The paper's specification, fitted in R with glmmTMB (a random "
                     "intercept for prompt, and for family when the panel has several "
                     "matched families; terms the design cannot carry are listed in the "
                     "notes):"))
    display(glmm)
    if glmm.available and not glmm.converged:
        display(Markdown("**glmmTMB did not converge cleanly** (see its notes): its estimates "
                         "and any missing standard errors are not to be interpreted."))
    beta_fits = {"statsmodels": beta_fit, "glmmTMB": glmm}
else:
    display(Markdown("**The R glmmTMB fit was not run**: "
                     + ("switched off by the parameter `run_r`." if not run_r else r_why)))
    beta_fits = {"statsmodels": beta_fit}
coef = charts.coefficient_data(beta_fits, terms=["R_sc", "R_sc:fine_tuned", "fine_tuned"])
if len(coef):
    display(charts.coefficient_chart(coef, f"Beta regression (logit scale), {pct} % CIs"))

# %% [markdown]
# ## Do the estimators work? A simulation study
#
# The fits above come with standard errors and intervals that are only as good as the
# model's assumptions and the sample size. We check them where the truth is known:
# `simulate_panel` builds panels like ours with known $\beta$ and $\eta$ (by default a
# fine-tuned slope three times the base slope, the paper's finding; the values used are
# printed below), prompts whose latent "openness" raises both entropy rate and length (so
# leaving out $\bar N$ would bias the slope), a random prompt intercept and noise. Each panel is fitted with the
# same `interaction_regression`; a good estimator is centred on the truth, and its
# nominal 95 % intervals contain the truth in about 95 % of panels.
#
# Scenario 1 copies our design: as many prompts, tasks and matched families as the real
# panel. Scenario 2 has more prompts and two matched families, to show how quickly the
# uncertainty shrinks.

# %% tags=["remove-stderr"]
seeds = n_sim_seeds if n_sim_seeds is not None else experiment.simulation_seeds
designs = simulation.scenarios(panel, sim_scale_up)
studies, summaries = simulation.run_scenarios(designs, seeds, level=level,
                                              first_seed=sim_first_seed)
summary = pd.concat(summaries, names=["scenario"])
truth = next(iter(studies.values())).attrs["truth"]

# %% tags=["remove-stderr", "remove-input"]
display(Markdown(report.simulation_design_text(truth, seeds, designs)))

# %% tags=["remove-stderr"]
display(summary[["symbol", "truth", "n_fits", "median", "bias", "sd", "median_abs_error",
                 "coverage", "coverage_se", "coverage_check", "bounded_share"]])

# %%
for name, study in studies.items():
    display(charts.simulation_chart(study, title=f"Scenario {name}: {pct} % intervals, sorted by "
                                                 "estimate; dashed = truth"))

# %% tags=["remove-input"]
display(Markdown(report.coverage_text(summaries, level)))

# %% [markdown]
# ## What this chapter can and cannot show
#
# - **Measured**: the association between semantic diversity and entropy rate across the
#   prompts of the experiment, for the models listed in the panel, with length, task,
#   family (and variant) and a per-prompt intercept held fixed. It is an association
#   across prompts, not an effect of entropy rate on meaning.
# - **Few matched pairs.** Everything about fine-tuning rests on the run's matched pairs
#   (named below); a model without a partner informs the main regression only. One pair
#   cannot separate "fine-tuning" from "this particular fine-tune".
# - **Weak identification.** With a few dozen prompts the interaction $\eta$ and above all
#   the ratio $(\beta+\eta)/\beta$ are weakly identified; the simulation shows how often
#   even a true tripling would give an unbounded ratio at this size. Report the interval,
#   not the point estimate.
# - **The paper's "nearly triples"** comes from larger models and many more prompts; our
#   numbers are context for it, neither a confirmation nor a contradiction.


# %% tags=["remove-input"]
origin = pairs.fine_tune_origin_text(rollouts)
display(Markdown(pairs.paired_scope_text(rollouts)
                 + (f" In this run {origin}." if origin else "")))
# %% [markdown]
# ## Rerun this chapter

# %% tags=["remove-input"]
rerun_note("06_regressions", profile=profile, experiment_file=experiment_file, models=models, embedding_model=embedding_model, level=level, run_r=run_r, n_sim_seeds=n_sim_seeds, sim_scale_up=sim_scale_up, sim_first_seed=sim_first_seed)

# %% tags=["remove-cell"]
# Numbers for the box at the top of the page (MyST-NB glue).
slope = main.coef("mean_entropy_rate") if main.fitted else None
ratio_claim = report.ratio_claim(inter)
glue_values(ch6_slope=report.format_interval(slope["estimate"], slope["ci_low"], slope["ci_high"], "+.3f")
            if slope is not None else "not fitted", ch6_pct=pct,
            ch6_ratio=round(ratio_claim["estimate"], 2) if ratio_claim else "undefined",
            ch6_ratio_set=ratio_claim["interval"] if ratio_claim else "undefined",
            ch6_verdict=ratio_claim["verdict"] if ratio_claim else "undefined")
