"""How much of a long rollout an embedding model reads (Method §5, chapter 5).

A sentence-embedding model reads at most ``max_seq_length`` word pieces (256 for the
default all-MiniLM-L6-v2, two of them its own markers): a longer text is embedded from
its beginning only. Two windows:

- ``"start"`` (default, what the model does by itself): the first word pieces;
  :func:`cut_texts` counts the texts this cuts, so that a chapter can say so.
- ``"chunked"``: the text is split at word-piece boundaries into consecutive chunks the
  model reads whole; its embedding is the mean of the chunks' unit embeddings weighted by
  their word pieces (then scaled to unit length by the caller), so every part of the
  rollout counts in proportion to its length.

Only the tokenizer is used here (``embedder.tokenizer``, a Hugging Face fast tokenizer,
and ``embedder.max_seq_length``, as sentence-transformers models have them).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["WINDOWS", "check_window", "word_piece_limit", "word_piece_counts", "cut_texts",
           "chunk_texts", "pool_chunks"]

#: The windows :func:`canopy.semantic.embed_texts` offers.
WINDOWS = ("start", "chunked")


def check_window(window) -> None:
    """One-line ``ValueError`` unless ``window`` is one of :data:`WINDOWS`."""
    if window not in WINDOWS:
        raise ValueError(f"embedding window must be one of {', '.join(map(repr, WINDOWS))}, "
                         f"got {window!r}")


def _tokenizer(embedder):
    tokenizer = getattr(embedder, "tokenizer", None)
    if tokenizer is None or not getattr(embedder, "max_seq_length", None):
        raise ValueError("this embedder has no tokenizer and max_seq_length; windows need a "
                         "sentence-transformers model (a name, id or folder)")
    return tokenizer


def word_piece_limit(embedder) -> int:
    """How many word pieces of a text the embedder reads (its ``max_seq_length`` less the
    markers its tokenizer adds, e.g. [CLS] and [SEP])."""
    tokenizer = _tokenizer(embedder)
    return int(embedder.max_seq_length) - int(tokenizer.num_special_tokens_to_add(pair=False))


def word_piece_counts(texts: Sequence[str], embedder, batch: int = 256) -> np.ndarray:
    """Word pieces of each text (markers excluded), shape (len(texts),) int64; ``batch``
    texts tokenised at a time (memory follows a batch, not every text's pieces)."""
    tokenizer = _tokenizer(embedder)
    texts = list(texts)
    counts = np.zeros(len(texts), dtype=np.int64)
    for lo in range(0, len(texts), batch):
        ids = tokenizer(texts[lo:lo + batch], add_special_tokens=False,
                        truncation=False)["input_ids"]
        counts[lo:lo + len(ids)] = [len(i) for i in ids]
    return counts


def cut_texts(texts: Sequence[str], embedder) -> np.ndarray:
    """Which texts the ``"start"`` window cuts (more word pieces than
    :func:`word_piece_limit`), shape (len(texts),) bool."""
    return word_piece_counts(texts, embedder) > word_piece_limit(embedder)


def chunk_texts(texts: Sequence[str], embedder) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Split each text at word-piece boundaries into chunks of at most
    :func:`word_piece_limit` word pieces. Returns ``(chunks, owner, weight)``: the chunk
    strings (slices of the text, in order), the index of each chunk's text, and its word
    pieces (1 for a text with none, which stays one chunk)."""
    tokenizer, limit = _tokenizer(embedder), word_piece_limit(embedder)
    if limit < 1:
        raise ValueError(f"the embedder reads {limit} word pieces; cannot chunk")
    chunks, owner, weight = [], [], []
    if not texts:
        return chunks, np.zeros(0, dtype=np.int64), np.zeros(0)
    encoded = tokenizer(list(texts), add_special_tokens=False, truncation=False,
                        return_offsets_mapping=True)
    for i, (text, offsets) in enumerate(zip(texts, encoded["offset_mapping"])):
        n = len(offsets)
        if n <= limit:
            chunks.append(text)
            owner.append(i)
            weight.append(max(n, 1))
            continue
        for lo in range(0, n, limit):
            hi = min(lo + limit, n)
            start = 0 if lo == 0 else offsets[lo][0]
            end = len(text) if hi == n else offsets[hi][0]
            chunks.append(text[start:end])
            owner.append(i)
            weight.append(hi - lo)
    return chunks, np.array(owner, dtype=np.int64), np.array(weight, dtype=np.float64)


def pool_chunks(embeddings: np.ndarray, owner: np.ndarray, weight: np.ndarray,
                n_texts: int) -> np.ndarray:
    """Weighted mean of each text's chunk embeddings (rows of ``embeddings``, unit length),
    shape (n_texts, dim) float64; not yet scaled to unit length."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    out = np.zeros((n_texts, embeddings.shape[1]))
    np.add.at(out, owner, embeddings * weight[:, None])
    return out / np.bincount(owner, weights=weight, minlength=n_texts)[:, None]
