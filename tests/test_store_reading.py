"""Issue 19 item 4: the book's analyses on a store made elsewhere (canopy.reading).

A small synthetic store is written with the store's own writer
(``benchmarks/bench_scale.write_experiment_store``), its manifests recording a runtime
this machine does not have (vLLM, CUDA, bfloat16), for an experiment whose models are
folders that do not exist here. It must be read as it is; every per-rollout analysis
on the summaries must give the numbers of the full-load path; the step-level profile
streamed shard by shard must equal :func:`canopy.entropy.position_profile` of the
loaded table; the store is verified once and a changed or damaged shard is caught.
"""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pandas as pd
import pytest

from canopy import REPO_ROOT
from canopy.experiment import load_experiment

CLUSTER = {"engine": "vllm", "device_type": "cuda", "dtype": "bfloat16", "threads": None}
HEAD = """tasks: [math, stories]
out: store
sampling: {rollouts: 4, max_new_tokens: 24, prompts_per_task: 2}
"""


def bench_scale():
    spec = importlib.util.spec_from_file_location(
        "bench_scale", REPO_ROOT / "benchmarks" / "bench_scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def entries(kind: str) -> str:
    """Four models (2 families × base/instruct): Hugging Face ids (``name``, for writing)
    or the cluster's folders, absent here (``path``)."""
    rows = [(f, v) for f in (0, 1) for v in ("base", "instruct")]
    if kind == "name":
        return "".join(f"  - {{name: cluster/fam{f}-{v}, family: fam{f}, variant: {v}}}\n"
                       for f, v in rows)
    return "".join(f"  - {{path: /cluster/models/fam{f}-{v}, family: fam{f}, variant: {v}}}\n"
                   for f, v in rows)


def write_store(root, seed: int = 0, extra: str = ""):
    """The store under ``root/store``; returns the experiment file that reads it (the
    models' folders absent)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "write.yaml").write_text("models:\n" + entries("name") + HEAD)
    bench_scale().write_experiment_store(load_experiment(root / "write.yaml"), CLUSTER,
                                         mean_length=12.0, seed=seed)
    path = root / "read.yaml"
    path.write_text("models:\n" + entries("path") + HEAD + extra)
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_store(tmp_path_factory.mktemp("elsewhere"))


def close(new: pd.DataFrame, old: pd.DataFrame) -> None:
    """Equal tables: the same keys, numbers within 1e-12 relative."""
    assert list(new.columns) == list(old.columns)
    assert len(new) == len(old)
    pd.testing.assert_frame_equal(new.reset_index(drop=True), old.reset_index(drop=True),
                                  check_exact=False, rtol=1e-12, atol=0, check_dtype=False)


def test_a_store_sampled_elsewhere_is_read_as_it_is(store):
    experiment = load_experiment(store)
    stored = experiment.stored_models(progress=False)
    assert [s.name for s in stored] == ["fam0-base", "fam0-instruct", "fam1-base",
                                        "fam1-instruct"]
    assert all(s.runtime["engine"] == "vllm" and s.runtime["device_type"] == "cuda"
               for s in stored)
    assert all(s.synthetic and not s.weights_checked and s.missing == 0 for s in stored)
    from canopy.reading import store_table

    table = store_table(stored)
    assert table["configuration"].tolist() == [s.config_hash[:12] for s in stored]
    assert set(table["weights"]) == {"not here: store trusted"}
    assert set(table["dtype"]) == {"bfloat16"}


def test_chapter_analyses_on_summaries_equal_the_full_load(store):
    from canopy import charts, entropy, findings, pairs, pooling, report, semantic, stats

    experiment = load_experiment(store)
    full = experiment.rollouts(progress=False)
    summaries = experiment.summaries(progress=False)
    keys = ["model", "family", "variant", "task", "prompt_id", "rollout_id"]
    pd.testing.assert_frame_equal(summaries[keys], full[keys])
    # the step lists are there in the full table only, and were read
    assert "step_entropy" in full and "step_entropy" not in summaries
    close(entropy.prompt_metrics(summaries), entropy.prompt_metrics(full))
    close(pooling.length_summary(summaries), pooling.length_summary(full))
    pd.testing.assert_series_equal(findings.degenerate_share(summaries),
                                   findings.degenerate_share(full), rtol=1e-12)
    pd.testing.assert_frame_equal(report.example_rollouts(summaries, "math"),
                                  report.example_rollouts(full, "math"))
    prompt_text = {(p.task, p.prompt_id): p.text for p in experiment.prompts()}
    close(charts.rate_length_data(summaries, prompt_text),
          charts.rate_length_data(full, prompt_text))
    new = findings.measure_claims(summaries, None, n_boot=200, seed=0)
    old = findings.measure_claims(full, None, n_boot=200, seed=0)
    close(new["boot"], old["boot"])
    assert new["canopy_entropy"] == old["canopy_entropy"]
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(len(full), 8)).astype(np.float32)
    close(semantic.semantic_metrics(summaries, embeddings),
          semantic.semantic_metrics(full, embeddings))
    close(stats.build_panel(summaries, embeddings), stats.build_panel(full, embeddings))
    assert pairs.paired_scope_text(summaries) == pairs.paired_scope_text(full)
    # chapter 4's step-level view, streamed shard by shard
    close(experiment.position_profile(progress=False), entropy.position_profile(full))
    # chapters 3 and 4 read the summaries without the texts: the same rows otherwise
    lean = experiment.summaries(progress=False, text=False)
    pd.testing.assert_frame_equal(lean, summaries.drop(columns="text"), check_exact=True)
    close(entropy.prompt_metrics(lean), entropy.prompt_metrics(full))
    close(charts.rate_length_data(lean, prompt_text), charts.rate_length_data(full, prompt_text))
    close(findings.measure_claims(lean, None, n_boot=200, seed=0)["boot"], old["boot"])


def test_a_stated_runtime_that_differs_still_stops(tmp_path):
    path = write_store(tmp_path, extra="runtime: {engine: hf}\n")
    with pytest.raises(ValueError) as info:
        load_experiment(path).summaries(progress=False)
    message = str(info.value)
    assert "\n" not in message and "runtime.engine: 'vllm' → 'hf'" in message
    assert "-p resample true" in message


def test_missing_shards_of_a_model_not_here_are_one_line(tmp_path):
    path = write_store(tmp_path)
    experiment = load_experiment(path)
    gone = experiment.stored_models(progress=False)[1].shards[0][0]
    gone.unlink()
    with pytest.raises(ValueError) as info:
        load_experiment(path).summaries(progress=False)
    message = str(info.value)
    assert "\n" not in message and f"the store {experiment.out}" in message
    assert "model fam0-instruct" in message and "without 1 of its 4 prompts' shards" in message


def test_weights_here_and_changed_are_not_read(tmp_path):
    """A model whose folder is here with other weights than the store's: not read (it
    would be sampled again, as always); with its own signature it is read, checked."""
    from canopy.models import source_signature
    from canopy.reading import stated_runtime, stored_model

    folder = tmp_path / "here"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "w.yaml").write_text(
        f"models:\n  - {{path: {folder}, name: mine, family: mine}}\n" + HEAD)
    experiment = load_experiment(tmp_path / "w.yaml")
    spec = experiment.specs[0]
    bench = bench_scale()
    bench.write_experiment_store(experiment, CLUSTER)  # signature: files absent here
    args = (spec, experiment.prompts(), experiment.sampling, experiment.out,
            stated_runtime(experiment.runtime, experiment.runtime_stated))
    assert stored_model(*args) is None
    bench.write_experiment_store(experiment, CLUSTER, signature=source_signature(spec))
    found = stored_model(*args)
    assert found is not None and found.weights_checked and found.missing == 0


def test_the_store_is_verified_once_and_a_changed_shard_again(tmp_path, monkeypatch):
    import canopy.store
    from canopy.book import verify_store
    from canopy.reading import VERIFIED_ENV

    path = write_store(tmp_path)
    calls = []
    real = canopy.store.verify
    monkeypatch.setattr(canopy.store, "verify", lambda a, m: calls.append(1) or real(a, m))
    monkeypatch.delenv(VERIFIED_ENV, raising=False)
    record = tmp_path / "verified.json"
    assert verify_store("default", str(path), echo=lambda line: None, record=record) == 16
    assert os.environ[VERIFIED_ENV] == str(record) and len(calls) == 16
    experiment = load_experiment(path)
    experiment.summaries(progress=False)
    experiment.position_profile(progress=False)
    load_experiment(path).rollouts(progress=False)
    assert len(calls) == 16  # the chapters read without verifying again
    shard = experiment.stored_models(progress=False)[2].shards[1][0]
    stat = shard.stat()
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    load_experiment(path).position_profile(progress=False)
    assert len(calls) == 17  # the touched shard only
    # the next build: every shard's kept summary is tied to its bytes, so the pass hashes
    # the files and decodes none; a changed shard is verified in full
    def entries():
        shards = json.loads(record.read_text())["shards"]
        return {k: {f: v for f, v in e.items() if f != "mtime_ns"} for k, e in shards.items()}

    first = entries()  # (one shard's mtime_ns was touched above)
    assert verify_store("default", str(path), echo=lambda line: None, record=record) == 16
    assert len(calls) == 17 and entries() == first
    other = write_store(tmp_path / "other", seed=3)
    changed = shard.relative_to(tmp_path)
    shard.write_bytes((other.parent / changed).read_bytes())
    assert verify_store("default", str(path), echo=lambda line: None, record=record) == 16
    assert len(calls) == 18


def test_a_damaged_shard_is_named_before_any_chapter(tmp_path, monkeypatch):
    from canopy.book import verify_store
    from canopy.reading import VERIFIED_ENV

    path = write_store(tmp_path)
    monkeypatch.delenv(VERIFIED_ENV, raising=False)
    shard = load_experiment(path).stored_models(progress=False)[3].shards[2][0]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])  # cut short, as by a failed copy
    with pytest.raises(ValueError) as info:
        verify_store("default", str(path), echo=lambda line: None, record=tmp_path / "v.json")
    message = str(info.value)
    assert "\n" not in message and "1 damaged shard(s)" in message
    assert shard.name in message and "fam1-instruct" in message
    assert VERIFIED_ENV not in os.environ


def test_ids_beyond_a_tokenizer_are_still_counted_on_summaries(tmp_path, monkeypatch):
    """A model whose vocabulary outgrows its tokenizer (here: 24 rows, 16 tokens): the
    chapters' summaries say how many sampled ids have no text, as the full table did."""
    import json
    import warnings

    from sampling_tiny import tiny_model, tiny_tokenizer

    monkeypatch.setenv("CANOPY_CACHE", str(tmp_path / "cache"))
    tiny_model("llama", vocab=24, scale=2.0).save_pretrained(tmp_path / "padded")
    tiny_tokenizer(chat=False).save_pretrained(tmp_path / "padded")
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "demo.jsonl").write_text(
        "".join(json.dumps({"id": i, "prompt": "a b c"[: 1 + 2 * i]}) + "\n" for i in range(3)))
    (tmp_path / "exp.yaml").write_text(
        "models: [{path: padded}]\ntasks: [demo]\nprompts_dir: prompts\nout: store\n"
        "sampling: {rollouts: 4, max_new_tokens: 8, top_k: 0, seed: 1}\n"
        "runtime: {threads: 1}\n")
    experiment = load_experiment(tmp_path / "exp.yaml")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        full = experiment.rollouts(progress=False)
    ids = np.concatenate([np.asarray(t) for t in full["token_ids"]])
    line = f"model padded: {int((ids >= 16).sum())} of {ids.size} sampled tokens have ids ≥ 16"
    assert (ids >= 16).sum() > 0 and any(line in str(w.message) for w in caught)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_experiment(tmp_path / "exp.yaml").summaries(progress=False)
    assert sum(line in str(w.message) for w in caught) == 1


def test_a_store_copied_anew_re_executes_the_chapters_that_read_it(tmp_path):
    """The chapter stamp follows the shards a chapter reads (name, size, mtime_ns): a
    shard written again changes it; a chapter that reads no store keeps its stamp."""
    from canopy import book

    path = write_store(tmp_path)
    reads = tmp_path / "98_reads.py"
    reads.write_text('# %% tags=["parameters"]\nprofile = "default"\nresample = False\n')
    toy = tmp_path / "99_toy.py"
    toy.write_text('# %% tags=["parameters"]\nprofile = "default"\n')
    params = {"profile": "default", "experiment_file": str(path)}
    before = {s: book.chapter_stamp(s, params) for s in (reads, toy)}
    assert {s: book.chapter_stamp(s, params) for s in (reads, toy)} == before
    shard = load_experiment(path).stored_models(progress=False)[0].shards[0][0]
    data = shard.read_bytes()
    shard.unlink()
    shard.write_bytes(data)  # copied again: same bytes, a new file
    stat = shard.stat()
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert book.chapter_stamp(reads, params) != before[reads]
    assert book.chapter_stamp(toy, params) == before[toy]
