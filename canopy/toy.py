"""Toy autoregressive models whose whole generation tree can be enumerated.

A :class:`MarkovToy` generates from a handful of tokens plus a stop token; the next-token
distribution depends only on the previous token (or on "start" for the first step).
Rollouts end at the stop token (which counts in the length ``N``) or are truncated at
``max_length``. Small enough to list every leaf of the tree, so the exact Canopy
Entropy ``H(N, Y)``, ``E[N]``, ``E[r]`` and ``Cov(N, r)`` are known and the Monte-Carlo
estimators of :mod:`canopy.entropy` can be checked against them (Method §7).

All entropies in nats.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from canopy.entropy import entropy_rate, tree_metrics

__all__ = ["MarkovToy", "ToyTree", "convergence_table", "entropy", "examples"]

#: Enumeration refuses trees with more leaves than this (it keeps every leaf in memory).
MAX_LEAVES = 500_000


def entropy(q: np.ndarray) -> float:
    """Shannon entropy ``−Σ q log q`` of a probability vector (nats; 0·log 0 = 0)."""
    q = np.asarray(q, dtype=np.float64)
    nz = q[q > 0]
    return float(-(nz * np.log(nz)).sum())


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)  # exp(-inf) = 0: a logit of -inf removes a token from the support
    return e / e.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class ToyTree:
    """The fully enumerated tree of a toy model.

    ``leaves`` has one row per complete rollout: ``sequence`` (tuple of token strings,
    stop token included when emitted), ``probability``, ``length`` (N),
    ``summed_entropy`` (H = Σ_t h_t along the path), ``surprisal`` (−log probability),
    ``entropy_rate`` (H/N) and ``truncated``.
    """

    leaves: pd.DataFrame

    def _expect(self, values) -> float:
        return float(np.dot(self.leaves["probability"], values))

    @property
    def canopy_entropy(self) -> float:
        """CE* = E[Σ_t h_t], the chain-rule form of H(N, Y)."""
        return self._expect(self.leaves["summed_entropy"])

    @property
    def leaf_entropy(self) -> float:
        """H(N, Y) computed directly as −Σ p log p over the leaves (equals CE*)."""
        return entropy(self.leaves["probability"].to_numpy())

    @property
    def mean_length(self) -> float:
        """E[N]."""
        return self._expect(self.leaves["length"])

    @property
    def mean_entropy_rate(self) -> float:
        """E[r] with r = H/N."""
        return self._expect(self.leaves["entropy_rate"])

    @property
    def length_rate_cov(self) -> float:
        """Cov(N, r) under the model (a population covariance)."""
        n, r = self.leaves["length"], self.leaves["entropy_rate"]
        return self._expect((n - self.mean_length) * (r - self.mean_entropy_rate))

    @property
    def truncation_rate(self) -> float:
        """P(truncated)."""
        return self._expect(self.leaves["truncated"].astype(float))

    @property
    def length_distribution(self) -> pd.Series:
        """P(N = n), indexed by n."""
        return self.leaves.groupby("length")["probability"].sum().rename("probability")


class MarkovToy:
    """A first-order Markov chain over ``tokens``; the last token is the stop token.

    Parameters
    ----------
    tokens : list of str, length V ≥ 2
        Token names; ``tokens[-1]`` is the stop token.
    initial_logits : array, shape (V,)
        Logits of the first token.
    transition_logits : array, shape (V − 1, V)
        Row ``a`` holds the logits of the next token after non-stop token ``a``.
        ``-inf`` removes a token from the support.
    max_length : int ≥ 1
        ``T_max``: a rollout with no stop token by then is truncated with N = T_max.
    """

    def __init__(self, tokens, initial_logits, transition_logits, max_length: int):
        self.tokens = [str(t) for t in tokens]
        v = len(self.tokens)
        if v < 2:
            raise ValueError("a toy model needs at least one token and a stop token")
        initial = np.asarray(initial_logits, dtype=np.float64)
        transition = np.asarray(transition_logits, dtype=np.float64)
        if initial.shape != (v,):
            raise ValueError(f"initial_logits must have shape ({v},), got {initial.shape}")
        if transition.shape != (v - 1, v):
            raise ValueError(f"transition_logits must have shape ({v - 1}, {v}), "
                             f"got {transition.shape}")
        if not isinstance(max_length, (int, np.integer)) or max_length < 1:
            raise ValueError(f"max_length must be a positive integer, got {max_length!r}")
        self.stop = v - 1
        self.max_length = int(max_length)
        # State s < V−1: the previous token was s; state V−1: nothing generated yet.
        self.state_probs = _softmax(np.vstack([transition, initial]))
        self.state_entropy = np.array([entropy(q) for q in self.state_probs])

    def next_distribution(self, prefix=()) -> np.ndarray:
        """q(· | prefix): shape (V,), over ``tokens``; ``prefix`` holds token indices."""
        state = prefix[-1] if len(prefix) else self.stop
        return self.state_probs[state]

    # ------------------------------------------------------------------ enumeration

    def enumerate(self) -> ToyTree:
        """List every leaf of the tree with its exact probability (depth-first)."""
        rows = []
        # Each stack entry: (token indices so far, probability, Σ h_t, Σ −log q_t(y_t)).
        stack = [((), 1.0, 0.0, 0.0)]
        while stack:
            prefix, prob, summed, surprisal = stack.pop()
            state = prefix[-1] if prefix else self.stop
            q, h = self.state_probs[state], self.state_entropy[state]
            for token in np.flatnonzero(q > 0):
                path = prefix + (int(token),)
                p = prob * q[token]
                s = surprisal - np.log(q[token])
                stopped = token == self.stop
                if stopped or len(path) == self.max_length:
                    rows.append((path, p, len(path), summed + h, s, not stopped))
                    if len(rows) > MAX_LEAVES:
                        raise ValueError(f"tree has more than {MAX_LEAVES} leaves; "
                                         "use fewer tokens or a smaller max_length")
                else:
                    stack.append((path, p, summed + h, s))
        leaves = pd.DataFrame(rows, columns=["path", "probability", "length",
                                             "summed_entropy", "surprisal", "truncated"])
        leaves.insert(0, "sequence", [tuple(self.tokens[t] for t in p) for p in leaves["path"]])
        leaves["entropy_rate"] = entropy_rate(leaves["summed_entropy"], leaves["length"])
        leaves = leaves.drop(columns="path")
        return ToyTree(leaves.sort_values(["length", "sequence"], ignore_index=True))

    # ---------------------------------------------------------------------- sampling

    def sample(self, n_rollouts: int, seed: int = 0, *, prompt_id=0, task: str = "toy",
               model: str = "toy", family: str = "toy", variant: str = "base") -> pd.DataFrame:
        """Sample rollouts; one row per rollout in the rollout format of
        :mod:`canopy.entropy`, plus ``text`` (tokens joined by spaces, stop included)
        and ``step_entropy`` (per-step list, nats)."""
        if not isinstance(n_rollouts, (int, np.integer)) or n_rollouts < 1:
            raise ValueError(f"n_rollouts must be a positive integer, got {n_rollouts!r}")
        rng = np.random.default_rng(seed)
        cdf = np.cumsum(self.state_probs, axis=1)
        state = np.full(n_rollouts, self.stop)
        active = np.ones(n_rollouts, dtype=bool)
        length = np.zeros(n_rollouts, dtype=np.int64)
        summed = np.zeros(n_rollouts)
        surprisal = np.zeros(n_rollouts)
        tokens = np.full((n_rollouts, self.max_length), -1)
        steps = np.zeros((n_rollouts, self.max_length))
        for t in range(self.max_length):
            rows = np.flatnonzero(active)
            if rows.size == 0:
                break
            u = rng.random(rows.size)
            # Inverse-CDF draw; the clip guards against u ≥ cdf[-1] from rounding.
            drawn = np.minimum((u[:, None] >= cdf[state[rows]]).sum(axis=1), self.stop)
            steps[rows, t] = self.state_entropy[state[rows]]
            summed[rows] += self.state_entropy[state[rows]]
            surprisal[rows] -= np.log(self.state_probs[state[rows], drawn])
            tokens[rows, t] = drawn
            length[rows] += 1
            state[rows] = drawn
            active[rows[drawn == self.stop]] = False
        truncated = active  # still running after max_length steps
        text = [" ".join(self.tokens[k] for k in row[: n]) for row, n in zip(tokens, length)]
        return pd.DataFrame({
            "model": model, "family": family, "variant": variant, "task": task,
            "prompt_id": prompt_id, "rollout_id": np.arange(n_rollouts),
            "length": length, "summed_entropy": summed, "surprisal": surprisal,
            "truncated": truncated, "text": text,
            "step_entropy": [list(row[: n]) for row, n in zip(steps, length)],
        })


def examples() -> dict[str, MarkovToy]:
    """Named toy models used by the book and the tests.

    - ``coin``: two tokens and a stop token; every step the same distribution.
    - ``chatty``: "the" is always followed by the stop token (short, certain endings),
      while "word" and "other" keep branching; long rollouts are also the uncertain
      ones, so Cov(N, r) > 0 (the pattern the paper reports for fine-tuned models).
    - ``terse``: uncertain openings that end quickly, confident long continuations, so
      Cov(N, r) < 0.
    - ``truncating``: rarely stops, so many rollouts hit ``max_length``.
    """
    ninf = -np.inf
    return {
        "coin": MarkovToy(["a", "b", "<stop>"], [0.0, 0.0, -1.0],
                          [[0.0, 0.0, -1.0], [0.0, 0.0, -1.0]], max_length=6),
        "chatty": MarkovToy(["the", "word", "other", "<stop>"], [0.5, 0.5, 0.0, -1.0],
                            [[ninf, ninf, ninf, 0.0],
                             [ninf, 1.0, 1.0, 0.5],
                             [ninf, 1.0, 1.0, 0.5]], max_length=8),
        "terse": MarkovToy(["yes", "no", "well", "<stop>"], [1.0, 1.0, 1.0, 0.0],
                           [[ninf, ninf, ninf, 0.0],
                            [ninf, ninf, ninf, 0.0],
                            [ninf, ninf, 3.0, 0.5]], max_length=6),
        "truncating": MarkovToy(["x", "y", "<stop>"], [0.0, 0.0, -2.5],
                                [[0.3, 0.0, -2.5], [0.0, 0.3, -2.5]], max_length=5),
    }


def convergence_table(toy: MarkovToy, sample_sizes, seed: int = 0) -> pd.DataFrame:
    """Both Monte-Carlo estimators of CE* of a toy model for growing sample sizes (the
    study behind chapter 1's convergence chart).

    For each ``M`` in ``sample_sizes`` draws ``M`` fresh rollouts (seed ``seed + k`` for
    the ``k``-th size) and computes, with :func:`canopy.entropy.tree_metrics`, the mean
    summed entropy ``ĈE*_H`` and the mean surprisal ``ĈE*_S`` with their standard errors.
    Returns one row per (M, estimator): ``n_rollouts``, ``estimator``
    (``"summed_entropy"`` or ``"surprisal"``), ``estimate``, ``se``, ``lo``/``hi``
    (estimate ∓ 2 se).
    """
    sizes = [int(m) for m in sample_sizes]
    if not sizes or min(sizes) < 2:
        raise ValueError("sample_sizes must be a non-empty list of integers ≥ 2 "
                         "(a standard error needs two rollouts)")
    rows = []
    for k, m in enumerate(sizes):
        r = toy.sample(m, seed=seed + k)
        t = tree_metrics(r["length"], r["summed_entropy"], r["surprisal"], r["truncated"]).iloc[0]
        for name, est, se in (("summed_entropy", t["canopy_entropy"], t["canopy_entropy_se"]),
                              ("surprisal", t["canopy_entropy_surprisal"],
                               t["canopy_entropy_surprisal_se"])):
            rows.append({"n_rollouts": m, "estimator": name, "estimate": float(est),
                         "se": float(se), "lo": float(est - 2 * se), "hi": float(est + 2 * se)})
    return pd.DataFrame(rows)
