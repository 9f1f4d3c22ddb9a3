"""Benchmark: the analysis side at the paper's scale (issue 19).

Writes a synthetic store shaped like the paper's design through the store's own writer
(:func:`canopy.store.write_shard`), then runs each analysis step in a fresh child
process and prints its wall time and peak resident memory (the child's ``ru_maxrss``,
Python and the imported libraries included; the ``imports`` row is that floor).

The store: ``--families`` families, each with a base and a fine-tuned model, ``--tasks``
tasks × ``--prompts`` prompts × ``--rollouts`` rollouts per model; rollout lengths are
gamma-distributed (mean ``--mean-length``, shape 2) and cut at ``--max-new-tokens``
(those rollouts are truncated, as in sampling); per-step values are float32 like the
sampler's. Every manifest and shard says ``"synthetic": true``. ``--scale 0.1`` keeps
a tenth of the prompts (a quick run). One paper-shaped model: ``--families 1 --variants
base`` (40,000 rollouts, about 40 M steps); the paper: ``--families 3``.

Steps (``--steps``, default all):

- ``imports``: the floor (Python, pandas, pyarrow, canopy).
- ``verify``: read and verify every shard (:func:`canopy.store.read_verified`: the
  digest check) on the shard pool (:mod:`canopy.shardpool`) and on one thread, in MB/s
  of shard files, against the previous path (footer and table read separately, one
  shard after another; run before and after, averaged) in the same process; as
  DataFrames on a quarter of them; the legacy path (page CRCs + the JSON sha256) on
  the first shards, for that ratio.
- ``metrics-cold``: ``canopy metrics`` (``--n-boot 2000``) with no kept summaries (they
  are removed first, untimed): every shard verified and summarised.
- ``metrics-warm``: ``canopy metrics`` again, on the kept summaries.
- ``profile-streamed``: :func:`canopy.profiles.stream_position_profile` (chapter 4's
  profile, shard by shard).
- ``load``: :func:`canopy.store.load_rollouts` (every step of every rollout in memory).
- ``metrics-full-load``: the pre-issue-19 path: ``load_rollouts`` + per-prompt metrics,
  pooling and the paired bootstrap on the full table.
- ``profile-full-load``: ``load_rollouts`` + :func:`canopy.entropy.position_profile`
  (chapter 4 before issue 19).
- ``book`` (not in the default list): the whole book's analysis on a store of the same
  shape made as a cluster would leave it (:func:`write_experiment_store`: manifests of
  canopy's shape recording vLLM on CUDA in bfloat16, the models' weights absent here),
  under ``<out>-book``: the build's one verification (``book-verify``, kept summaries
  made on the way), then each chapter executed alone (``book-01`` … ``book-08``) as
  ``canopy book`` runs it, reading the verified record; embeddings excepted (the
  embedding cache is pre-filled with vectors marked synthetic, :func:`prefill_embeddings`;
  the word pieces chapter 5 reports are counted for real on the way and kept beside
  them, as a build keeps them, in the write step). Peak memory of a
  chapter is the larger of its process and its kernel.

Run: ``.venv/bin/python benchmarks/bench_scale.py --out /tmp/scale-store --scale 0.1``.
The store is kept (``--out``); a second run reuses it unless ``--rewrite``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

STEPS = ("imports", "verify", "metrics-cold", "metrics-warm", "profile-streamed", "load",
         "metrics-full-load", "profile-full-load")
SAMPLING = {"max_new_tokens": 4000, "rollouts": 100, "temperature": 1.0, "top_k": 100,
            "top_p": 1.0, "seed": 0}


# ------------------------------------------------------------------------ the store


def rollout_table(rng, model: str, family: str, variant: str, task: str, prompt_id: str,
                   rollouts: int, mean_length: float, cap: int, words: str) -> pd.DataFrame:
    """One prompt's synthetic rollouts in the sampler's schema."""
    tuned = variant == "fine-tuned"
    raw = np.ceil(rng.gamma(2.0, (0.8 if tuned else 1.0) * mean_length / 2.0, rollouts))
    truncated = raw > cap
    lengths = np.clip(raw, 1, cap).astype(np.int64)
    total = int(lengths.sum())
    scale = 0.6 if tuned else 1.0
    h = (rng.gamma(1.5, 0.8 * scale, total)).astype(np.float32)
    lp = (-(h.astype(np.float64) + rng.exponential(0.3, total))).astype(np.float32)
    raw_h = (h + rng.exponential(0.2, total)).astype(np.float32)
    stop = np.log(rng.uniform(1e-6, 1e-2, total)).astype(np.float32)
    ends = np.cumsum(lengths)
    stop[ends[~truncated] - 1] = np.float32(-0.05)  # the stop token was likely
    ids = rng.integers(0, 262_144, total)
    cuts = ends[:-1]
    starts = rng.integers(0, len(words) - 4 * cap - 1, rollouts)
    return pd.DataFrame({
        "model": model, "family": family, "variant": variant, "task": task,
        "prompt_id": prompt_id, "rollout_id": np.arange(rollouts),
        "prompt_text": f"synthetic prompt {task}/{prompt_id}",
        "prompt_token_ids": [np.arange(24, dtype=np.int64)] * rollouts,
        "token_ids": np.split(ids, cuts),
        "text": [words[s:s + 4 * int(n)] for s, n in zip(starts, lengths)],
        "step_entropy": np.split(h, cuts), "step_logprob": np.split(lp, cuts),
        "step_entropy_raw": np.split(raw_h, cuts), "step_stop_logprob": np.split(stop, cuts),
        "length": lengths, "truncated": truncated,
        "summed_entropy": np.add.reduceat(h.astype(np.float64), np.r_[0, cuts]),
        "surprisal": -np.add.reduceat(lp.astype(np.float64), np.r_[0, cuts]),
    })


def write_store(out: Path, families: int, variants: list[str], tasks: int, prompts: int,
                rollouts: int, mean_length: float, cap: int, seed: int = 0) -> dict:
    """Write the synthetic store; returns its shape (rollouts, steps, bytes)."""
    from canopy.store import shard_path, write_shard

    rng = np.random.default_rng(seed)
    vocabulary = np.array(["the", "a", "tree", "of", "words", "runs", "and", "then",
                           "stops", "here", "while", "models", "sample"])
    words = " ".join(rng.choice(vocabulary, 4 * cap + 20_000))
    sampling = {**SAMPLING, "max_new_tokens": cap, "rollouts": rollouts}
    shape = {"rollouts": 0, "steps": 0, "bytes": 0, "shards": 0}
    for f in range(families):
        for variant in variants:
            model = f"synthetic-{f}" + ("-sft" if variant == "fine-tuned" else "")
            record = {"synthetic": True, "model": {"name": model, "family": f"synthetic-{f}",
                                                   "variant": variant},
                      "sampling": sampling}
            digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
            config_dir = out / model / digest[:12]
            config_dir.mkdir(parents=True, exist_ok=True)
            (out / model / "current.json").write_text(json.dumps({"config_hash": digest}))
            names = {}
            for t in range(tasks):
                for p in range(prompts):
                    task, prompt_id = f"task{t}", f"p{p:03d}"
                    text = f"synthetic prompt {task}/{prompt_id}"
                    names[f"{task}/{prompt_id}"] = hashlib.sha256(text.encode()).hexdigest()
                    table = rollout_table(rng, model, f"synthetic-{f}", variant, task,
                                           prompt_id, rollouts, mean_length, cap, words)
                    path = shard_path(config_dir, task, prompt_id)
                    write_shard(path, table, {
                        "config_hash": digest, "prompt_sha256": names[f"{task}/{prompt_id}"],
                        "rollouts": rollouts, "task": task, "prompt_id": prompt_id,
                        "synthetic": True})
                    shape["rollouts"] += rollouts
                    shape["steps"] += int(table["length"].sum())
                    shape["bytes"] += path.stat().st_size
                    shape["shards"] += 1
            (config_dir / "manifest.json").write_text(json.dumps({
                "synthetic": True, "config_hash": digest, "config": record,
                "spec": record["model"], "prompts": names}, indent=2))
    (out / "synthetic.json").write_text(json.dumps(shape))
    return shape


def write_experiment_store(experiment, runtime: dict, mean_length: float = 20.0,
                           seed: int = 0, signature: dict | None = None) -> int:
    """Write a synthetic store for ``experiment`` (:class:`canopy.experiment.Experiment`)
    into its ``out`` as a run elsewhere would have left it: per model a configuration
    directory whose manifest has canopy's shape (configuration record with the
    algorithm version, ``runtime`` as given — e.g. vLLM on CUDA in bfloat16 —, the
    experiment's sampling settings; the spec; ``signature`` as the weights' source
    signature, default one of files absent here) and ``"synthetic": true``, and one
    shard per prompt through the store's writer. Returns the number of shards."""
    from canopy.sampling import ALGORITHM_VERSION
    from canopy.store import config_hash, now, safe_name, shard_path, write_json, write_shard

    rng = np.random.default_rng(seed)
    cap = experiment.sampling.max_new_tokens
    vocabulary = np.array(["the", "a", "tree", "of", "words", "runs", "and", "then",
                           "stops", "here", "while", "models", "sample"])
    words = " ".join(rng.choice(vocabulary, 4 * cap + 2_000))
    prompts, shards = experiment.prompts(), 0
    for spec in experiment.specs:
        record = {"algorithm_version": ALGORITHM_VERSION, "runtime": dict(runtime),
                  "model": {"name": spec.name, "family": spec.family,
                            "variant": spec.variant, "dtype": runtime.get("dtype"),
                            "chat_template": spec.chat_template},
                  "fingerprint": "synthetic", "synthetic": True,
                  "sampling": experiment.sampling.distribution()}
        digest = config_hash(record)
        config_dir = experiment.out / safe_name(spec.name) / digest[:12]
        for p in prompts:
            table = rollout_table(rng, spec.name, spec.family, spec.variant, p.task,
                                  p.prompt_id, experiment.sampling.rollouts, mean_length,
                                  cap, words)
            table["prompt_text"] = p.text
            write_shard(shard_path(config_dir, p.task, p.prompt_id), table, {
                "config_hash": digest, "prompt_sha256": p.sha256(),
                "rollouts": experiment.sampling.rollouts, "task": p.task,
                "prompt_id": p.prompt_id, "written": now(), "synthetic": True})
            shards += 1
        written = now()
        write_json(config_dir / "manifest.json", {
            "synthetic": True, "config_hash": digest, "config": record,
            "spec": spec.describe(), "source_signature": signature or {
                "files": [[f"/cluster/models/{spec.name}/model.safetensors"]]},
            "package_versions": {"canopy": "synthetic"}, "created": written,
            "updated": written, "prompts": {f"{p.task}/{p.prompt_id}": p.sha256()
                                            for p in prompts}})
        write_json(config_dir.parent / "current.json", {"config_hash": digest[:12]})
    return shards


def prefill_embeddings(experiment, cache: Path, dim: int = 384,
                       seed: int = 0) -> tuple[int, float]:
    """Put vectors marked synthetic (unit-norm Gaussian, ``dim`` wide) for every rollout's
    text where :func:`canopy.semantic.embed_rollouts` looks for the default embedding
    model's vectors under ``cache`` (the ``embeddings`` folder of a ``$CANOPY_CACHE``),
    so that the chapters run without an embedder; the word pieces chapter 5 reports are
    counted for real (:func:`canopy.semantic.rollouts_cut`, the embedder's tokenizer: the
    part of embedding a build keeps beside the vectors). Returns the number of texts and
    the seconds the counting took."""
    from canopy import semantic
    from canopy.embedders import DEFAULT_EMBEDDING_MODEL

    table = experiment.summaries(progress=False)
    rng = np.random.default_rng(seed)
    index = {text: i for i, text in enumerate(table["text"])}
    vectors = rng.normal(size=(len(table), dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    done = []

    def synthetic(texts, *args, **kwargs):
        done.append(len(texts))
        return vectors[[index[t] for t in texts]]

    real, semantic.embed_texts = semantic.embed_texts, synthetic
    try:
        semantic.embed_rollouts(table, DEFAULT_EMBEDDING_MODEL, cache=Path(cache) / "embeddings",
                                progress=False)
    finally:
        semantic.embed_texts = real
    (Path(cache) / "embeddings" / "SYNTHETIC").write_text(
        "these vectors were made by benchmarks/bench_scale.py (random), not by an embedder; "
        "the word-piece counts (*.pieces.npz) by its tokenizer\n")
    started = time.perf_counter()
    semantic.rollouts_cut(table, DEFAULT_EMBEDDING_MODEL, cache=Path(cache) / "embeddings")
    return sum(done), time.perf_counter() - started


CLUSTER_RUNTIME = {"engine": "vllm", "device_type": "cuda", "dtype": "bfloat16",
                   "threads": None}


def book_experiment(root: Path, families: int, variants: list[str], tasks: int,
                    prompts: int, rollouts: int, cap: int) -> Path:
    """The experiment file of the ``book`` steps (models by Hugging Face id, not on this
    machine; the store ``root/store``)."""
    names = ["coding", "math", "stories", "completion"][:tasks]
    models = "".join(
        f"  - {{name: cluster/synthetic-{f}{'-sft' if v == 'fine-tuned' else ''}, "
        f"family: synthetic-{f}, variant: {'instruct' if v == 'fine-tuned' else 'base'}}}\n"
        for f in range(families) for v in variants)
    path = root / "exp.yaml"
    path.write_text(f"models:\n{models}tasks: [{', '.join(names)}]\nout: store\n"
                    f"simulation_seeds: 40\nsampling: {{rollouts: {rollouts}, max_new_tokens: "
                    f"{cap}, prompts_per_task: {prompts}}}\n")
    return path


# ------------------------------------------------------------------------ the steps


def _previous_read_verified(path: Path) -> None:
    """Verification as it was before the shard pool (for the ratio): the footer and the
    table read from the file separately, the digest checked, one shard after another."""
    import pyarrow.parquet as pq

    from canopy.digests import skips_page_checksums, verify

    meta = json.loads(pq.read_schema(path).metadata[b"canopy"])
    arrow = pq.read_table(path, page_checksum_verification=not skips_page_checksums(meta))
    if verify(arrow, json.loads(arrow.schema.metadata[b"canopy"])) is not None:
        raise SystemExit(f"bench_scale: {path} is damaged")


def step_verify(store: Path) -> str:
    from collections import deque

    import pyarrow.parquet as pq

    from canopy.digests import legacy_sha256
    from canopy.shardpool import map_in_order, read_threads
    from canopy.store import read_shard, read_verified

    shards = sorted(store.glob("*/*/*/*.parquet"))
    size = sum(p.stat().st_size for p in shards)
    for path in shards[:4]:  # warm the allocator (a first read costs page faults)
        read_verified(path)
    timings = {}
    # each table is dropped once read (deque of length 0), as the book's verification does:
    # a list of every table would hold the whole store (10.5 GB for six models) and push
    # the shards out of the page cache
    for name, run in (("previous", lambda: deque((_previous_read_verified(p) for p in shards), 0)),
                      ("1 thread", lambda: deque(map_in_order(read_verified, shards, 1), 0)),
                      ("pool", lambda: deque(map_in_order(read_verified, shards), 0)),
                      ("previous again",
                       lambda: deque((_previous_read_verified(p) for p in shards), 0))):
        started = time.perf_counter()
        run()
        timings[name] = time.perf_counter() - started
    previous = (timings["previous"] + timings["previous again"]) / 2
    new = timings["pool"]
    started = time.perf_counter()
    for path in shards[:max(1, len(shards) // 4)]:
        read_shard(path)
    with_pandas = (time.perf_counter() - started) / max(1, len(shards) // 4) * len(shards)
    # the old path on the first ~60 MB: page CRCs + the JSON sha256 of every value
    sample, sample_size = [], 0
    for path in shards:
        if sample_size > 60e6:
            break
        sample.append(path)
        sample_size += path.stat().st_size
    started = time.perf_counter()
    for path in sample:
        legacy_sha256(pq.read_table(path, page_checksum_verification=True))
    old = time.perf_counter() - started
    started = time.perf_counter()
    for path in sample:
        pq.read_table(path, page_checksum_verification=True)
    crc = time.perf_counter() - started
    return (f"{len(shards)} shards, {size / 1e6:.0f} MB: read and verified (read_verified) "
            f"on {read_threads()} threads {size / 1e6 / new:.0f} MB/s, on 1 thread "
            f"{size / 1e6 / timings['1 thread']:.0f} MB/s, the previous path (file opened "
            f"twice, one thread) {size / 1e6 / previous:.0f} MB/s (ratio "
            f"{previous / new:.2f}×; load average {os.getloadavg()[0]:.1f}); as DataFrames "
            f"(read_shard, 1 thread) {size / 1e6 / with_pandas:.0f} MB/s; legacy JSON path on "
            f"{sample_size / 1e6:.0f} MB: {sample_size / 1e6 / old:.1f} MB/s (ratio "
            f"{old / sample_size * size / new:.0f}×); Parquet read with page CRCs alone "
            f"{sample_size / 1e6 / crc:.0f} MB/s")


def step_load(store: Path) -> str:
    from canopy.store import load_rollouts

    table = load_rollouts(store)
    return f"{len(table)} rollouts"


def step_metrics(store: Path) -> str:
    import tempfile

    from canopy.cli import main

    with tempfile.TemporaryDirectory() as out:
        code = main(["metrics", "--rollouts", str(store), "--out", out])
    return f"exit {code}"


def step_profile_streamed(store: Path) -> str:
    from canopy.profiles import stream_position_profile

    profile = stream_position_profile(store)
    return f"{len(profile)} profile rows"


def step_metrics_full_load(store: Path) -> str:
    from canopy.entropy import prompt_metrics
    from canopy.pooling import paired_bootstrap, pool
    from canopy.store import load_rollouts

    prompts = prompt_metrics(load_rollouts(store))
    pool(prompts)
    paired_bootstrap(prompts, n_boot=2000, seed=0)
    return f"{len(prompts)} prompts"


def step_profile_full_load(store: Path) -> str:
    from canopy.entropy import position_profile
    from canopy.store import load_rollouts

    profile = position_profile(load_rollouts(store))
    return f"{len(profile)} profile rows"


def step_imports(store: Path) -> str:
    import pyarrow.parquet  # noqa: F401

    import canopy.entropy  # noqa: F401
    import canopy.pooling  # noqa: F401
    import canopy.store  # noqa: F401
    return "canopy.store, canopy.entropy, canopy.pooling"


def _book_root(store: Path) -> Path:
    return store.with_name(store.name + "-book")


def step_book_write(store: Path) -> str:
    """Write the book steps' store, pre-fill the embeddings, drop the summaries made on
    the way (the verification step makes them, as a build does)."""
    import shutil

    from canopy.experiment import load_experiment

    root = _book_root(store)
    started = time.perf_counter()
    shards = write_experiment_store(load_experiment(root / "exp.yaml"), CLUSTER_RUNTIME,
                                    float(os.environ.get("BENCH_MEAN_LENGTH", "1000")))
    written = time.perf_counter() - started
    texts, counting = prefill_embeddings(load_experiment(root / "exp.yaml"), root / "cache")
    for kept in (root / "store").rglob(".summaries"):
        shutil.rmtree(kept)
    return (f"{shards} shards written in {written:.1f} s, {texts} synthetic embeddings "
            f"pre-filled, word pieces counted in {counting:.1f} s")


def step_book_verify(store: Path) -> str:
    from canopy.book import verify_store

    root = _book_root(store)
    count = verify_store("default", str(root / "exp.yaml"), echo=lambda line: None,
                         record=root / "verified.json")
    return f"{count} shards verified, summaries made"


def step_book_chapter(store: Path, number: str) -> str:
    from canopy import book
    from canopy.reading import VERIFIED_ENV

    root = _book_root(store)
    os.environ[VERIFIED_ENV] = str(root / "verified.json")
    source = next(p for p in book.chapters() if p.stem.startswith(number))
    _, seconds, _ = book.execute_chapter(
        source, {"profile": "default", "experiment_file": str(root / "exp.yaml")},
        force=True, out_dir=root / "executed")
    return f"{source.stem} executed in {seconds:.1f} s"


RUNNERS = {"imports": step_imports, "verify": step_verify, "load": step_load,
           "metrics-cold": step_metrics, "metrics-warm": step_metrics,
           "profile-streamed": step_profile_streamed, "metrics-full-load": step_metrics_full_load,
           "profile-full-load": step_profile_full_load, "book-verify": step_book_verify,
           "book-write": step_book_write}


def run_child(step: str, store: Path, env: dict | None = None) -> tuple[float, float, str]:
    """Run one step in a fresh process: (wall s, peak RSS MB — of the process or of the
    largest process it waited for, e.g. a chapter's kernel —, its one-line result)."""
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, __file__, "--child", step, "--out", str(store)],
                             stdout=subprocess.PIPE, text=True,
                             env={**os.environ, **(env or {})})
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bench_scale: step {step} failed (exit status {status})")
    return wall, usage.ru_maxrss / 1024, output.strip().splitlines()[-1] if output.strip() else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="store directory (kept)")
    parser.add_argument("--families", type=int, default=1)
    parser.add_argument("--variants", default="base,fine-tuned",
                        help="comma-separated: base, fine-tuned (default both)")
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=100, help="per task (before --scale)")
    parser.add_argument("--rollouts", type=int, default=100)
    parser.add_argument("--mean-length", type=float, default=1000.0)
    parser.add_argument("--max-new-tokens", type=int, default=4000)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the prompts")
    parser.add_argument("--steps", default=",".join(STEPS))
    parser.add_argument("--rewrite", action="store_true", help="write the store again")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.child.startswith("book-") and args.child not in RUNNERS:
            print(step_book_chapter(args.out, args.child.split("-")[1]))
        else:
            print(RUNNERS[args.child](args.out))
        return
    if args.steps == "book":
        book_steps(args)
        return
    shape_file = args.out / "synthetic.json"
    if args.rewrite or not shape_file.is_file():
        if args.out.exists() and any(args.out.iterdir()) and not shape_file.is_file():
            raise SystemExit(f"bench_scale: {args.out} is not empty and not a synthetic store")
        import shutil
        shutil.rmtree(args.out, ignore_errors=True)
        started = time.perf_counter()
        shape = write_store(args.out, args.families, args.variants.split(","), args.tasks,
                            max(1, round(args.prompts * args.scale)), args.rollouts,
                            args.mean_length, args.max_new_tokens)
        print(f"wrote the synthetic store in {time.perf_counter() - started:.1f} s")
    shape = json.loads(shape_file.read_text())
    print(f"store {args.out}: {shape['shards']} shards, {shape['rollouts']:,} rollouts, "
          f"{shape['steps']:,} steps, {shape['bytes'] / 1e6:.0f} MB; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'step':<20} {'wall s':>8} {'peak MB':>8}  result")
    for step in args.steps.split(","):
        if step == "metrics-cold":
            import shutil
            for kept in args.out.glob("*/*/.summaries"):
                shutil.rmtree(kept)
        wall, peak, result = run_child(step, args.out)
        print(f"{step:<20} {wall:>8.1f} {peak:>8.0f}  {result}", flush=True)


def book_steps(args) -> None:
    """The ``book`` steps (module docstring): write the experiment-shaped store if absent,
    pre-fill the embeddings, verify once, run each chapter in its own process."""
    root = _book_root(args.out)
    cache = root / "cache"
    env = {"CANOPY_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    os.environ.update(env)
    variants = args.variants.split(",")
    prompts = max(1, round(args.prompts * args.scale))
    if args.rewrite or not (root / "exp.yaml").is_file():
        import shutil

        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        book_experiment(root, args.families, variants, args.tasks, prompts, args.rollouts,
                        args.max_new_tokens)
        wall, peak, result = run_child("book-write", args.out,
                                       {**env, "BENCH_MEAN_LENGTH": str(args.mean_length)})
        print(f"{'book-write':<20} {wall:>8.1f} {peak:>8.0f}  {result}", flush=True)
    size = sum(p.stat().st_size for p in (root / "store").rglob("*.parquet"))
    print(f"book store {root / 'store'}: {size / 1e6:.0f} MB; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'step':<20} {'wall s':>8} {'peak MB':>8}  result")
    sources = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.py"))
    steps = ["book-verify"] + [f"book-{p.stem[:2]}" for p in sources]
    for step in steps:
        wall, peak, result = run_child(step, args.out, env)
        print(f"{step:<20} {wall:>8.1f} {peak:>8.0f}  {result}", flush=True)


if __name__ == "__main__":
    main()
