"""Runs: sample or score models into the store, in this process or on Ray workers.

:func:`cached_rollouts` gives a run's rollouts from the store without loading the model
when they are all there.

:func:`sample_to_store` samples every prompt with every model into the resumable store
(:mod:`canopy.store`) with the runtime's engine (:mod:`canopy.engines`);
:func:`score_to_store` scores rollouts made elsewhere (:mod:`canopy.score`) into the
same store. With ``ray`` the same steps run on Ray workers (:mod:`canopy.cluster`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import pandas as pd

from canopy import cluster
from canopy.engines import config_record, load, runtime_of, sampler
from canopy.models import LoadedModel, ModelSpec, resolve_spec, source_signature
from canopy.prompts import Prompt, as_prompts
from canopy.sampling import ALGORITHM_VERSION
from canopy.score import plan_scoring, prepare_rollouts, score_record, score_shards
from canopy.settings import Runtime, SamplingConfig, check_ray
from canopy.store import (
    ShardError, fill_shards, open_config, prompt_keys, read_shard, safe_name,
    shard_expectation, shard_path,
)

__all__ = ["sample_to_store", "score_to_store", "cached_rollouts", "ray_specs"]


def ray_specs(models, out, ray, workers) -> list[ModelSpec]:
    """Check the Ray arguments of a run (:func:`canopy.settings.check_ray`; one-line
    errors, before Ray is imported or a model loaded); returns the models as specs (each
    worker loads its own copy)."""
    check_ray(ray, workers, out)
    specs = []
    for m in models:
        if isinstance(m, LoadedModel) or not isinstance(m, (str, ModelSpec)):
            raise ValueError("with ray, give models as names, paths or ModelSpec (each "
                             "worker loads its own copy), not loaded models")
        specs.append(resolve_spec(m) if isinstance(m, str) else m)
    return specs


def _sample_model(loaded, prompts: list[Prompt], config: SamplingConfig, out: Path,
                  progress, runtime: Runtime) -> tuple[pd.DataFrame, int]:
    """Sample one loaded model into the store; returns (its table, prompts reused)."""
    record = config_record(loaded, config, runtime)
    config_dir, digest = open_config(out, loaded.spec, record, prompt_keys(prompts),
                                     batch_size=config.batch_size)
    done, sampled = fill_shards(loaded, prompts, config, config_dir,
                                shard_expectation(digest, config), sampler(runtime), progress)
    table = pd.concat([done[i] for i in range(len(prompts))], ignore_index=True)
    return table, len(prompts) - sampled


def cached_rollouts(spec, prompts: list[Prompt], config: SamplingConfig, out,
                    runtime: Runtime | None = None) -> pd.DataFrame | None:
    """The rollouts of ``prompts`` for ``spec`` from the store, without loading the model,
    or ``None`` unless every shard is there and valid.

    Trusts the latest configuration directory of the model (``current.json``) when its
    manifest has the same :data:`~canopy.sampling.ALGORITHM_VERSION`, spec, sampling
    settings and :func:`~canopy.models.source_signature` (the weights' files unchanged)
    — a cheap check in place of the weights fingerprint — and the same runtime record (``runtime``; default: ``Runtime(dtype=spec.dtype)``).
    """
    model_dir = Path(out) / safe_name(spec.name)
    try:
        current = json.loads((model_dir / "current.json").read_text())["config_hash"]
        config_dir = model_dir / current
        manifest = json.loads((config_dir / "manifest.json").read_text())
    except (OSError, ValueError, KeyError):
        return None
    if (manifest.get("config", {}).get("algorithm_version") != ALGORITHM_VERSION
            or manifest.get("spec") != json.loads(json.dumps(spec.describe()))
            or manifest.get("config", {}).get("sampling") != json.loads(json.dumps(config.distribution()))
            or manifest.get("source_signature") != json.loads(json.dumps(source_signature(spec)))):
        return None
    try:
        wanted = (runtime or Runtime(dtype=spec.dtype)).record()
    except ValueError:  # e.g. a device that is not here
        return None
    if manifest.get("config", {}).get("runtime") != wanted:
        return None
    tables = []
    for p in prompts:
        try:
            tables.append(read_shard(shard_path(config_dir, p.task, p.prompt_id),
                                     {"config_hash": manifest["config_hash"],
                                      "prompt_sha256": p.sha256(), "rollouts": config.rollouts}))
        except (ShardError, OSError):
            return None
    return pd.concat(tables, ignore_index=True)


def sample_to_store(models, prompts, config: SamplingConfig, out=None, *,
                    runtime: Runtime | None = None, progress: bool = True, ray=None,
                    workers: int | None = None) -> pd.DataFrame:
    """Sample ``config.rollouts`` rollouts of every prompt with every model.

    ``models``: one or a list of registry names, paths, :class:`~canopy.models.ModelSpec`
    or :class:`~canopy.models.LoadedModel` (loaded one at a time). ``prompts``: a JSONL
    path, :class:`~canopy.prompts.Prompt` objects or strings. ``out``: the store
    directory; finished shards there are reused and new ones written as prompts
    complete, so an interrupted call resumes, and concurrent calls on one store split
    the prompts. ``out=None`` samples in memory only.
    ``runtime``: :class:`~canopy.settings.Runtime` (engine, device, dtype, threads);
    ``None`` = the default (``hf``, CUDA if available else CPU, the spec's dtype). Each
    model is loaded for it and sampled by its engine (:mod:`canopy.engines`). An already
    loaded model keeps the runtime it was loaded for.
    ``ray``: ``True`` (a local Ray instance) or a cluster ADDRESS spreads the shards
    still to do over ``workers`` Ray workers (:mod:`canopy.cluster`); the store is the
    same, and so are the rollouts on the same device type, thread count and batch plan.
    ``None`` (default): this process only.
    Returns the rollout DataFrame (all models, prompts in the given order);
    ``table.attrs["canopy"]`` holds ``{"reused_prompts", "sampled_prompts", "seconds"}``
    (and ``"workers"``, one summary line per Ray worker, with ``ray``).
    """
    if not isinstance(config, SamplingConfig):
        raise ValueError("config must be a canopy.settings.SamplingConfig")
    if runtime is not None and not isinstance(runtime, Runtime):
        raise ValueError("runtime must be a canopy.settings.Runtime")
    prompts = as_prompts(prompts)
    if isinstance(models, (str, Path)) or not isinstance(models, Sequence):
        models = [models]
    if not models:
        raise ValueError("no models given")
    models = [str(m) if isinstance(m, Path) else m for m in models]
    started = time.perf_counter()
    # ---- Ray (canopy.cluster): the same steps, on workers (the device is resolved there)
    if ray not in (None, False) or workers is not None:
        specs = ray_specs(models, out, ray, workers)
        tables, reused, sampled, lines = cluster.sample_on_ray(
            specs, prompts, config, Path(out), address=ray, workers=workers,
            runtime=runtime, progress=progress)
        result = pd.concat(tables, ignore_index=True)
        result.attrs["canopy"] = {"reused_prompts": reused, "sampled_prompts": sampled,
                                  "seconds": time.perf_counter() - started, "workers": lines}
        return result
    # ---- this process
    if runtime is not None:
        runtime.resolved()  # an unavailable device fails before any model is loaded
    tables, reused, sampled = [], 0, 0
    for model in models:
        loaded = load(model, runtime)
        used = runtime_of(loaded, runtime if getattr(loaded, "runtime", None) is None else None)
        used.apply()  # the recorded thread count is the one used
        if out is None:
            table = sampler(used)(loaded, prompts, config, progress=progress)
            n_reused = 0
        else:
            table, n_reused = _sample_model(loaded, prompts, config, Path(out), progress, used)
        reused += n_reused
        sampled += len(prompts) - n_reused
        tables.append(table)
        del loaded
    result = pd.concat(tables, ignore_index=True)
    result.attrs["canopy"] = {"reused_prompts": reused, "sampled_prompts": sampled,
                              "seconds": time.perf_counter() - started}
    return result


def score_to_store(model, rollouts: pd.DataFrame, config: SamplingConfig, out, *,
                   batch_size: int = 16, progress: bool = True, runtime: Runtime | None = None,
                   ray=None, workers: int | None = None) -> pd.DataFrame:
    """Score ``rollouts`` (:mod:`canopy.score`) and write them to the resumable store
    under ``out`` (the layout of :func:`sample_to_store`, engine ``"score"`` in the
    configuration record, one shard per (task, prompt) keyed by its prompt and
    completions). Finished shards are reused. ``model``: a loaded model, or a name, path
    or spec loaded for ``runtime``. ``ray``/``workers``: score on Ray workers
    (:func:`canopy.cluster.score_on_ray`; ``model`` then must not be loaded). Returns the
    scored table; ``attrs["canopy"]`` holds ``{"reused_prompts", "scored_prompts"}``
    (and ``"workers"`` with ``ray``)."""
    if ray not in (None, False) or workers is not None:
        spec, = ray_specs([model], out, ray, workers)
        return cluster.score_on_ray(spec, rollouts, config, out, batch_size=batch_size,
                                    address=ray, workers=workers, runtime=runtime,
                                    progress=progress)
    loaded = load(model, runtime)
    table = prepare_rollouts(loaded, rollouts)
    done, todo = plan_scoring(score_record(loaded, config), loaded.spec, table, out)
    fresh = score_shards(loaded, todo, config, batch_size=batch_size, progress=progress)
    result = pd.concat(done + fresh, ignore_index=True)
    result.attrs["canopy"] = {"reused_prompts": len(done), "scored_prompts": len(todo)}
    return result
