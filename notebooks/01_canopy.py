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
# # The canopy

# %% [markdown]
# :::{admonition} What this chapter finds
# :class: tip
#
# - The {glue:text}`ch1_toy` toy's tree has {glue:text}`ch1_leaves` complete rollouts (leaves). Its Canopy Entropy, enumerated exactly, is $CE^* =$ {glue:text}`ch1_ce:.4f` nats, and the chain rule $\mathbb{E}[\sum_t h_t]$ gives the same number to within {glue:text}`ch1_diff:.0e` nats.
# - Sampled estimates converge at the $1/\sqrt{M}$ rate: the standard error of $\widehat{CE}^*_H$ falls from {glue:text}`ch1_se_first:.3f` to {glue:text}`ch1_se_last:.4f` nats as $M$ grows from {glue:text}`ch1_m_first` to {glue:text}`ch1_m_last` rollouts.
# :::

# %% [markdown]
# **Question.** A language model answering a prompt can produce many different
# rollouts. How do we measure how many it *effectively* has — counting both *what* it
# says and *how long* it talks — and what is that number made of?
#
# This chapter answers on toy models small enough to list every rollout, so that every
# number can be checked exactly. Nothing here needs a language model; chapter 2 applies
# the same definitions to real ones.

# %% tags=["parameters"]
profile = "default"          # unused here (toy models only); kept for a uniform interface
toy = "chatty"               # a toy from canopy.toy.examples()
sample_sizes = [10, 30, 100, 300, 1000, 3000, 10000]  # rollouts M for the convergence study
seed = 0

# %%
import numpy as np
import pandas as pd
from IPython.display import Markdown, display

from canopy import charts
from canopy.book import rerun_note
from canopy.display import enable_reader_tables, glue_values
from canopy.entropy import prompt_metrics
from canopy.toy import MarkovToy, convergence_table, entropy, examples

enable_reader_tables()  # tables in the book's symbols and units (book/notation.md)

model = examples()[toy]
tree = model.enumerate()

# %% [markdown]
# ## The generation tree
#
# A rollout $y = (y_1, \dots, y_N)$ is drawn one token at a time from the sampling
# distribution $q_t(\cdot \mid x, y_{<t})$. Our toy is a Markov chain: the next token
# depends only on the previous one. Its last token is the **stop token**; a rollout ends
# when it is drawn, and the stop token counts in the length $N$. A rollout that has not
# stopped after $T_{\max}$ tokens is cut there and called *truncated*. Here are the
# toy's next-token probabilities (rows: what came before; "start" is the first step):

# %%
rows = [*model.tokens[:-1], "start"]
pd.DataFrame(model.state_probs, index=pd.Index(rows, name="previous"),
             columns=model.tokens)

# %% [markdown]
# Every prefix branches into the tokens that may follow; every branch ends at a stop
# token or at $T_{\max}$. The finished rollouts are the leaves of this tree: its
# **canopy**. In the icicle drawing below, each row is a step, each rectangle a prefix,
# and its width the probability that a rollout starts with it (hover for details).

# %% tags=["remove-input"]
display(Markdown(
    f"The `{toy}` toy has {len(model.tokens) - 1} ordinary tokens, the stop token "
    f"`{model.tokens[-1]}` and $T_{{\\max}} = {model.max_length}$: its tree has "
    f"**{len(tree.leaves)} leaves**, of which a fraction "
    f"{tree.truncation_rate:.3f} (by probability) is truncated."))

# %%
charts.canopy_chart(tree.leaves, title=f"The tree of the '{toy}' toy")

# %% [markdown]
# The most probable leaves, with their length $N$, summed step entropy
# $H = \sum_{t \le N} h_t$ (where $h_t = H(q_t)$ is the entropy of the distribution the
# token was drawn from) and surprisal $S = -\log P(y)$:

# %%
tree.leaves.sort_values("probability", ascending=False).head(8).assign(
    sequence=lambda d: d["sequence"].map(" ".join))

# %% [markdown]
# Length is random too. Its distribution:

# %%
charts.length_distribution_chart(tree.length_distribution,
                                 title=f"P(N = n) for the '{toy}' toy")

# %% [markdown]
# ## Canopy Entropy and the chain rule
#
# The size of the canopy is measured by the entropy of the whole rollout, length
# included: **Canopy Entropy** $CE^* = H(N, Y_{1:N} \mid X = x)$ (Cheng, Tian & Xu 2026,
# arXiv 2605.30844). Two facts make it computable.
#
# 1. **$H(N, Y) = H(Y)$.** The sequence determines its own length: it ends with the stop
#    token, or it has exactly $T_{\max}$ tokens. Knowing $Y$ leaves no uncertainty about
#    $N$, so $H(N \mid Y) = 0$ and $H(N, Y) = H(Y) + H(N \mid Y) = H(Y)$.
# 2. **The chain rule.** $-\log P(y) = -\sum_t \log q_t(y_t)$, and averaging step by
#    step gives $H(Y) = \mathbb{E}\big[\sum_{t=1}^{N} h_t\big]$: the expected sum of the
#    per-step entropies along a rollout.
#
# Both sides can be computed exactly on the toy: the entropy of the leaf distribution,
# $-\sum_{\text{leaves}} P \log P$, and the probability-weighted mean of the leaves'
# summed step entropies.

# %% tags=["remove-input"]
display(Markdown(
    f"- $-\\sum P \\log P$ over the {len(tree.leaves)} leaves: **{tree.leaf_entropy:.12f}** nats\n"
    f"- $\\mathbb{{E}}[\\sum_t h_t]$ (chain rule): **{tree.canopy_entropy:.12f}** nats\n"
    f"- difference: {abs(tree.leaf_entropy - tree.canopy_entropy):.1e}"))

# %% [markdown]
# ## Estimating $CE^*$ from samples
#
# A real model's tree is far too large to list, so we sample $M$ rollouts and average.
# The chain rule gives two unbiased estimators with the same expectation:
#
# $$\widehat{CE}^*_H = \frac1M \sum_i H_i, \qquad \widehat{CE}^*_S = \frac1M \sum_i S_i,$$
#
# the mean summed step entropy (the paper's estimator) and the mean surprisal. Each has
# standard error $\mathrm{sd}/\sqrt{M}$. Below, both estimators for growing $M$ (each
# with fresh rollouts), with bars of ±2 standard errors, against the exact value.

# %%
study = convergence_table(model, sample_sizes, seed=seed)
charts.convergence_chart(study, tree.canopy_entropy)

# %%
wide = study.pivot(index="n_rollouts", columns="estimator", values=["estimate", "se"])

# %% tags=["remove-input"]
wide.columns = [f"{a}_{b}" for a, b in wide.columns]

# %%
wide["error_H_in_se"] = (wide["estimate_summed_entropy"] - tree.canopy_entropy) / wide["se_summed_entropy"]
wide["error_S_in_se"] = (wide["estimate_surprisal"] - tree.canopy_entropy) / wide["se_surprisal"]
wide

# %%
first, last = wide.iloc[0], wide.iloc[-1]

# %% tags=["remove-input"]
display(Markdown(
    f"From $M = {wide.index[0]}$ to $M = {wide.index[-1]}$ the standard error of "
    f"$\\widehat{{CE}}^*_H$ falls from {first['se_summed_entropy']:.3f} to "
    f"{last['se_summed_entropy']:.4f} nats, a factor of "
    f"{first['se_summed_entropy'] / last['se_summed_entropy']:.1f} for a "
    f"{wide.index[-1] / wide.index[0]:.0f}-fold increase of $M$ "
    f"($\\sqrt{{{wide.index[-1] / wide.index[0]:.0f}}} = {np.sqrt(wide.index[-1] / wide.index[0]):.1f}$). "
    f"The largest error of either estimator is {np.abs(wide[['error_H_in_se', 'error_S_in_se']]).max().max():.1f} "
    "standard errors. Which estimator is less noisy depends on the tree: the summed "
    "entropy averages over the choices at each step, the surprisal only records the "
    "choices made."))

# %% [markdown]
# ## The decomposition: length times rate, plus a covariance
#
# Write $r_i = H_i / N_i$ for the **entropy rate** of rollout $i$ (nats per token).
# Since $H_i = N_i r_i$ exactly,
#
# $$CE^* = \mathbb{E}[N r] = \mathbb{E}[N]\,\mathbb{E}[r] + \operatorname{Cov}(N, r).$$
#
# The first term is what a canopy would have if every rollout had the average rate; the
# second says whether long rollouts are also the uncertain ones (positive) or the
# confident ones (negative). The paper reports that fine-tuned models show a stronger
# positive length–rate correlation. On a sample the same identity holds exactly with
# the population covariance (divide by $M$).
#
# Two more summaries appear throughout the book: the per-token perplexity of the whole
# canopy, $\mathrm{GenPPL} = \exp(CE^*/\mathbb{E}[N])$, and the branching factor
# $\mathrm{BF} = \exp(\mathbb{E}[r])$. Dividing the decomposition by $\mathbb{E}[N]$
# shows how they differ:
#
# $$\log \mathrm{GenPPL} - \log \mathrm{BF} = \frac{\operatorname{Cov}(N, r)}{\mathbb{E}[N]}.$$
#
# The exact values for each toy:

# %%
rows = []
for name, m in examples().items():
    t = m.enumerate()
    rows.append({"toy": name, "CE*": t.canopy_entropy, "E[N]": t.mean_length,
                 "E[r]": t.mean_entropy_rate, "E[N]·E[r]": t.mean_length * t.mean_entropy_rate,
                 "Cov(N, r)": t.length_rate_cov,
                 "log GenPPL − log BF": t.canopy_entropy / t.mean_length - t.mean_entropy_rate,
                 "Cov / E[N]": t.length_rate_cov / t.mean_length,
                 "P(truncated)": t.truncation_rate})
exact = pd.DataFrame(rows).set_index("toy")
exact

# %%
charts.decomposition_chart(
    exact.reset_index().rename(columns={"E[N]·E[r]": "length_term", "Cov(N, r)": "cov_term"}),
    label="toy", title="Exact CE* = E[N]·E[r] + Cov(N, r) of each toy (nats)")

# %% [markdown]
# Each toy's leaves, entropy rate against length (area ∝ probability), show where the
# sign of the covariance comes from:

# %%
charts.length_rate_chart(tree.leaves, title=f"Entropy rate against length, '{toy}' toy")

# %% [markdown]
# ### A worked example by hand
#
# Take a tree with two leaves: at the first step the model stops with probability
# $1/4$ or says "a" with probability $3/4$, and after "a" it always stops. The first
# step has entropy $h_1 = H(3/4, 1/4)$; the second step is certain, $h_2 = 0$. So
#
# - leaf "⟨stop⟩": $N = 1$, $H = h_1$, $r = h_1$, probability $1/4$;
# - leaf "a ⟨stop⟩": $N = 2$, $H = h_1$, $r = h_1/2$, probability $3/4$;
# - $CE^* = h_1$, $\mathbb{E}[N] = 7/4$, $\mathbb{E}[r] = \tfrac14 h_1 + \tfrac34 \cdot \tfrac{h_1}{2} = \tfrac58 h_1$;
# - $\mathbb{E}[N]\mathbb{E}[r] = \tfrac{35}{32} h_1$, so $\operatorname{Cov}(N, r) = -\tfrac{3}{32} h_1$:
#   the long rollout spreads the same uncertainty over more tokens.

# %%
two = MarkovToy(["a", "<stop>"], np.log([0.75, 0.25]), [[-np.inf, 0.0]], max_length=3).enumerate()
h1 = entropy([0.75, 0.25])
pd.DataFrame({"by hand": [h1, 7 / 4, 5 / 8 * h1, -3 / 32 * h1],
              "enumerated": [two.canopy_entropy, two.mean_length, two.mean_entropy_rate,
                             two.length_rate_cov]},
             index=["CE*", "E[N]", "E[r]", "Cov(N, r)"])

# %% [markdown]
# ### The same identity on a sample
#
# On $M$ sampled rollouts of the toy, the per-prompt table of `canopy.entropy` reports
# both terms; their sum equals the estimate $\widehat{CE}^*_H$ to rounding.

# %%
sample = prompt_metrics(model.sample(2000, seed=seed)).iloc[0]

# %% tags=["remove-input"]
display(Markdown(
    f"$\\widehat{{CE}}^*_H$ = {sample['canopy_entropy']:.6f}; "
    f"$\\bar N \\bar r$ = {sample['length_term']:.6f}; "
    f"$\\widehat{{\\mathrm{{Cov}}}}(N, r)$ = {sample['length_rate_cov_pop']:.6f}; "
    f"sum − estimate = {sample['length_term'] + sample['length_rate_cov_pop'] - sample['canopy_entropy']:.1e}. "
    f"Shares: length {sample['length_share']:.3f}, covariance {sample['cov_share']:.3f}; "
    f"sample correlation $\\rho(N, r)$ = {sample['length_rate_pearson']:.3f}."))

# %% [markdown]
# ## What this chapter shows, and what it does not
#
# Everything above is exact arithmetic on toy Markov chains: it shows that the two
# estimators converge to the true $CE^*$, that their standard errors shrink like
# $1/\sqrt{M}$, and that the decomposition is an identity. It says nothing about real
# models; the next chapters measure them.
#
# ## Rerun this chapter

# %% tags=["remove-input"]
rerun_note("01_canopy", profile=profile, toy=toy, sample_sizes=sample_sizes, seed=seed)

# %% tags=["remove-cell"]
# Numbers for the box at the top of the page (MyST-NB glue).
glue_values(ch1_toy=toy, ch1_leaves=len(tree.leaves), ch1_ce=tree.canopy_entropy,
            ch1_diff=abs(tree.leaf_entropy - tree.canopy_entropy),
            ch1_m_first=int(wide.index[0]), ch1_m_last=int(wide.index[-1]),
            ch1_se_first=first["se_summed_entropy"], ch1_se_last=last["se_summed_entropy"])
