"""No silent damage in the store: bit flips, concurrent runs, leftovers of killed runs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pandas as pd
import pytest

from canopy import REPO_ROOT
from canopy.locks import Claims, remove_dead_temporaries
from canopy.prompts import Prompt
from canopy.run import sample_to_store
from canopy.sampling import plan_batches
from canopy.settings import SamplingConfig
from canopy.store import ShardError, fill_shards, load_rollouts, read_shard, shard_path
from sampling_tiny import tiny_model, tiny_tokenizer

PROMPTS = [Prompt("t", f"p{i}", " ".join("abcdefghijklm"[i:i + 3])) for i in range(8)]
CFG = SamplingConfig(rollouts=4, max_new_tokens=12, top_k=10, seed=1, batch_size=4)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CANOPY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "tiny"
    tiny_model("llama", scale=2.0, eos=[1]).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def reference(model_dir, tmp_path_factory):
    """One store sampled by a single process: (store dir, its table)."""
    out = tmp_path_factory.mktemp("ref") / "store"
    table = sample_to_store(str(model_dir), PROMPTS, CFG, out, progress=False)
    return out, table


def canonical(table: pd.DataFrame) -> pd.DataFrame:
    return table.sort_values(["model", "task", "prompt_id", "rollout_id"]).reset_index(drop=True)


# --------------------------------------------------------------------------- bit flips


def test_every_bit_flip_is_detected_or_harmless(reference, tmp_path):
    """Flip one bit at a time at ~600 places spread over a shard: each flipped file is
    either refused (ShardError) or reads back value-identical; never other numbers."""
    out, _ = reference
    path = sorted(out.rglob("*.parquet"))[0]
    original = path.read_bytes()
    truth = read_shard(path)
    copy = tmp_path / path.name
    step = max(1, len(original) // 600)
    detected = harmless = 0
    for position in range(0, len(original), step):
        data = bytearray(original)
        data[position] ^= 1 << (position % 8)
        copy.write_bytes(bytes(data))
        try:
            table = read_shard(copy)
        except ShardError:
            detected += 1
            continue
        pd.testing.assert_frame_equal(table, truth, check_exact=True,
                                      obj=f"shard with bit {position % 8} of byte {position} "
                                          "flipped")
        harmless += 1
    assert detected + harmless == len(range(0, len(original), step))
    assert detected > 0.5 * (detected + harmless)  # most bytes are data or checked metadata


def test_shards_carry_page_checksums_and_a_content_hash(reference):
    import pyarrow.parquet as pq

    out, _ = reference
    path = sorted(out.rglob("*.parquet"))[0]
    meta = pq.read_schema(path).metadata[b"canopy"]
    assert re.search(rb'"content_digest": "arrow-sha256-v1:[0-9a-f]{64}"', meta)
    # the page CRCs are there: pyarrow verifies them when asked (an unchecked file
    # would read fine after a flip inside a data page)
    pq.read_table(path, page_checksum_verification=True)


# ---------------------------------------------------------------------- concurrent runs


def test_two_runs_into_one_store_split_the_prompts(reference, tmp_path):
    """Two threads fill the same configuration directory with a sampler that behaves
    like sample_prompts (skip asked lazily per batch, on_prompt when a prompt is
    complete) and is slow: each prompt is sampled exactly once, by one of them."""
    _, table = reference
    by_prompt = {p: table[table["prompt_id"] == p.prompt_id].reset_index(drop=True)
                 for p in PROMPTS}
    counts = {i: 0 for i in range(len(PROMPTS))}
    lock = threading.Lock()

    def sampler(loaded, prompts, config, *, skip, on_prompt, progress):
        for batch in plan_batches(len(prompts), config.rollouts, config.batch_size):
            if all(skip(p) for p, _, _ in batch):
                continue
            time.sleep(0.05)  # the forward passes
            for p, a, b in batch:
                if skip(p) or b != config.rollouts:
                    continue
                with lock:
                    counts[p] += 1
                on_prompt(p, by_prompt[prompts[p]])

    config_dir = tmp_path / "store" / "tiny" / "0123456789ab"
    loaded = SimpleNamespace(spec=SimpleNamespace(name="tiny"))
    expect = lambda p: {"prompt_sha256": p.sha256(), "rollouts": CFG.rollouts}  # noqa: E731
    results, start = {}, threading.Barrier(2)

    def run(name):
        start.wait()
        results[name] = fill_shards(loaded, PROMPTS, CFG, config_dir, expect, sampler,
                                    False, poll=0.05)

    threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert set(counts.values()) == {1}, counts  # each prompt sampled once
    assert results["a"][1] + results["b"][1] == len(PROMPTS)
    assert results["a"][1] > 0 and results["b"][1] > 0  # they split the work
    for done, _ in results.values():  # both return every prompt's rollouts
        for i, p in enumerate(PROMPTS):
            pd.testing.assert_frame_equal(done[i], by_prompt[p])
    assert not list(config_dir.rglob(".*.claim"))  # claims of written shards are removed


def _env(cache):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(PYTHONPATH=str(REPO_ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", CANOPY_CACHE=str(cache))
    return env


#: Run in each `canopy sample` process of the test below: the real CLI, except that a
#: process entering its first batch marks it (file ``me``) and waits (at most 60 s) until
#: the other process has entered a batch too (file ``other``).
_MEET = """
import sys, time
from pathlib import Path
import canopy.sampling as sampling
from canopy.cli import main

me, other, argv = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
batch = sampling.sample_batch

def meeting(*args, **kwargs):
    if not me.exists():
        me.touch()
        deadline = time.monotonic() + 60
        while not other.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    return batch(*args, **kwargs)

sampling.sample_batch = meeting
sys.exit(main(argv))
"""


def test_concurrent_canopy_sample_processes_split_the_prompts(model_dir, reference, tmp_path):
    """Two real `canopy sample` processes on one store split the work: both sample
    prompts, none is sampled twice (their 'sampled' counts add up to the prompts), and
    the store equals a single process's, value for value.

    The second process starts once the first is inside its first batch, and the first
    stays there until the second has entered a batch too. A run claims a prompt only
    when it reaches the prompt's batch, so the second finds the rest unclaimed; a run
    that claimed every prompt up front (issue 18's defect) left the second nothing, so
    the second never entered a batch and sampled 0. No timing assert: the waits only
    order the two runs."""
    prompts = tmp_path / "t.jsonl"
    prompts.write_text("".join(f'{{"id": "{p.prompt_id}", "prompt": "{p.text}"}}\n'
                               for p in PROMPTS))
    out = tmp_path / "store"
    argv = ["sample", "--models", str(model_dir), "--prompts", str(prompts), "--rollouts",
            "4", "--max-new-tokens", "12", "--top-k", "10", "--seed", "1", "--batch-size",
            "4", "--out", str(out)]  # CFG: one prompt per batch
    first, second = tmp_path / "first.entered", tmp_path / "second.entered"

    def start(me, other):
        return subprocess.Popen([sys.executable, "-c", _MEET, str(me), str(other), *argv],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=_env(tmp_path / "cache"), cwd=REPO_ROOT)

    runs = [start(first, second)]
    while not first.exists() and runs[0].poll() is None:
        time.sleep(0.05)
    runs.append(start(second, first))
    outputs = [run.communicate(timeout=900) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    sampled = [int(re.search(r"(\d+) sampled\)", o).group(1)) for o, _ in outputs]
    assert sum(sampled) == len(PROMPTS), outputs  # none sampled twice
    assert min(sampled) > 0, sampled  # both sampled prompts
    pd.testing.assert_frame_equal(canonical(load_rollouts(out)), canonical(reference[1]))


def test_a_dead_process_claim_is_taken_over(tmp_path):
    shard = tmp_path / "t" / "p0.parquet"
    code = ("import os, signal, sys; from pathlib import Path; from canopy.locks import Claims;"
            f"c = Claims(); assert c.take(Path({str(shard)!r})); print('held', flush=True);"
            "sys.stdin.readline(); os.kill(os.getpid(), signal.SIGKILL)")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=_env(tmp_path / "c"))
    assert child.stdout.readline().strip() == "held"
    mine = Claims()
    assert not mine.take(shard)  # held by a live process
    child.stdin.write("\n")
    child.stdin.flush()
    assert child.wait(30) == -signal.SIGKILL
    assert mine.take(shard)  # its process died: the claim is free
    mine.release_all()


# ------------------------------------------------------------------- temporary files


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_temporaries_of_dead_runs_are_removed(model_dir, reference, tmp_path):
    import shutil

    out = tmp_path / "store"
    shutil.copytree(reference[0], out)
    config_dir = next(out.rglob("manifest.json")).parent
    dead, alive = _dead_pid(), os.getpid()
    stale = config_dir / "t" / f".p0.parquet.tmp-{dead}"
    live = config_dir / "t" / f".p1.parquet.tmp-{alive}"
    manifest_tmp = config_dir / f".manifest.json.tmp-{dead}"
    for path in (stale, live, manifest_tmp):
        path.write_bytes(b"partial")
    table = sample_to_store(str(model_dir), PROMPTS, CFG, out, progress=False)
    assert table.attrs["canopy"]["sampled_prompts"] == 0
    assert not stale.exists() and not manifest_tmp.exists()
    assert live.exists()  # a run in progress keeps its temporary


def test_gguf_conversion_leftovers_are_removed_and_a_bad_gguf_is_one_line(tmp_path):
    """A killed conversion leaves ``.<model>.tmp-PID/``; the next conversion removes it.
    A GGUF whose header is fine but whose content transformers cannot use is a one-line
    ValueError naming the file."""
    from canopy import cache_dir
    from canopy.models import convert_gguf, resolve_spec
    from test_cli_errors import tiny_gguf

    gguf = tiny_gguf(tmp_path / "odd.gguf")  # valid GGUF, but no usable model inside
    models = cache_dir() / "models"
    leftover = models / f".odd.tmp-{_dead_pid()}"
    (leftover / "sub").mkdir(parents=True)
    (leftover / "sub" / "model.safetensors").write_bytes(b"x" * 1000)
    live = models / f".other.tmp-{os.getpid()}"
    live.mkdir()
    with pytest.raises(ValueError, match=r"^damaged GGUF file .*odd\.gguf: transformers "
                                         r"cannot read it .*download the file again$") as info:
        convert_gguf(resolve_spec(str(gguf)))
    assert "\n" not in str(info.value)
    assert not leftover.exists() and live.exists()


def test_remove_dead_temporaries_ignores_other_files(tmp_path):
    (tmp_path / "keep.parquet").write_bytes(b"x")
    (tmp_path / ".keep.claim").write_bytes(b"")
    (tmp_path / f".x.tmp-{_dead_pid()}").write_bytes(b"x")
    assert len(remove_dead_temporaries(tmp_path)) == 1
    assert sorted(os.listdir(tmp_path)) == [".keep.claim", "keep.parquet"]


def test_every_bit_flip_under_a_kept_summary_is_detected_or_harmless(tmp_path):
    """The book's verify-once pass takes a shard whose kept summary is tied to its
    sha256 as verified without decoding it. Flip one bit at every 19th byte of such a
    shard: each flipped shard is refused by the pass or verified in full, its summary
    then equal to the true one; the summary kept beside it never stands in for other
    bytes."""
    from canopy.reading import StoredModel, verify_shards
    from canopy.store import read_verified, write_shard
    from canopy.summaries import shard_summary, summarize
    from test_digests import small_table

    truth = small_table(3, 5)
    path = tmp_path / "store" / "m" / "0123456789ab" / "t" / "p.parquet"
    expect = {"rollouts": 3}
    write_shard(path, truth, expect)
    original = path.read_bytes()
    true_summary = summarize(read_verified(path, expect))
    stored = [StoredModel("m", path.parent.parent, "0123456789ab", None, None, {}, False,
                          True, [(path, expect)])]
    record = tmp_path / "verified.json"
    assert verify_shards(stored, record) == 1  # keeps the summary
    positions = range(0, len(original), 19)
    detected = harmless = 0
    for position in positions:
        bit = position % 8
        data = bytearray(original)
        data[position] ^= 1 << bit
        path.write_bytes(bytes(data))
        try:
            verify_shards(stored, record)
        except ValueError as exc:
            assert "1 damaged shard(s)" in str(exc)
            detected += 1
            continue
        pd.testing.assert_frame_equal(shard_summary(path, expect), true_summary,
                                      check_exact=True,
                                      obj=f"bit {bit} of byte {position} flipped")
        harmless += 1
    assert detected + harmless == len(positions)
    assert detected > 0.5 * len(positions)
    path.write_bytes(original)
    assert verify_shards(stored, record) == 1
