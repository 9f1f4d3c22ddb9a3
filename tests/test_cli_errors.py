"""Bad input is answered early, in one line, and loses nothing (issue 11).

Each case runs the real ``canopy`` command in a subprocess (the shared interpreter,
``PYTHONPATH`` = this repository) and checks: exit status 2, exactly one line on
stderr starting ``canopy``, the message, no repr quotes around it, the work done before
answering (CPU seconds of the command, < 2 s; about 1 s of wall time on an idle machine,
the target — CPU time rather than wall time, so that a loaded machine or a second test
worker does not fail it), and that an existing store is byte-for-byte unchanged.
"""

from __future__ import annotations

import hashlib
import os
import re
import resource
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from canopy import REPO_ROOT
from sampling_tiny import tiny_model, tiny_tokenizer

LIMIT_S = 2.0


def _env(cache: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(PYTHONPATH=str(REPO_ROOT), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", CANOPY_CACHE=str(cache))
    return env


def _child_cpu_seconds() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def canopy(*argv, cache: Path, timeout: float = 300):
    """Run ``python -m canopy.cli ARGV``; returns (returncode, stdout, stderr, seconds),
    ``seconds`` being the CPU time (user + system) the command used: the work it did
    before answering, which, unlike its wall time, does not grow when other processes
    (a second test worker, other jobs) share the cores."""
    before = _child_cpu_seconds()
    done = subprocess.run([sys.executable, "-m", "canopy.cli", *map(str, argv)],
                          capture_output=True, text=True, env=_env(cache), timeout=timeout,
                          cwd=REPO_ROOT)
    return done.returncode, done.stdout, done.stderr, _child_cpu_seconds() - before


def tree_digest(root: Path) -> dict:
    """{relative path: sha256} of every file under ``root``, except the per-rollout
    summaries `canopy metrics` keeps beside the shards (canopy.summaries)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and ".summaries" not in p.parts}


def tiny_gguf(path: Path) -> Path:
    """A small valid GGUF file (header, one tensor) written with the gguf package."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(64)
    # a tiny configuration: a loader that builds the model from these allocates little
    writer.add_embedding_length(16)
    writer.add_block_count(1)
    writer.add_feed_forward_length(32)
    writer.add_head_count(2)
    writer.add_head_count_kv(1)
    writer.add_vocab_size(64)
    writer.add_tensor("w", np.arange(4096, dtype=np.float32).reshape(64, 64))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("bad"))


def build_world(root: Path) -> dict:
    """Files for the bad inputs, and a store sampled once (to check nothing is lost)."""
    w = {"root": root, "cache": root / "cache"}
    model = root / "tiny"
    tiny_model("llama", scale=8.0, eos=[1, 15]).save_pretrained(model)
    tiny_tokenizer().save_pretrained(model)
    w["model"] = model
    w["prompts"] = root / "p.jsonl"
    w["prompts"].write_text('{"id": "a", "prompt": "a b"}\n{"id": "b", "prompt": "c d"}\n')
    w["file"] = root / "a_file.txt"
    w["file"].write_text("not a directory\n")
    w["latin1"] = root / "latin1.jsonl"
    w["latin1"].write_bytes(b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n')
    w["badjson"] = root / "bad.jsonl"
    w["badjson"].write_text('{"prompt": "ok"}\n{"prompt": \n')
    w["empty_dir"] = root / "empty_model"
    w["empty_dir"].mkdir()
    good = tiny_gguf(root / "good.gguf")
    data = good.read_bytes()
    (root / "truncated.gguf").write_bytes(data[: len(data) - 1000])  # half-downloaded
    (root / "header_only.gguf").write_bytes(data[:100])
    rng = np.random.default_rng(0)
    (root / "garbage.gguf").write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 1, 3)
                                        + rng.bytes(4096))
    (root / "text.gguf").write_text("this is a text file, not a model at all\n")
    w["unpaired"] = root / "unpaired.yaml"  # no model made by canopy finetune
    w["unpaired"].write_text("models: [gemma-3-270m]\ntasks: [stories]\n")
    w["store"] = root / "store"
    code, out, err, _ = canopy("sample", "--models", model, "--prompts", w["prompts"],
                               "--rollouts", 2, "--max-new-tokens", 4, "--out", w["store"],
                               cache=w["cache"])
    assert code == 0, err
    w["digest"] = tree_digest(w["store"])
    return w


# (id, argv, message regex). {name} is replaced by the world's paths.
SAMPLE = ["sample", "--models", "{model}", "--prompts", "{prompts}", "--max-new-tokens", "4"]
CASES = [
    # --- sample: output directory
    ("out-is-a-file", [*SAMPLE, "--out", "{file}"], r"--out .*a_file\.txt is a file"),
    ("out-not-writable", [*SAMPLE, "--out", "/proc/1/canopy-out"],
     r"--out /proc/1/canopy-out (cannot be created|is not writable)"),
    ("out-under-a-file", [*SAMPLE, "--out", "{file}/sub"], r"a_file\.txt is a file, not a dir"),
    # --- sample: settings
    ("rollouts-0", [*SAMPLE, "--rollouts", "0", "--out", "{store}"],
     r"^canopy: error: rollouts must be ≥ 1, got 0$"),
    ("prompts-per-task-0", [*SAMPLE, "--prompts-per-task", "0", "--out", "{store}"],
     r"prompts_per_task must be a positive integer"),
    ("prompts-per-task--1", [*SAMPLE, "--prompts-per-task", "-1", "--out", "{store}"],
     r"prompts_per_task must be a positive integer"),
    ("max-new-tokens-1e9", [*SAMPLE[:-2], "--max-new-tokens", "1e9", "--out", "{store}"],
     r"max_new_tokens must be ≤ 1048576, got 1000000000"),
    ("max-new-tokens-over-context", [*SAMPLE[:-2], "--max-new-tokens", "5000", "--out",
                                     "{store}"],
     r"max_new_tokens 5000 is more than the context of model .*tiny \(256 tokens\)"),
    ("max-new-tokens-0", [*SAMPLE[:-2], "--max-new-tokens", "0", "--out", "{store}"],
     r"max_new_tokens must be ≥ 1"),
    ("temperature-0", [*SAMPLE, "--temperature", "0", "--out", "{store}"],
     r"temperature must be a finite number > 0"),
    ("temperature-nan", [*SAMPLE, "--temperature", "nan", "--out", "{store}"],
     r"temperature must be a finite number > 0"),
    ("top-p-2", [*SAMPLE, "--top-p", "2", "--out", "{store}"], r"top_p must be in \(0, 1\]"),
    ("top-k--1", [*SAMPLE, "--top-k", "-1", "--out", "{store}"], r"top_k must be ≥ 0"),
    ("seed--1", [*SAMPLE, "--seed", "-1", "--out", "{store}"], r"seed must be ≥ 0"),
    ("batch-size-0", [*SAMPLE, "--batch-size", "0", "--out", "{store}"],
     r"batch_size must be ≥ 1"),
    ("rollouts-not-a-number", [*SAMPLE, "--rollouts", "many"],
     r"argument --rollouts: expected an integer, got many"),
    ("variant-bogus", [*SAMPLE, "--variant", "bogus"], r"argument --variant: invalid choice"),
    # --- sample: prompts
    ("prompts-not-utf8", ["sample", "--models", "{model}", "--prompts", "{latin1}",
                          "--out", "{store}"],
     r"latin1\.jsonl:2: not UTF-8 text \(byte 0xe9 at column 16\)"),
    ("prompts-bad-json", ["sample", "--models", "{model}", "--prompts", "{badjson}",
                          "--out", "{store}"], r"bad\.jsonl:2: not valid JSON"),
    ("prompts-missing", ["sample", "--models", "{model}", "--prompts", "{root}/none.jsonl",
                         "--out", "{store}"], r"prompt file not found: .*none\.jsonl"),
    ("prompts-is-dir", ["sample", "--models", "{model}", "--prompts", "{root}",
                        "--out", "{store}"], r"is a directory; give a \.jsonl file"),
    ("no-models", ["sample", "--prompts", "{prompts}"], r"give --models"),
    ("no-prompts", ["sample", "--models", "{model}"], r"give --prompts"),
    ("experiment-missing", ["sample", "--experiment", "{root}/none.yaml"],
     r"experiment file not found"),
    ("profile-unknown", ["sample", "--profile", "huge"], r"no profile huge; profiles: "),
    # --- sample: models
    ("model-missing-absolute", ["sample", "--models", "/nonexistent/model", "--prompts",
                                "{prompts}", "--out", "{store}"],
     r"model path not found: /nonexistent/model"),
    ("model-missing-relative", ["sample", "--models", "./nonexistent/model", "--prompts",
                                "{prompts}", "--out", "{store}"],
     r"model path not found: \./nonexistent/model"),
    ("model-missing-relative-or-hub", ["sample", "--models", "nonexistent/model",
                                       "--prompts", "{prompts}", "--out", "{store}"],
     r"model nonexistent/model is neither a local path .* nor, as a Hugging Face id, "
     r"available offline: set HF_HUB_OFFLINE=0 or give a local path"),
    ("model-hub-id-offline", ["sample", "--models", "gpt2", "--prompts", "{prompts}",
                              "--out", "{store}"],
     r"model gpt2 is not registered .*not available offline: set HF_HUB_OFFLINE=0 or "
     r"give a local path"),
    ("model-typo", ["sample", "--models", "gema-3-270m", "--prompts", "{prompts}",
                    "--out", "{store}"], r"did you mean gemma-3-270m\?"),
    ("model-dir-without-config", ["sample", "--models", "{empty_dir}", "--prompts",
                                  "{prompts}", "--out", "{store}"],
     r"model .*empty_model is not available: no config\.json"),
    ("model-is-a-file", ["sample", "--models", "{file}", "--prompts", "{prompts}",
                         "--out", "{store}"], r"a_file\.txt is a file; give a directory"),
    ("second-model-missing", ["sample", "--models", "{model}", "gemma-3-270m-sft-quick",
                              "--prompts", "{prompts}", "--out", "{store}"],
     r"model gemma-3-270m-sft-quick is not available: adapter not found: .*; make it "
     r"with: canopy finetune --quick"),
    ("gguf-missing", ["sample", "--models", "{root}/none.gguf", "--prompts", "{prompts}",
                      "--out", "{store}"], r"GGUF file not found"),
    ("gguf-truncated", ["sample", "--models", "{root}/truncated.gguf", "--prompts",
                        "{prompts}", "--out", "{store}"],
     r"damaged GGUF file .*truncated\.gguf: .*truncated.*download the file again"),
    ("gguf-header-only", ["sample", "--models", "{root}/header_only.gguf", "--prompts",
                          "{prompts}", "--out", "{store}"],
     r"damaged GGUF file .*header_only\.gguf: it ends inside its header; reinstall"),
    ("gguf-garbage-body", ["sample", "--models", "{root}/garbage.gguf", "--prompts",
                           "{prompts}", "--out", "{store}"],
     r"damaged GGUF file .*garbage\.gguf: .*download the file again"),
    ("gguf-not-gguf", ["sample", "--models", "{root}/text.gguf", "--prompts", "{prompts}",
                       "--out", "{store}"], r"does not start with the GGUF magic bytes"),
    # --- metrics
    ("metrics-out-is-a-file", ["metrics", "--rollouts", "{store}", "--out", "{file}"],
     r"--out .*a_file\.txt is a file"),
    ("metrics-n-boot--5", ["metrics", "--rollouts", "{store}", "--out", "{root}/m",
                           "--n-boot", "-5"], r"--n-boot must be ≥ 0, got -5"),
    ("metrics-seed--1", ["metrics", "--rollouts", "{store}", "--out", "{root}/m",
                         "--seed", "-1"], r"--seed must be ≥ 0"),
    ("metrics-no-store", ["metrics", "--rollouts", "{root}/none", "--out", "{root}/m"],
     r"no rollouts: .*none is not a directory"),
    # --- book
    ("book-unknown-parameter", ["book", "-p", "nonexistent_param", "3"],
     r"no chapter has a parameter nonexistent_param; parameters: .*n_boot"),
    ("book-only-99", ["book", "--only", "99"], r"--only 99: no such chapter; chapters: 01_"),
    ("book-models-not-a-list", ["book", "-p", "models", "gemma"],
     r"-p models must be a list of names"),
    ("book-experiment-missing", ["book", "-p", "experiment_file", "none.yaml"],
     r"experiment_file: file not found"),
    ("book-experiment-flag-missing", ["book", "--experiment", "{root}/none.yaml"],
     r"experiment_file: file not found: .*none\.yaml"),
    ("book-experiment-twice", ["book", "--experiment", "{unpaired}", "-p", "experiment_file",
                               "{unpaired}"], r"--experiment and -p experiment_file name the same"),
    ("book-finetune-name-unknown", ["book", "-p", "finetune_name", "no-such-tune"],
     r"-p finetune_name no-such-tune: no fine-tune report at .* no built-in recipe makes it"),
    ("book-embedding-model-missing", ["book", "-p", "embedding_model", "{root}/no-embedder"],
     r"-p embedding_model: embedding model .*no-embedder: not a local folder and not in the "
     r"Hugging Face cache"),
    ("book-embedding-folder-empty", ["book", "-p", "embedding_model", "{empty_dir}"],
     r"-p embedding_model: .*empty_model: the folder has no config.json"),
]


def run_case(world: dict, argv: list[str]):
    """Run one case of :data:`CASES` (``{name}`` filled from the world)."""
    argv = [a.format(**{k: v for k, v in world.items() if isinstance(v, Path)}) for a in argv]
    return canopy(*argv, cache=world["cache"])


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_early_line(world, case):
    name, argv, message = case
    code, out, err, seconds = run_case(world, argv)
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1, err  # one line: no traceback, no usage block
    assert lines[0].startswith("canopy"), err
    assert re.search(message, lines[0]), lines[0]
    assert not re.search(r"error: '.*'$", lines[0]), lines[0]  # no repr quotes around it
    assert "Traceback" not in err and not out
    assert seconds < LIMIT_S, f"{name}: {seconds:.2f} s"
    assert tree_digest(world["store"]) == world["digest"]  # nothing lost or rewritten


def test_second_missing_model_samples_nothing(world, tmp_path):
    """All models are checked before the first is sampled."""
    code, _, err, _ = canopy("sample", "--models", world["model"], "gemma-3-270m-sft-quick",
                             "--prompts", world["prompts"], "--out", tmp_path / "fresh",
                             cache=world["cache"])
    assert code == 2 and "gemma-3-270m-sft-quick" in err
    assert not list((tmp_path / "fresh").rglob("*.parquet"))


def test_metrics_refuses_a_damaged_shard(world, tmp_path):
    """One line naming the shard and the repair; the store is left as it is."""
    import shutil

    store = tmp_path / "store"
    shutil.copytree(world["store"], store)
    from canopy.store import ShardError, read_shard

    victim = sorted(store.rglob("*.parquet"))[0]
    original = victim.read_bytes()
    for position in range(len(original) // 3, len(original)):  # a flip that changes data
        data = bytearray(original)
        data[position] ^= 0x10
        victim.write_bytes(bytes(data))
        try:
            read_shard(victim)
        except ShardError:
            break
    before = tree_digest(store)
    code, out, err, seconds = canopy("metrics", "--rollouts", store, "--out", tmp_path / "m",
                                     "--n-boot", 0, cache=world["cache"])
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert re.search(r"1 damaged shard\(s\) under .*" + re.escape(victim.name)
                     + r".*rerun the `canopy sample \.\.\. --out", err), err
    assert not (tmp_path / "m" / "prompt_metrics.parquet").exists()
    assert tree_digest(store) == before
    # the repair: the same sample command resamples only that shard, with a warning
    code, out, err, _ = canopy("sample", "--models", world["model"], "--prompts",
                               world["prompts"], "--rollouts", 2, "--max-new-tokens", 4,
                               "--out", store, cache=world["cache"])
    assert code == 0, err
    assert "resampling shard" in err and "1 prompt shards reused, 1 sampled" in out
    from canopy.store import load_rollouts

    def values(root):
        table = load_rollouts(root)
        return table.sort_values(["prompt_id", "rollout_id"]).reset_index(drop=True)

    import pandas as pd

    pd.testing.assert_frame_equal(values(store), values(world["store"]))  # as before


def test_top_k_default_is_written_once():
    import yaml

    from canopy.cli import build_parser
    from canopy.experiment import load_experiment
    from canopy.settings import SamplingConfig

    experiment = yaml.safe_load((REPO_ROOT / "data/experiments/default.yaml").read_text())
    assert "top_k" not in experiment["sampling"]  # the default is SamplingConfig's
    assert SamplingConfig().top_k == load_experiment().sampling.top_k == 100
    sample = build_parser()._subparsers._group_actions[0].choices["sample"]
    assert "default 100" in sample.format_help().replace("\n", " ")


def test_sampling_keys_match_the_config():
    from dataclasses import fields

    from canopy.settings import SAMPLING_KEYS, SamplingConfig

    assert set(SAMPLING_KEYS) == {f.name for f in fields(SamplingConfig)}
    from canopy.settings import RUNTIME_KEYS, Runtime

    assert set(RUNTIME_KEYS) == {f.name for f in fields(Runtime)}


def test_check_gguf_accepts_valid_files(world):
    from canopy.gguf_files import check_gguf

    info = check_gguf(world["root"] / "good.gguf")
    assert info["architecture"] == "llama" and info["context_length"] == 64


def test_damaged_packaged_gguf_is_caught_by_its_sha256(tmp_path, monkeypatch):
    """A file with a valid header and a garbage body: only a hash tells; packaged files
    are checked against the package's recorded sha256 before their first conversion."""
    import canopy.models as models

    good = tiny_gguf(tmp_path / "pkg.gguf")
    expected = hashlib.sha256(good.read_bytes()).hexdigest()
    data = bytearray(good.read_bytes())
    data[-100] ^= 0xFF  # inside the tensor data: the header stays valid
    good.write_bytes(bytes(data))
    monkeypatch.setenv("CANOPY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "installed_gguf", lambda spec: (good, expected))
    spec = models.get_spec("smollm2-135m-instruct")
    with pytest.raises(ValueError, match=r"damaged GGUF file .*pkg\.gguf: its sha256 differs"
                                         r".*pip install --force-reinstall"):
        models.check_gguf_source(spec)
