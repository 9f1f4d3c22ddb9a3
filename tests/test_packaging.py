"""The package as a non-editable install gets it (issue 18 defect 3): ``pip install .``
into a fresh folder holds every module of the source tree, each imports from there, and
the book's first chapter runs from it with the book's sources in the working directory.

What a wheel, a conda environment or a cluster node gets is what ``pip install --target``
writes; ``PYTHONPATH`` puts that folder ahead of this checkout's editable install.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from book_project import book_project
from canopy import REPO_ROOT

SOURCE_PACKAGE = REPO_ROOT / "canopy"


def source_modules() -> list[str]:
    """Every module of the source tree, as dotted names (``canopy.charts.style``, …)."""
    names = []
    for path in sorted(SOURCE_PACKAGE.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = path.relative_to(REPO_ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """``pip install --no-deps --target SITE`` of a copy of the project (the build
    writes into its source folder, so it gets a copy); returns SITE."""
    root = tmp_path_factory.mktemp("packaging")
    src, site = root / "src", root / "site"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, src / name)
    shutil.copytree(SOURCE_PACKAGE, src / "canopy",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                           "--no-build-isolation", "--target", str(site), str(src)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return site


def _env(site: Path, cache: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PYTEST") and k != "CANOPY_ROOT"}
    env.update(PYTHONPATH=str(site), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               OMP_NUM_THREADS="1", CANOPY_CACHE=str(cache))
    return env


def test_every_module_of_the_source_tree_is_installed_and_imports(installed, tmp_path):
    modules = source_modules()
    assert "canopy.charts" in modules and "canopy.charts.style" in modules
    missing = [m for m in modules
               if not (installed / Path(*m.split("."))).with_suffix(".py").is_file()
               and not (installed / Path(*m.split(".")) / "__init__.py").is_file()]
    assert missing == [], f"not installed: {missing}"
    script = ("import importlib, json, sys\n"
              "files = {m: importlib.import_module(m).__file__ for m in sys.argv[1:]}\n"
              "import canopy\n"
              "print(json.dumps({'files': files, 'root': str(canopy.REPO_ROOT)}))\n")
    done = subprocess.run([sys.executable, "-c", script, *modules], capture_output=True,
                          text=True, env=_env(installed, tmp_path / "cache"), cwd=tmp_path,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    outside = {m: f for m, f in found["files"].items() if not f.startswith(str(installed))}
    assert outside == {}, f"imported from elsewhere: {outside}"
    # not a checkout, no $CANOPY_ROOT: the book's sources are looked for in the cwd
    assert Path(found["root"]) == tmp_path.resolve()


def test_chapter_one_runs_from_the_installed_package(installed, tmp_path):
    """``canopy book --only 01`` in a fresh folder holding the book's sources (no
    ``canopy/`` there, nothing executed before): the chapter runs with the installed
    package, prints the exact CE* of its toy, and the HTML build is skipped in one line."""
    project = book_project(tmp_path / "project")
    done = subprocess.run([sys.executable, "-m", "canopy.cli", "book", "--only", "01"],
                          capture_output=True, text=True, cwd=project, timeout=900,
                          env=_env(installed, tmp_path / "cache"))
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "01_canopy" in done.stdout and "executed in" in done.stdout, done.stdout
    skipped = [line for line in done.stdout.splitlines() if "HTML not built" in line]
    assert len(skipped) == 1, done.stdout
    executed = (project / "_executed" / "01_canopy.ipynb").read_text()
    from canopy.toy import examples

    exact = examples()["chatty"].enumerate().leaf_entropy  # enumerated here, independently
    assert f"{exact:.12f}" in executed
