"""Per-rollout summaries of the store: what the analyses need, without the steps.

A shard holds every step of its prompt's rollouts; the per-prompt, pooled and bootstrap
analyses need one row per rollout. :func:`summarize` computes that row once per shard and
it is kept beside the shard, in ``<config>/.summaries/<task>/<prompt>.parquet``, tied to
the shard file's sha256 and :data:`SUMMARY_VERSION`: a changed (resampled, damaged)
shard or a new summary version makes it be computed again from the verified shard.
:func:`load_summaries` reads a whole store this way, so its memory follows the number of
rollouts, never the number of steps. A store that cannot be written (read-only) is
summarised in memory each time.

The summary of a rollout (:data:`SUMMARY_COLUMNS`):

======================  =================================================================
``model`` … ``rollout_id``  the rollout's keys, as in the shard
``length``              N, generated tokens (stop token included)
``truncated``           no stop token within ``max_new_tokens``
``summed_entropy``      H = Σ_t h_t (nats), as the sampler stored it
``surprisal``           S = −Σ_t log q_t(y_t) (nats), as stored (NaN if a step's is NaN)
``summed_entropy_raw``  Σ_t of the raw model's entropy (temperature 1, no truncation), nats
``final_stop_logprob``  log-probability the raw model gave a stop token at the last step
``distinct_tokens``     how many distinct token ids the rollout has
``repetition``          rep-4 (:func:`canopy.entropy.repetition_rate`), vectorised per shard
``text``                the decoded text (stop token excluded)
======================  =================================================================
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from canopy.digests import digest_meta, verify
from canopy.store import ShardError, read_store, read_verified

__all__ = ["SUMMARY_VERSION", "SUMMARY_COLUMNS", "METRIC_COLUMNS", "summarize",
           "summary_path", "shard_summary", "load_summaries", "file_sha256"]

#: Bump when :func:`summarize` changes what it computes (stored summaries are remade).
SUMMARY_VERSION = 1
_KEYS = ("model", "family", "variant", "task", "prompt_id", "rollout_id")
SUMMARY_COLUMNS = (*_KEYS, "length", "truncated", "summed_entropy", "surprisal",
                   "summed_entropy_raw", "final_stop_logprob", "distinct_tokens", "repetition",
                   "text")
#: The columns :func:`canopy.entropy.prompt_metrics` reads (``canopy metrics``).
METRIC_COLUMNS = (*_KEYS, "length", "truncated", "summed_entropy", "surprisal", "repetition")
#: The n of rep-n in ``repetition``.
REPETITION_N = 4
_META_KEY = b"canopy"  # excluded from the digest, as in shards


def _flat(column) -> tuple[np.ndarray, np.ndarray]:
    """A list column's values (float64/int64 numpy) and each row's index into them."""
    array = column.combine_chunks()
    values = array.flatten().to_numpy(zero_copy_only=False)
    return values, np.repeat(np.arange(len(array)), np.diff(np.asarray(array.offsets)))


def summarize(arrow) -> pd.DataFrame:
    """The per-rollout summary (:data:`SUMMARY_COLUMNS`) of one verified shard's Arrow
    table, rollouts in the shard's order. Sums run in float64 in step order."""
    rows = arrow.num_rows
    out = arrow.select(list(_KEYS) + ["length", "truncated", "summed_entropy",
                                      "surprisal"]).to_pandas()
    raw, row = _flat(arrow.column("step_entropy_raw"))
    out["summed_entropy_raw"] = np.bincount(row, weights=raw.astype(np.float64),
                                            minlength=rows)
    stop = arrow.column("step_stop_logprob").combine_chunks()
    offsets = np.asarray(stop.offsets)
    offsets = offsets - offsets[0]  # a sliced array's offsets start past 0
    values = stop.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
    has = np.diff(offsets) > 0
    final = np.full(rows, np.nan)
    final[has] = values[offsets[1:][has] - 1]
    out["final_stop_logprob"] = final
    ids, id_row = _flat(arrow.column("token_ids"))
    out["distinct_tokens"] = _distinct_per_row(id_row, rows, ids.astype(np.int64))
    out["repetition"] = _repetition(ids.astype(np.int64), id_row, rows, REPETITION_N)
    out["text"] = arrow.column("text").to_pandas()
    return out[list(SUMMARY_COLUMNS)]


def _distinct_per_row(row: np.ndarray, rows: int, *columns: np.ndarray) -> np.ndarray:
    """How many distinct tuples ``(columns[0][i], columns[1][i], …)`` each row has
    (``row[i]``: the row of entry i; integer columns), shape (rows,) int64.
    Exact: the row and columns are packed into as few int64 keys as fit, then sorted."""
    if row.size == 0:
        return np.zeros(rows, dtype=np.int64)
    keys, key, span = [], row.astype(np.int64), rows
    for column in columns:
        column = column.astype(np.int64) - int(column.min())  # ≥ 0, same equalities
        width = int(column.max()) + 1
        if span * width < 2 ** 62:
            key, span = key * width + column, span * width
        else:
            keys.append(key)
            key, span = column.astype(np.int64), width
    keys.append(key)
    order = np.lexsort(keys[::-1]) if len(keys) > 1 else np.argsort(key, kind="stable")
    new = np.zeros(row.size, dtype=bool)
    new[0] = True
    for key in keys:
        ordered = key[order]
        new[1:] |= ordered[1:] != ordered[:-1]
    return np.bincount(row[order][new], minlength=rows).astype(np.int64)


def _repetition(ids: np.ndarray, row: np.ndarray, rows: int, n: int) -> np.ndarray:
    """rep-n of each rollout from its flat token ids (``row``: each id's rollout):
    ``1 − distinct n-grams / n-grams`` within the rollout, 0 with fewer than n tokens —
    the same numbers as :func:`canopy.entropy.repetition_rate`, all rollouts at once."""
    windows = np.bincount(row, minlength=rows) - (n - 1)
    windows = np.maximum(windows, 0)
    start = np.arange(max(ids.size - n + 1, 0))
    start = start[row[start] == row[start + n - 1]] if start.size else start
    distinct = _distinct_per_row(row[start], rows, *(ids[start + k] for k in range(n)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(windows > 0, 1.0 - distinct / np.maximum(windows, 1), 0.0)


def summary_path(shard: Path) -> Path:
    """Where the summary of a shard is kept: ``<config>/.summaries/<task>/<name>``."""
    shard = Path(shard)
    return shard.parent.parent / ".summaries" / shard.parent.name / shard.name


def file_sha256(path: Path) -> str:
    """sha256 (hex) of a file's bytes (what a kept summary is tied to)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _read_kept(path: Path, tie: dict) -> pd.DataFrame | None:
    """The kept summary at ``path`` if it is intact and tied to ``tie``, else None."""
    import pyarrow.parquet as pq

    try:
        arrow = pq.read_table(path, page_checksum_verification=True)
        meta = json.loads(arrow.schema.metadata[_META_KEY])
        if meta.get("tie") != tie or verify(arrow, meta) is not None:
            return None
        return arrow.to_pandas()
    except Exception:  # noqa: BLE001 - unreadable or damaged: made again from the shard
        return None


def _keep(path: Path, table: pd.DataFrame, tie: dict) -> None:
    """Write a summary atomically (``.<name>.tmp-PID``, removed by the store's cleanup if
    this process dies); a store that cannot be written keeps none."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow = pa.Table.from_pandas(table, preserve_index=False)
    meta = {"tie": tie, **digest_meta(arrow)}
    arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}),
                                           _META_KEY: json.dumps(meta).encode()})
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(arrow, tmp, write_page_checksum=True)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)


def shard_summary(shard: Path, expect: dict | None = None, *, sha256: str | None = None,
                  arrow=None, data: bytes | None = None) -> pd.DataFrame:
    """The summary of one shard: the kept one when it is tied to this shard file's
    sha256, :data:`SUMMARY_VERSION` and ``expect``, else computed from the verified shard
    (:func:`canopy.store.read_verified`; raises :class:`~canopy.store.ShardError`) and
    kept. ``sha256``: the file's sha256 when the caller has just computed it (a book
    build's verification, :mod:`canopy.reading`); ``arrow``: the shard as already read
    and verified by the caller; ``data``: the file's bytes as read by the caller (the
    ones ``sha256`` was computed from), decoded when no kept summary fits. Otherwise the
    file is read once: hashed, and decoded from the same bytes when no kept summary fits.

    A summary is kept only once the shard it was made from passed
    :func:`~canopy.store.read_verified` with ``expect``, tied to that file's sha256; so
    a kept summary that fits says that a file with these very bytes verified
    (:func:`canopy.reading.verify_shards` relies on this)."""
    shard = Path(shard)
    if sha256 is None:
        try:
            data = shard.read_bytes()
        except OSError as exc:
            raise ShardError(f"unreadable ({type(exc).__name__}: {exc.strerror})") from None
        sha256 = hashlib.sha256(data).hexdigest()
    tie = {"shard_sha256": sha256, "summary_version": SUMMARY_VERSION,
           "expect": expect or {}}
    kept = summary_path(shard)
    table = _read_kept(kept, tie) if kept.is_file() else None
    if table is None:
        table = summarize(arrow if arrow is not None
                          else read_verified(shard, expect, data=data))
        _keep(kept, table, tie)
    return table


def load_summaries(directory, columns=None, threads: int | None = None) -> pd.DataFrame:
    """The summaries of every rollout under a store directory (shards as
    :func:`canopy.store.load_rollouts` reads them, in the same order), keeping
    ``columns`` (default all of :data:`SUMMARY_COLUMNS`); ``threads`` shards at once
    (:func:`canopy.shardpool.read_threads`; the result does not depend on it). Raises a
    one-line ``ValueError`` when there are no rollouts or any shard is damaged (naming
    them)."""
    root = Path(directory)
    columns = list(columns or SUMMARY_COLUMNS)
    unknown = [c for c in columns if c not in SUMMARY_COLUMNS]
    if unknown:
        raise ValueError(f"unknown summary columns {unknown}; choose from "
                         f"{list(SUMMARY_COLUMNS)}")
    return read_store(root, lambda path, expect: shard_summary(path, expect)[columns], threads)
