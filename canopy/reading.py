"""Reading an experiment's store for analysis: which stored configuration each model's
rollouts come from, and shards verified once per book build.

**Which configuration.** A stored rollout is valid whatever machine made it: every step
entropy is exact for the distribution it was drawn from. So a model's current
configuration (``current.json``) is read when its algorithm version, its spec's family,
variant and chat template and its sampling settings are the experiment's and no runtime
setting the user *stated* differs (:func:`stated_runtime`) — whatever engine, device
type, dtype or thread count made it (a store sampled with vLLM on GPUs reads on a
laptop). The weights' signature (:func:`canopy.models.source_signature`) is checked
when the weights are on this machine (changed weights: not read, the model is sampled
again); when they are not it cannot be, and the store is trusted
(:attr:`StoredModel.weights_checked` is False; the book says so).

**Verified once.** ``canopy book`` verifies every shard the experiment reads before any
chapter runs (:func:`verify_shards`: content digest, metadata, rollout ids; the
per-rollout summaries are made on the way) and writes what it verified — per shard its
size, ``mtime_ns``, the file's sha256 and content digest — to the record named by the
environment variable :data:`VERIFIED_ENV`. Chapters then read those shards without
verifying them again (:func:`read_summaries`, :func:`stream_profile`, :func:`read_rollouts`);
a shard whose size, modification time or expected metadata differ from the record is
verified again.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from canopy.models import source_signature
from canopy.shardpool import map_in_order
from canopy.tables import concat_rows
from canopy.store import (
    ShardError, damaged_message, read_shard, read_verified, safe_name, shard_path, write_json,
)

__all__ = ["StoredModel", "stored_model", "stated_runtime", "missing_shards_message",
           "VERIFIED_ENV", "verify_shards", "read_summaries", "read_rollouts",
           "stream_profile", "store_table", "store_sentence", "read_columns"]

#: The environment variable naming the record of a build's verified shards (set by
#: ``canopy book`` for its chapters; unset: every read verifies).
VERIFIED_ENV = "CANOPY_VERIFIED_STORE"


@dataclass
class StoredModel:
    """One model's configuration in the store, as the analysis reads it.

    ``config_dir``: its directory; ``config_hash``: the full configuration hash
    (``hash12`` = its first 12 hex digits); ``created``/``updated``: when its manifest
    was first and last written (UTC, ISO 8601; ``None`` if not recorded);
    ``runtime``: the recorded runtime (``engine``, ``device_type``, ``dtype``,
    ``threads``); ``synthetic``: the manifest marks it synthetic (made by a benchmark,
    not sampled); ``weights_checked``: False when the weights are not on this machine
    and the store is trusted; ``shards``: ``(path, expected metadata)`` per prompt, in
    the experiment's order; ``missing``: how many of those shards are absent."""

    name: str
    config_dir: Path
    config_hash: str
    created: str | None
    updated: str | None
    runtime: dict
    synthetic: bool
    weights_checked: bool
    shards: list = field(default_factory=list)
    missing: int = 0

    @property
    def hash12(self) -> str:
        """The configuration directory's name: the hash's first 12 hex digits."""
        return self.config_hash[:12]


def stated_runtime(runtime, stated) -> dict:
    """The runtime record keys (``engine``, ``device_type``, ``dtype``, ``threads``) of the
    runtime settings named in ``stated`` (the experiment's ``runtime_stated``), read from
    ``runtime`` (:class:`canopy.settings.Runtime`) without resolving a device that may not
    be here; ``device: auto`` states no device type."""
    out = {}
    for setting in stated or ():
        value = getattr(runtime, setting, None)
        if setting == "device":
            if value and value != "auto":
                out["device_type"] = str(value).split(":")[0]
        elif setting in ("engine", "dtype", "threads") and value is not None:
            out[setting] = value
    return out


def _has_file(signature) -> bool:
    """Whether a :func:`~canopy.models.source_signature` names a file that exists here
    (an entry ``[path, size, mtime_ns]``; a missing file is ``[path]``)."""
    if isinstance(signature, dict):
        return any(_has_file(v) for v in signature.values())
    if isinstance(signature, list):
        if len(signature) == 3 and isinstance(signature[0], str) and isinstance(signature[1], int):
            return True
        return any(_has_file(v) for v in signature)
    return False


def _plain(value):
    return json.loads(json.dumps(value))


def stored_model(spec, prompts, config, out, stated: dict | None = None) -> StoredModel | None:
    """The configuration of ``spec``'s model the analysis reads from the store ``out``
    (the rule of the module docstring), or ``None`` when there is none to read: no
    current configuration, another algorithm version, family, variant, chat template or
    sampling settings (``config``: :class:`canopy.settings.SamplingConfig`), a stated
    runtime setting that differs (``stated``: :func:`stated_runtime`), or weights that are
    here and changed. Shards are not read; absent ones are counted in ``missing``."""
    from canopy.settings import ALGORITHM_VERSION

    model_dir = Path(out) / safe_name(spec.name)
    try:
        current = json.loads((model_dir / "current.json").read_text())["config_hash"]
        config_dir = model_dir / str(current)[:12]
        manifest = json.loads((config_dir / "manifest.json").read_text())
        record = manifest["config"]
        stored_spec = manifest["spec"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(record, dict) or not isinstance(stored_spec, dict):
        return None
    if record.get("algorithm_version") != ALGORITHM_VERSION:
        return None
    if any(stored_spec.get(k) != getattr(spec, k) for k in ("family", "variant", "chat_template")):
        return None
    if record.get("sampling") != _plain(config.distribution()):
        return None
    runtime = record.get("runtime") if isinstance(record.get("runtime"), dict) else {}
    for key, value in (stated or {}).items():
        if key == "threads" and runtime.get("threads") is None:
            continue  # a GPU run records no CPU threads
        if runtime.get(key) != value:
            return None
    signature = _plain(source_signature(spec))
    checked = manifest.get("source_signature") == signature
    if not checked and _has_file(signature):
        return None  # the weights are here and changed: sampled again, as always
    digest = manifest.get("config_hash", "")
    shards, missing = [], 0
    for p in prompts:
        path = shard_path(config_dir, p.task, p.prompt_id)
        shards.append((path, {"config_hash": digest, "prompt_sha256": p.sha256(),
                              "rollouts": config.rollouts}))
        missing += not path.is_file()
    return StoredModel(spec.name, config_dir, digest, manifest.get("created"),
                       manifest.get("updated"), runtime, bool(manifest.get("synthetic")),
                       checked, shards, missing)


def missing_shards_message(out, found: StoredModel, why: str) -> str:
    """One line: the store lacks shards of a model that cannot be sampled here."""
    return (f"the store {out} holds model {found.name} (configuration {found.hash12}) "
            f"without {found.missing} of its {len(found.shards)} prompts' shards, and the "
            f"model is not here to sample them ({why}); copy the missing shards into "
            f"{found.config_dir}, or make the model available and rerun")


# ---------------------------------------------------------------- verified once per build


def _record() -> dict:
    """The shards the current build verified (``{}`` outside a build)."""
    path = os.environ.get(VERIFIED_ENV)
    if not path:
        return {}
    try:
        return json.loads(Path(path).read_text()).get("shards", {})
    except (OSError, ValueError, AttributeError):
        return {}


def _verified(record: dict, path: Path, expect: dict) -> dict | None:
    """The record's entry of ``path`` if the file is unchanged since and was verified
    against ``expect``, else None."""
    entry = record.get(str(path))
    if not entry:
        return None
    try:
        stat = path.stat()
    except OSError:
        return None
    if (entry.get("size"), entry.get("mtime_ns")) != (stat.st_size, stat.st_mtime_ns):
        return None
    wanted = entry.get("expect") or {}
    return entry if all(wanted.get(k) == v for k, v in expect.items()) else None


def verify_shards(stored: list[StoredModel], record_path, threads: int | None = None) -> int:
    """Verify every shard of ``stored`` and make its kept summary
    (:func:`canopy.summaries.shard_summary`), and write the record of what was verified
    to ``record_path``. Returns the number of shards verified. A damaged shard: the
    one-line ``ValueError`` of :func:`canopy.store.load_rollouts`, naming every damaged
    shard, written before anything else runs.

    Each file is read once and hashed (sha256, about 1.7 GB/s here). A shard whose kept
    summary is tied to that sha256 and to its expected metadata is verified by the tie:
    a summary is kept only after a file with exactly these bytes passed
    :func:`canopy.store.read_verified` with that metadata, and the kept summary is itself
    checked (page CRCs, its digest, the tie compared in full). Any other shard — none
    kept, or a flipped bit anywhere in the shard, which changes its sha256 — is decoded
    from the same bytes and verified in full (digest, metadata, rollout ids), its
    summary made on the way. So a flipped bit is detected or changes nothing, as on
    every read, and a store verified before (an earlier build, ``canopy metrics``) is
    verified again at the speed of sha256 rather than of Parquet decoding. (Chosen over
    a file sha256 written beside each shard at write time: a cold verification makes the
    summaries, which needs the decoded columns anyway.) ``threads`` shards at once
    (:func:`canopy.shardpool.read_threads`; the record does not depend on it)."""
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    from canopy.summaries import shard_summary

    def one(item):
        path, expect = item
        try:
            stat = path.stat()
            data = path.read_bytes()
            sha = hashlib.sha256(data).hexdigest()
            shard_summary(path, expect, sha256=sha, data=data)
            digest = _content_digest(pq.read_schema(pa.BufferReader(data)))
        except (ShardError, OSError) as exc:
            return path, None, exc
        except Exception as exc:  # noqa: BLE001 - an unreadable footer: damaged
            return path, None, ShardError(f"unreadable ({type(exc).__name__})")
        return path, {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha,
                      "expect": expect, "digest": digest}, None

    present = [(path, expect) for path, expect in _all_shards(stored) if path.is_file()]
    shards, damaged = {}, []
    for path, entry, exc in map_in_order(one, present, threads):
        if exc is None:
            shards[str(path)] = entry
        else:
            damaged.append((path, exc))
    if damaged:
        roots = {str(f.config_dir.parent.parent) for f in stored}
        raise ValueError(damaged_message(Path(roots.pop()) if len(roots) == 1 else Path("/"),
                                         damaged))
    record_path = Path(record_path)
    record_path.parent.mkdir(parents=True, exist_ok=True)
    write_json(record_path, {"shards": shards, "models": {
        f.name: f.hash12 for f in stored}})
    return len(shards)


def _content_digest(schema) -> str | None:
    meta = json.loads((schema.metadata or {}).get(b"canopy", b"{}"))
    return meta.get("content_digest") or meta.get("content_sha256")


def _all_shards(stored: list[StoredModel]):
    for found in stored:
        yield from found.shards


def _read_each(stored: list[StoredModel], read, threads: int | None = None):
    """Yield ``(path, read(path, expect, entry))`` for every shard of ``stored`` in shard
    order, ``threads`` shards read at once (:func:`canopy.shardpool.map_in_order`); at
    the end, the one-line error of :func:`canopy.store.load_rollouts` naming every
    damaged shard."""
    record = _record()

    def one(item):
        path, expect = item
        try:
            return path, read(path, expect, _verified(record, path, expect)), None
        except ShardError as exc:
            return path, None, exc

    damaged = []
    for path, part, exc in map_in_order(one, _all_shards(stored), threads):
        if exc is None:
            yield path, part
        else:
            damaged.append((path, exc))
    if damaged:
        raise ValueError(damaged_message(stored[0].config_dir.parent.parent, damaged))


def _read_all(stored: list[StoredModel], read) -> list:
    """The parts of :func:`_read_each`, in shard order."""
    return [part for _, part in _read_each(stored, read)]


def read_summaries(stored: list[StoredModel], text: bool = True) -> pd.DataFrame:
    """The per-rollout summaries (:data:`canopy.summaries.SUMMARY_COLUMNS`) of every shard
    of ``stored``, models then prompts in order, rollouts in shard order — the rows of
    :func:`read_rollouts` without the per-step lists. ``text=False`` leaves out the
    decoded texts, dropped shard by shard (they are most of the summaries' memory)."""
    from canopy.summaries import shard_summary

    def read(path, expect, entry):
        table = shard_summary(path, expect, sha256=entry["sha256"] if entry else None)
        return table if text else table.drop(columns="text")

    return concat_rows(_read_all(stored, read))


def _arrow(path: Path, expect: dict, entry, columns=None):
    """A shard's Arrow table: read without checks when ``entry`` (verified this build),
    else verified."""
    if entry is None:
        arrow = read_verified(path, expect)
        return arrow.select(columns) if columns else arrow
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path, columns=columns)
    except Exception as exc:  # noqa: BLE001 - changed under us: say which
        raise ShardError(f"unreadable ({type(exc).__name__})") from None


def read_rollouts(stored: list[StoredModel]) -> pd.DataFrame:
    """Every rollout of ``stored`` with its per-step lists (memory grows with the
    steps), in the order of :func:`read_summaries`."""
    def read(path, expect, entry):
        if entry is None:
            return read_shard(path, expect)
        return _arrow(path, expect, entry).to_pandas()

    return pd.concat(_read_all(stored, read), ignore_index=True)


def read_columns(stored: list[StoredModel], columns: list[str]) -> pd.DataFrame:
    """Only ``columns`` of every rollout of ``stored``, in the order of
    :func:`read_rollouts` (e.g. ``token_ids`` to count ids beyond a tokenizer)."""
    def read(path, expect, entry):
        return _arrow(path, expect, entry, list(columns)).to_pandas()

    return pd.concat(_read_all(stored, read), ignore_index=True)


def stream_profile(stored: list[StoredModel], by_task: bool = True, all_tasks: bool = True,
                   max_position: int | None = None) -> pd.DataFrame:
    """:func:`canopy.entropy.position_profile` of every rollout of ``stored``, one shard
    at a time (:class:`canopy.profiles.PositionAccumulator`): peak memory is a few shards'
    steps (those read ahead on threads, :func:`canopy.shardpool.map_in_order`) plus the
    profile."""
    from canopy.profiles import GROUP_KEYS, PositionAccumulator, check_profile_options

    check_profile_options(by_task, all_tasks, max_position)
    accumulator = PositionAccumulator(max_position)
    columns = [*GROUP_KEYS, "length", "truncated", "step_entropy", "step_entropy_raw",
               "step_stop_logprob"]

    def read(path, expect, entry):
        return _arrow(path, expect, entry, columns)

    for path, arrow in _read_each(stored, read):  # added here, in shard order
        accumulator.add_arrow(arrow, name=str(path))
    return accumulator.table(by_task, all_tasks)


def store_table(stored: list[StoredModel]) -> pd.DataFrame:
    """What the analysis read, one row per model: its configuration (``hash12``), when it
    was sampled (the manifest's first and last writes), with which runtime (engine,
    device type, dtype as recorded), whether the manifest marks it synthetic and whether
    the weights' signature was checked (``not here: store trusted`` otherwise)."""
    def when(found: StoredModel) -> str:
        first, last = (found.created or "not recorded"), found.updated
        return first if not last or last == first else f"{first} – {last}"

    return pd.DataFrame([{
        "model": f.name, "configuration": f.hash12, "sampled (UTC)": when(f),
        "engine": f.runtime.get("engine"), "device": f.runtime.get("device_type"),
        "dtype": f.runtime.get("dtype"), "synthetic": "yes" if f.synthetic else "no",
        "weights": "checked" if f.weights_checked else "not here: store trusted",
        "rollouts": sum(e["rollouts"] for _, e in f.shards),
    } for f in stored])


def store_sentence(out, stored: list[StoredModel]) -> str:
    """One markdown sentence naming the store and, per model, the configuration read,
    its runtime as recorded and whether it is synthetic (the findings page)."""
    def one(f: StoredModel) -> str:
        runtime = ", ".join(str(f.runtime.get(k)) for k in ("engine", "device_type", "dtype"))
        extra = "; synthetic" if f.synthetic else ""
        trusted = "; weights not here, store trusted" if not f.weights_checked else ""
        return f"`{f.name}` configuration `{f.hash12}` ({runtime}{extra}{trusted})"

    return f"Measured on the store `{out}`: " + "; ".join(one(f) for f in stored) + "."
