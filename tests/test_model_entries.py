"""A user's own models with their roles (issue 17): model entries in experiment files and
``--model``, what ``canopy models`` shows, the checks made before loading (tokenizer
files, chat template, a vocabulary larger than the tokenizer), and no silent
re-sampling of a store that holds another configuration."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from canopy import REPO_ROOT
from canopy.cli import main
from canopy.experiment import load_experiment
from canopy.entries import entry_spec, entry_specs
from canopy.models import REGISTRY
from canopy.store import load_rollouts
from sampling_tiny import tiny_model, tiny_tokenizer


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CANOPY_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """``base/`` (tokenizer without a chat template) and ``sft/`` (with one)."""
    root = tmp_path_factory.mktemp("pair")
    for name, seed, chat in (("base", 0, False), ("sft", 1, True)):
        tiny_model("llama", seed=seed, scale=8.0).save_pretrained(root / name)
        tiny_tokenizer(chat=chat).save_pretrained(root / name)
    (root / "prompts").mkdir()
    (root / "prompts" / "demo.jsonl").write_text(
        "".join(json.dumps({"id": i, "prompt": "a b c"[: 1 + 2 * i]}) + "\n" for i in range(3)))
    return root


def experiment(root: Path, models: str, extra: str = "") -> Path:
    path = root / "exp.yaml"
    path.write_text(f"models: {models}\ntasks: [demo]\nprompts_dir: prompts\n"
                    f"out: {root / 'store'}\n"
                    "sampling: {rollouts: 3, max_new_tokens: 5, top_k: 0, seed: 1}\n"
                    "runtime: {threads: 1}\n" + extra)
    return path


# ------------------------------------------------------------------------- entries


def test_mapping_entries_state_the_roles(pair):
    base = entry_spec({"path": str(pair / "base"), "family": "mine"})
    sft = entry_spec({"path": str(pair / "sft"), "family": "mine", "variant": "instruct"})
    assert (base.name, base.family, base.variant, base.chat_template) == ("base", "mine", "base", False)
    assert (sft.name, sft.family, sft.variant, sft.chat_template) == ("sft", "mine", "fine-tuned", True)
    named = entry_spec({"path": str(pair / "sft"), "name": "my-sft", "variant": "fine-tuned",
                        "chat_template": False, "dtype": "bfloat16"})
    assert (named.name, named.family, named.chat_template, named.dtype) == \
        ("my-sft", "my-sft", False, "bfloat16")
    # a plain string keeps its meaning: an unpaired base model with raw prompts
    plain = entry_spec(str(pair / "sft"))
    assert (plain.family, plain.variant, plain.chat_template) == ("sft", "base", False)
    # a registered name keeps its settings except those given
    gemma = entry_spec({"name": "gemma-3-270m", "family": "other"})
    assert gemma == REGISTRY["gemma-3-270m"].__class__(**{**REGISTRY["gemma-3-270m"].describe(),
                                                          "family": "other"})
    assert entry_spec("gemma-3-270m") is REGISTRY["gemma-3-270m"]


@pytest.mark.parametrize("entry, message", [
    ({"path": "x", "famly": "f"}, "unknown key famly (did you mean family?)"),
    ({"family": "f"}, "give path (a local folder or .gguf file) or name"),
    ({"path": "x", "variant": "chat"}, "variant must be base, instruct or fine-tuned"),
    ({"path": "x", "chat_template": "yes"}, "chat_template must be true or false"),
    ({"path": "x", "dtype": "int8"}, "dtype must be one of"),
    ({"path": "/nonexistent/folder"}, "no folder /nonexistent/folder"),
    (3, "give a name, a path, or a mapping"),
])
def test_bad_entries_are_one_line(entry, message):
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        entry_spec(entry)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_two_models_of_one_name_are_refused(pair, tmp_path):
    other = tmp_path / "elsewhere" / "sft"
    shutil.copytree(pair / "sft", other)
    with pytest.raises(ValueError, match="two models are called sft .*give one of them a name"):
        entry_specs([{"path": str(pair / "sft")}, {"path": str(other)}])
    specs = entry_specs([{"path": str(pair / "sft")}, {"path": str(other), "name": "sft2"}])
    assert [s.name for s in specs] == ["sft", "sft2"]


def test_experiment_file_pairs_two_folders_relative_to_it(pair):
    path = experiment(pair, "[{path: base, family: mine}, "
                            "{path: sft, family: mine, variant: instruct}]")
    exp = load_experiment(path)
    assert exp.models == ["base", "sft"]
    assert [(s.family, s.variant, s.chat_template, s.source) for s in exp.specs] == [
        ("mine", "base", False, str(pair / "base")),
        ("mine", "fine-tuned", True, str(pair / "sft"))]
    table = exp.rollouts(progress=False)
    assert set(zip(table["model"], table["family"], table["variant"])) == {
        ("base", "mine", "base"), ("sft", "mine", "fine-tuned")}
    # the instruct model's prompts went through its chat template, the base's did not
    texts = table.groupby("model")["prompt_text"].first()
    assert texts["sft"].endswith("m ") and not texts["base"].endswith("m ")


def test_cli_model_option_and_canopy_models(pair, tmp_path, capsys):
    out = tmp_path / "store"
    args = ["sample", "--model", f"path={pair / 'base'},family=mine",
            "--model", f"path={pair / 'sft'},family=mine,variant=instruct",
            "--prompts", str(pair / "prompts" / "demo.jsonl"), "--rollouts", "2",
            "--max-new-tokens", "4", "--out", str(out), "--threads", "1"]
    assert main(args) == 0
    table = load_rollouts(out)
    assert set(zip(table["model"], table["family"], table["variant"])) == {
        ("base", "mine", "base"), ("sft", "mine", "fine-tuned")}
    capsys.readouterr()
    assert main(["models", "--experiment", str(experiment(
        pair, "[{path: base, family: mine}, {path: sft, family: mine, variant: instruct}]"))]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:4] == ["base", "mine", "base", "raw"]
    assert lines[2].split()[:4] == ["sft", "mine", "instruct", "chat"]
    assert lines[-1].endswith("mine")
    assert main(["models", "--model", f"path={pair / 'sft'}"]) == 0
    assert "pairs compared (a base and an instruct model of one family): none" in \
        capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["sample", "--model", "path"])  # not KEY=VALUE: a plain name (not registered)
    with pytest.raises(SystemExit):
        main(["sample", "--model", "path=x,chat_template=maybe"])
    assert "chat_template must be true or false" in capsys.readouterr().err


# ---------------------------------------------------------- checks before loading


def run(*argv, cache: Path):
    """``python -m canopy.cli ARGV`` in a subprocess that fails if torch gets imported
    (the checks must answer before it). Returns (returncode, stderr)."""
    code = ("import sys, runpy; sys.argv = ['canopy'] + sys.argv[1:]\n"
            "import builtins; real = builtins.__import__\n"
            "def guard(name, *a, **k):\n"
            "    if name == 'torch' or name.startswith('torch.'):\n"
            "        raise SystemExit('torch imported before the error')\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = guard\n"
            "runpy.run_module('canopy.cli', run_name='__main__')\n")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "CANOPY_CACHE": str(cache),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code, *map(str, argv)], capture_output=True,
                          text=True, env=env, timeout=300)
    return done.returncode, done.stderr


def test_folder_without_tokenizer_files_before_loading(pair, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(pair / "base", bare)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (bare / name).unlink(missing_ok=True)
    code, err = run("sample", "--model", f"path={bare},family=mine", "--prompts",
                    pair / "prompts" / "demo.jsonl", "--out", tmp_path / "s", cache=tmp_path)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"model bare: {bare} has no tokenizer files" in err and "save the tokenizer" in err


def test_chat_template_mismatch_before_loading(pair, tmp_path):
    # an instruct model whose tokenizer has no template: the fix is an entry key / flag
    code, err = run("sample", "--model", f"path={pair / 'base'},variant=instruct",
                    "--prompts", pair / "prompts" / "demo.jsonl", "--out", tmp_path / "s",
                    cache=tmp_path)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "model base is taken with a chat template (an instruct model)" in err
    assert "chat_template: false" in err and "chat_template=false" in err
    assert "register" not in err
    code, err = run("sample", "--models", pair / "base", "--chat-template", "--prompts",
                    pair / "prompts" / "demo.jsonl", "--out", tmp_path / "s", cache=tmp_path)
    assert code == 2 and "(chat_template: true)" in err, err
    # and it is fine when the entry says so
    path = experiment(pair, f"[{{path: base, variant: instruct, chat_template: false}}]")
    assert load_experiment(path).specs[0].chat_template is False


def test_vocabulary_larger_than_tokenizer_is_noted_and_counted(pair, tmp_path, capsys):
    """A model with 24 output rows over a 16-token tokenizer: said before loading, and
    the sampled ids ≥ 16 counted after (checked against the stored token ids)."""
    padded = tmp_path / "padded"
    tiny_model("llama", vocab=24, scale=2.0).save_pretrained(padded)
    tiny_tokenizer(chat=False).save_pretrained(padded)
    out = tmp_path / "s"
    assert main(["sample", "--models", str(padded), "--prompts",
                 str(pair / "prompts" / "demo.jsonl"), "--rollouts", "4", "--max-new-tokens",
                 "8", "--top-k", "0", "--out", str(out), "--threads", "1"]) == 0
    captured = capsys.readouterr()
    assert ("canopy: note: model padded: its vocabulary (24 ids in config.json) is larger "
            "than its tokenizer (16 tokens)") in captured.err
    ids = np.concatenate([np.asarray(t) for t in load_rollouts(out)["token_ids"]])
    beyond = int((ids >= 16).sum())
    assert beyond > 0  # scale 2 over 24 ids: the 8 extra ids hold about a third of q
    assert (f"canopy sample: model padded: {beyond} of {ids.size} sampled tokens have ids "
            "≥ 16") in captured.out


# ------------------------------------------------------------ no silent re-sampling


def test_a_store_of_another_configuration_stops_a_chapter(pair, tmp_path, capsys):
    pairing = "[{path: base, family: mine}, {path: sft, family: mine, variant: instruct}]"
    first = load_experiment(experiment(pair, pairing))
    first.rollouts(progress=False)
    before = sorted(p.name for p in (first.out / "sft").iterdir())
    # the same store, the models now given as plain paths: unpaired base models
    plain = load_experiment(experiment(pair, f"[{pair / 'base'}, {pair / 'sft'}]"))
    with pytest.raises(ValueError) as info:
        plain.rollouts(progress=False)
    message = str(info.value)
    assert "\n" not in message and f"the store {first.out} holds model base" in message
    assert "family: 'mine' → 'base'" in message and "-p resample true" in message
    assert sorted(p.name for p in (first.out / "sft").iterdir()) == before  # nothing written
    # sampling settings too, and canopy sample says the same with its flag
    with pytest.raises(SystemExit) as stop:
        main(["sample", "--experiment", str(experiment(pair, pairing)), "--rollouts", "2"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "sampling.rollouts: 3 → 2" in err and "add --resample" in err
    # a stated runtime setting too; an unstated one (here: threads left to the default)
    # is not something asked for, so it does not stop (its shards go to their own
    # configuration directory, as always)
    two = load_experiment(experiment(pair, pairing).with_name("exp.yaml"), overrides={"threads": 2})
    with pytest.raises(ValueError, match="runtime.threads: 1 → 2"):
        two.rollouts(progress=False)
    text = experiment(pair, pairing).read_text().replace("runtime: {threads: 1}\n", "")
    (pair / "exp.yaml").write_text(text)
    unstated = load_experiment(pair / "exp.yaml")
    assert unstated.runtime_stated == set()
    from canopy.settings import Runtime
    from canopy.store import configuration_change

    record = Runtime(threads=2).record()
    assert configuration_change(unstated.out, unstated.specs[0], unstated.sampling, record,
                                unstated.runtime_stated)[1] == []
    # told to, it samples the asked configuration, which becomes the current one
    again = plain.rollouts(progress=False, resample=True)
    assert set(again["family"]) == {"base", "sft"}
    assert main(["sample", "--experiment", str(experiment(pair, pairing)), "--rollouts", "2",
                 "--resample"]) == 0
    assert set(load_rollouts(first.out)["family"]) == {"mine"}


def test_loading_a_folder_without_tokenizer_names_it(pair, tmp_path):
    """From Python (no CLI checks first) the load error still names the folder and the fix."""
    from canopy.models import load_model

    bare = tmp_path / "bare"
    shutil.copytree(pair / "base", bare)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (bare / name).unlink(missing_ok=True)
    with pytest.raises(ValueError) as info:
        load_model(entry_spec({"path": str(bare)}))
    message = str(info.value)
    assert f"model bare: cannot load the tokenizer in {bare}" in message
    assert "save the tokenizer files" in message and "\n" not in message


def test_book_models_parameter_paths_are_made_absolute(pair, monkeypatch):
    """`-p models` entries with relative paths name the same folders in the chapters,
    which run in the project root."""
    from canopy.cli import _absolute_entry

    monkeypatch.chdir(pair)
    assert _absolute_entry({"path": "sft", "variant": "instruct"}) == \
        {"path": str(pair / "sft"), "variant": "instruct"}
    assert _absolute_entry("base") == str(pair / "base")
    assert _absolute_entry("gemma-3-270m") == "gemma-3-270m"


def test_a_chapter_stamp_follows_the_model_folders(pair, tmp_path):
    """A user's fine-tune trained again into the same folder re-executes the chapters
    (their stamp holds the weights' file signatures), as a changed experiment does."""
    from canopy import book

    root = tmp_path / "mine"
    shutil.copytree(pair, root)
    path = experiment(root, "[{path: base, family: mine}, "
                            "{path: sft, family: mine, variant: instruct}]")
    source = tmp_path / "99_x.py"
    source.write_text("# %% tags=[\"parameters\"]\nprofile = 'default'\n")
    params = {"profile": "default", "experiment_file": str(path)}
    before = book.chapter_stamp(source, params)
    assert book.chapter_stamp(source, params) == before
    weights = root / "sft" / "model.safetensors"
    data = weights.read_bytes()
    weights.unlink()
    weights.write_bytes(data + b"\0")  # rewritten (size and time change)
    assert book.chapter_stamp(source, params) != before
