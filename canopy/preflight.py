"""Checks that run before torch is imported or a model is loaded.

A command that is going to fail should fail at once, in one line, and before it has
spent minutes on a model: the CLI calls these first. Each check raises a one-line
``ValueError`` (``FileNotFoundError`` for missing files) saying what to do, and none of
them deletes or rewrites anything (the only side effect: :func:`check_out_dir` creates
the output directory, as the command would). The module imports only the standard
library, ``yaml`` and :mod:`canopy.models` (itself cheap) at call time; it must never
import torch, transformers or :mod:`canopy.sampling`.

- :func:`check_sampling`: the sampling settings (the rules of
  :class:`canopy.sampling.SamplingConfig` plus upper bounds that would otherwise end in
  an allocator error after loading) and ``prompts_per_task``.
- :func:`prompt_records`: the prompt-file parser (also used by
  :func:`canopy.prompts.read_prompts`): every problem names the file and line.
- :func:`check_models`: every model resolves and is available offline, packaged and
  ``.gguf`` files are intact, ``max_new_tokens`` fits each model's context.
- :func:`check_gguf`: a damaged or half-downloaded GGUF file is one line.
- :func:`check_out_dir`: the output directory can be written.
- :func:`check_book`: ``-p`` names against the chapters' parameter cells, ``--only``
  against the chapters.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import shutil
import struct
from pathlib import Path

__all__ = ["SAMPLING_KEYS", "RUNTIME_KEYS", "MAX_NEW_TOKENS", "MAX_ROLLOUTS", "check_sampling",
           "check_prompts_per_task", "check_runtime", "prompt_records", "check_prompt_files", "check_models",
           "check_gguf", "context_length", "check_out_dir", "chapter_parameters",
           "check_book", "check_metrics"]

#: The fields of :class:`canopy.sampling.SamplingConfig` (a test keeps them equal).
SAMPLING_KEYS = ("rollouts", "max_new_tokens", "temperature", "top_k", "top_p", "seed",
                 "batch_size")
#: The fields of :class:`canopy.sampling.Runtime` (a test keeps them equal).
RUNTIME_KEYS = ("engine", "device", "dtype", "threads")
#: Engines, weight dtypes and device names of :class:`canopy.sampling.Runtime` (defined
#: here, torch-free, so that the CLI checks them before torch is imported).
ENGINES = ("hf", "vllm")
RUNTIME_DTYPES = ("float32", "bfloat16", "float16")
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")
#: Upper bounds: beyond them a run cannot finish (memory, time) on any machine here.
MAX_NEW_TOKENS = 1 << 20
MAX_ROLLOUTS = 1 << 20


# ---------------------------------------------------------------------------- settings


def _integer(name: str, value, low: int, high: int | None = None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value}")
    if value < low:
        raise ValueError(f"{name} must be ≥ {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be ≤ {high}, got {value}")


def check_runtime(settings: dict) -> None:
    """Runtime settings (``engine``, ``device``, ``dtype``, ``threads``; a missing or
    ``None`` value means the default). Whether the device exists is checked later, by
    :meth:`canopy.sampling.Runtime.resolved` (it needs torch)."""
    engine, device, dtype = (settings.get(k) for k in ("engine", "device", "dtype"))
    if engine is not None and engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if device is not None and (not isinstance(device, str) or not DEVICE_PATTERN.fullmatch(device)):
        raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {device!r}")
    if dtype is not None and dtype not in RUNTIME_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(RUNTIME_DTYPES)}, got {dtype!r}")
    threads = settings.get("threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise ValueError(f"threads must be an integer ≥ 1 (or None for the default), "
                         f"got {threads!r}")


def check_prompts_per_task(value) -> None:
    """``prompts_per_task``: ``None`` (all prompts) or an integer ≥ 1."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"prompts_per_task must be a positive integer (or left out for all "
                         f"prompts), got {value}")


def check_sampling(settings: dict, *, n_prompts: int | None = None) -> None:
    """Check sampling settings (``None`` values mean "default"; unknown keys are errors).

    Besides :class:`~canopy.sampling.SamplingConfig`'s rules: ``max_new_tokens`` ≤
    :data:`MAX_NEW_TOKENS`, ``rollouts`` ≤ :data:`MAX_ROLLOUTS`, and the random numbers
    of one batch (``batch_size`` × ``max_new_tokens`` float64) fit in half the memory.
    """
    settings = dict(settings)
    check_prompts_per_task(settings.pop("prompts_per_task", None))
    unknown = set(settings) - set(SAMPLING_KEYS)
    if unknown:
        raise ValueError(f"unknown sampling setting(s) {', '.join(sorted(unknown))}; "
                         f"allowed: {', '.join(SAMPLING_KEYS)}")
    _integer("rollouts", settings.get("rollouts"), 1, MAX_ROLLOUTS)
    _integer("max_new_tokens", settings.get("max_new_tokens"), 1, MAX_NEW_TOKENS)
    _integer("top_k", settings.get("top_k"), 0)
    _integer("seed", settings.get("seed"), 0)
    _integer("batch_size", settings.get("batch_size"), 1)
    for name in ("temperature", "top_p"):
        value = settings.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"{name} must be a number, got {value}")
    temperature, top_p = settings.get("temperature"), settings.get("top_p")
    if temperature is not None and not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number > 0 (greedy decoding is not "
                         f"sampling), got {temperature}")
    if top_p is not None and not (0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1] (1 = off), got {top_p}")
    rows = settings.get("batch_size") or 16
    if n_prompts is not None:
        rows = min(rows, n_prompts * (settings.get("rollouts") or 8))
    need = rows * (settings.get("max_new_tokens") or 128) * 8
    memory = _total_memory()
    if memory and need > memory / 2:
        raise ValueError(f"batch_size × max_new_tokens = {rows} × "
                         f"{settings.get('max_new_tokens') or 128} needs {need / 2**30:.0f} GiB "
                         f"for the random numbers alone ({memory / 2**30:.0f} GiB of memory); "
                         "lower --batch-size or --max-new-tokens")


def _total_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


# ------------------------------------------------------------------------ prompt files


def prompt_records(path, task: str | None = None) -> list[tuple[str, str, str]]:
    """``(task, prompt_id, text)`` of each prompt in a JSONL file, in file order (format:
    :mod:`canopy.experiment`). Every problem is a one-line error naming ``file:line``."""
    path = Path(path)
    if not path.is_file():
        if path.is_dir():
            raise ValueError(f"prompt file {path} is a directory; give a .jsonl file")
        raise FileNotFoundError(f"prompt file not found: {path}")
    records, seen = [], set()
    lines = path.read_bytes().split(b"\n")
    for number, raw in enumerate(lines, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path}:{number}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at "
                             f"column {exc.start + 1}); save the file as UTF-8") from None
        if number == 1:
            line = line.removeprefix("\ufeff")  # a byte-order mark
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"{where}: not valid JSON ({getattr(exc, 'msg', exc)})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: expected a JSON object with a 'prompt' field")
        text = obj.get("prompt")
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{where}: 'prompt' must be a non-empty string")
        pid = obj.get("id", number)
        if isinstance(pid, bool) or not isinstance(pid, (str, int)) or str(pid) == "":
            raise ValueError(f"{where}: 'id' must be a non-empty string or an integer")
        name = obj.get("task", task or path.stem)
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}: 'task' must be a non-empty string")
        if (name, str(pid)) in seen:
            raise ValueError(f"{where}: duplicate id '{pid}' in task '{name}'")
        seen.add((name, str(pid)))
        records.append((name, str(pid), text))
    if not records:
        raise ValueError(f"{path}: no prompts in the file")
    return records


def check_prompt_files(paths, per_task: int | None = None) -> int:
    """Parse every prompt file; returns how many prompts will be used."""
    total = 0
    for path in paths:
        found = prompt_records(path)
        total += len(found[:per_task] if per_task else found)
    return total


# ------------------------------------------------------------------------------ models


_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q",
                 11: "q", 12: "d"}


def check_gguf(path) -> dict:
    """Read a GGUF file's header and tensor table (not its weights); returns
    ``{"architecture", "context_length", "tensors", "size"}``.

    Raises a one-line ``ValueError`` naming the file when it is not GGUF, its header is
    garbage, or it is shorter than its tensor table says (half-downloaded). Hand-written
    on purpose: ``gguf.GGUFReader`` parses every metadata value into numpy objects, which
    takes seconds for a large vocabulary (4.6 s measured on smollm2's file); this walks
    the same layout in a fraction of that. Block sizes come from the ``gguf`` package.
    """
    path = Path(path)

    def damaged(why: str) -> ValueError:
        return ValueError(f"damaged GGUF file {path}: {why}; reinstall the package that "
                          "provides it or download the file again")

    import mmap

    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            if size < 24:
                raise damaged(f"only {size} bytes")
            data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as exc:
        raise ValueError(f"cannot read GGUF file {path}: {exc.strerror}") from None
    try:
        if data[:4] != b"GGUF":
            raise damaged("it does not start with the GGUF magic bytes")
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", data, 4)
        if version not in (2, 3) or n_tensors > 1 << 20 or n_kv > 1 << 20:
            raise damaged(f"implausible header (version {version}, {n_tensors} tensors, "
                          f"{n_kv} metadata keys)")
        pos = 24

        def take(fmt: str):
            nonlocal pos
            need = struct.calcsize(fmt)
            if pos + need > size:
                raise damaged("it ends inside its header")
            value = struct.unpack_from("<" + fmt, data, pos)
            pos += need
            return value[0] if len(value) == 1 else value

        def string() -> bytes:
            nonlocal pos
            length = take("Q")
            if pos + length > size:
                raise damaged("a header string runs past the end of the file")
            value = data[pos:pos + length]
            pos += length
            return value

        def value(kind: int, depth: int = 0):
            nonlocal pos
            if kind in _GGUF_SCALARS:
                return take(_GGUF_SCALARS[kind])
            if kind == 8:
                return string()
            if kind == 9 and depth == 0:
                inner, count = take("I"), take("Q")
                if inner in _GGUF_SCALARS:
                    step = struct.calcsize(_GGUF_SCALARS[inner])
                    if pos + count * step > size:
                        raise damaged("a header array runs past the end of the file")
                    pos += count * step
                    return None
                for _ in range(count):
                    value(inner, depth + 1)
                return None
            raise damaged(f"unknown metadata type {kind}")

        meta = {}
        for _ in range(n_kv):
            key = string()
            meta[key.decode("utf-8", "replace")] = value(take("I"))
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

        end = 0
        infos = []
        for _ in range(n_tensors):
            string()
            n_dims = take("I")
            if n_dims > 8:
                raise damaged(f"a tensor with {n_dims} dimensions")
            dims = [take("Q") for _ in range(n_dims)]
            kind, offset = take("I"), take("Q")
            infos.append((dims, kind, offset))
        alignment = meta.get("general.alignment") or 32
        start = -(-pos // alignment) * alignment
        for dims, kind, offset in infos:
            try:
                block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
            except (ValueError, KeyError):
                raise damaged(f"unknown tensor type {kind}") from None
            end = max(end, start + offset + math.prod(dims) // block * type_size)
        if end > size:
            raise damaged(f"it has {size} bytes but its tensors need {end} "
                          "(truncated, e.g. half-downloaded)")
    finally:
        data.close()
    arch = meta.get("general.architecture")
    arch = arch.decode("utf-8", "replace") if isinstance(arch, bytes) else None
    ctx = meta.get(f"{arch}.context_length") if arch else None
    return {"architecture": arch, "context_length": int(ctx) if isinstance(ctx, int) else None,
            "tensors": n_tensors, "size": size}


def context_length(spec) -> int | None:
    """The longest sequence a model takes (``max_position_embeddings`` of its config, or
    the GGUF header's context length), or ``None`` when it is not cheap to know."""
    from canopy import cache_dir
    from canopy.models import get_spec

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


def check_models(specs, *, max_new_tokens: int | None = None, need_fresh: bool = True,
                 notes: list | None = None) -> list:
    """Check that every model (a :class:`~canopy.models.ModelSpec`, e.g. from
    :func:`canopy.entries.entry_specs`) can be loaded offline now, before the first one is
    loaded, including its tokenizer files and chat template
    (:func:`canopy.model_files.check_model_files`); returns the specs. ``need_fresh``:
    also check the files a first load converts (packaged/``.gguf`` GGUFs). ``notes``: a
    list that receives the one-line notes (e.g. a vocabulary larger than the tokenizer);
    without one they are printed to stderr."""
    import sys

    from canopy.model_files import check_model_files
    from canopy.models import _hub_cached, _offline, available

    checked = []
    for spec in specs:
        name = spec.name
        if spec.kind == "hub":
            if _offline() and not _hub_cached(spec.source):
                where = ("neither a local path (no such directory) nor, as a Hugging Face "
                         "id, available offline" if "/" in spec.source
                         else "not available offline")
                raise ValueError(f"model {spec.source} is {where}: set HF_HUB_OFFLINE=0 or give a "
                                 "local path")
        else:
            ok, needs = available(spec)
            if not ok:
                raise ValueError(f"model {name} is not available: {needs}")
        found = check_model_files(spec)
        if notes is None:
            for line in found:
                print(f"canopy: note: {line}", file=sys.stderr)
        else:
            notes.extend(found)
        header = _check_gguf_source(spec) if need_fresh else None
        if max_new_tokens is not None:
            limit = context_length(spec) or (header or {}).get("context_length")
            if limit is not None and max_new_tokens > limit:
                raise ValueError(f"max_new_tokens {max_new_tokens} is more than the context "
                                 f"of model {name} ({limit} tokens); lower --max-new-tokens")
        checked.append(spec)
    return checked


def _check_gguf_source(spec) -> dict | None:
    """For a GGUF model not converted yet: the file is intact (header and length; for a
    packaged file also its sha256 from the package's RECORD). Returns the header
    (:func:`check_gguf`) when it was read."""
    from canopy import cache_dir
    from canopy.models import _MARKER, get_spec, installed_gguf

    if spec.kind == "adapter":
        return _check_gguf_source(get_spec(spec.base))
    if spec.kind not in ("package", "gguf"):
        return None
    if (cache_dir() / "models" / spec.name / _MARKER).is_file():
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


# -------------------------------------------------------------------------- output paths


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


# -------------------------------------------------------------------------------- book


def chapter_parameters() -> dict[str, list[str]]:
    """Chapter stem → names its ``parameters`` cell assigns (read from the jupytext
    sources in ``notebooks/``, without jupytext)."""
    from canopy import REPO_ROOT

    found = {}
    for source in sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.py")):
        names: list[str] = []
        inside = False
        for line in source.read_text(encoding="utf-8").splitlines():
            if line.startswith("# %%"):
                inside = "parameters" in line
                continue
            if inside:
                match = re.match(r"([A-Za-z_]\w*)\s*(?::[^=]+)?=", line)
                if match:
                    names.append(match.group(1))
        found[source.stem] = names
    return found


def _suggest(word: str, known) -> str:
    close = difflib.get_close_matches(word, list(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def check_book(parameters: dict, only, *, profile: str = "default") -> None:
    """``-p`` names must be declared by some chapter; ``--only`` names must be chapters
    (stem or number); the experiment file and models named must be usable. (Chapters
    left out by ``--only`` that were never executed do not stop it: the selected ones
    run and the HTML build is skipped; see :func:`canopy.book.build`.)"""
    chapters = chapter_parameters()
    declared = sorted({name for names in chapters.values() for name in names})
    for name in parameters:
        if name not in declared:
            raise ValueError(f"no chapter has a parameter {name}{_suggest(name, declared)}; "
                             f"parameters: {', '.join(declared)}")
    if only is not None:
        numbers = {stem[:2]: stem for stem in chapters}
        for item in only:
            if item not in chapters and item not in numbers:
                listing = ", ".join(chapters)
                raise ValueError(f"--only {item}: no such chapter; chapters: {listing}")
    experiment = parameters.get("experiment_file")
    if experiment is not None and not Path(str(experiment)).is_file():
        raise FileNotFoundError(f"-p experiment_file: file not found: {experiment}")
    models = parameters.get("models")
    if models is not None and (not isinstance(models, list)
                               or not all(isinstance(m, (str, dict)) for m in models)):
        raise ValueError("-p models must be a list of names or model entries, e.g. -p models "
                         "'[gemma-3-270m, {path: ./my-sft, family: gemma-3-270m, "
                         "variant: instruct}]'")


def book_models(entries) -> None:
    """The models of a book build (experiment entries or specs) are available, except
    the fine-tunes the build makes itself (whose base must be available)."""
    from canopy.entries import entry_specs
    from canopy.models import get_spec

    plain = []
    for spec in entry_specs(entries):
        if spec.kind == "adapter" and "canopy finetune" in spec.install:
            plain.append(get_spec(spec.base))  # made by the build (canopy finetune)
        else:
            plain.append(spec)
    check_models(list(dict.fromkeys(plain)))


# ----------------------------------------------------------------------------- metrics


def check_metrics(rollouts, out, n_boot: int, seed: int) -> None:
    """``canopy metrics`` arguments: a store directory, a writable output directory, a
    non-negative number of bootstrap resamples and seed."""
    _integer("--n-boot", n_boot, 0)
    _integer("--seed", seed, 0)
    root = Path(rollouts)
    if not root.is_dir():
        raise ValueError(f"no rollouts: {root} is not a directory (write one with "
                         f"`canopy sample --out {root}`)")
    check_out_dir(out)
