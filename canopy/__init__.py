"""Canopy: Canopy Entropy of language-model generation trees.

The package behind the Canopy book. Every quantity is defined on the book's Method page,
``book/method.md``; docstrings cite its sections as "Method §n". Which module owns which
quantity, chart or table is listed in the README's package table.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__version__ = "0.1.0"

# OpenMP threads that wait for work spin by default; on a machine whose cores are busy
# with other processes the spinning threads starve the ones doing the work (measured:
# benchmarks/bench_threads.py, README "Threads"). A passive wait policy must be set
# before torch loads its OpenMP runtime, so it is set here, unless the user chose one.
if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def project_root() -> Path:
    """The folder holding the book's sources (``data/``, ``notebooks/``, ``book/``,
    ``_toc.yml``): ``$CANOPY_ROOT`` when set; else the checkout this package was
    imported from (an editable install or ``PYTHONPATH``); else the working directory
    (a non-editable install — wheel, conda, cluster node — run from a checkout)."""
    if os.environ.get("CANOPY_ROOT"):
        return Path(os.environ["CANOPY_ROOT"]).resolve()
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "notebooks").is_dir() and (checkout / "data").is_dir():
        return checkout
    return Path.cwd().resolve()


#: :func:`project_root` as found when the package was imported.
REPO_ROOT = project_root()


def cache_dir() -> Path:
    """The one directory for everything generated: ``$CANOPY_CACHE``, default
    ``<project root>/.cache/canopy`` (git-ignored). Created on first use."""
    path = Path(os.environ.get("CANOPY_CACHE") or REPO_ROOT / ".cache" / "canopy")
    path.mkdir(parents=True, exist_ok=True)
    return path
