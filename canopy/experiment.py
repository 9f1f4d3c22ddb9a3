"""Experiment files (YAML): the only reader of profiles.

An experiment file::

    models: [gemma-3-270m, gemma-3-270m-sft, smollm2-135m-instruct]   # registry names/paths
    # or, stating each model's role (canopy.entries.entry_spec; paths relative to this file):
    # models:
    #   - {path: ../my-base, family: mine, variant: base}
    #   - {path: ../my-sft, family: mine, variant: instruct, chat_template: true}
    tasks: [coding, math, stories, completion]    # prompt files <prompts_dir>/<task>.jsonl
    prompts_dir: ../prompts      # optional; relative to this file; default <repo>/data/prompts
    out: null                    # optional rollout directory (relative: to this file); default
                                 #   cache_dir()/rollouts/<file stem>-<profile>
    ray: null                    # optional: true (a local Ray instance) or a cluster
    workers: null                #   ADDRESS, and the number of Ray workers (canopy.cluster)
    simulation_seeds: 200        # optional: simulated panels per scenario (chapter 6)
    sampling: {rollouts: 8, max_new_tokens: 128, temperature: 1.0, top_p: 1.0, seed: 0,
               batch_size: 16, prompts_per_task: 10}   # prompts_per_task null = all;
               # left out: the defaults of canopy.settings.SamplingConfig (top_k 100)
    runtime: {engine: hf, device: auto, dtype: float32, threads: null}   # optional;
               # these are the defaults (canopy.settings.Runtime); threads null = default
    profiles:
      quick: {sampling: {rollouts: 4, max_new_tokens: 32, prompts_per_task: 2}}
      default: {}

A profile has the shape of the top level (any key but ``profiles``) and is merged over it (``sampling`` and ``runtime``
key by key). Overrides passed
by the caller (CLI flags) are applied last. Unknown keys are errors.

Prompt files (``<prompts_dir>/<task>.jsonl``) are read by :mod:`canopy.prompts`.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

from canopy import REPO_ROOT, cache_dir
from canopy.entries import check_entry, entry_name, entry_specs
from canopy.models import ModelSpec
from canopy.prompts import read_prompts
from canopy.settings import (
    RUNTIME_KEYS, SAMPLING_KEYS, Runtime, SamplingConfig, check_runtime, check_sampling,
)

__all__ = ["Experiment", "profile_names", "load_experiment", "resolve_experiment",
           "DEFAULT_EXPERIMENT"]

DEFAULT_EXPERIMENT = REPO_ROOT / "data" / "experiments" / "default.yaml"
_TOP_KEYS = {"models", "tasks", "prompts_dir", "out", "sampling", "runtime", "profiles",
             "ray", "workers", "simulation_seeds"}
#: Simulated panels per scenario in chapter 6's coverage study, unless the file says.
DEFAULT_SIMULATION_SEEDS = 200
_SAMPLING_KEYS = set(SAMPLING_KEYS) | {"prompts_per_task"}
_RUNTIME_KEYS = set(RUNTIME_KEYS)


@dataclass
class Experiment:
    """A resolved experiment: models, tasks, sampling settings, where prompts and
    rollouts live. ``entries``: the models as written (names, paths or mappings:
    :func:`canopy.entries.entry_spec`; relative paths made absolute); ``models``: their
    names; ``specs``: how each is taken (family, variant, chat template), in the same
    order. ``runtime_stated``: the runtime settings the file or the caller set."""

    models: list[str]
    tasks: list[str]
    sampling: SamplingConfig
    prompts_per_task: int | None
    prompts_dir: Path
    out: Path
    name: str = "experiment"
    profile: str = "default"
    raw: dict = field(default_factory=dict, repr=False)
    runtime: Runtime = field(default_factory=Runtime)
    ray: bool | str | None = None
    workers: int | None = None
    simulation_seeds: int = DEFAULT_SIMULATION_SEEDS
    entries: list = field(default_factory=list)
    runtime_stated: set = field(default_factory=set)
    _stored: tuple | None = field(default=None, init=False, repr=False, compare=False)

    @cached_property
    def specs(self) -> list:
        """How each model is taken (:func:`canopy.entries.entry_specs` of ``entries``)."""
        try:
            return entry_specs(self.entries or self.models)
        except FileNotFoundError:
            return entry_specs([self._stored_entry(e) for e in (self.entries or self.models)])

    def _stored_entry(self, entry):
        """``entry``, or — a mapping whose ``path`` is not on this machine (a store
        copied from where the model was) — the spec the store recorded for that model
        with the entry's family, variant, chat template and dtype
        (:func:`canopy.entries.entry_spec`'s rules), so that the store can be read."""
        import dataclasses
        import json

        from canopy.entries import VARIANT_NAMES
        from canopy.store import safe_name

        if not isinstance(entry, dict) or "path" not in entry \
                or Path(entry["path"]).expanduser().exists():
            return entry
        name = entry_name(entry)
        model_dir = self.out / safe_name(name)
        try:
            current = json.loads((model_dir / "current.json").read_text())["config_hash"]
            stored = json.loads((model_dir / str(current)[:12] / "manifest.json").read_text())
            spec = ModelSpec(**{k: v for k, v in stored["spec"].items()
                                if k in ModelSpec.__dataclass_fields__})
        except (OSError, ValueError, KeyError, TypeError):
            return entry  # entry_spec names the missing folder
        role = VARIANT_NAMES[entry.get("variant") or "base"]
        template = entry.get("chat_template")
        changes = {"name": name, "family": entry.get("family") or name, "variant": role,
                   "chat_template": (role == "fine-tuned") if template is None else template}
        if "dtype" in entry:
            changes["dtype"] = entry["dtype"]
        return dataclasses.replace(spec, **changes)

    def prompts(self) -> list:
        """The first ``prompts_per_task`` prompts of each task file, task by task."""
        out = []
        for task in self.tasks:
            prompts = read_prompts(self.prompts_dir / f"{task}.jsonl", task)
            out.extend(prompts[: self.prompts_per_task] if self.prompts_per_task else prompts)
        return out

    def stored_models(self, *, progress: bool = True, resample: bool = False) -> list:
        """Each model's configuration in the store, every prompt's shard there
        (:class:`canopy.reading.StoredModel`, in the order of ``specs``): read as stored
        when it matches the experiment (:func:`canopy.reading.stored_model`: whatever
        engine, device or dtype made it, unless a stated runtime setting differs; no model
        is loaded), sampled (resumably) otherwise.

        When the store holds a model in another configuration (other family, variant,
        chat template, sampling settings or stated runtime settings:
        :func:`canopy.store.configuration_change`) this is a one-line ``ValueError``
        naming both, unless ``resample`` (a chapter's ``resample`` parameter: ``canopy
        book -p resample true``) asks to sample the experiment's configuration (it then
        becomes the store's current one). When the stored configuration lacks shards and
        the model is not on this machine to sample them, a one-line ``ValueError`` names
        the store, the model and how many prompts are missing. Remembered: a second
        call reads nothing again."""
        key = (resample,)
        if self._stored is not None and self._stored[0] == key:
            return self._stored[1]
        prompts, found_all = self.prompts(), []
        for spec in self.specs:
            found_all.append(self._stored_model(spec, prompts, progress, resample))
        self._stored = (key, found_all)
        return found_all

    def _stored_model(self, spec, prompts, progress: bool, resample: bool):
        from canopy.models import available
        from canopy.reading import missing_shards_message, stated_runtime, stored_model
        from canopy.store import changed_configuration_message, configuration_change

        stated = stated_runtime(self.runtime, self.runtime_stated)
        found = stored_model(spec, prompts, self.sampling, self.out, stated)
        if found is not None and not found.missing:
            return found
        here, why = available(spec)
        if found is not None and not here:
            raise ValueError(missing_shards_message(self.out, found, why))
        if not resample:
            try:
                record = self.runtime.record()
            except ValueError:  # a device that is not here: sampling says so
                record = None
            change = configuration_change(self.out, spec, self.sampling, record,
                                          self.runtime_stated)
            if change is not None and change[1] and found is None:
                raise ValueError(changed_configuration_message(
                    self.out, spec.name, *change,
                    "rerun with resample (canopy book -p resample true; in Python "
                    "experiment.rollouts(resample=True))"))
        from canopy.run import sample_to_store  # torch: only when sampling

        sample_to_store([spec], prompts, self.sampling, self.out,
                                runtime=self.runtime, progress=progress,
                                ray=self.ray, workers=self.workers)
        found = stored_model(spec, prompts, self.sampling, self.out, stated)
        if found is None or found.missing:  # e.g. a store that cannot be written
            raise ValueError(f"the store {self.out} does not hold the rollouts of "
                             f"{spec.name} just sampled; give a writable out directory")
        return found

    @staticmethod
    def _warn_beyond_tokenizer(table, specs) -> None:
        from canopy.model_files import beyond_tokenizer_lines

        for line in beyond_tokenizer_lines(table, specs):
            warnings.warn(line, stacklevel=4)

    def summaries(self, *, progress: bool = True, resample: bool = False, text: bool = True):
        """The per-rollout summaries of every model's rollouts
        (:data:`canopy.summaries.SUMMARY_COLUMNS`: N, H, S, truncation, rep-4, text, …),
        the rows of :meth:`rollouts` without the per-step lists: what every per-rollout
        analysis reads, in memory that follows the rollouts, never the steps. Models are
        taken as :meth:`stored_models` takes them. ``text=False``: without the decoded
        texts (most of the memory; chapters that neither embed nor show texts)."""
        from canopy.model_files import padded_vocabularies
        from canopy.reading import read_columns, read_summaries

        stored = self.stored_models(progress=progress, resample=resample)
        padded = padded_vocabularies(self.specs)  # models whose tokenizer is here
        if padded:  # ids beyond the tokenizer, counted as on the full table
            self._warn_beyond_tokenizer(read_columns(
                [f for f in stored if f.name in padded], ["model", "token_ids"]), self.specs)
        return read_summaries(stored, text=text)

    def position_profile(self, *, progress: bool = True, resample: bool = False, **options):
        """:func:`canopy.entropy.position_profile` of every model's rollouts, streamed
        shard by shard (:func:`canopy.reading.stream_profile`; ``options``: ``by_task``,
        ``all_tasks``, ``max_position``)."""
        from canopy.reading import stream_profile

        return stream_profile(self.stored_models(progress=progress, resample=resample),
                              **options)

    def rollouts(self, *, progress: bool = True, resample: bool = False):
        """The experiment's rollouts, all models, with every step (memory grows with the
        steps; the chapters read :meth:`summaries` and :meth:`position_profile`).
        Models are taken as :meth:`stored_models` takes them: read straight from the
        store when their shards are there (no model is loaded), sampled otherwise."""
        from canopy.reading import read_rollouts

        stored = self.stored_models(progress=progress, resample=resample)
        table = read_rollouts(stored)
        self._warn_beyond_tokenizer(table, self.specs)
        return table


def _merge(base: dict, over: dict, where: str) -> dict:
    unknown = set(over) - (_TOP_KEYS - {"profiles"})
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}")
    merged = dict(base)
    for key, value in over.items():
        if key in ("sampling", "runtime"):
            if not isinstance(value, dict):
                raise ValueError(f"{where}: '{key}' must be a mapping")
            merged[key] = {**(base.get(key) or {}), **value}
        else:
            merged[key] = value
    return merged


def _from_folder(entry, folder: Path):
    """A model entry of an experiment file with a relative path taken from the file's
    folder (registered names and Hugging Face ids are left alone)."""
    from canopy.models import REGISTRY

    if isinstance(entry, dict) and "path" in entry:
        path = Path(entry["path"]).expanduser()
        return entry if path.is_absolute() else {**entry, "path": str((folder / path).resolve())}
    if isinstance(entry, str) and entry not in REGISTRY and not Path(entry).expanduser().is_absolute() \
            and (folder / entry).exists():
        return str((folder / entry).resolve())
    return entry


def load_experiment(path=None, profile: str = "default",
                    overrides: dict | None = None) -> Experiment:
    """Read an experiment file (default ``data/experiments/default.yaml``), apply the
    ``profile`` and then ``overrides`` (top-level keys, or sampling and runtime keys given
    flat, e.g. ``{"models": [...], "rollouts": 4, "device": "cpu"}``; ``None`` values are
    ignored). Imports no torch: the CLI checks experiments with it."""
    resolved = resolve_experiment(path, profile, overrides)
    try:
        runtime = Runtime(**resolved["runtime"])
    except ValueError as exc:
        raise ValueError(f"{resolved['path']}: runtime: {exc}") from None
    fields = {k: v for k, v in resolved.items() if k not in ("path", "sampling", "runtime")}
    return Experiment(**fields, sampling=SamplingConfig(**resolved["sampling"]),
                      runtime=runtime,
                      runtime_stated={k for k, v in resolved["runtime"].items() if v is not None})


def profile_names(path=None) -> list[str]:
    """The profiles an experiment file offers (``default`` always), without torch."""
    import yaml

    path = Path(path) if path is not None else DEFAULT_EXPERIMENT
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return ["default"]
    profiles = raw.get("profiles") if isinstance(raw, dict) else None
    return ["default"] + sorted(set(profiles or {}) - {"default"})


def resolve_experiment(path=None, profile: str = "default",
                       overrides: dict | None = None) -> dict:
    """:func:`load_experiment` as a dict of the fields of :class:`Experiment` (plus
    ``path``), with ``sampling`` and ``runtime`` plain dicts, checked by
    :func:`canopy.settings.check_sampling` and :func:`canopy.settings.check_runtime`."""
    import yaml

    path = Path(path) if path is not None else DEFAULT_EXPERIMENT
    if not path.is_file():
        raise FileNotFoundError(f"experiment file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: the top level must be a mapping")
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {sorted(unknown)}; "
                         f"allowed: {sorted(_TOP_KEYS)}")
    profiles = raw.get("profiles") or {}
    if profile not in profiles and profile != "default":
        raise ValueError(f"{path}: no profile {profile}; profiles: "
                         f"{', '.join(sorted(profiles)) or 'none'}")
    config = _merge({k: v for k, v in raw.items() if k != "profiles"},
                    profiles.get(profile) or {}, f"{path}: profile {profile}")
    flat = {k: v for k, v in (overrides or {}).items() if v is not None}
    sampling_over = {k: flat.pop(k) for k in list(flat) if k in _SAMPLING_KEYS}
    runtime_over = {k: flat.pop(k) for k in list(flat) if k in _RUNTIME_KEYS}
    config = _merge(config, {**flat, "sampling": sampling_over, "runtime": runtime_over},
                    "overrides")
    runtime = dict(config.get("runtime") or {})
    unknown = set(runtime) - _RUNTIME_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown runtime key(s) {sorted(unknown)}; "
                         f"allowed: {sorted(_RUNTIME_KEYS)}")

    sampling = dict(config.get("sampling") or {})
    unknown = set(sampling) - _SAMPLING_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown sampling key(s) {sorted(unknown)}; "
                         f"allowed: {sorted(_SAMPLING_KEYS)}")
    per_task = sampling.get("prompts_per_task")
    try:
        sampling = asdict(check_sampling(sampling))  # every setting, defaults filled in
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    try:
        check_runtime(runtime)
    except ValueError as exc:
        raise ValueError(f"{path}: runtime: {exc}") from None
    seeds = config.get("simulation_seeds", DEFAULT_SIMULATION_SEEDS)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"{path}: simulation_seeds must be a positive integer, got {seeds}")
    models, tasks = config.get("models"), config.get("tasks")
    if not isinstance(tasks, list) or not tasks or not all(isinstance(v, str) for v in tasks):
        raise ValueError(f"{path}: 'tasks' must be a non-empty list of names")
    if not isinstance(models, list) or not models \
            or not all(isinstance(v, (str, dict, ModelSpec)) for v in models):
        raise ValueError(f"{path}: 'models' must be a non-empty list of names, paths or "
                         "mappings (path/name, family, variant, chat_template, dtype)")
    try:
        for entry in models:
            check_entry(entry)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    if "models" not in flat:  # relative paths in the file are taken from its folder
        models = [_from_folder(entry, path.parent) for entry in models]
    if "prompts_dir" in config and config["prompts_dir"]:
        prompts_dir = Path(config["prompts_dir"])
        if not prompts_dir.is_absolute():
            prompts_dir = (path.parent / prompts_dir).resolve()
    else:
        prompts_dir = REPO_ROOT / "data" / "prompts"
    out = Path(config["out"]).expanduser() if config.get("out") else \
        cache_dir() / "rollouts" / f"{path.stem}-{profile}"
    if config.get("out") and "out" not in flat and not out.is_absolute():
        out = (path.parent / out).resolve()  # a relative out in the file: from its folder
    return dict(models=[entry_name(entry) for entry in models], entries=list(models),
                tasks=list(tasks), sampling=sampling,
                prompts_per_task=per_task, prompts_dir=prompts_dir, out=out, name=path.stem,
                profile=profile, raw=raw, runtime=runtime, path=path,
                ray=config.get("ray"), workers=config.get("workers"),
                simulation_seeds=seeds)
