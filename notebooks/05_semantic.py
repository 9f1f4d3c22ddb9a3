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
# # Semantic diversity

# %% [markdown]
# :::{admonition} What this chapter finds
# :class: tip
#
# - Over all tasks, semantic diversity $D$ is highest for {glue:text}`ch5_top` ({glue:text}`ch5_top_d:.3f`) and lowest for {glue:text}`ch5_bottom` ({glue:text}`ch5_bottom_d:.3f`).
# - The Vendi score — the effective number of distinct rollouts out of $M =$ {glue:text}`ch5_m` — ranges from {glue:text}`ch5_vs_min:.2f` to {glue:text}`ch5_vs_max:.2f` across models.
# :::

# %% [markdown]
# Canopy Entropy counts how many *token sequences* a model can produce for a prompt. Two
# rollouts can differ in every token and still say the same thing. **Do the rollouts of a
# prompt differ in meaning, does fine-tuning change that, and do longer rollouts say
# different things from shorter ones?** This chapter measures meaning with sentence
# embeddings: every rollout becomes a vector, and the spread of those vectors is the
# rollouts' semantic diversity. The next chapter asks whether that diversity follows the
# entropy rate once length, task and prompt are held fixed.

# %% tags=["parameters"]
profile = "default"            # a profile of the experiment file: default, quick, ...
experiment_file = None         # None: data/experiments/default.yaml
models = None                  # None: the experiment's models; or a list of registry names
resample = False               # True: sample even when the store holds a model in another configuration
embedding_model = "all-MiniLM-L6-v2"   # sentence-transformers name, id or local path
embedding_window = "start"     # "start": the model reads a text's first word pieces; "chunked": all of it
similarity_threshold = 0.9     # cosine similarity at which the default judge says "same meaning"
correlation = "pearson"        # measure charted for rho(N, d): pearson, spearman or kendall
example_task = None            # task of the worked example; None: the experiment's first task

# %% tags=["remove-stderr"]
import numpy as np
import pandas as pd
from IPython.display import Markdown, display

from canopy.book import rerun_note
from canopy.display import enable_reader_tables, glue_values
from canopy import charts, report, semantic
from canopy.experiment import load_experiment
from canopy.stats import build_panel

enable_reader_tables()  # tables in the book's symbols and units (book/notation.md)

pd.set_option("display.precision", 4)
pd.set_option("display.max_colwidth", 120)

experiment = load_experiment(experiment_file, profile, overrides={"models": models})
rollouts = experiment.summaries(progress=False, resample=resample)  # one row per rollout
n_rollouts = int(experiment.sampling.rollouts)

# %% tags=["remove-stderr", "remove-input"]
display(Markdown(
    f"**Parameters.** profile `{profile}`, experiment `{experiment.name}`, "
    f"embedding model `{embedding_model}`, similarity threshold {similarity_threshold}. "
    f"\n\n"
    f"**Data.** {rollouts['model'].nunique()} models ({', '.join(f'`{m}`' for m in experiment.models)}), "
    f"{rollouts['task'].nunique()} tasks, {rollouts.groupby('task')['prompt_id'].nunique().max()} "
    f"prompts per task, M = {n_rollouts} rollouts per prompt, at most "
    f"{experiment.sampling.max_new_tokens} new tokens: {len(rollouts):,} rollouts in all."))

# %% [markdown]
# ## From text to vectors
#
# Each rollout's decoded text (stop token removed) is embedded with a sentence-embedding
# model, by default **all-MiniLM-L6-v2**, a small general-purpose English sentence model,
# and the vector is scaled to unit length, $e_i$. Two
# rollouts that say similar things get a cosine similarity $\langle e_i, e_j\rangle$ near
# 1; unrelated texts get values near 0. Embeddings are cached under the project cache,
# keyed by the model name and the texts, so a rerun does not embed again.
#
# The embedding model reads a limited number of word pieces (256 for MiniLM, two of them
# its own markers). With `embedding_window = "start"` a longer rollout is judged by its
# beginning only; `"chunked"` splits it into consecutive pieces the model reads whole
# and averages their vectors, weighted by length, so the whole rollout counts.

# %% tags=["remove-stderr"]
embeddings = semantic.embed_rollouts(rollouts, embedding_model, progress=False,
                                     window=embedding_window)
cut, read_limit = semantic.rollouts_cut(rollouts, embedding_model)

# %% tags=["remove-stderr", "remove-input"]
display(Markdown(
    f"Embedded {embeddings.shape[0]:,} rollouts into {embeddings.shape[1]} dimensions "
    f"(window `{embedding_window}`). {int(cut.sum()):,} of the {len(cut):,} texts "
    f"({cut.mean():.1%}) are longer than the {read_limit} word pieces the model reads"
    + (": they are judged by their beginning only." if embedding_window == "start" and cut.any()
       else (": each is embedded in chunks that cover all of it." if cut.any() else "."))))

# %% [markdown]
# ## The measures
#
# For one prompt with $M$ rollouts:
#
# - **Semantic diversity** — the mean pairwise cosine *dis*similarity,
#
#   $$D = 1 - \frac{2}{M(M-1)} \sum_{i<j} \langle e_i, e_j \rangle .$$
#
#   $D = 0$ when all rollouts have the same embedding; $D$ near 1 when they are unrelated
#   (it can exceed 1 slightly, up to $1 + 1/(M-1)$, when the vectors point away from each
#   other).
# - **Per-rollout diversity** — how far rollout $i$ is from the others,
#   $d_i = 1 - \frac{1}{M-1}\sum_{j \ne i}\langle e_i, e_j\rangle$, so that
#   $\operatorname{mean}_i d_i = D$.
# - **Vendi score** — the effective number of distinct rollouts. With $K = E E^\top$ the
#   $M \times M$ matrix of cosine similarities and $\lambda_k$ the eigenvalues of $K/M$,
#
#   $$\mathrm{VS} = \exp\Big(-\sum_k \lambda_k \log \lambda_k\Big) \in [1, M].$$
#
#   $\mathrm{VS} = 1$ when all rollouts coincide, $M$ when they are mutually orthogonal.
#   Unlike $D$, it notices clusters: four rollouts in two tight pairs count as about 2.
# - **Length buckets** — each prompt's rollouts are sorted by length $N$ and split into
#   three near-equal thirds (short, medium, long); $D$ is computed within each third. A
#   third with fewer than two rollouts has no $D$ (with $M = 4$, the medium and long thirds
#   hold one rollout each).
# - **Length and diversity** — $\rho(N, d)$, the correlation across a prompt's rollouts
#   of length $N_i$ and per-rollout diversity $d_i$ (Pearson, Spearman and Kendall's
#   $\tau_b$), pooled over prompts as $\rho(N, r)$ is in chapter 4: Fisher $z$ with
#   weights $M - 3$ (Kendall: $M(M-1)/2$). With $M \le 3$ a prompt carries no weight.
#   Positive: longer rollouts are the odd ones out.
# - **Semantic entropy** — a judge joins two rollouts when they "mean the same" (here:
#   cosine similarity $\ge$ the threshold, checked in both orders); the clusters are the
#   connected groups, and with cluster sizes $|c|$
#
#   $$\mathrm{SE} = -\sum_c \frac{|c|}{M}\log\frac{|c|}{M}\ \text{nats}, \qquad
#   \mathrm{SE}_{\text{norm}} = \mathrm{SE} / \log M \in [0, 1].$$
#
#   $\mathrm{SE}_{\text{norm}} = 1$ means every rollout is its own cluster.
#
# Pooled values (per model and task, and over all tasks) are unweighted means over
# prompts, except the Vendi score: an exponentiated entropy, it pools like the branching
# factor, as the exponential of the mean of $\log \mathrm{VS}$ over prompts (a geometric
# mean, the paper's convention; {ref}`Method §4 <method-s4>`).

# %%
per_prompt = semantic.semantic_metrics(rollouts, embeddings, threshold=similarity_threshold)
pooled = semantic.pool_semantic(per_prompt)

# %% [markdown]
# ## Semantic diversity $D$ and the Vendi score

# %%
display(pooled.pivot(index="model", columns="task", values="diversity")
        .rename_axis(columns="D by task"))
display(charts.semantic_bar_chart(pooled, "diversity", "Semantic diversity D by model and task",
                                  "D (mean pairwise cosine dissimilarity)"))

# %% tags=["remove-input"]
display(Markdown(report.diversity_extremes_text(pooled)))

# %%
display(charts.prompt_strip_chart(per_prompt, "diversity", "D per prompt (one tick per prompt)",
                                  "D"))

# %%
display(pooled.pivot(index="model", columns="task", values="vendi")
        .rename_axis(columns=f"Vendi score by task (max {n_rollouts})"))
display(charts.semantic_bar_chart(pooled, "vendi", "Vendi score: effective number of distinct rollouts",
                                  f"Vendi score (1 … M = {n_rollouts})"))

# %% [markdown]
# ## Diversity within length buckets
#
# Is the diversity carried by the long rollouts? Comparing $D$ within the short, medium and
# long thirds of each prompt's rollouts holds the prompt fixed. Short texts are also harder
# to embed well (a few tokens carry little meaning), so a difference between buckets is a
# mixture of what the model says and how well the embedding model reads short text.

# %%
buckets = pooled[["model", "task", "diversity_short", "diversity_medium", "diversity_long"]]
display(buckets.set_index(["model", "task"]))
display(charts.bucket_diversity_chart(pooled, "all"))
missing = report.missing_buckets_text(pooled, n_rollouts)

# %% tags=["remove-input"]
if missing:
    display(Markdown(missing))

# %% [markdown]
# ## Length and per-rollout diversity, $\rho(N, d)$

# %%
display(pooled[["model", "task", "length_diversity_pearson", "length_diversity_spearman",
                "length_diversity_kendall", "reason"]].set_index(["model", "task"]))
display(charts.length_diversity_chart(pooled, correlation))

# %% tags=["remove-input"]
display(Markdown(report.length_diversity_text(pooled, correlation, n_rollouts)))

# %% [markdown]
# ## Semantic entropy
#
# The default judge is offline and crude: two rollouts "mean the same" when their
# embeddings have cosine similarity of at least the threshold. Raising the threshold
# splits more rollouts apart and raises SE; the absolute level therefore depends on this
# choice, and only comparisons at the same threshold are meaningful. A language-model
# judge (entailment in both directions) can be plugged in via `semantic_metrics(judge=…)`.

# %%
display(pooled[["model", "task", "semantic_entropy", "semantic_entropy_norm"]]
        .set_index(["model", "task"]))
display(charts.semantic_bar_chart(pooled, "semantic_entropy",
                                  f"Semantic entropy (cosine ≥ {similarity_threshold})",
                                  f"SE (nats; at most log M = {np.log(n_rollouts):.3f})"))
display(charts.semantic_bar_chart(pooled, "semantic_entropy_norm",
                                  f"Normalised semantic entropy (cosine ≥ {similarity_threshold})",
                                  "SE / log M"))

# %% tags=["remove-input"]
display(Markdown(report.clusters_text(per_prompt, n_rollouts)))

# %% [markdown]
# ## A worked example
#
# The rollouts of one prompt per model, with each rollout's distance $d_i$ from the
# others. Texts are cut at 160 characters.

# %%
task = example_task or experiment.tasks[0]
example = rollouts.assign(d_i=semantic.rollout_diversity(rollouts, embeddings))
first_prompt = sorted(example.loc[example["task"] == task, "prompt_id"].unique())[0]
example = example[(example["task"] == task) & (example["prompt_id"] == first_prompt)]

# %% tags=["remove-input"]
display(Markdown(f"Task `{task}`, prompt `{first_prompt}`."))

# %%
display(example[["model", "rollout_id", "length", "d_i", "text"]]
        .assign(text=example["text"].str.replace(r"\s+", " ", regex=True).str.slice(0, 160))
        .sort_values(["model", "rollout_id"]).set_index(["model", "rollout_id"]))

# %% [markdown]
# ## Diversity next to entropy rate
#
# Each point is one prompt of one model: its mean entropy rate $\bar R = \mathbb{E}[r]$
# (chapter 3) against its $D$. The lines are plain least-squares fits per model, with no
# control for length, task or prompt; chapter 6 fits the controlled regressions.

# %%
panel = build_panel(rollouts, per_prompt)
display(charts.rate_diversity_chart(panel, color="model"))

# %% [markdown]
# ## What this chapter can and cannot show
#
# - **Measured**: semantic diversity of the rollouts the experiment sampled, for the models
#   listed above, through one embedding model. $D$, Vendi and SE describe *these* rollouts
#   at *these* decoding settings; they are not properties of the models in general.
# - **The embedding model is the instrument.** MiniLM was trained on English sentences; for
#   code and arithmetic its notion of "same meaning" is rough (two programs that differ in
#   one operator can embed almost identically). Differences between tasks partly reflect
#   how well the instrument reads each task.
# - **Tiny models, short rollouts, few prompts.** The default models have 135–270 million
#   parameters, rollouts are capped at the experiment's token budget, and each pooled value
#   averages a few dozen prompts at most (a handful in the quick profile). Differences
#   between models smaller than the prompt-to-prompt spread in the strip chart are not
#   evidence of anything.
# - **Length confounds diversity.** Longer texts embed differently from short ones, and
#   the models differ in how long they write. That is why the regressions in the next
#   chapter control for mean length before asking what entropy rate adds.

# %% [markdown]
# ## Rerun this chapter

# %% tags=["remove-input"]
rerun_note("05_semantic", profile=profile, experiment_file=experiment_file, models=models, embedding_model=embedding_model, embedding_window=embedding_window, similarity_threshold=similarity_threshold, correlation=correlation, example_task=example_task)

# %% tags=["remove-cell"]
# Numbers for the box at the top of the page (MyST-NB glue).
d_all = pooled[pooled["task"] == "all"].set_index("model")
glue_values(ch5_top=d_all["diversity"].idxmax(), ch5_top_d=d_all["diversity"].max(),
            ch5_bottom=d_all["diversity"].idxmin(), ch5_bottom_d=d_all["diversity"].min(),
            ch5_m=n_rollouts, ch5_vs_min=d_all["vendi"].min(), ch5_vs_max=d_all["vendi"].max())
