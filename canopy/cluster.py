"""Sampling on Ray workers: the store's shards, written by many processes or machines.

``canopy.run.sample_to_store(..., ray=True | ADDRESS, workers=N)`` (``canopy sample
--ray [ADDRESS] --workers N``) calls :func:`sample_on_ray`. Per model:

1. ``N`` Ray actors start (one per GPU — ``num_gpus=1`` — when the device is a GPU, else
   CPU actors of ``T`` threads each, ``T`` = the runtime's threads or the cluster's CPUs
   // N, so that N·T CPUs are never oversubscribed) and each loads the model once (the
   first alone, so a GGUF is converted once into the shared cache).
2. Each worker computes the configuration record (:func:`canopy.engines.config_record`)
   where it runs; all must agree (same weights, tokenizer, runtime), and the driver
   opens the configuration directory with it and finds the shards still to do — the
   same functions as the single-process path (:mod:`canopy.store`).
3. The prompts still to do are cut into *units* that preserve the single-process batch
   plan (:func:`shard_units`); the driver hands units to idle workers. A worker
   runs the single-process routine on it (:func:`canopy.store.fill_shards`: reuse valid
   shards, claim the others, sample them with the runtime's engine), which writes each
   shard atomically (temporary file + rename) into the same store. Only small summaries
   travel back to the driver; at the end the driver reads the shards from the store (so
   the store must be a directory all nodes share).

Fault tolerance: a worker that dies (killed, out of memory, node lost) is restarted by
Ray (``max_restarts``), reloads the model and is given its unit again
(``max_task_retries``); shards it had finished are kept and the rest resampled, with the
same seeds, so nothing is lost or duplicated and a half-written shard is never visible
(its temporary file is a dot-file the store never reads). A driver that is killed takes
its workers with it; a rerun resumes from the shards on disk, as without Ray.

Ray is imported here only, and only when ``ray`` is given. Without Ray nothing changes.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections import deque
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from canopy import cache_dir
from canopy.engines import config_record, load, sampler
from canopy.sampling import plan_batches
from canopy.score import (
    plan_scoring, prepare_rollouts, rows_per_batch, score_record, score_shards,
)
from canopy.settings import Runtime
from canopy.store import (
    ShardError, fill_shards, finished_shards, gather, open_config, prompt_keys, read_shard,
    shard_expectation, shard_path,
)

__all__ = ["shard_units", "row_units", "connect", "sample_on_ray", "score_on_ray",
           "ShardWorker"]

#: seconds to wait for a TCP connection to a cluster address before failing
CONNECT_TIMEOUT_S = 5.0
#: seconds to wait for the cluster to place all workers before failing
PLACEMENT_TIMEOUT_S = 120.0
#: how often Ray restarts a dead worker, and retries its unit, per run
MAX_RESTARTS = 3

_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM")


def shard_units(n_prompts: int, rollouts: int, batch_size: int) -> list[range]:
    """Cut prompt indices ``0..n_prompts-1`` into the smallest consecutive units whose
    rows fill whole batches of :func:`canopy.sampling.plan_batches`.

    A unit starts where a batch starts with a prompt's first rollout, so sampling the
    unit's prompts alone replays exactly the single-process batches: the same rows
    share each forward pass, hence the same floating-point results. With
    ``batch_size`` dividing ``rollouts`` a unit is one prompt; in general it holds
    ``batch_size / gcd(rollouts, batch_size)`` prompts (fewer at the end).
    """
    starts = [0]
    for batch in plan_batches(n_prompts, rollouts, batch_size):
        prompt, first, _ = batch[0]
        if first == 0 and prompt > starts[-1]:
            starts.append(prompt)
    ends = starts[1:] + [n_prompts]
    return [range(a, b) for a, b in zip(starts, ends) if b > a]


# ------------------------------------------------------------------------------ Ray


def _ray():
    try:
        import ray
    except ImportError:
        raise ValueError("--ray needs the Ray package: install canopy[ray] "
                         "(pip install 'ray==2.60.*')") from None
    return ray


def _probe(address: str) -> None:
    """Fail within :data:`CONNECT_TIMEOUT_S` with one line when ``address`` is not
    reachable (``ray.init`` itself may retry for a minute)."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[1] if "://" in address else address
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--ray address must be HOST:PORT, ray://HOST:PORT or auto, got "
                         f"{address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ValueError(f"cannot reach a Ray cluster at {address} ({reason}); start one "
                         "with `ray start --head` on its head node, or give --ray without "
                         "an address for a local instance") from None


def connect(address=True) -> bool:
    """Connect to Ray: ``True``/``None``/``"local"`` starts a local instance (no dashboard,
    worker logs not forwarded), a string joins the cluster at that address (checked to be
    reachable first). A connection that already exists (``ray.init`` called by the
    caller) is used as it is. Returns whether this call started it (and so
    should shut it down)."""
    ray = _ray()
    local = address in (True, None, "", "local")
    if not local:
        _probe(str(address))
    if ray.is_initialized():
        return False
    import logging

    options = dict(log_to_driver=False, logging_level=logging.ERROR, namespace="canopy")
    if local:
        ray.init(address="local", include_dashboard=False,
                 object_store_memory=256 * 2 ** 20, **options)
    else:
        try:
            ray.init(address=str(address), **options)
        except (ConnectionError, RuntimeError) as exc:
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            raise ValueError(f"cannot connect to the Ray cluster at {address}: {first}") from None
    return True


# --------------------------------------------------------------------------- workers


class ShardWorker:
    """A Ray actor: one loaded model that samples units of prompts into the store."""

    def __init__(self, spec, runtime, env: dict):
        os.environ.update(env)
        import torch

        self.runtime = runtime.resolved()  # on a GPU worker Ray has set CUDA_VISIBLE_DEVICES
        self.loaded = load(spec, self.runtime)
        self.threads = torch.get_num_threads()

    def ready(self) -> bool:
        """True once the model is loaded."""
        return True

    def info(self, config, engine: str = "sample") -> dict:
        """Where this worker runs and the configuration record it works under
        (``engine="score"``: the record of :func:`canopy.score.score_record`)."""
        model = getattr(self.loaded, "model", None)
        device = str(next(model.parameters()).device) if model is not None else "?"
        if engine == "score":
            record = score_record(self.loaded, config)
        else:
            record = config_record(self.loaded, config, self.runtime)
        return {"pid": os.getpid(), "host": socket.gethostname(), "threads": self.threads,
                "device": device, "spec": self.loaded.spec, "record": record}

    def prepare(self, rollouts, config, batch_size: int):
        """Rollouts to score, normalised (:func:`canopy.score.prepare_rollouts`), and the
        rows per teacher-forced pass."""
        return (prepare_rollouts(self.loaded, rollouts),
                rows_per_batch(self.loaded, config, batch_size))

    def sample(self, prompts, config, config_dir: str, digest: str) -> dict:
        """Sample the prompts of one unit whose shards are not in the store yet, write
        their shards; return a summary (no rollouts travel back)."""
        started, count = time.perf_counter(), {"rollouts": 0, "tokens": 0}
        engine = sampler(self.runtime)

        def counting(loaded, prompts, config, *, skip=None, on_prompt=None, progress=False):
            def on(i, table):
                count["rollouts"] += len(table)
                count["tokens"] += int(table["length"].sum())
                on_prompt(i, table)
            return engine(loaded, prompts, config, skip=skip, on_prompt=on, progress=progress)

        _, sampled = fill_shards(self.loaded, prompts, config, Path(config_dir),
                                 shard_expectation(digest, config), counting, False)
        return {"pid": os.getpid(), "shards": sampled, **count,
                "seconds": time.perf_counter() - started}

    def score(self, todo, config, batch_size: int) -> dict:
        """Score one unit of shards (:func:`canopy.score.score_shards`) and write them; a
        retried unit is scored again whole, which rewrites the same bytes."""
        started = time.perf_counter()
        fresh = score_shards(self.loaded, todo, config, batch_size=batch_size)
        return {"pid": os.getpid(), "shards": len(fresh),
                "rollouts": sum(len(t) for t in fresh),
                "tokens": int(sum(t["length"].sum() for t in fresh)),
                "seconds": time.perf_counter() - started}


def row_units(sizes: list[int], per_batch: int) -> list[range]:
    """Cut consecutive groups of ``sizes`` rows into the smallest units whose rows fill
    whole passes of ``per_batch`` consecutive rows (the packing of
    :func:`canopy.score.score_rollouts`), so that a worker scoring a unit alone runs
    exactly the single-process passes."""
    units, start, rows = [], 0, 0
    for k, size in enumerate(sizes):
        rows += size
        if rows % per_batch == 0:
            units.append(range(start, k + 1))
            start = k + 1
    if start < len(sizes):
        units.append(range(start, len(sizes)))
    return units


def _after_unit(busy_pids: list[int], units_done: int) -> None:
    """Called in the driver after each finished unit (a hook for the fault tests)."""


def _is_gpu(ray, runtime) -> bool:
    device = str(getattr(runtime, "device", "auto") or "auto")
    if device.startswith("cuda"):
        return True
    if device == "auto":
        return ray.cluster_resources().get("GPU", 0) >= 1
    return False


def _plan_workers(ray, runtime, workers: int | None) -> tuple[int, dict, int | None]:
    """(workers, resources per worker, CPU threads per worker or None for a GPU worker's
    default)."""
    total = ray.cluster_resources()
    gpus, cpus = int(total.get("GPU", 0)), int(total.get("CPU", 0))
    if _is_gpu(ray, runtime):
        n = workers or max(gpus, 1)
        if n > gpus:
            raise ValueError(f"{n} GPU worker(s) asked for but the Ray cluster has {gpus} "
                             "GPU(s); lower --workers or use --device cpu")
        return n, {"CPU": 1, "GPU": 1}, getattr(runtime, "threads", None)
    threads = getattr(runtime, "threads", None)
    n = workers or max(1, cpus // (threads or 4))
    threads = threads or max(1, cpus // n)
    if n * threads > cpus:
        raise ValueError(f"{n} CPU worker(s) x {threads} thread(s) need {n * threads} CPUs "
                         f"but the Ray cluster has {cpus}; lower --workers or --threads")
    return n, {"CPU": threads}, threads


def _worker_env() -> dict:
    env = {k: os.environ[k] for k in _ENV if k in os.environ}
    env["CANOPY_CACHE"] = str(cache_dir().resolve())
    return env


def sample_on_ray(specs, prompts, config, out, *, address=True, workers: int | None = None,
                  runtime=None, progress: bool = True) -> tuple[list[pd.DataFrame], int, int, list]:
    """Sample every spec's prompts on Ray workers into the store ``out`` (see the module
    docstring). Returns ``(tables, reused_prompts, sampled_prompts, worker_summaries)``,
    one table per spec in prompt order, read back from the store."""
    ray = _ray()
    started_here = connect(address)
    try:
        tables, reused, sampled, summaries = [], 0, 0, []
        for spec in specs:
            table, n_reused, lines = _sample_model(ray, spec, prompts, config, Path(out),
                                                   workers, runtime, progress)
            tables.append(table)
            reused += n_reused
            sampled += len(prompts) - n_reused
            summaries.extend(lines)
        return tables, reused, sampled, summaries
    finally:
        if started_here:
            ray.shutdown()


@contextmanager
def _pool(ray, spec, runtime, workers):
    """Start the workers of one model (the first alone, so that a GGUF is converted
    once); yields them; kills them and frees their placement at the end."""
    import dataclasses

    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    runtime = runtime or Runtime(dtype=spec.dtype)
    n, resources, threads = _plan_workers(ray, runtime, workers)
    # each worker sees its own GPU as cuda (Ray sets CUDA_VISIBLE_DEVICES), or the CPU
    device = "cuda" if "GPU" in resources else ("mps" if runtime.device == "mps" else "cpu")
    worker_runtime = dataclasses.replace(runtime, device=device, threads=threads)
    group = placement_group([dict(resources)] * n)
    actors = []
    try:
        try:
            ray.get(group.ready(), timeout=PLACEMENT_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise ValueError(f"the Ray cluster could not place {n} worker(s) of {resources} "
                             f"within {PLACEMENT_TIMEOUT_S:.0f} s (free: "
                             f"{ray.available_resources()}); lower --workers") from None
        remote = ray.remote(ShardWorker)
        env = _worker_env()

        def start(k: int):
            return remote.options(
                num_cpus=resources["CPU"], num_gpus=resources.get("GPU", 0),
                max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    group, placement_group_bundle_index=k),
            ).remote(spec, worker_runtime, env)

        actors.append(start(0))
        _get(ray, actors[0].ready.remote())
        actors.extend(start(k) for k in range(1, n))
        yield actors
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)
        remove_placement_group(group)


def _infos(ray, actors, config, engine: str = "sample") -> list[dict]:
    """The workers' :meth:`ShardWorker.info`; all must have the same record."""
    infos = _get(ray, [a.info.remote(config, engine) for a in actors])
    record = infos[0]["record"]
    for info in infos[1:]:
        if info["record"] != record:
            differ = sorted(k for k in record if info["record"].get(k) != record[k])
            raise ValueError(f"Ray workers disagree on the configuration ({', '.join(differ)}"
                             f" differ between {infos[0]['host']} and {info['host']}): "
                             "install the same packages and weights on every node")
    return infos


def _sample_model(ray, spec, prompts, config, out: Path, workers, runtime, progress):
    with _pool(ray, spec, runtime, workers) as actors:
        infos = _infos(ray, actors, config)
        config_dir, digest = open_config(out, infos[0]["spec"], infos[0]["record"],
                                         prompt_keys(prompts), batch_size=config.batch_size)
        expect = shard_expectation(digest, config)
        done = finished_shards(config_dir, prompts, expect)
        units = deque(u for u in shard_units(len(prompts), config.rollouts, config.batch_size)
                      if any(i not in done for i in u))

        def call(actor, unit):
            return actor.sample.remote([prompts[i] for i in unit], config, str(config_dir),
                                       digest)

        stats = _dispatch(ray, actors, infos, units, call, len(prompts) - len(done),
                          f"sample {spec.name}", "prompt", progress)
    tables, missing = [], []
    for p in prompts:
        try:
            tables.append(read_shard(shard_path(config_dir, p.task, p.prompt_id), expect(p)))
        except (ShardError, OSError):
            missing.append(f"{p.task}/{p.prompt_id}")
    if missing:
        raise RuntimeError(f"{len(missing)} shard(s) missing from {config_dir} after the "
                           f"Ray run (first: {missing[0]}); is the store a directory "
                           "that every node shares?")
    lines = _summaries(spec.name, infos, stats, progress)
    return gather(prompts, tables), len(done), lines


def score_on_ray(spec, rollouts: pd.DataFrame, config, out, *, batch_size: int = 16,
                 address=True, workers: int | None = None, runtime=None,
                 progress: bool = True) -> pd.DataFrame:
    """:func:`canopy.run.score_to_store` on Ray workers (``canopy score --ray``): the
    same store, the same scores (units of shards replay the single-process packing,
    :func:`row_units`). Returns the scored table; ``attrs["canopy"]`` holds
    ``{"reused_prompts", "scored_prompts", "workers"}``."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer ≥ 1, got {batch_size!r}")
    ray = _ray()
    started_here = connect(address)
    try:
        with _pool(ray, spec, runtime, workers) as actors:
            table, per_batch = _get(ray, actors[0].prepare.remote(rollouts, config, batch_size))
            infos = _infos(ray, actors, config, "score")
            done, todo = plan_scoring(infos[0]["record"], infos[0]["spec"], table, Path(out))
            units = deque(row_units([len(g) for _, _, g, _, _ in todo], per_batch))

            def call(actor, unit):
                return actor.score.remote([todo[i] for i in unit], config, batch_size)

            stats = _dispatch(ray, actors, infos, units, call, len(todo),
                              f"score {spec.name}", "prompt", progress)
        fresh = []
        for task, pid, _, expect, path in todo:
            try:
                fresh.append(read_shard(path, expect))
            except Exception:  # noqa: BLE001 - any failure: not there for the driver
                raise RuntimeError(f"shard {path} missing or unreadable after the Ray run; "
                                   "is the store a directory that every node shares?") from None
        result = pd.concat(done + fresh, ignore_index=True)
        result.attrs["canopy"] = {"reused_prompts": len(done), "scored_prompts": len(todo),
                                  "workers": _summaries(spec.name, infos, stats, progress)}
        return result
    finally:
        if started_here:
            ray.shutdown()


def _get(ray, refs):
    """``ray.get`` that re-raises a worker's own exception (e.g. a one-line ValueError
    about a missing model) instead of Ray's wrapper."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if isinstance(getattr(exc, "cause", None), Exception) else None
        if cause is not None:
            raise cause from None
        raise


def _dispatch(ray, actors, infos, units, call, total, desc, unit_name,
              progress) -> list[dict]:
    """Hand units to idle workers (``call(actor, unit)`` → a reference to a summary)
    until all are done; returns per-worker statistics."""
    stats = [{"shards": 0, "rollouts": 0, "tokens": 0, "seconds": 0.0, "restarts": 0,
              "pid": info["pid"]} for info in infos]
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, desc=f"{desc} on {len(actors)} Ray workers", unit=unit_name)
    running: dict = {}

    def submit(k: int) -> None:
        if units:
            running[call(actors[k], units.popleft())] = k

    started, rollouts, tokens, units_done = time.perf_counter(), 0, 0, 0
    try:
        for k in range(len(actors)):
            submit(k)
        while running:
            ready, _ = ray.wait(list(running), num_returns=1)
            k = running.pop(ready[0])
            try:
                result = _get(ray, ready[0])
            except ray.exceptions.RayActorError as exc:
                raise RuntimeError(f"Ray worker {k} died {MAX_RESTARTS + 1} times "
                                   f"({type(exc).__name__}); finished shards are kept and "
                                   "a rerun resumes") from None
            s = stats[k]
            if result["pid"] != s["pid"]:
                s["restarts"] += 1
                s["pid"] = result["pid"]
            for key in ("shards", "rollouts", "tokens", "seconds"):
                s[key] += result[key]
            rollouts += result["rollouts"]
            tokens += result["tokens"]
            units_done += 1
            if bar is not None:
                elapsed = max(time.perf_counter() - started, 1e-9)
                bar.set_postfix_str(f"{rollouts / elapsed:.1f} rollouts/s, "
                                    f"{tokens / elapsed:.0f} tok/s")
                bar.update(result["shards"])
            _after_unit([stats[j]["pid"] for j in running.values()], units_done)
            submit(k)
    finally:
        if bar is not None:
            bar.close()
    return stats


def _summaries(name, infos, stats, progress) -> list[str]:
    """One line per worker; printed to stderr with ``progress``."""
    lines = []
    for k, (info, s) in enumerate(zip(infos, stats)):
        rate = s["tokens"] / s["seconds"] if s["seconds"] else 0.0
        restarts = f", {s['restarts']} restart(s)" if s["restarts"] else ""
        lines.append(f"  {name} worker {k} ({info['host']} pid {s['pid']}, {info['device']}, "
                     f"{info['threads']} thread(s)): {s['shards']} shards, {s['rollouts']} "
                     f"rollouts, {s['tokens']} tokens in {s['seconds']:.1f} s busy "
                     f"({rate:.0f} tok/s){restarts}")
    if progress:
        for line in lines:
            print(line, file=sys.stderr)
    return lines
