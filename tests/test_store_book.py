"""Issue 19 item 4, done when: a store sampled elsewhere (its manifests record vLLM on
CUDA in bfloat16), copied here where the models' folders do not exist, named by an
experiment file's ``out:``, yields the whole book with ``canopy book --experiment FILE``:
no model loaded, the store verified once for the build, chapter 2 naming the store and
each model's configuration.

The build runs in a fresh folder holding the book's sources (``$CANOPY_ROOT``) with its
own cache. A ``sitecustomize`` on the kernels' path counts every verification of a
shard's content digest (:func:`canopy.digests.verify` on a shard's metadata) and makes
any model load fail loudly. The embedding cache is pre-filled with vectors marked
synthetic, so no embedder loads either. One build, minimal sizes (2 families ×
base/instruct, 2 tasks × 2 prompts × 4 rollouts).
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
from test_own_pair_book import _env, _text
from test_store_reading import bench_scale, entries, HEAD, CLUSTER

GUARD = '''\
import os

try:
    import canopy.digests as _digests

    _verify = _digests.verify

    def verify(arrow, meta):
        if isinstance(meta, dict) and "prompt_sha256" in meta:
            with open(os.environ["CANOPY_TEST_VERIFY_LOG"], "a") as log:
                log.write("/".join(str(meta.get(k)) for k in
                                   ("config_hash", "task", "prompt_id")) + "\\n")
        return _verify(arrow, meta)

    _digests.verify = verify

    import canopy.models as _models

    def load_model(*args, **kwargs):
        raise RuntimeError("test guard: a model was loaded")

    _models.load_model = load_model
except ImportError:
    pass
'''


@pytest.mark.integration
def test_the_whole_book_on_a_store_made_elsewhere(tmp_path, monkeypatch):
    project = book_project(tmp_path / "project")
    cache = tmp_path / "cache"
    laptop = tmp_path / "laptop"
    laptop.mkdir()
    (laptop / "write.yaml").write_text("models:\n" + entries("name") + HEAD)
    (laptop / "exp.yaml").write_text("models:\n" + entries("path") + HEAD
                                     + "simulation_seeds: 2\n")
    monkeypatch.setenv("CANOPY_CACHE", str(cache))
    from canopy.experiment import load_experiment

    shards = bench_scale().write_experiment_store(load_experiment(laptop / "write.yaml"),
                                                  CLUSTER, mean_length=12.0)
    assert shards == 16
    assert not any(Path(f"/cluster/models/fam{f}-{v}").exists()
                   for f in (0, 1) for v in ("base", "instruct"))
    experiment = load_experiment(laptop / "exp.yaml")
    assert bench_scale().prefill_embeddings(experiment, cache, dim=16)[0] == 64
    for kept in (laptop / "store").rglob(".summaries"):
        shutil.rmtree(kept)  # the build makes them, verifying each shard once

    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(GUARD)
    log = tmp_path / "verified.log"
    env = _env(project, cache)
    env.update(PYTHONPATH=f"{guard}{os.pathsep}{REPO_ROOT}", CANOPY_TEST_VERIFY_LOG=str(log))
    done = subprocess.run([sys.executable, "-m", "canopy.cli", "book", "--experiment",
                           str(laptop / "exp.yaml")], capture_output=True, text=True,
                          env=env, cwd=project, timeout=1800)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert (project / "_build" / "html" / "index.html").is_file()
    chapters = sorted(p.stem for p in (project / "notebooks").glob("[0-9][0-9]_*.py"))
    assert all((project / "_executed" / f"{stem}.ipynb").is_file() for stem in chapters)
    # verified once: each of the 16 shards once, by the build before the chapters
    lines = log.read_text().splitlines()
    assert len(lines) == 16 and len(set(lines)) == 16, lines
    assert "16 shards verified" in done.stdout and "(once for this build)" in done.stdout
    # no model was loaded: the guard would have failed the chapter, the folders are absent
    # chapter 2 names the store, each configuration, its runtime and that it is synthetic
    page = _text(project / "_executed" / "02_sampling.ipynb")
    assert str(laptop / "store") in page
    for found in experiment.stored_models(progress=False):
        assert found.hash12 in page
    assert "vllm" in page and "cuda" in page and "bfloat16" in page
    assert "not here: store trusted" in page
    assert json.loads((project / "_executed" / ".verified-store.json").read_text())[
        "models"] == {f.name: f.hash12 for f in experiment.stored_models(progress=False)}
    findings = _text(project / "_executed" / "08_findings.ipynb")
    assert f"Measured on the store `{laptop / 'store'}`" in findings
    assert all(f.hash12 in findings for f in experiment.stored_models(progress=False))
