"""Step-level views streamed with per-position accumulators (chapter 4's profile).

:class:`PositionAccumulator` keeps, per (model, family, variant, task) and token
position t, the count of active rollouts, of stops and the sums of h_t, the raw entropy,
the running entropy rate and the stop probability. Rollouts are added a batch at a time
(one shard, or a few hundred rows of a table) and then forgotten, so memory follows the
longest rollout and the number of groups, never the number of steps.
:func:`canopy.entropy.position_profile` (a rollout table) and
:func:`stream_position_profile` (a store, shard by shard) both use it and give the same
table (:data:`PROFILE_COLUMNS`; see :func:`canopy.entropy.position_profile` for what
each column means). Sums are float64; each rollout's running sum Σ_{s≤t} h_s is its own
sequential prefix sum.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from canopy.tables import ALL_TASKS

__all__ = ["PROFILE_COLUMNS", "GROUP_KEYS", "PositionAccumulator", "check_profile_options",
           "stream_position_profile"]

#: Columns of a position profile after the keys.
PROFILE_COLUMNS = ("position", "n_active", "n_stopped", "mean_step_entropy",
                   "mean_step_entropy_raw", "running_entropy_rate", "mean_stop_prob",
                   "stop_fraction")
#: The keys of a profile row besides the position.
GROUP_KEYS = ("model", "family", "variant", "task")
_STEP_COLUMNS = ("step_entropy", "step_entropy_raw", "step_stop_logprob")
# rows of an accumulator: counts, then sums
_N_ACTIVE, _N_STOPPED, _H, _H_RAW, _RUNNING, _P_STOP = range(6)


def check_profile_options(by_task: bool, all_tasks: bool, max_position) -> None:
    """One-line ``ValueError`` for options that select nothing or no position."""
    if not by_task and not all_tasks:
        raise ValueError("by_task and all_tasks cannot both be False: nothing to group by")
    if max_position is not None and (isinstance(max_position, bool)
                                     or not isinstance(max_position, (int, np.integer))
                                     or max_position < 1):
        raise ValueError(f"max_position must be a positive integer or None, got {max_position!r}")


class PositionAccumulator:
    """Per-position sums of a position profile, filled batch by batch.

    ``max_position``: positions beyond it are not kept (None: all).
    """

    def __init__(self, max_position: int | None = None) -> None:
        self.max_position = max_position
        self.sums: dict[tuple, np.ndarray] = {}  # key → shape (6, positions) float64

    def add(self, key: tuple, lengths, truncated, step_entropy, step_entropy_raw,
            step_stop_logprob) -> None:
        """Add rollouts of one group ``key`` (model, family, variant, task):
        ``lengths``, ``truncated`` of shape (R,); the step arrays flat, shape (Σ lengths,),
        rollout after rollout (nats; stop log-probabilities in nats too)."""
        lengths = np.asarray(lengths, dtype=np.int64)
        if lengths.size == 0:
            return
        rows = lengths.size
        longest = int(lengths.max())
        keep_to = longest if self.max_position is None else min(longest, self.max_position)
        row = np.repeat(np.arange(rows), lengths)
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        position = np.arange(row.size) - starts[row]  # 0-based t − 1
        h = np.asarray(step_entropy, dtype=np.float64)
        padded = np.zeros((rows, longest))
        padded[row, position] = h
        running = np.cumsum(padded, axis=1)[row, position] / (position + 1)
        stopped = (position == lengths[row] - 1) & ~np.asarray(truncated, dtype=bool)[row]
        keep = position < keep_to
        at = position[keep]

        def total(weights=None) -> np.ndarray:
            return np.bincount(at, weights=None if weights is None else weights[keep],
                               minlength=keep_to).astype(np.float64)

        part = np.stack([
            total(), total(stopped.astype(np.float64)), total(h),
            total(np.asarray(step_entropy_raw, dtype=np.float64)), total(running),
            total(np.exp(np.asarray(step_stop_logprob, dtype=np.float64)))])
        have = self.sums.get(key)
        if have is None:
            self.sums[key] = part
            return
        if have.shape[1] < keep_to:
            have = np.pad(have, ((0, 0), (0, keep_to - have.shape[1])))
        have[:, :keep_to] += part
        self.sums[key] = have

    def add_table(self, rollouts: pd.DataFrame, batch: int = 256) -> None:
        """Add a rollout table with per-step list columns, ``batch`` rollouts at a time
        (the lists of one batch are concatenated, never the whole table's)."""
        lengths = rollouts["length"].to_numpy(dtype=np.int64)
        truncated = rollouts["truncated"].to_numpy().astype(bool)
        for key, rows in rollouts.groupby(list(GROUP_KEYS), sort=True, observed=True).indices.items():
            for lo in range(0, rows.size, batch):
                take = rows[lo:lo + batch]
                steps = [np.concatenate([np.asarray(v, dtype=np.float64)
                                         for v in rollouts[c].iloc[take]])
                         for c in _STEP_COLUMNS]
                self.add(tuple(key), lengths[take], truncated[take], *steps)

    def add_arrow(self, arrow, name: str = "shard") -> None:
        """Add the rollouts of one verified shard (an Arrow table in the sampler's
        schema). ``name`` names it in errors."""
        flat, lengths = {}, None
        for column in _STEP_COLUMNS:
            array = arrow.column(column).combine_chunks()
            counts = np.diff(np.asarray(array.offsets)).astype(np.int64)
            if lengths is not None and not np.array_equal(counts, lengths):
                raise ValueError(f"{name}: {column} and step_entropy have different lengths "
                                 "in some rollout")
            lengths = counts
            flat[column] = array.flatten().to_numpy(zero_copy_only=False)
        if not np.array_equal(lengths, arrow.column("length").to_numpy().astype(np.int64)):
            raise ValueError(f"{name}: the per-step lists do not have `length` entries in "
                             "some rollout")
        truncated = arrow.column("truncated").to_numpy().astype(bool)
        keys = list(zip(*(arrow.column(k).to_pylist() for k in GROUP_KEYS)))
        starts = np.concatenate(([0], np.cumsum(lengths)))
        for key in dict.fromkeys(keys):
            rows = np.array([i for i, k in enumerate(keys) if k == key])
            if rows.size == len(keys):
                self.add(key, lengths, truncated, *(flat[c] for c in _STEP_COLUMNS))
                continue
            steps = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in rows])
            self.add(key, lengths[rows], truncated[rows],
                     *(flat[c][steps] for c in _STEP_COLUMNS))

    def table(self, by_task: bool = True, all_tasks: bool = True) -> pd.DataFrame:
        """The profile: one row per (model, family, variant, task, position) with a rollout
        active there, task ``"all"`` pooling every task (see
        :func:`canopy.entropy.position_profile`)."""
        check_profile_options(by_task, all_tasks, self.max_position)
        scopes = []
        if by_task:
            scopes += [(key, self.sums[key]) for key in sorted(self.sums)]
        if all_tasks:
            pooled: dict[tuple, np.ndarray] = {}
            for key in sorted(self.sums):
                sums, other = self.sums[key], pooled.get(key[:3])
                if other is not None:
                    width = max(other.shape[1], sums.shape[1])
                    sums = (np.pad(other, ((0, 0), (0, width - other.shape[1])))
                            + np.pad(sums, ((0, 0), (0, width - sums.shape[1]))))
                pooled[key[:3]] = sums
            scopes += [((*key, ALL_TASKS), sums) for key, sums in pooled.items()]
        parts = []
        for key, sums in scopes:
            active = np.flatnonzero(sums[_N_ACTIVE] > 0)
            n = sums[_N_ACTIVE, active]
            parts.append(pd.DataFrame({
                **{k: [v] * active.size for k, v in zip(GROUP_KEYS, key)},
                "position": active.astype(np.int64) + 1, "n_active": n.astype(np.int64),
                "n_stopped": sums[_N_STOPPED, active].astype(np.int64),
                "mean_step_entropy": sums[_H, active] / n,
                "mean_step_entropy_raw": sums[_H_RAW, active] / n,
                "running_entropy_rate": sums[_RUNNING, active] / n,
                "mean_stop_prob": sums[_P_STOP, active] / n,
            }))
        if not parts:
            return pd.DataFrame(columns=[*GROUP_KEYS, *PROFILE_COLUMNS])
        out = pd.concat(parts, ignore_index=True).sort_values([*GROUP_KEYS, "position"],
                                                              kind="stable")
        out = out.reset_index(drop=True)
        out["stop_fraction"] = out["n_stopped"] / out["n_active"]
        return out[[*GROUP_KEYS, *PROFILE_COLUMNS]]


def stream_position_profile(directory, by_task: bool = True, all_tasks: bool = True,
                            max_position: int | None = None) -> pd.DataFrame:
    """:func:`canopy.entropy.position_profile` of every rollout under a store directory
    (shards as :func:`canopy.store.load_rollouts` reads them), one verified shard at a
    time (a few read ahead on threads, :func:`canopy.shardpool.map_in_order`): peak
    memory is a few shards' steps plus the profile. Raises a one-line ``ValueError``
    when there are no rollouts or a shard is damaged (naming them)."""
    from canopy.shardpool import map_in_order
    from canopy.store import damaged_message, read_verified, shard_reader, store_shards

    check_profile_options(by_task, all_tasks, max_position)
    root = Path(directory)
    accumulator, damaged, shards = PositionAccumulator(max_position), [], 0
    # shards read and verified on a few threads, added here in shard order
    for path, arrow, exc in map_in_order(shard_reader(read_verified), store_shards(root)):
        if exc is not None:
            damaged.append((path, exc))
            continue
        accumulator.add_arrow(arrow, name=str(path))
        shards += 1
    if damaged:
        raise ValueError(damaged_message(root, damaged))
    if not shards:
        raise ValueError(f"no rollouts under {root}; write some with "
                         f"`canopy sample --out {root}`")
    return accumulator.table(by_task, all_tasks)
