"""Model entries: how a user states a model and its role, turned into a
:class:`~canopy.models.ModelSpec`.

An entry is what an experiment file's ``models`` list or a ``--model`` option holds:
a string (a registered name, a local directory, a ``.gguf`` file or a Hugging Face id;
the meaning it always had) or a mapping that says the model's role — ``path`` or
``name``, ``family``, ``variant`` (``base`` or ``instruct``), ``chat_template``,
``dtype``. :func:`entry_spec` documents the rules; :func:`check_entry` checks an
entry's shape without touching the disk (experiment files are read torch-free).
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path

from canopy.models import DTYPES, REGISTRY, ModelSpec, resolve_spec

__all__ = ["ENTRY_KEYS", "VARIANT_NAMES", "check_entry", "entry_name", "entry_spec",
           "entry_specs"]

#: The keys of a model entry given as a mapping (experiment file, ``--model k=v,…``).
ENTRY_KEYS = ("name", "path", "family", "variant", "chat_template", "dtype")
#: Variant names a user may write, and the variant each one means.
VARIANT_NAMES = {"base": "base", "instruct": "fine-tuned", "fine-tuned": "fine-tuned"}


def _entry_text(entry) -> str:
    if isinstance(entry, dict):
        return "{" + ", ".join(f"{k}: {v}" for k, v in entry.items()) + "}"
    return str(entry)


def check_entry(entry) -> None:
    """The shape of a model entry (see :func:`entry_spec`), without touching the disk:
    a non-empty string, or a mapping of :data:`ENTRY_KEYS` with ``path`` or ``name``, a
    known variant and a boolean ``chat_template``. One-line ``ValueError``."""
    if isinstance(entry, (ModelSpec, str)) and entry:
        return
    if not isinstance(entry, dict):
        raise ValueError(f"model entry {entry!r}: give a name, a path, or a mapping with "
                         f"keys {', '.join(ENTRY_KEYS)}")
    where = f"model entry {_entry_text(entry)}"
    unknown = [k for k in entry if k not in ENTRY_KEYS]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), ENTRY_KEYS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ValueError(f"{where}: unknown key {unknown[0]}{hint}; keys: {', '.join(ENTRY_KEYS)}")
    for key in ("name", "path", "family", "dtype"):
        if key in entry and (not isinstance(entry[key], str) or not entry[key]):
            raise ValueError(f"{where}: {key} must be a non-empty string")
    if "path" not in entry and "name" not in entry:
        raise ValueError(f"{where}: give path (a local folder or .gguf file) or name (a "
                         "registered model or Hugging Face id)")
    if entry.get("variant") is not None and entry["variant"] not in VARIANT_NAMES:
        raise ValueError(f"{where}: variant must be base, instruct or fine-tuned, got "
                         f"{entry['variant']}")
    template = entry.get("chat_template")
    if template is not None and not isinstance(template, bool):
        raise ValueError(f"{where}: chat_template must be true or false, got {template}")
    if entry.get("dtype") is not None and entry["dtype"] not in DTYPES:
        raise ValueError(f"{where}: dtype must be one of {', '.join(DTYPES)}, got "
                         f"{entry['dtype']}")


def entry_name(entry) -> str:
    """The name a model entry gets in tables and in the store, without touching the
    disk: a plain string as written; a mapping's ``name``, else its folder's (or
    ``.gguf`` file's) name."""
    if isinstance(entry, ModelSpec):
        return entry.name
    if isinstance(entry, str):
        return entry
    if "path" not in entry:
        return entry["name"] if entry["name"] in REGISTRY else entry["name"].split("/")[-1]
    if entry.get("name"):
        return entry["name"]
    path = Path(entry["path"]).expanduser()
    return path.stem if path.suffix == ".gguf" else path.resolve().name


def entry_spec(entry, *, base_dir: Path | None = None, variant: str | None = None,
               family: str | None = None, chat_template: bool | None = None) -> ModelSpec:
    """The spec of one model entry, as written in an experiment file or on the command
    line (the README and ``book/rerun.md`` document the format).

    ``entry`` is a :class:`ModelSpec` (returned as is), a string, or a mapping:

    * a string keeps its old meaning: a registered name is taken as registered; a local
      directory, ``.gguf`` file or Hugging Face id is an unpaired model (its own family)
      with ``variant``/``family``/``chat_template`` as given here (the CLI's
      ``--variant``/``--family``/``--chat-template``; default ``base``, raw prompts);
    * a mapping (keys :data:`ENTRY_KEYS`) states the model's role itself: ``path`` (a
      local directory or ``.gguf`` file) or ``name`` (a registered name or a Hugging Face
      id), ``family`` (models of one family are compared; default the model's own
      name), ``variant`` (``base``, or ``instruct``/``fine-tuned``: the same),
      ``chat_template`` (default: on for instruct, off for base), ``dtype``. With
      ``path``, ``name`` names the model in tables and in the store (default: the
      folder's or file's name). A registered name keeps its settings except those given.

    Relative paths are taken from ``base_dir`` (the experiment file's folder) when given.
    One-line ``ValueError``/``FileNotFoundError`` naming the entry.
    """
    check_entry(entry)
    if isinstance(entry, ModelSpec):
        return entry
    if isinstance(entry, str):
        spec = resolve_spec(_local(entry, base_dir),
                            variant=VARIANT_NAMES.get(variant or "base", variant),
                            chat_template=chat_template)
        if family and spec.kind in ("gguf", "dir", "hub"):  # registered ones keep theirs
            spec = dataclasses.replace(spec, family=family)
        return spec
    where = f"model entry {_entry_text(entry)}"
    wanted, template = entry.get("variant"), entry.get("chat_template")
    source = entry["path"] if "path" in entry else entry["name"]
    if "path" not in entry and source in REGISTRY:
        changes = {k: entry[k] for k in ("family", "chat_template", "dtype") if k in entry}
        if wanted is not None:
            changes["variant"] = VARIANT_NAMES[wanted]
        return dataclasses.replace(REGISTRY[source], **changes)
    if "path" in entry:
        source = _local(source, base_dir)
        if Path(source).expanduser().suffix != ".gguf" and not Path(source).expanduser().is_dir():
            raise FileNotFoundError(f"{where}: no folder {source} (give the directory the "
                                    "model was saved to, or a .gguf file)")
    role = VARIANT_NAMES[wanted or "base"]
    spec = resolve_spec(source, variant=role,
                        chat_template=(role == "fine-tuned") if template is None else template)
    name = entry.get("name") if "path" in entry else None
    changes = {"name": name or spec.name, "family": entry.get("family") or name or spec.name}
    if "dtype" in entry:
        changes["dtype"] = entry["dtype"]
    return dataclasses.replace(spec, **changes)


def _local(text: str, base_dir: Path | None) -> str:
    """A relative path taken from ``base_dir`` when it exists there (registered names
    and Hugging Face ids are left alone)."""
    if base_dir is None or text in REGISTRY or Path(text).expanduser().is_absolute():
        return text
    candidate = Path(base_dir) / text
    return str(candidate.resolve()) if candidate.exists() else text


def entry_specs(entries, *, base_dir: Path | None = None, **defaults) -> list[ModelSpec]:
    """:func:`entry_spec` of each entry; two models of one name are an error (they would
    share a folder of the store and a column of every table)."""
    specs = [entry_spec(e, base_dir=base_dir, **defaults) for e in entries]
    seen: dict[str, ModelSpec] = {}
    for spec in specs:
        other = seen.setdefault(spec.name, spec)
        if other is not spec and other != spec:
            raise ValueError(f"two models are called {spec.name} ({other.source} and "
                             f"{spec.source}); give one of them a name (name: … in its "
                             "entry, or name=… in --model)")
    return list({spec.name: spec for spec in specs}.values())
