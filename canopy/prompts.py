"""Prompts: :class:`Prompt` and prompt files (JSONL).

A prompt file holds one JSON object per line: ``prompt`` (non-empty string), optional
``id`` (string or integer; default: the line number) and ``task`` (default: the file's
stem). Blank lines are skipped; any other malformed line is an error naming the file and
line (parsed, torch-free, by :func:`prompt_records`).

Rendering: :func:`render_prompt` gives the text and token ids a model sees (its chat
template or the raw text); :func:`render_prompts` renders a list, refusing duplicate ids.
The module imports neither torch nor transformers.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

__all__ = ["Prompt", "read_prompts", "as_prompts", "prompt_records", "check_prompt_files",
           "render_prompt", "render_prompts"]


@dataclass(frozen=True)
class Prompt:
    """One prompt: ``task`` name, ``prompt_id`` (unique within the task), raw ``text``."""

    task: str
    prompt_id: str
    text: str

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise ValueError(f"prompt {self.prompt_id!r}: the text must be a non-empty string")
        if not isinstance(self.task, str) or not self.task:
            raise ValueError(f"prompt {self.prompt_id!r}: the task must be a non-empty string")
        object.__setattr__(self, "prompt_id", str(self.prompt_id))  # ids are strings

    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def read_prompts(path, task: str | None = None) -> list[Prompt]:
    """The prompts of a JSONL file (format in the module docstring), in file order."""
    return [Prompt(task=name, prompt_id=pid, text=text)
            for name, pid, text in prompt_records(path, task)]


def as_prompts(prompts) -> list[Prompt]:
    """A JSONL path, :class:`Prompt` objects or plain strings → list of :class:`Prompt`."""
    if isinstance(prompts, (str, Path)) and Path(prompts).suffix == ".jsonl":
        return read_prompts(prompts)
    if isinstance(prompts, (str, Prompt)):
        prompts = [prompts]
    out = []
    for i, p in enumerate(prompts):
        out.append(p if isinstance(p, Prompt) else Prompt("default", str(i), str(p)))
    if not out:
        raise ValueError("no prompts given")
    return out


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


def check_prompt_files(files, per_task: int | None = None) -> int:
    """Parse every prompt file (``files``: paths, or ``(path, task)`` pairs with the task
    name the file's prompts get unless they name one) before a model is loaded; returns
    how many prompts will be used (the first ``per_task`` of each file)."""
    total = 0
    for item in files:
        path, task = item if isinstance(item, tuple) else (item, None)
        found = prompt_records(path, task)
        total += len(found[:per_task] if per_task else found)
    return total


def render_prompt(tokenizer, text: str, chat_template: bool) -> tuple[str, list[int]]:
    """(rendered text, token ids) given to the model for the prompt ``text``.

    With ``chat_template`` the text is one user message rendered with the generation
    prompt (the template writes any BOS itself); otherwise the raw text with the
    tokenizer's special tokens (e.g. BOS: for a converted GGUF as its file says, see
    :func:`canopy.models.apply_gguf_bos`).
    """
    if chat_template:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
        ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    else:
        rendered = text
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    if not ids:
        raise ValueError("the prompt renders to zero tokens; give a non-empty prompt")
    return rendered, [int(i) for i in ids]


def render_prompts(prompts: Sequence[Prompt], tokenizer, chat_template: bool
                   ) -> list[tuple[str, list[int]]]:
    """Each prompt rendered as the model sees it, ``(text, token ids)``
    (:func:`render_prompt`); a duplicate ``(task, prompt_id)`` is a one-line error (ids
    name the shards)."""
    seen: set[tuple[str, str]] = set()
    for p in prompts:
        if (p.task, p.prompt_id) in seen:
            raise ValueError(f"duplicate prompt id {p.prompt_id!r} in task {p.task!r}")
        seen.add((p.task, p.prompt_id))
    return [render_prompt(tokenizer, p.text, chat_template) for p in prompts]
