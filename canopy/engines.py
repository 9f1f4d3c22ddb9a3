"""Engines: the one place that knows the built-in decode loop from vLLM.

A :class:`~canopy.settings.Runtime` names an engine (``hf``: :mod:`canopy.sampling` on
transformers; ``vllm``: :mod:`canopy.vllm_engine`, optional and imported only when
asked for). :func:`load` loads a model for a runtime, :func:`sampler` gives the engine's
``sample_prompts``, :func:`runtime_of` the runtime a loaded model runs under, and
:func:`config_record` the record whose hash names a configuration directory of the
store (:mod:`canopy.store`).
"""

from __future__ import annotations

from canopy.models import LoadedModel, ModelSpec, load_model, resolve_spec, tokenizer_record
from canopy.sampling import ALGORITHM_VERSION, sample_prompts
from canopy.settings import Runtime, SamplingConfig

__all__ = ["vllm_engine", "load", "sampler", "runtime_of", "config_record"]


def vllm_engine():
    """The module :mod:`canopy.vllm_engine`; a one-line error when vLLM is missing."""
    try:
        import canopy.vllm_engine as engine
    except ImportError as exc:
        raise ValueError(f"engine 'vllm' is not available ({exc}); install it with "
                         "`make env-vllm`, or use --engine hf") from None
    return engine


def load(model, runtime: Runtime | None = None):
    """``model`` loaded for ``runtime`` (``None``: the default runtime for its spec) by
    the runtime's engine. ``model``: a registry name, path, :class:`ModelSpec`, or an
    already loaded model (returned as it is, keeping the runtime it was loaded for)."""
    if isinstance(model, LoadedModel) or (not isinstance(model, (ModelSpec, str))
                                          and hasattr(model, "stop_ids")):
        return model
    if not isinstance(model, (ModelSpec, str)):
        raise ValueError(f"models must be names, paths, ModelSpec or LoadedModel, got "
                         f"{type(model).__name__}")
    spec = resolve_spec(model) if isinstance(model, str) else model
    runtime = runtime or Runtime(dtype=spec.dtype)
    if runtime.engine == "vllm":
        return vllm_engine().load(spec, runtime.resolved())
    return load_model(spec, runtime=runtime)


def sampler(runtime: Runtime):
    """The ``sample_prompts`` function of the runtime's engine (same signature as
    :func:`canopy.sampling.sample_prompts`)."""
    if runtime.engine == "vllm":
        return vllm_engine().sample_prompts
    return sample_prompts


def runtime_of(loaded, runtime: Runtime | None = None) -> Runtime:
    """The resolved runtime a loaded model runs under: ``runtime`` if given, else the one
    it was loaded for, else (a model built by hand) CPU, the spec's dtype and torch's
    current thread count."""
    found = runtime or getattr(loaded, "runtime", None)
    if found is None:
        import torch

        found = Runtime(device="cpu", dtype=getattr(loaded.spec, "dtype", "float32"),
                        threads=torch.get_num_threads())
    return found.resolved()


def config_record(loaded, config: SamplingConfig, runtime: Runtime | None = None, *,
                  engine: str | None = None) -> dict:
    """The dict whose hash names a configuration directory (:mod:`canopy.store`).

    ``runtime`` (default: the one the model was loaded for) adds ``{"engine",
    "device_type", "dtype", "threads"}`` (threads on CPU only), so runs on another
    engine, device type, dtype or CPU thread count never share shards. ``engine``
    overrides the recorded engine (``"score"`` for :mod:`canopy.score`).
    """
    spec, tok = loaded.spec, loaded.tokenizer
    record_runtime = runtime_of(loaded, runtime).record()
    if engine is not None:
        record_runtime["engine"] = engine
    return {
        "algorithm_version": ALGORITHM_VERSION,
        "runtime": record_runtime,
        "model": {"name": spec.name, "family": spec.family, "variant": spec.variant,
                  "dtype": record_runtime["dtype"], "chat_template": spec.chat_template},
        "fingerprint": loaded.fingerprint,
        "tokenizer": tokenizer_record(tok, spec.chat_template),
        "stop_ids": list(loaded.stop_ids),
        "sampling": config.distribution(),
    }
