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
# # Appendix: making the fine-tuned model

# %% [markdown]
# :::{admonition} What this chapter finds
# :class: tip
#
# ```{glue:md} ch7_findings
# :format: myst
# ```
# :::

# %% [markdown]
# The book compares a base model with a fine-tuned version of *the same* model. No such
# pair of small models can be downloaded here (everything runs offline), so the project
# makes one: `gemma-3-270m-sft` is `gemma-3-270m` after a short LoRA fine-tune.
# **How was it made, and is it a real fine-tune — does it behave measurably differently
# from its base on text it has not seen?**

# %% tags=["parameters"]
profile = "default"            # a profile of the experiment file: default, quick, ...
experiment_file = None         # None: data/experiments/default.yaml
models = None                  # None: the experiment's models (listed for reference)
finetune_name = None           # None: the experiment's model made by `canopy finetune`
smoothing_window = 5           # steps in the running mean of the training loss

# %% tags=["remove-stderr"]
import pandas as pd
from IPython.display import Markdown, display

from canopy.book import rerun_note
from canopy.display import enable_reader_tables, glue_values
from canopy import charts, pairs
from canopy.experiment import load_experiment
from canopy.finetune import experiment_report
from canopy.report import finetune_config_table, finetune_summary

enable_reader_tables()  # tables in the book's symbols and units (book/notation.md)

pd.set_option("display.precision", 4)
pd.set_option("display.max_colwidth", 80)

experiment = load_experiment(experiment_file, profile, overrides={"models": models})
finetune_name, report = experiment_report(experiment.models, finetune_name)
config = report["config"] if report is not None else None

# %% tags=["remove-stderr", "remove-input"]
display(Markdown(
    f"**Parameters.** profile `{profile}`, fine-tune "
    + (f"`{finetune_name}`" if finetune_name else "none") + ". The experiment's models: "
    + ", ".join(f"`{m}`" for m in experiment.models) + "."))
if report is None:
    display(Markdown(pairs.no_finetune_text(experiment.models)
                     + " The sections below stay empty for this experiment."))

# %% [markdown]
# ## The recipe
#
# 1. **A teacher writes the targets.** The instruction-tuned `smollm2-135m-instruct` answers
#    the prompts of the fine-tuning pool (`data/finetune/pool.jsonl`, separate from the
#    experiment's prompts), once each, by sampling. A response that ran into the token
#    budget has no natural end; the default recipe drops it, so every target ends where
#    the teacher chose to stop (the `quick` recipe, whose teacher budget is short, cuts it
#    after its last complete sentence instead). The last prompts of the pool are held out
#    for the report below and never trained on.
# 2. **The Gemma chat format.** Each (prompt, response) pair becomes one example
#
#    ```text
#    <bos><start_of_turn>user
#    {prompt}<end_of_turn>
#    <start_of_turn>model
#    {response}<end_of_turn>
#    ```
#
#    so that the fine-tuned model is trained to answer in a model turn and to **stop** with
#    `<end_of_turn>`, which becomes one of its stop tokens.
# 3. **Loss on the response only.** With $\mathcal R$ the positions of the response tokens
#    (its `<end_of_turn>` included) the loss of a batch is the mean cross-entropy
#
#    $$\mathcal L = -\frac{1}{|\mathcal R|}\sum_{t \in \mathcal R}
#      \log p_\theta(y_t \mid y_{<t}) \quad\text{nats per response token};$$
#
#    the prompt and the chat markup are context, not targets.
# 4. **LoRA.** The base weights stay frozen; every attention and MLP projection $W$
#    (`q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`, `up_proj`, `down_proj`) gets a
#    trainable low-rank update, $W + \frac{\alpha}{r} B A$ with $A \in \mathbb R^{r\times k}$,
#    $B \in \mathbb R^{d\times r}$ and $B = 0$ at the start (so training starts from the
#    base model exactly). AdamW with a linear warm-up, then linear decay to zero, gradients
#    clipped at norm 1.
# 5. **The stop token's embedding.** The pretrained base gives `<end_of_turn>` almost no
#    probability anywhere: it ends documents with `<eos>`, not turns. One `<end_of_turn>`
#    per example is a weak signal for low-rank updates of the projections alone (an
#    earlier version of this recipe lowered the held-out loss yet stopped *less* often than
#    the base). So the embedding row of `<end_of_turn>` is trained as well (peft's
#    *trainable tokens*: one row of 640 numbers; the row is shared by the input embedding
#    and the output layer, so it moves that token's logit directly).
# 6. **A held-out report** compares base and fine-tuned model on the held-out prompts.
#
# The whole run is cached under a hash of the pool and the configuration: a rerun with the
# same settings does nothing. The adapter derives from Gemma weights and is never
# committed.

# %%
if report is not None:
    lora = pd.DataFrame({
        "setting": ["LoRA rank r", "LoRA α", "scale α / r", "LoRA dropout", "learning rate",
                    "warm-up steps", "epochs", "batch size", "max tokens per example",
                    "teacher responses at the budget", "<end_of_turn> embedding trained",
                    "training prompts", "training examples (after dropping)", "held-out examples"],
        "value": [str(v) for v in (
            config["lora_r"], config["lora_alpha"], config["lora_alpha"] / config["lora_r"],
            config["lora_dropout"], config["lr"], config["warmup_steps"], config["epochs"],
            config["batch_size"], config["max_seq_len"], config.get("teacher_truncated", "trim"),
            config.get("train_stop_embedding", False), report.get("n_train_prompts"),
            report.get("n_train_examples"), report.get("n_heldout_examples"))],
    }).set_index("setting")
    display(lora)

# %% [markdown]
# ## The training loss

# %%
if report is not None:
    loss = charts.finetune_loss_data(report, window=smoothing_window)
    display(charts.loss_curve_chart(loss, report["heldout_response_loss"],
                                    "Training loss on response tokens (dashed: held-out losses)"))
    first, last = loss["smoothed"].iloc[min(smoothing_window, len(loss)) - 1], loss["smoothed"].iloc[-1]

# %% tags=["remove-input"]
if report is not None:
    display(Markdown(
        f"{len(loss)} optimiser steps ({config['epochs']} epoch(s) of "
        f"{report.get('n_train_examples')} examples in batches of {config['batch_size']}). "
        f"The running mean over {smoothing_window} steps goes from {first:.3f} to {last:.3f} nats "
        "per response token. Single steps scatter because each batch holds different prompts and "
        "a different number of response tokens (in the tooltips). A falling *training* loss only "
        "shows that the model fits what it sees; the held-out comparison below is the check."))

# %% [markdown]
# ## Is it a real fine-tune? The held-out report
#
# Two checks on the held-out prompts, which training never saw:
#
# - **Held-out response loss**: the cross-entropy of the teacher's held-out responses
#   under the base and under the fine-tuned model (in the chat format, response tokens
#   only). Lower means the fine-tuned model now puts more probability on answers of the
#   teacher's kind.
# - **Stop fraction**: the share of sampled rollouts on held-out prompts that end with a
#   stop token within the budget (temperature 1, top-k as in the experiment). The base model sees the raw prompt, the
#   fine-tuned model the chat prompt; learning to end a turn is one of the behaviours a
#   fine-tune should add.

# %%
if report is not None:
    summary = finetune_summary(report)
    display(summary)
    display(charts.heldout_loss_chart(report))

# %%
if report is not None:
    held, stop = report["heldout_response_loss"], report["stop_fraction"]
    rollouts = stop.get("rollouts_per_prompt", 1)
    drop = held["base"] - held["fine_tuned"]

# %% tags=["remove-input"]
if report is not None:
    display(Markdown(
        f"On {report.get('n_heldout_examples')} held-out responses the loss "
        + (f"falls by {drop:.3f} nats per token ({held['base']:.3f} → {held['fine_tuned']:.3f}), "
           f"a perplexity of {summary.iloc[1]['base']:.1f} → {summary.iloc[1]['fine_tuned']:.1f}: "
           "the fine-tune changed the model's distribution in the intended direction on text it "
           "did not train on."
           if drop > 0 else
           f"does not fall ({held['base']:.3f} → {held['fine_tuned']:.3f}): on this evidence the "
           "fine-tune did not generalise to held-out prompts.")
        + f" Within {stop['max_new_tokens']} tokens, {stop['base']:.0%} of the base model's and "
        f"{stop['fine_tuned']:.0%} of the fine-tuned model's rollouts stopped "
        f"({rollouts} rollout(s) on each of {stop['n_prompts']} held-out prompts"
        + ("; one rollout moves the share by "
           f"{1 / (rollouts * stop['n_prompts']):.0%}" if stop["n_prompts"] else "") + ")."
        + (" Neither model stopped within that budget, so the stop check says nothing either "
           "way here." if stop["base"] == 0 and stop["fine_tuned"] == 0 else
           " The fine-tuned model ended its turn more often, as the chat-format training intends."
           if stop["fine_tuned"] > stop["base"] else
           " The fine-tuned model did **not** end its turn more often than the base: this fine-tune "
           "lowered the loss on the teacher's answers without making the model reliably stop "
           "within the budget. Rollouts that hit the budget are truncated, and the Canopy Entropy "
           "of a truncated process is only a lower bound (chapters 2–3 show the truncation rates)."
           if stop["fine_tuned"] < stop["base"] else " Both stopped equally often.")))

# %% [markdown]
# ## Timings and the full configuration

# %%
if report is not None:
    seconds = pd.Series(report.get("seconds", {}), name="seconds").rename_axis("stage")
    display(seconds.to_frame())

# %% tags=["remove-input"]
if report is not None:
    display(Markdown(f"Measured with {report.get('torch_threads', '?')} CPU thread(s)."))

# %%
if report is not None:
    display(finetune_config_table(report))

# %% [markdown]
# ## What this fine-tune is, and is not

# %% tags=["remove-input"]
if report is not None:
    display(Markdown(
        f"- It is a **small distillation-style SFT**: {report.get('n_train_examples')} examples, "
        f"{config['epochs']} epoch(s), rank-{config['lora_r']} adapters, and a teacher "
        f"(`{report.get('teacher')}`) that is itself a small model. "
        + ("That is enough to lower the response loss on held-out text, which is what the book's "
           "comparisons need: a base and a fine-tuned model that share everything except the "
           "fine-tune." if drop > 0 else
           "On the held-out check above it did not lower the response loss, so the 'fine-tuned' "
           "model may differ little from its base; read the comparisons of the book with that "
           "in mind.")
        + "\n- It is **not** the instruction tuning behind released chat models (larger and more "
        "varied data, preference optimisation, many more steps). Effects of fine-tuning that the "
        "paper reports for such models need not appear, or appear as strongly, after this one.\n"
        "- There is **one** such pair. Chapter 6's interaction regression therefore has one "
        "matched family, and what it finds about \"fine-tuning\" is a finding about this "
        "fine-tune of this model."))

# %% [markdown]
# ## Rerun this chapter

# %% tags=["remove-input"]
rerun_note("07_appendix_finetune", profile=profile, experiment_file=experiment_file, models=models, finetune_name=finetune_name, smoothing_window=smoothing_window)

# %% tags=["remove-cell"]
# The box at the top of the page (MyST-NB glue).
glue_values(ch7_findings=Markdown(
    "- " + pairs.no_finetune_text(experiment.models) if report is None else
    f"- On held-out responses the fine-tune moves the response loss from "
    f"{held['base']:.3f} to {held['fine_tuned']:.3f} nats per token.\n"
    f"- Within {stop['max_new_tokens']} tokens, {stop['base']:.0%} of the base model's and "
    f"{stop['fine_tuned']:.0%} of the fine-tuned model's held-out rollouts stopped."))
