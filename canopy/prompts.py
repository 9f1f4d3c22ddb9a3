"""Prompts: :class:`Prompt` and prompt files (JSONL).

A prompt file holds one JSON object per line: ``prompt`` (non-empty string), optional
``id`` (string or integer; default: the line number) and ``task`` (default: the file's
stem). Blank lines are skipped; any other malformed line is an error naming the file and
line (parsed, torch-free, by :func:`canopy.preflight.prompt_records`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from canopy.preflight import prompt_records

__all__ = ["Prompt", "read_prompts", "as_prompts"]


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
