"""Fixtures shared by the analysis tests (the tables come from ``analysis_data.py``), and
the offline setting every test runs under (no model hub, as in the book build)."""

from __future__ import annotations

import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from analysis_data import finetune_report as _finetune_report
from analysis_data import toy_rollouts


@pytest.fixture(scope="module")
def rollouts():
    """Two models of one family (base and fine-tuned), two tasks, four prompts each,
    five rollouts per prompt, with the per-step lists of canopy.sampling."""
    return toy_rollouts()


@pytest.fixture
def finetune_report():
    """A small fine-tune report (a fresh dict per test)."""
    return _finetune_report()
