"""Toy trees: enumeration is exact and self-consistent; sampling follows the model."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from canopy.entropy import validate_rollouts
from canopy.toy import MarkovToy, entropy, examples


@pytest.mark.parametrize("name", sorted(examples()))
def test_enumeration_is_a_probability_distribution_and_chain_rule_holds(name):
    tree = examples()[name].enumerate()
    assert tree.leaves["probability"].sum() == pytest.approx(1.0, abs=1e-12)
    assert tree.length_distribution.sum() == pytest.approx(1.0, abs=1e-12)
    # H(N, Y) = H(Y) = −Σ p log p over leaves equals E[Σ h_t] (chain rule).
    assert tree.leaf_entropy == pytest.approx(tree.canopy_entropy, rel=1e-12)
    # Surprisal of each leaf is −log p.
    assert np.allclose(tree.leaves["surprisal"], -np.log(tree.leaves["probability"]), atol=1e-12)
    # CE* = E[N]E[r] + Cov(N, r) with the model's (population) covariance.
    assert tree.mean_length * tree.mean_entropy_rate + tree.length_rate_cov == pytest.approx(
        tree.canopy_entropy, rel=1e-12)


def test_hand_computed_two_leaf_tree():
    # First token: stop with prob 1/4, "a" with 3/4; after "a" always stop.
    toy = MarkovToy(["a", "<stop>"], np.log([0.75, 0.25]), [[-np.inf, 0.0]], max_length=3)
    tree = toy.enumerate()
    h0 = entropy([0.75, 0.25])
    assert tree.canopy_entropy == pytest.approx(h0)
    assert tree.mean_length == pytest.approx(0.25 * 1 + 0.75 * 2)
    assert tree.mean_entropy_rate == pytest.approx(0.25 * h0 + 0.75 * h0 / 2)
    assert list(tree.length_distribution.index) == [1, 2]
    assert tree.truncation_rate == 0.0


def test_example_covariance_signs():
    toys = examples()
    assert toys["chatty"].enumerate().length_rate_cov > 0.05
    assert toys["terse"].enumerate().length_rate_cov < -0.05
    assert toys["truncating"].enumerate().truncation_rate > 0.5


def test_samples_are_legal_rollouts_and_deterministic():
    toy = examples()["chatty"]
    a, b = toy.sample(300, seed=5), toy.sample(300, seed=5)
    validate_rollouts(a)
    assert a.drop(columns="step_entropy").equals(b.drop(columns="step_entropy"))
    assert not a["text"].equals(toy.sample(300, seed=6)["text"])
    assert np.allclose([sum(s) for s in a["step_entropy"]], a["summed_entropy"])
    assert (a["length"] <= toy.max_length).all()
    assert (a.loc[a["truncated"], "length"] == toy.max_length).all()
    assert a.loc[~a["truncated"], "text"].str.endswith("<stop>").all()


def test_sampled_length_distribution_matches_enumeration():
    toy = examples()["chatty"]
    exact = toy.enumerate().length_distribution
    sample = toy.sample(20000, seed=8)
    observed = sample["length"].value_counts().reindex(exact.index, fill_value=0)
    chi2 = stats.chisquare(observed.to_numpy(), exact.to_numpy() * len(sample))
    assert chi2.pvalue > 1e-3


@pytest.mark.parametrize("kwargs, message", [
    (dict(tokens=["<stop>"], initial_logits=[0.0], transition_logits=np.zeros((0, 1)), max_length=2),
     "at least one token"),
    (dict(tokens=["a", "<stop>"], initial_logits=[0.0], transition_logits=[[0.0, 0.0]], max_length=2),
     "initial_logits must have shape"),
    (dict(tokens=["a", "<stop>"], initial_logits=[0.0, 0.0], transition_logits=[[0.0]], max_length=2),
     "transition_logits must have shape"),
    (dict(tokens=["a", "<stop>"], initial_logits=[0.0, 0.0], transition_logits=[[0.0, 0.0]], max_length=0),
     "max_length must be a positive integer"),
])
def test_bad_toy_definitions(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MarkovToy(**kwargs)


def test_too_large_tree_is_refused():
    toy = MarkovToy(list("abcdefghij") + ["<stop>"], np.zeros(11), np.zeros((10, 11)), max_length=7)
    with pytest.raises(ValueError, match="more than"):
        toy.enumerate()


def test_convergence_table_estimates_agree_with_exact_enumeration():
    from canopy.toy import convergence_table

    toy = examples()["truncating"]
    exact = toy.enumerate().canopy_entropy
    table = convergence_table(toy, [50, 200, 3200], seed=3)
    assert set(table["estimator"]) == {"summed_entropy", "surprisal"}
    assert (table.groupby("estimator").size() == 3).all()
    for row in table.itertuples():
        assert abs(row.estimate - exact) <= 4 * row.se, row
        assert row.lo == pytest.approx(row.estimate - 2 * row.se)
    # With many rollouts the standard error matches its exact value sd/sqrt(M), the sd
    # computed over the enumerated leaves.
    leaves = toy.enumerate().leaves
    for estimator in ("summed_entropy", "surprisal"):
        mean = np.dot(leaves["probability"], leaves[estimator])
        sd = np.sqrt(np.dot(leaves["probability"], (leaves[estimator] - mean) ** 2))
        se = table.query("n_rollouts == 3200 and estimator == @estimator")["se"].item()
        assert se == pytest.approx(sd / np.sqrt(3200), rel=0.1)
    with pytest.raises(ValueError, match="sample_sizes"):
        convergence_table(toy, [1, 10])
