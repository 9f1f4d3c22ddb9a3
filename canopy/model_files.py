"""What a model's folder says about its tokenizer, read without torch or loading.

A model saved with ``save_pretrained`` is a folder: ``config.json`` (its vocabulary size,
``vocab_size``), weights, and — when the tokenizer was saved with it — tokenizer files
(``tokenizer.json``, or ``tokenizer.model``, or ``vocab.json`` with ``merges.txt``, or
``vocab.txt``) and, for a chat model, a chat template (``chat_template.jinja``,
``chat_template.json`` or the ``chat_template`` key of ``tokenizer_config.json``).
:func:`check_model_files` turns three mistakes into one-line errors before anything is
loaded (:func:`canopy.models.check_models` calls it):

- a folder without tokenizer files (transformers would fail after loading the weights,
  without naming the folder);
- a chat template asked for (an instruct model, or ``chat_template: true``) that the
  tokenizer lacks; the fix is the entry's ``chat_template: false`` (``--model
  'path=…,chat_template=false'`` or ``--no-chat-template``), never Python;
- and one note: a vocabulary (``vocab_size``) larger than the tokenizer. Many released
  models pad their vocabulary (to a multiple of 64 or 128: e.g. 49,216 rows for 49,152
  tokens), so this is not refused: q_t is the model's distribution over all its ids, as
  every engine samples it (masking the padding ids would change the distribution the
  entropies describe). A trained model gives those ids almost no probability; a random
  or damaged one may draw them. They are kept in ``token_ids`` and every statistic, have
  no text, and are counted: the note says so before sampling and
  :func:`beyond_tokenizer` counts them after.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["TOKENIZER_FILES", "tokenizer_folder", "has_tokenizer", "has_chat_template",
           "tokenizer_size", "config_vocab_size", "check_model_files", "padded_vocabularies",
           "beyond_tokenizer", "beyond_tokenizer_lines"]

#: File sets any one of which is a tokenizer transformers can load.
TOKENIZER_FILES = (("tokenizer.json",), ("tokenizer.model",), ("vocab.json", "merges.txt"),
                   ("vocab.txt",), ("spiece.model",))


def tokenizer_folder(spec) -> Path | None:
    """The folder the spec's tokenizer is read from, when it is cheap to know: a local
    model's folder, an adapter's folder when it holds a tokenizer, a
    GGUF model's converted folder once converted; ``None`` otherwise (Hugging Face ids,
    GGUFs not converted yet, adapters that use their base's tokenizer: those tokenizers
    are checked when they load)."""
    from canopy import cache_dir

    if spec.kind == "dir":
        return spec.path()
    if spec.kind == "adapter":  # its own tokenizer, else its base's (checked as the base)
        return spec.path() if (spec.path() / "tokenizer_config.json").is_file() else None
    if spec.kind in ("package", "gguf"):
        folder = cache_dir() / "models" / spec.name
        return folder if (folder / "config.json").is_file() else None
    return None


def has_tokenizer(folder: Path) -> bool:
    """Whether ``folder`` holds one of the :data:`TOKENIZER_FILES` sets."""
    return any(all((folder / name).is_file() for name in names) for names in TOKENIZER_FILES)


def _tokenizer_config(folder: Path) -> dict:
    try:
        found = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def has_chat_template(folder: Path) -> bool:
    """Whether the tokenizer saved in ``folder`` has a chat template."""
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    if (folder / "additional_chat_templates").is_dir():
        return True
    return bool(_tokenizer_config(folder).get("chat_template"))


def tokenizer_size(folder: Path) -> int | None:
    """Tokens of the tokenizer in ``folder`` (added tokens included; what ``len`` of the
    loaded tokenizer gives), read from ``tokenizer.json``; ``None`` without one."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(path)).get_vocab_size(with_added_tokens=True)
    except Exception:  # noqa: BLE001 - an unreadable file is reported when it loads
        return None


def config_vocab_size(folder: Path) -> int | None:
    """``vocab_size`` of ``config.json`` in ``folder`` (or of its ``text_config``)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    value = config.get("vocab_size", (config.get("text_config") or {}).get("vocab_size"))
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _fix_template(spec) -> str:
    flag = (f"--model 'path={spec.source},chat_template=false'" if spec.kind in ("dir", "gguf")
            else "--no-chat-template")
    return (f"give it chat_template: false in its experiment entry (command line: {flag}), "
            "or save a chat template with its tokenizer")


def check_model_files(spec) -> list[str]:
    """One-line errors for a local model that would fail (or be misread) on loading, and
    the notes to print (see the module docstring). Returns the notes."""
    folder = tokenizer_folder(spec)
    if folder is None:
        return []
    if not has_tokenizer(folder):
        raise ValueError(
            f"model {spec.name}: {folder} has no tokenizer files (tokenizer.json, "
            "tokenizer.model, or vocab.json with merges.txt); save the tokenizer into that "
            "folder (tokenizer.save_pretrained), e.g. copy those files from the model it "
            "was made from")
    if spec.chat_template and not has_chat_template(folder):
        role = "an instruct model" if spec.variant == "fine-tuned" else "chat_template: true"
        raise ValueError(f"model {spec.name} is taken with a chat template ({role}) but its "
                         f"tokenizer in {folder} has none; {_fix_template(spec)}")
    vocab, tokens = config_vocab_size(folder), tokenizer_size(folder)
    if vocab is not None and tokens is not None and vocab > tokens:
        return [f"model {spec.name}: its vocabulary ({vocab:,} ids in config.json) is larger "
                f"than its tokenizer ({tokens:,} tokens); ids ≥ {tokens:,} have no text: "
                "they are sampled as the model gives them (entropies stay exact), kept in "
                "token_ids, and counted after sampling"]
    return []


def padded_vocabularies(specs) -> dict[str, int]:
    """Model name → tokenizer size, for the models whose vocabulary (``config.json``) is
    larger than their tokenizer (see the module docstring)."""
    found = {}
    for spec in specs:
        folder = tokenizer_folder(spec)
        if folder is None:
            continue
        vocab, tokens = config_vocab_size(folder), tokenizer_size(folder)
        if vocab is not None and tokens is not None and vocab > tokens:
            found[spec.name] = tokens
    return found


def beyond_tokenizer_lines(rollouts, specs) -> list[str]:
    """One line per model of ``specs`` whose rollouts hold ids its tokenizer cannot
    decode: how many of its sampled tokens those are."""
    lines = []
    for model, (beyond, total) in beyond_tokenizer(rollouts, padded_vocabularies(specs)).items():
        if beyond:
            size = padded_vocabularies([s for s in specs if s.name == model])[model]
            lines.append(f"model {model}: {beyond} of {total} sampled tokens have ids ≥ "
                         f"{size:,} (beyond its tokenizer: no text; kept in token_ids and "
                         "every statistic)")
    return lines


def beyond_tokenizer(rollouts, sizes: dict[str, int]) -> dict[str, tuple[int, int]]:
    """Per model of ``sizes`` (model name → tokenizer size): (sampled tokens whose id is
    ≥ the tokenizer size, all sampled tokens) in a rollout table."""
    import numpy as np

    counts = {}
    for model, size in sizes.items():
        rows = rollouts[rollouts["model"] == model]["token_ids"]
        ids = np.concatenate([np.asarray(t, dtype=np.int64) for t in rows]) if len(rows) \
            else np.zeros(0, dtype=np.int64)
        counts[model] = (int((ids >= size).sum()), int(ids.size))
    return counts
