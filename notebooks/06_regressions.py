# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Confound-controlled regressions
#
# Chapter 5 put semantic diversity $D$ next to the entropy rate $\bar R$. But prompts
# differ, tasks differ, models write texts of different lengths, and length alone changes
# both quantities. **Once length, task, model family and prompt are held fixed, does a
# higher entropy rate still go with more diverse meanings — and is that link stronger
# after fine-tuning?** Cheng, Tian & Xu (2026) report that fine-tuning "nearly triples" the
# strength of this link (arXiv 2605.30844). This chapter fits their regressions to our data, checks them for
# curvature and for the bounded outcome, and then checks the estimators themselves on
# simulated data where the answer is known.

# %% tags=["parameters"]
profile = "default"            # experiment profile: "default" or "quick"
experiment_file = None         # None: data/experiments/default.yaml
models = None                  # None: the experiment's models; or a list of registry names
embedding_model = "all-MiniLM-L6-v2"   # sentence-transformers name, id or local path
level = 0.95                   # confidence level of every interval
run_r = True                   # also fit the paper's glmmTMB model when R and glmmTMB exist
n_sim_seeds = None             # simulated panels per scenario; None: 200 (40 with profile "quick")
sim_scale_up = 4               # second scenario: this many times more prompts (0: skip it)
sim_first_seed = 0             # seed of the first simulated panel

# %% tags=["remove-stderr"]
import numpy as np
import pandas as pd
from IPython.display import Markdown, display

from canopy.book import rerun_note
from canopy import charts, semantic, stats
from canopy.experiment import load_experiment

pd.set_option("display.precision", 4)
pct = int(round(100 * level))

experiment = load_experiment(experiment_file, profile, overrides={"models": models})
rollouts = experiment.rollouts(progress=False)
embeddings = semantic.embed_rollouts(rollouts, embedding_model, progress=False)
panel = stats.build_panel(rollouts, embeddings)
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
matched = sorted(f for f, g in panel.groupby("family") if g["fine_tuned"].nunique() == 2)
single = sorted(set(panel["family"]) - set(matched))
display(Markdown(
    f"{len(panel)} rows, {panel['prompt_uid'].nunique()} prompts, {panel['task'].nunique()} "
    f"tasks. Families with both a base and a fine-tuned model: "
    f"{', '.join(f'`{f}`' for f in matched) or 'none'}. "
    + (f"Families with one variant only: {', '.join(f'`{f}`' for f in single)} — they enter "
       "the main regression but not the interaction, curvature or beta fits, because there "
       "the fine-tuning effect would be confounded with the family." if single else "")))
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
if main.fitted and "mean_entropy_rate" in main.table.index:
    r = main.coef("mean_entropy_rate")
    display(Markdown(
        f"Slope of R̄: {r['estimate']:+.4f} per nat/token (SE {r['se']:.4f}, {pct} % CI "
        f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}], p = {r['p']:.3g}), with length, task and "
        f"family × variant held fixed. "
        + ("The interval excludes 0." if r["ci_low"] > 0 or r["ci_high"] < 0 else
           "The interval contains 0: this panel does not establish a link either way.")
        + ("" if main.converged else " **The fit did not converge; treat it as unreliable.**")))
else:
    display(Markdown("The main regression could not be fitted on this panel; see its notes."))

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
    ratio = inter.ratio
    if ratio is not None:
        kind_text = {
            "bounded": f"bounded: {ratio.interval_text()}",
            "two rays": (f"**unbounded**: {ratio.interval_text()}, because β's {pct} % interval "
                         "contains 0"),
            "whole line": (f"**unbounded**: every real number, {ratio.interval_text()}, because "
                           f"β's {pct} % interval contains 0 (and so does that of β + η)"),
        }.get(ratio.kind, "undefined")
        display(Markdown(
            f"Slope ratio (β + η)/β = {ratio.estimate:.3g}; {pct} % Fieller confidence set "
            f"{kind_text}. The paper's value of about 3 is "
            + ("inside" if ratio.covers(3.0) else "outside")
            + " this set."
            + ("" if inter.converged else " **The fit did not converge; treat it as unreliable.**")))
    display(Markdown(
        f"Families in the fit: {', '.join(f'`{f}`' for f in inter.families)}"
        + (f"; left out (one variant): {', '.join(f'`{f}`' for f in inter.excluded_families)}"
           if inter.excluded_families else "") + "."))
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
if np.isfinite(curv.p_value):
    moved = curv.shifts[~curv.shifts["within_one_se"]].index.tolist()
    display(Markdown(
        f"{curv.summary()}. "
        + ("Curvature is detectable at the 5 % level. " if curv.p_value < 0.05 else
           "No detectable curvature at the 5 % level (with this few prompts, the test has "
           "little power against mild curvature). ")
        + ("β and η stay within one SE of their linear values."
           if not moved else f"Moved by more than one SE (or SE not finite): {', '.join(moved)}.")
        + ("" if curv.linear.converged and curv.quadratic.converged else
           " **At least one of the two ML fits did not converge (see the notes), so this "
           "check is unreliable here.**")))
else:
    display(Markdown("The curvature test could not be computed on this panel (see notes)."))

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
beta_fit = stats.beta_regression(panel, level=level)
display(beta_fit)
if beta_fit.table.empty or not beta_fit.converged:
    display(Markdown(
        "**The statsmodels beta regression " + ("was not fitted" if beta_fit.table.empty else
                                                "did not converge")
        + f"** on this panel ({beta_fit.n_obs} rows; reasons in the notes above): the paper's "
        "specification has many coefficients (splines in both the mean and the precision "
        "model), and a small panel cannot carry them."))

# %%
r_ok, r_why = stats.r_glmmtmb_available()
if run_r and r_ok:
    glmm = stats.fit_beta_glmm_r(panel, level=level)
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
seeds = n_sim_seeds if n_sim_seeds is not None else (40 if profile == "quick" else 200)
real = panel[panel["family"].isin(matched)] if matched else panel
scenarios = {"1: like our panel": dict(n_prompts=int(real["prompt_uid"].nunique()),
                                       n_tasks=int(real["task"].nunique()),
                                       n_families=max(1, len(matched)))}
if sim_scale_up:
    scenarios[f"2: {sim_scale_up}× the prompts, 2 families"] = dict(
        n_prompts=int(sim_scale_up * real["prompt_uid"].nunique()),
        n_tasks=int(real["task"].nunique()), n_families=2)
summaries, studies = {}, {}
for name, design_kw in scenarios.items():
    studies[name] = stats.simulation_study(n_seeds=seeds, level=level,
                                           first_seed=sim_first_seed, **design_kw)
    summaries[name] = stats.simulation_summary(studies[name], level=level)
summary = pd.concat(summaries, names=["scenario"])
truth = next(iter(studies.values())).attrs["truth"]
display(Markdown(f"True values: β = {truth['beta']:g}, η = {truth['eta']:g}, so "
                 f"(β+η)/β = {truth['ratio']:g}; τ = {truth['tau']:g}, γ = {truth['gamma']:g}. "
                 f"{seeds} simulated panels per scenario; designs: " + "; ".join(
    f"scenario {n.split(':')[0]}: {kw['n_prompts']} prompts, {kw['n_tasks']} tasks, "
    f"{kw['n_families']} matched famil{'y' if kw['n_families'] == 1 else 'ies'}"
    for n, kw in scenarios.items()) + "."))
display(summary[["symbol", "truth", "n_fits", "median", "bias", "sd", "median_abs_error",
                 "coverage", "coverage_se", "coverage_check", "bounded_share"]])

# %%
for name, study in studies.items():
    display(charts.simulation_chart(study, title=f"Scenario {name}: {pct} % intervals, sorted by "
                                                 "estimate; dashed = truth"))

# %%
verdict = {"nominal": "consistent with the nominal level",
           "low": "below the nominal level (intervals too narrow)",
           "high": "above the nominal level (intervals conservative)", "": "not estimable"}

lines = []
for name, s in summaries.items():
    b, e, q = s.loc["beta"], s.loc["eta"], s.loc["ratio"]
    lines.append(
        f"- **Scenario {name}.** Coverage of the {pct} % intervals: β {b['coverage']:.1%} "
        f"(± {b['coverage_se']:.1%}), η {e['coverage']:.1%} (± {e['coverage_se']:.1%}), "
        f"slope ratio {q['coverage']:.1%}. Median estimates β {b['median']:.3f} and "
        f"η {e['median']:.3f} against the truth {b['truth']:.3f} and {e['truth']:.3f}. "
        f"The Fieller set of the ratio was bounded in {q['bounded_share']:.0%} of the panels; "
        f"the typical (median) error of the ratio estimate was {q['median_abs_error']:.2f}. "
        f"Coverage of β is {verdict[b['coverage_check']]}; of η, {verdict[e['coverage_check']]}.")
display(Markdown("\n".join(lines) + "\n\n"
                 "Coverage within about two binomial standard errors of the nominal level "
                 "means the intervals can be taken at face value for designs like these; "
                 "coverage clearly below it means the real fit's intervals are too narrow "
                 "and its p-values too small (the normal reference and the REML variance "
                 "estimates are least accurate with few prompts)."))

# %% [markdown]
# ## What this chapter can and cannot show
#
# - **Measured**: the association between semantic diversity and entropy rate across the
#   prompts of the experiment, for the models listed in the panel, with length, task,
#   family (and variant) and a per-prompt intercept held fixed. It is an association
#   across prompts, not an effect of entropy rate on meaning.
# - **One matched pair.** Everything about fine-tuning rests on `gemma-3-270m` and the LoRA
#   fine-tune this project made from it (appendix, chapter 7). `smollm2-135m-instruct` has
#   no base model available offline, so it informs the main regression only. One pair
#   cannot separate "fine-tuning" from "this particular fine-tune".
# - **Weak identification.** With a few dozen prompts the interaction $\eta$ and above all
#   the ratio $(\beta+\eta)/\beta$ are weakly identified; the simulation shows how often
#   even a true tripling would give an unbounded ratio at this size. Report the interval,
#   not the point estimate.
# - **The paper's "nearly triples"** comes from larger models and many more prompts; our
#   numbers are context for it, neither a confirmation nor a contradiction.

# %% [markdown]
# ## Rerun this chapter

# %%
rerun_note("06_regressions", profile=profile, experiment_file=experiment_file, models=models, embedding_model=embedding_model, level=level, run_r=run_r, n_sim_seeds=n_sim_seeds, sim_scale_up=sim_scale_up, sim_first_seed=sim_first_seed)
