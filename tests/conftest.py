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

from canopy.settings import default_threads

# The default thread count (torch's own) is read once, here, before one_thread below sets
# torch to one thread: the book build a test starts and its kernels then agree on it.
default_threads()


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


#: Test files that take minutes, longest first. ``make test`` hands whole files to two
#: workers in collection order (``--dist loadfile --no-loadscope-reorder``), so these
#: start first and the short files fill in around them; collected last, a long file
#: would run alone at the end.
#: test_book and test_same_verdicts share the quick book's build (see the latter).
LONG_FIRST = ("test_book.py", "test_same_verdicts.py", "test_cluster.py",
              "test_own_pair_book.py", "test_vllm_engine.py", "test_digests.py",
              "test_store_integrity.py", "test_store_book.py")


def pytest_collection_modifyitems(config, items):
    """Collect the files of :data:`LONG_FIRST` first, in that order (the rest keep theirs)."""
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
