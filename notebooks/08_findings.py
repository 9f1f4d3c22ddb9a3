# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Findings: the paper's claims, measured here

# %% [markdown]
# :::{admonition} What this page finds
# :class: tip
#
# - **Fine-tuning lowers $CE^*$**: over all tasks the fine-tuned model's $CE^*$ differs
#   from its base by {glue:text}`f_ce` (percent change, {glue:text}`f_pct`% bootstrap
#   interval, {glue:text}`f_ce_n` prompts): **{glue:text}`f_ce_verdict`**.
# - **…but strengthens $\rho(N, r)$**: the pooled within-prompt correlation changes by
#   {glue:text}`f_rho`: **{glue:text}`f_rho_verdict`**.
# - **The slope of $D$ on $\bar R$ nearly triples**: $(\beta+\eta)/\beta$ =
#   {glue:text}`f_ratio`, Fieller set {glue:text}`f_ratio_set`:
#   **{glue:text}`f_ratio_verdict`**.
# :::
#
# Cheng, Tian & Xu (2026) report, for released base and instruction-tuned models, that
# fine-tuning lowers the Canopy Entropy $CE^*$ while strengthening the within-prompt
# correlation of length and entropy rate $\rho(N, r)$, and that the slope of semantic
# diversity $D$ on the mean entropy rate $\bar R$ nearly triples. This page puts each
# claim beside what this book's experiment measured, with its interval, and says in
# words what the interval allows:
#
# - **supported**: the interval lies on the side of 0 the paper reports (for the ratio:
#   a bounded Fieller set that holds 3 and excludes 1, no change);
# - **contradicted**: the interval lies on the other side (the ratio's set excludes 3);
# - **unresolved at this power**: the interval holds both possibilities — not "no
#   effect", but too few prompts to tell.
#
# **Prompts to resolve** is a planning figure, not a power analysis. An interval over
# prompts narrows as $1/\sqrt{P}$; if the estimate stayed where it is, the interval would
# exclude 0 with $P' = \lceil P\,(w/|\hat\theta|)^2 \rceil$ prompts, where $w$ is the
# distance from the estimate $\hat\theta$ to the interval's end on the side of 0
# (`canopy.report.prompts_to_resolve`). For the slope ratio it is the larger of the
# figures for $\beta$ and $\eta$: a bounded set needs $\beta$ resolved, a change of slope
# needs $\eta$ resolved. The estimates are recomputed here from the same cached rollouts
# and settings as chapters 3, 4 and 6.

# %% tags=["parameters"]
profile = "default"            # a profile of the experiment file: default, quick, ...
experiment_file = None         # None: data/experiments/default.yaml
models = None                  # None: the experiment's models; or a list of names/paths
resample = False               # True: sample even when the store holds a model in another configuration
embedding_model = "all-MiniLM-L6-v2"   # sentence-transformers name, id or local path
n_boot = 2000                  # bootstrap resamples of the prompts
seed = 0                       # bootstrap seed
confidence = 0.95              # level of the bootstrap and regression intervals

# %% tags=["remove-stderr"]
from canopy.book import rerun_note
from canopy.display import enable_reader_tables, glue_values
from canopy import charts, entropy, findings, pairs, reading, report
from canopy.experiment import load_experiment
from IPython.display import Markdown

enable_reader_tables()  # tables in the book's symbols and units (book/notation.md)

experiment = load_experiment(experiment_file, profile, overrides={"models": models})
rollouts = experiment.summaries(progress=False, resample=resample)  # one row per rollout
claims = findings.measure_claims(rollouts, embedding_model, n_boot=n_boot, seed=seed,
                                 confidence=confidence)
boot = claims["boot"]
ce, rho, ratio = claims["canopy_entropy"], claims["length_rate_pearson"], claims["slope_ratio"]

# %%
report.findings_table({claim: (measured, claims[key])
                       for key, (claim, measured) in findings.CLAIMS.items()})

# %% [markdown]
# **Why a verdict may go against the paper.** A model that falls into loops repeats
# itself almost deterministically, so its entropy rate and $CE^*$ drop for a reason that
# has nothing to do with fine-tuning as the paper means it. Each rollout's rep-4 (the
# share of its 4-grams that repeat an earlier one, {ref}`Method §2 <method-s2>`)
# measures that; when a verdict is contradicted and one model of the pair repeats itself
# far more than the other, the sentence below says so:

# %%
Markdown(findings.degeneration_text(claims, entropy.prompt_metrics(rollouts))
         or "No contradicted verdict here comes with a model that degenerates into loops.")

# %% [markdown]
# The intervals behind the first two rows, per task (the chapters show every quantity):

# %%
if len(boot):
    display(charts.bootstrap_delta_chart(boot, ["canopy_entropy"],
                                         title="CE*: fine-tuned vs base (%), paired bootstrap"))
    display(charts.bootstrap_delta_chart(boot, ["length_rate_pearson"], percent=False,
                                         title="ρ(N, r): fine-tuned − base, paired bootstrap"))

# %% [markdown]
# Where each number comes from: $CE^*$ and its paired bootstrap in
# {doc}`chapter 3 <03_canopy_entropy>`, $\rho(N, r)$ in {doc}`chapter 4 <04_length_rate>`, the
# interaction regression and its Fieller set in {doc}`chapter 6 <06_regressions>`.

# %% tags=["remove-input"]
origin = pairs.fine_tune_origin_text(rollouts)
display(Markdown(
    (f"In this run {origin}; a verdict here is about that fine-tune of that model, not "
     "about the instruction tuning of released chat models in general." if origin else
     "This run has no matched pair of a base and a fine-tuned model, so the claims about "
     "fine-tuning are not measured.")))
display(Markdown(reading.store_sentence(experiment.out, experiment.stored_models(
    progress=False, resample=resample))))

# %% [markdown]
# ## Rerun this page

# %% tags=["remove-input"]
rerun_note("08_findings", profile=profile, experiment_file=experiment_file, models=models, embedding_model=embedding_model, n_boot=n_boot, seed=seed, confidence=confidence)

# %% tags=["remove-cell"]
# Numbers for the box at the top of the page (MyST-NB glue).
glue_values(
    f_pct=int(round(100 * confidence)),
    f_ce=ce["interval"] if ce else "not measured (no matched pair)",
    f_ce_n=ce["n_prompts"] if ce else 0,
    f_ce_verdict=ce["verdict"] if ce else "undefined",
    f_rho=rho["interval"] if rho else "not measured (no matched pair)",
    f_rho_verdict=rho["verdict"] if rho else "undefined",
    f_ratio=round(ratio["estimate"], 2) if ratio else "undefined",
    f_ratio_set=ratio["interval"] if ratio else "undefined",
    f_ratio_verdict=ratio["verdict"] if ratio else "undefined")
