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
# # Sampling rollouts

# %% [markdown]
# :::{admonition} What this chapter finds
# :class: tip
#
# - {glue:text}`ch2_rollouts` rollouts from {glue:text}`ch2_models` models ({glue:text}`ch2_tokens` generated tokens) on {glue:text}`ch2_prompts` prompts.
# - Between {glue:text}`ch2_trunc_min:.0%` and {glue:text}`ch2_trunc_max:.0%` of the rollouts of a (model, task) cell hit $T_{\max} =$ {glue:text}`ch2_tmax` tokens without a stop token; where that share is high, every entropy in the later chapters is a lower bound.
# :::

# %% [markdown]
# **Question.** What did the models actually generate? Before any entropy is computed,
# this chapter looks at the raw material: for every prompt of the experiment, $M$
# rollouts per model, sampled token by token with the exact step entropies recorded
# ({ref}`Method §1–2 <method-s1>`). We look at example rollouts side by side, at how long rollouts are, and
# at how often a rollout hits the token limit $T_{\max}$ without stopping — the
# *truncation* that turns every later estimate into an estimate of the truncated
# process.

# %% tags=["parameters"]
profile = "default"        # a profile of the experiment file: default, quick, ...
experiment_file = None     # None: data/experiments/default.yaml
models = None              # None: the experiment's models; or a list of names/paths
resample = False           # True: sample even when the store holds a model in another configuration
example_task = "stories"   # task of the side-by-side examples
example_prompt = None      # prompt id; None: the first prompt of example_task
example_rollouts = 2       # how many rollouts per model to show
max_chars = 500            # characters shown per rollout

# %%
import dataclasses

import pandas as pd
from IPython.display import Markdown, display

from canopy.book import rerun_note
from canopy.display import enable_reader_tables, glue_values
from canopy import charts, findings, pooling, reading, report
from canopy.experiment import load_experiment

enable_reader_tables()  # tables in the book's symbols and units (book/notation.md)

pd.set_option("display.max_colwidth", None)
experiment = load_experiment(experiment_file, profile, overrides={"models": models})
rollouts = experiment.summaries(progress=False, resample=resample)  # one row per rollout
prompt_list = experiment.prompts()
settings = experiment.sampling

# %% [markdown]
# ## What was measured
#
# The models, how each is prompted (a *base* model gets the raw prompt text; a
# fine-tuned model gets it wrapped in its chat template with the generation prompt),
# and the decoding settings. Every rollout is sampled from the *sampling distribution*
# $q_t$ (temperature, then top-k, then top-p), and $h_t = H(q_t)$ is computed over its
# whole support from the full logits.

# %%
model_table = pd.DataFrame([spec.describe() for spec in experiment.specs])
model_table["prompting"] = model_table["chat_template"].map({True: "chat template",
                                                             False: "raw text"})
model_table[["name", "family", "variant", "kind", "prompting", "dtype"]]

# %% tags=["remove-input"]
measured = {
    "experiment": f"{experiment.name} (profile {experiment.profile})",
    "tasks": ", ".join(experiment.tasks),
    "prompts per task": experiment.prompts_per_task or "all",
    "prompts in total": len(prompt_list),
    "rollouts per prompt M": settings.rollouts,
    "max_new_tokens T_max": settings.max_new_tokens,
    **{k: v for k, v in dataclasses.asdict(settings).items()
       if k in ("temperature", "top_k", "top_p", "seed")},
    "rollouts in total": len(rollouts),
    "generated tokens in total": int(rollouts["length"].sum()),
}

# %%
pd.Series(measured, name="value").to_frame()

# %% [markdown]
# ## Which store was read
#
# Every number in this book comes from the store below: per model, the configuration it
# read (the first 12 hex digits of its configuration hash, the name of its folder), when
# it was sampled and with which runtime, as its manifest records them. A stored rollout
# is valid whatever machine made it — each $h_t$ is exact for the distribution the token
# was drawn from — so a store sampled elsewhere (vLLM on GPUs, say) is read as it is, with
# no model loaded. *Weights "not here"* means the model's files are not on this machine,
# so the store could not be checked against them and is trusted; *synthetic* marks
# numbers a benchmark generated, not sampled rollouts.

# %% tags=["remove-input"]
stored = experiment.stored_models(progress=False, resample=resample)
display(Markdown(f"**Store:** `{experiment.out}`"))
reading.store_table(stored)

# %% [markdown]
# These are small models (135M–270M parameters) on a few prompts per task. What follows
# describes *these* rollouts; it is a working demonstration of the measurement, not
# evidence about large models. The paper (Cheng, Tian & Xu 2026, arXiv 2605.30844)
# samples far larger instruction-tuned and base models with vLLM; its code keeps only the
# top-100 log-probabilities per step, while here $h_t$ is exact.

# %% [markdown]
# ## Example rollouts, side by side
#
# One prompt, the first rollouts of each model. All models draw their tokens from the
# same per-rollout random numbers (common random numbers: rollout $i$ of a prompt uses
# the same uniforms $u_1, u_2, \dots$ whatever the model), so differences come from the
# models, not from luck of the draw. Each cell ends with the rollout's length $N$ (stop
# token included) and entropy rate $r = H/N$; `⏎` marks a newline.

# %%
examples = report.example_rollouts(rollouts, example_task, example_prompt,
                                    rollout_ids=range(example_rollouts),
                                    max_chars=max_chars)
prompt_text = {(p.task, p.prompt_id): p.text for p in prompt_list}

# %% tags=["remove-input"]
display(Markdown(f"**Prompt** `{examples.attrs['task']}/{examples.attrs['prompt_id']}`: "
                 f"{prompt_text[(examples.attrs['task'], examples.attrs['prompt_id'])]}"))

# %%
examples

# %% [markdown]
# Compare the *format* as well as the content: the base model receives the bare prompt
# and continues it as a piece of text might continue; the fine-tuned models receive a
# chat turn and were trained to answer it. That difference is part of what fine-tuning
# changes, and it shows up in lengths and stopping below. Two rollouts of one prompt
# are anecdotes: the tables and charts that follow use every rollout.

# %% [markdown]
# ## How long are the rollouts?
#
# $N$ counts generated tokens including the stop token. Rollouts that never stop sit at
# $N = T_{\max}$ (hover a bar to see how many of it are truncated).

# %%
charts.rollout_length_chart(rollouts)

# %%
summary = pooling.length_summary(rollouts)
summary[["model", "task", "n_prompts", "n_rollouts", "mean_length", "median_length",
         "min_length", "max_length", "truncation_rate", "n_prompts_flagged", "repetition_rate"]]

# %% [markdown]
# ## Truncation
#
# A rollout is truncated when no stop token comes within $T_{\max}$ tokens. Then $N$ and
# $H = \sum_t h_t$ are cut short, and $\widehat{CE}^*$ estimates the entropy of the
# *truncated* process — a lower bound of the untruncated $CE^*$. Prompts whose truncation
# rate exceeds 5 % are flagged ({ref}`Method §3 <method-s3>`).

# %%
charts.truncation_chart(summary)

# %%
overall = summary[summary["task"] == "all"].set_index("model")

# %% tags=["remove-input"]
lines = [f"- `{m}`: {row.truncation_rate:.0%} of {row.n_rollouts} rollouts truncated; "
         f"{row.n_prompts_flagged} of {row.n_prompts} prompts flagged (> 5 %); "
         f"mean length {row.mean_length:.1f} tokens"
         for m, row in overall.iterrows()]
display(Markdown(
    "Measured here, over all tasks:\n\n" + "\n".join(lines) + "\n\n"
    f"Across models and tasks the truncation rate ranges from "
    f"{summary['truncation_rate'].min():.0%} to {summary['truncation_rate'].max():.0%} "
    f"at T_max = {settings.max_new_tokens} tokens."))

# %% [markdown]
# How to read this. Where a model's truncation rate is high, its $CE^*$, $E[N]$ and
# length–rate statistics in the next chapters describe rollouts cut at $T_{\max}$: the
# length is then mostly set by the limit, not by the model, and any comparison with
# another model that does stop is a comparison of a lower bound with an estimate. A base
# model given raw text has no reason to emit its end-of-text token soon, so a high
# truncation rate for it is expected; a larger `max_new_tokens` lowers truncation at the
# price of sampling time. Which models are affected, and how much, is in the table above.
# When nearly every rollout of every model is truncated — as can happen with the `quick`
# profile's 64-token limit, which exists to test the pipeline in minutes — lengths are all equal,
# $E[N] = T_{\max}$, and the length–rate analyses of chapters 3–4 have almost nothing to
# work with: many per-prompt correlations are then undefined (constant $N$), and the
# chapters say so rather than report a number.

# %% [markdown]
# ## Degeneration: text caught in a loop
#
# A small model given raw text sometimes falls into a loop ("7 to her 7 to her …",
# "how, how, how"). Looping text is nearly deterministic, so its entropy rate is low —
# for a reason that says little about fine-tuning. Each rollout's **rep-4** measures it:
# the share of its 4-grams (four consecutive tokens) that repeat one seen earlier in the
# same rollout (the seq-rep-4 of Welleck et al. 2019; {ref}`Method §2 <method-s2>`). A
# rollout with no repetition has rep-4 = 0; one that is all loop approaches 1.

# %%
charts.repetition_chart(rollouts)

# %% tags=["remove-input"]
rep = overall["repetition_rate"]
looping = findings.degenerate_share(rollouts)
display(Markdown(
    "Measured here, over all tasks: " + "; ".join(
        f"`{m}` mean rep-4 {rep[m]:.0%}, {looping[m]:.0%} of its rollouts more than half loop"
        for m in rep.index) + ". "
    + (f"`{rep.idxmax()}` repeats itself most; chapters 3 and 8 come back to what that does "
       "to its entropy." if len(rep) > 1 and rep.max() >= 2 * rep.min() and rep.max() > 0.1
       else "No model stands out by its repetition.")))

# %% [markdown]
# ## Rerun this chapter
#
# The parameters used for this page, and the commands that regenerate it (the rollouts
# are cached under `$CANOPY_CACHE`, so a rerun with the same settings reads them back).

# %% tags=["remove-input"]
rerun_note("02_sampling", profile=profile, experiment_file=experiment_file, models=models, example_task=example_task, example_prompt=example_prompt, example_rollouts=example_rollouts, max_chars=max_chars)

# %% tags=["remove-cell"]
# Numbers for the box at the top of the page (MyST-NB glue).
glue_values(ch2_rollouts=len(rollouts), ch2_models=len(experiment.models),
            ch2_tokens=int(rollouts["length"].sum()), ch2_prompts=len(prompt_list),
            ch2_trunc_min=summary["truncation_rate"].min(),
            ch2_trunc_max=summary["truncation_rate"].max(), ch2_tmax=settings.max_new_tokens)
