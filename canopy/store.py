"""The rollout store: Parquet shards, one per (model, task, prompt), resumable.

Layout under an output directory ``out``::

    out/<model>/current.json                      {"config_hash": …} of the latest run
    out/<model>/<hash12>/manifest.json            configuration, fingerprint, versions
    out/<model>/<hash12>/<task>/<prompt_id>.parquet

``hash12`` is the first 12 hex digits of the configuration hash: sampling settings
(``batch_size`` excluded), the runtime (engine — ``hf``, ``vllm``, or ``score`` for
rollouts scored by :mod:`canopy.score` —, device type, dtype, CPU thread count on CPU),
model name/family/variant/chat template, the weights' fingerprint, the tokenizer
(:func:`~canopy.models.tokenizer_record`: its definition's sha256 and a probe prompt's
ids), the stop ids and the algorithm version. A changed configuration therefore
writes a new directory and never mixes with old shards. Shards are written atomically
(temporary file + ``os.replace``) as soon as a prompt's rollouts are complete; the
Parquet metadata of each shard repeats the configuration hash and the prompt text's
sha256. A rerun reuses every valid shard; a corrupt, partial or stale shard (other
prompt text) is reported with a warning and resampled.

Integrity and sharing (see :mod:`canopy.locks`): shards carry Parquet page checksums
(CRC-32) and a digest of their content in their metadata (:mod:`canopy.digests`: a
sha256 over the Arrow buffers, checked at disk speed on every read; shards of earlier
versions carry a slower sha256 of their values and have their page CRCs verified), so a
flipped bit is detected rather than read as other numbers; :func:`load_rollouts`
refuses a store with damaged shards (naming them) instead of dropping prompts. Two runs
into the same store split the prompts: each prompt is claimed (an OS file lock, free
again when its process dies) before it is sampled, and a run waits for the prompts
another live run is sampling. Temporary files of killed runs are removed on the next
run.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from canopy.digests import digest_meta, skips_page_checksums, verify
from canopy.locks import Claims, remove_dead_temporaries, store_lock
from canopy.models import source_signature
from canopy.prompts import Prompt
from canopy.settings import SamplingConfig, check_integer
from canopy.shardpool import map_in_order

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["load_rollouts", "read_store", "shard_reader", "config_hash", "shard_path", "read_shard", "read_verified",
           "write_shard", "ShardError", "damaged_shards", "damaged_message", "store_shards",
           "open_config", "prompt_keys", "shard_expectation", "finished_shards",
           "fill_shards", "gather", "configuration_change", "changed_configuration_message",
           "safe_name", "now", "package_versions", "write_json",
           "check_out_dir", "check_metrics", "progress_bar", "ROLLOUT_SCHEMA_COLUMNS"]

_META_KEY = b"canopy"

#: The columns of a rollout table and of every shard (format: :mod:`canopy.entropy`).
ROLLOUT_SCHEMA_COLUMNS = (
    "model", "family", "variant", "task", "prompt_id", "rollout_id", "prompt_text",
    "prompt_token_ids", "token_ids", "text", "step_entropy", "step_logprob",
    "step_entropy_raw", "step_stop_logprob", "length", "truncated", "summed_entropy",
    "surprisal",
)


class ShardError(Exception):
    """A shard that cannot be used (unreadable, partial, or of another configuration)."""


# ------------------------------------------------------------------------ configuration


def config_hash(record: dict) -> str:
    """sha256 (hex) of the canonical JSON of ``record``."""
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def package_versions() -> dict:
    """The versions of canopy and the packages its numbers depend on (for manifests)."""
    import pandas as pd

    import numpy
    import torch
    import transformers

    import canopy
    return {"canopy": canopy.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "numpy": numpy.__version__,
            "pandas": pd.__version__, "python": platform.python_version()}


def now() -> str:
    """The time now, UTC, ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` to ``path`` as JSON atomically (temporary file + rename)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


# ------------------------------------------------------------------------------ shards


def safe_name(name: str) -> str:
    """A file-system-safe, collision-free name for a task or prompt id."""
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}", name):
        return name
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:60]
    return f"{cleaned}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def shard_path(config_dir: Path, task: str, prompt_id: str) -> Path:
    """Where the shard of (task, prompt_id) lives in a configuration directory."""
    return Path(config_dir) / safe_name(str(task)) / f"{safe_name(str(prompt_id))}.parquet"


def write_shard(path: Path, table: pd.DataFrame, meta: dict) -> None:
    """Write ``table`` to ``path`` atomically with ``meta`` in the Parquet metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    meta = {**meta, **digest_meta(arrow)}
    arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}),
                                           _META_KEY: json.dumps(meta).encode()})
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(arrow, tmp, write_page_checksum=True)
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_verified(path: Path, expect: dict | None = None, *, data: bytes | None = None):
    """A shard's Arrow table, verified (digest, columns, rollout count and ids 0..M−1,
    metadata as in ``expect``: keys ``config_hash``, ``prompt_sha256``, ``rollouts``);
    raise :class:`ShardError` if it is unreadable, partial or stale. The file is read
    once, into memory, and decoded from there; ``data``: its bytes when the caller has
    read them already (e.g. to hash the file, :func:`canopy.reading.verify_shards`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if data is None:
            data = Path(path).read_bytes()
        skip_crcs = skips_page_checksums(_shard_meta(pq.read_schema(pa.BufferReader(data))))
        arrow = pq.read_table(pa.BufferReader(data), page_checksum_verification=not skip_crcs)
        meta = _shard_meta(arrow.schema)
        damage = verify(arrow, meta)
        names = arrow.column_names
    except Exception as exc:  # noqa: BLE001 - any read failure means a corrupt shard
        first = (str(exc).splitlines() or [""])[0][:80]
        raise ShardError(f"unreadable ({type(exc).__name__}: {first})") from None
    if damage:
        raise ShardError(damage)
    missing = [c for c in ROLLOUT_SCHEMA_COLUMNS if c not in names]
    if missing:
        raise ShardError(f"missing columns {missing}")
    if arrow.num_rows != meta.get("rollouts"):
        raise ShardError(f"holds {arrow.num_rows} rollouts, its metadata says "
                         f"{meta.get('rollouts')}")
    for key, value in (expect or {}).items():
        if meta.get(key) != value:
            raise ShardError(f"stale: {key} differs")
    if sorted(arrow.column("rollout_id").to_pylist()) != list(range(arrow.num_rows)):
        raise ShardError("rollout ids are not 0..M-1")
    return arrow


def read_shard(path: Path, expect: dict | None = None) -> pd.DataFrame:
    """Read one shard as a rollout DataFrame (checks of :func:`read_verified`)."""
    arrow = read_verified(path, expect)
    try:
        return arrow.to_pandas()
    except Exception as exc:  # noqa: BLE001 - e.g. damaged pandas metadata of an old shard
        raise ShardError(f"unreadable ({type(exc).__name__})") from None


def _shard_meta(schema) -> dict:
    """The canopy metadata of a shard's Arrow schema (ValueError if absent or not a mapping)."""
    meta = json.loads((schema.metadata or {})[_META_KEY])
    if not isinstance(meta, dict):
        raise ValueError("metadata is not a mapping")
    return meta


# ---------------------------------------------------------------------------- sampling


# The steps of filling the store, shared by the single-process path (:mod:`canopy.run`),
# scoring (:mod:`canopy.score`) and the Ray workers (:mod:`canopy.cluster`): open the
# configuration directory, find the shards still to do, fill the missing shards.


def prompt_keys(prompts: list[Prompt]) -> dict[str, str]:
    """``{"task/prompt_id": sha256 of the prompt text}``: the manifest's prompt keys."""
    return {f"{p.task}/{p.prompt_id}": p.sha256() for p in prompts}


def open_config(out: Path, spec, record: dict, keys: dict[str, str],
                **fields) -> tuple[Path, str]:
    """Create (or update) the configuration directory of ``record`` under ``out``, under
    a lock shared by concurrent runs: its ``manifest.json`` (``record``, the spec, its
    source signature, package versions, the prompts' ``keys`` merged into those already
    there, and any other ``fields``) and the model's ``current.json``. Returns
    ``(config_dir, digest)`` (``digest``: the full configuration hash)."""
    digest = config_hash(record)
    model_dir = Path(out) / safe_name(spec.name)
    config_dir = model_dir / digest[:12]
    config_dir.mkdir(parents=True, exist_ok=True)
    remove_dead_temporaries(model_dir)
    remove_dead_temporaries(config_dir, recursive=True)
    with store_lock(config_dir / ".manifest.lock"):  # runs sharing the store
        manifest_path = config_dir / "manifest.json"
        manifest = {}
        if manifest_path.is_file():
            try:
                manifest = json.loads(manifest_path.read_text())
            except ValueError:
                warnings.warn(f"rewriting unreadable manifest {manifest_path}", stacklevel=3)
        manifest.update({"config_hash": digest, "config": record,
                         "spec": spec.describe(), **fields,
                         "source_signature": source_signature(spec),
                         "package_versions": package_versions(), "updated": now()})
        manifest.setdefault("created", manifest["updated"])
        manifest.setdefault("prompts", {})
        manifest["prompts"].update(keys)
        write_json(manifest_path, manifest)
        write_json(model_dir / "current.json", {"config_hash": digest[:12]})
    return config_dir, digest


#: The runtime setting behind each key of a runtime record.
_RECORD_SETTING = {"engine": "engine", "device_type": "device", "dtype": "dtype",
                   "threads": "threads"}


def configuration_change(out, spec, config: SamplingConfig, runtime_record: dict | None = None,
                         stated: set | None = None) -> tuple[str, list[str]] | None:
    """How the configuration the store ``out`` holds for ``spec``'s model (its current
    one, ``current.json``) differs from the one asked for, in what a user states: the
    model entry (family, variant, chat template, dtype, source), the sampling settings
    and ``runtime_record`` (:meth:`canopy.settings.Runtime.record`, when given; with
    ``stated``, only the record keys of the runtime settings named there — a default such
    as the thread count, which differs by machine, is not something the user asked for).
    Read without loading anything.

    Returns ``None`` when the store holds no configuration of that model, else
    ``(hash12 of the stored configuration, differences)``: one ``"key: stored → asked"``
    string per differing setting (empty when they agree; a change of the weights' files
    or of canopy's algorithm is not listed: it is resampled, as it must be)."""
    model_dir = Path(out) / safe_name(spec.name)
    try:
        current = json.loads((model_dir / "current.json").read_text())["config_hash"]
        manifest = json.loads((model_dir / current / "manifest.json").read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return None
    changes = []

    def compare(prefix: str, stored: dict, asked: dict, skip=()) -> None:
        stored = stored if isinstance(stored, dict) else {}
        for key, value in json.loads(json.dumps(asked)).items():
            if key not in skip and stored.get(key) != value:
                changes.append(f"{prefix}{key}: {stored.get(key)!r} → {value!r}")

    compare("", manifest.get("spec"), spec.describe(), skip=("install",))
    record = manifest.get("config") or {}
    compare("sampling.", record.get("sampling"), config.distribution())
    if runtime_record is not None:
        asked = {k: v for k, v in runtime_record.items()
                 if stated is None or _RECORD_SETTING.get(k) in stated}
        compare("runtime.", record.get("runtime"), asked)
    return current, changes


def changed_configuration_message(out, name: str, current: str, changes: list[str],
                                  how: str) -> str:
    """One line: the store holds another configuration of model ``name`` and the
    sampling that would replace it is not done unless asked (``how``)."""
    return (f"the store {out} holds model {name} in another configuration ({current}): "
            f"{'; '.join(changes)} (stored → asked); stopping instead of sampling it again. "
            f"To sample the asked configuration (it becomes the store's current one), "
            f"{how}; to keep the stored one, ask for its settings")


def shard_expectation(digest: str, config: SamplingConfig):
    """``expect(prompt)``: the metadata a valid shard of ``prompt`` carries."""
    def expect(p: Prompt) -> dict:
        return {"config_hash": digest, "prompt_sha256": p.sha256(), "rollouts": config.rollouts}
    return expect


def finished_shards(config_dir: Path, prompts: list[Prompt], expect) -> set[int]:
    """Indices of the prompts whose shard in ``config_dir`` is valid (the rest are still
    to do; damaged shards are reported and deleted, as :func:`fill_shards` does)."""
    done = set()
    for i, p in enumerate(prompts):
        path = shard_path(config_dir, p.task, p.prompt_id)
        if path.exists():
            try:
                read_shard(path, expect(p))
                done.add(i)
            except ShardError as exc:
                warnings.warn(f"resampling shard {path}: {exc}", stacklevel=3)
                path.unlink(missing_ok=True)
    return done


def gather(prompts: list[Prompt], tables: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate rollout tables into the given prompt order (rollouts in order)."""
    import pandas as pd

    table = pd.concat([t for t in tables if len(t)], ignore_index=True)
    order = {(p.task, p.prompt_id): i for i, p in enumerate(prompts)}
    table["_order"] = [order[(t, str(q))] for t, q in zip(table["task"], table["prompt_id"])]
    table = table.sort_values(["_order", "rollout_id"], kind="stable").drop(columns="_order")
    return table.reset_index(drop=True)


def progress_bar(progress, total: int, name: str):
    """(bar, whether the caller owns it): a new tqdm bar for ``progress=True``, the given
    bar for a bar, ``None`` for ``False``."""
    if progress is True:
        from tqdm.auto import tqdm
        return tqdm(total=total, desc=f"sample {name}", unit="prompt"), True
    if progress:
        return progress, False
    return None, False


# ------------------------------------------------------------ claims: runs sharing a store


def fill_shards(loaded, prompts: list[Prompt], config: SamplingConfig, config_dir: Path,
                 expect, sampler, progress, poll: float = 1.0) -> tuple[dict, int]:
    """Make sure every prompt has a valid shard in ``config_dir``; returns ({prompt
    index: its rollout table}, how many prompts this process sampled).

    Valid shards are reused; damaged ones are reported and resampled. A prompt is
    sampled only by the process that holds its claim (:class:`canopy.locks.Claims`),
    taken lazily as ``sampler`` reaches the prompt's batch, so concurrent runs split the
    prompts; this process then waits for the prompts other live runs hold, and takes
    over those whose run died. ``sampler`` has the signature of
    :func:`canopy.sampling.sample_prompts`.
    """
    claims = Claims()
    done: dict[int, pd.DataFrame] = {}
    sampled = 0
    paths = [shard_path(config_dir, p.task, p.prompt_id) for p in prompts]

    def reuse(i: int) -> bool:
        if not paths[i].exists():
            return False
        try:
            done[i] = read_shard(paths[i], expect(prompts[i]))
            return True
        except ShardError as exc:
            warnings.warn(f"resampling shard {paths[i]}: {exc}", stacklevel=4)
            paths[i].unlink(missing_ok=True)
            return False

    for i in range(len(prompts)):
        reuse(i)
    bar, own_bar = progress_bar(progress, len(prompts), loaded.spec.name)
    if bar is not None:
        bar.update(len(done))

    def skip(i: int) -> bool:
        if i in done:
            return True
        if paths[i] in claims.held:
            return False
        if not claims.take(paths[i]):
            return True  # another run samples it now
        if reuse(i):  # another run finished it meanwhile
            claims.release(paths[i])
            if bar is not None:
                bar.update(1)
            return True
        return False

    def write(i: int, table: pd.DataFrame) -> None:
        nonlocal sampled
        p = prompts[i]
        write_shard(paths[i], table, {**expect(p), "task": p.task, "prompt_id": p.prompt_id,
                                      "written": now()})
        claims.release(paths[i])
        done[i] = table
        sampled += 1
        rate[0] += len(table)
        rate[1] += int(table["length"].sum())
        if bar is not None:
            elapsed = max(time.perf_counter() - started, 1e-9)
            bar.set_postfix_str(f"{rate[0] / elapsed:.1f} rollouts/s, "
                                f"{rate[1] / elapsed:.0f} tok/s")
            bar.update(1)

    announced, started, rate = False, time.perf_counter(), [0, 0]
    try:
        while len(done) < len(prompts):
            before = len(done)
            # progress=False: the bar is ours
            sampler(loaded, prompts, config, skip=skip, on_prompt=write, progress=False)
            if len(done) < len(prompts) and len(done) == before:
                if not announced:
                    message = (f"waiting for {len(prompts) - len(done)} prompt(s) that another "
                               f"run is sampling into {config_dir}")
                    (bar.write if bar is not None and hasattr(bar, "write") else print)(message)
                    announced = True
                time.sleep(poll)
    finally:
        claims.release_all()
        if own_bar:
            bar.close()
    return done, sampled


# ----------------------------------------------------------------------------- reading


def _config_dirs(root: Path) -> list[Path]:
    """The configuration directories to read: ``root`` itself if it is one, else per
    model the one named in ``current.json`` (latest run)."""
    if (root / "manifest.json").is_file():
        return [root]
    by_model: dict[Path, list[Path]] = {}
    for manifest in sorted(root.rglob("manifest.json")):
        by_model.setdefault(manifest.parent.parent, []).append(manifest.parent)
    chosen = []
    for model_dir, dirs in sorted(by_model.items()):
        pick = dirs[0]
        if len(dirs) > 1:
            try:
                current = json.loads((model_dir / "current.json").read_text())["config_hash"]
                pick = next(d for d in dirs if d.name == current)
            except (OSError, ValueError, KeyError, StopIteration):
                pick = max(dirs, key=lambda d: (d / "manifest.json").stat().st_mtime)
            others = ", ".join(d.name for d in dirs if d != pick)
            warnings.warn(f"{model_dir}: reading configuration {pick.name} (the latest run) "
                          f"and ignoring {others}; pass a configuration directory to "
                          "read another", stacklevel=3)
        chosen.append(pick)
    return chosen


def store_shards(directory) -> list[tuple[Path, dict]]:
    """``(shard path, expected metadata for read_shard)`` of every shard under a store
    directory: the ``out`` of :func:`canopy.run.sample_to_store`, one model's directory,
    or one configuration directory. Per model only the configuration of the latest run is read
    (a warning names any other; another warns when models were sampled with different
    settings). Raises a one-line ``ValueError`` when ``directory`` is not a directory."""
    root = Path(directory)
    if not root.is_dir():
        raise ValueError(f"no rollouts: {root} is not a directory (write one with "
                         f"`canopy sample --out {root}`)")
    shards, samplings = [], {}
    for config_dir in _config_dirs(root):
        try:
            manifest = json.loads((config_dir / "manifest.json").read_text())
        except (OSError, ValueError):
            warnings.warn(f"skipping {config_dir}: unreadable manifest.json", stacklevel=3)
            continue
        samplings[config_dir] = json.dumps(manifest["config"]["sampling"], sort_keys=True)
        shards += [(path, {"config_hash": manifest["config_hash"]})
                   for path in sorted(config_dir.glob("*/*.parquet"))]
    if len(set(samplings.values())) > 1:
        warnings.warn(f"{root}: models were sampled with different settings; comparisons "
                      "across them mix decoding effects", stacklevel=3)
    return shards


def load_rollouts(directory, threads: int | None = None) -> pd.DataFrame:
    """All finished rollouts under a store directory (see :func:`store_shards`), as one
    rollout DataFrame holding every step: memory grows with the steps (for the metrics
    of a large store, read :func:`canopy.summaries.load_summaries`). Raises a one-line
    ``ValueError`` when there are no rollouts, or when any shard is damaged (naming the
    shards and the command that resamples them: reading the rest would silently drop
    those prompts). ``threads``: how many shards are read at once
    (:func:`canopy.shardpool.read_threads`; the result does not depend on it).
    """
    return read_store(directory, read_shard, threads)


def read_store(directory, read, threads: int | None = None) -> pd.DataFrame:
    """``read(path, expect)`` applied to every shard of :func:`store_shards` on
    ``threads`` threads (:func:`canopy.shardpool.map_in_order`), the tables
    concatenated in shard order; the one-line ``ValueError`` of :func:`load_rollouts`
    when there are none or any shard is damaged (all damaged shards named at once)."""
    import pandas as pd

    root = Path(directory)
    tables, damaged = [], []
    for path, table, exc in map_in_order(shard_reader(read), store_shards(root), threads):
        if exc is None:
            tables.append(table)
        else:
            damaged.append((path, exc))
    if damaged:
        raise ValueError(damaged_message(root, damaged))
    if not tables:
        raise ValueError(f"no rollouts under {root}; write some with "
                         f"`canopy sample --out {root}`")
    return pd.concat(tables, ignore_index=True)


def shard_reader(read):
    """For :func:`canopy.shardpool.map_in_order`: ``(path, expect) -> (path, read(path,
    expect), None)``, or ``(path, None, the ShardError)`` for a damaged shard."""
    def one(item):
        path, expect = item
        try:
            return path, read(path, expect), None
        except ShardError as exc:
            return path, None, exc
    return one


def damaged_message(root: Path, damaged: list) -> str:
    """One line naming the damaged shards under ``root`` and how to repair them."""
    def name(path: Path) -> str:
        try:
            return str(path.relative_to(root))
        except ValueError:
            return str(path)

    shown = ", ".join(f"{name(path)} ({exc})" for path, exc in damaged[:3])
    more = f" and {len(damaged) - 3} more" if len(damaged) > 3 else ""
    return (f"{len(damaged)} damaged shard(s) under {root}: {shown}{more}; refusing to "
            f"compute metrics without their prompts. Repair: rerun the `canopy sample ... "
            f"--out {root}` command that wrote them (it keeps the valid shards and "
            f"resamples only these)")


def damaged_shards(directory, threads: int | None = None) -> list[tuple[Path, str]]:
    """(path, reason) of every damaged shard under a store directory, in shard order
    (see :func:`load_rollouts` for which configuration directories are read, and for
    ``threads``)."""
    shards = []
    for config_dir in _config_dirs(Path(directory)):
        try:
            digest = json.loads((config_dir / "manifest.json").read_text())["config_hash"]
        except (OSError, ValueError, KeyError):
            continue
        shards += [(path, {"config_hash": digest})
                   for path in sorted(config_dir.glob("*/*.parquet"))]
    return [(path, str(exc)) for path, _, exc in
            map_in_order(shard_reader(read_shard), shards, threads) if exc is not None]


# ------------------------------------------------------------------ output directories


def check_out_dir(path, *, flag: str = "--out", need_bytes: int = 0) -> Path:
    """Make sure ``path`` is (or can be created as) a writable directory with
    ``need_bytes`` free; creates it. Returns it."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} is a file; give a directory (created if missing)")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{flag} {path}: {parent} is a file, not a directory")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"{flag} {path} cannot be created ({exc.strerror}); give a "
                         "writable directory") from None
    probe = path / f".canopy-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"{flag} {path} is not writable ({exc.strerror}); give a writable "
                         "directory") from None
    if need_bytes:
        free = shutil.disk_usage(path).free
        if free < need_bytes:
            raise ValueError(f"{flag} {path}: {free / 2**20:.0f} MiB free, about "
                             f"{need_bytes / 2**20:.0f} MiB needed; free some space or give "
                             "another directory")
    return path


def check_metrics(rollouts, out, n_boot: int, seed: int) -> None:
    """``canopy metrics`` arguments: a store directory, a writable output directory, a
    non-negative number of bootstrap resamples and seed."""
    check_integer("--n-boot", n_boot, 0)
    check_integer("--seed", seed, 0)
    root = Path(rollouts)
    if not root.is_dir():
        raise ValueError(f"no rollouts: {root} is not a directory (write one with "
                         f"`canopy sample --out {root}`)")
    check_out_dir(out)
