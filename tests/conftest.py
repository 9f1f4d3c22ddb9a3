"""Fixtures shared by the tests (the analysis tables come from ``analysis_data.py``, the
tiny models from ``sampling_tiny.py``), and the offline setting every test runs under
(no model hub, as in the book build)."""

from __future__ import annotations

import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from analysis_data import finetune_report as _finetune_report
from analysis_data import toy_rollouts


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Every test module runs torch on one thread (tiny models are fastest so, and a busy
    2-core machine slows many threads down); the setting is restored afterwards."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def rollouts():
    """Two models of one family (base and fine-tuned), two tasks, four prompts each,
    five rollouts per prompt, with the per-step lists of canopy.sampling."""
    return toy_rollouts()


@pytest.fixture
def finetune_report():
    """A small fine-tune report (a fresh dict per test)."""
    return _finetune_report()
