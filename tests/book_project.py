"""A fresh project folder holding the book's sources (chapters, data, book pages, Jupyter
Book configuration) and nothing executed: where the book-building tests run ``canopy
book`` as a user's clone or an installed package would."""

from __future__ import annotations

import shutil
from pathlib import Path

from canopy import REPO_ROOT


def book_project(project: Path) -> Path:
    """Copy the book's sources into ``project`` (created) and return it."""
    project.mkdir(parents=True)
    for name in ("notebooks", "data", "book"):
        shutil.copytree(REPO_ROOT / name, project / name,
                        ignore=shutil.ignore_patterns("_static", "*.ipynb"))
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(REPO_ROOT / name, project / name)
    return project
