"""The book's up-front checks: what ``canopy book`` can tell before a chapter runs.

:func:`check_book` checks ``-p`` names against the chapters' parameter cells (read by
:func:`chapter_parameters` from the jupytext sources, without jupytext), ``--only``
against the chapters, and the experiment file;
:func:`book_models` checks that the models of a build are available (or made by it).
Imports neither torch nor transformers.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

from canopy import REPO_ROOT
from canopy.entries import entry_specs
from canopy.models import check_models, get_spec

__all__ = ["chapter_parameters", "check_book", "book_models"]


def chapter_parameters() -> dict[str, list[str]]:
    """Chapter stem → names its ``parameters`` cell assigns (read from the jupytext
    sources in ``notebooks/``, without jupytext)."""
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
    plain = []
    for spec in entry_specs(entries):
        if spec.kind == "adapter" and "canopy finetune" in spec.install:
            plain.append(get_spec(spec.base))  # made by the build (canopy finetune)
        else:
            plain.append(spec)
    check_models(list(dict.fromkeys(plain)))