"""Prompt files, experiment files, and the `canopy models` / `canopy sample` commands."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from canopy import REPO_ROOT
from canopy.cli import main
from canopy.experiment import load_experiment
from canopy.prompts import read_prompts
from canopy.store import load_rollouts
from sampling_tiny import tiny_model, tiny_tokenizer



@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CANOPY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "tiny"
    tiny_model("llama", scale=8.0, eos=[1, 15]).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_read_prompts(tmp_path):
    path = write_lines(tmp_path / "stories.jsonl", [
        '{"id": "s1", "prompt": "a b"}', "", '{"prompt": "c", "task": "other"}',
        '{"id": 7, "prompt": "d"}'])
    prompts = read_prompts(path)
    assert [(p.task, p.prompt_id, p.text) for p in prompts] == [
        ("stories", "s1", "a b"), ("other", "3", "c"), ("stories", "7", "d")]


@pytest.mark.parametrize("line, message", [
    ("{not json", r"bad\.jsonl:2: not valid JSON"),
    ('["a list"]', r"bad\.jsonl:2: expected a JSON object"),
    ('{"id": "x"}', r"bad\.jsonl:2: 'prompt' must be a non-empty string"),
    ('{"prompt": "  "}', r"bad\.jsonl:2: 'prompt' must be"),
    ('{"prompt": "a", "id": [1]}', r"bad\.jsonl:2: 'id' must be"),
    ('{"prompt": "a", "id": "p"}', r"bad\.jsonl:2: duplicate id 'p'"),
])
def test_malformed_prompt_line_names_line_number(tmp_path, line, message):
    path = write_lines(tmp_path / "bad.jsonl", ['{"id": "p", "prompt": "ok"}', line])
    with pytest.raises(ValueError, match=message) as info:
        read_prompts(path)
    assert "\n" not in str(info.value)


def test_missing_or_empty_prompt_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="prompt file not found"):
        read_prompts(tmp_path / "none.jsonl")
    with pytest.raises(ValueError, match="no prompts"):
        read_prompts(write_lines(tmp_path / "e.jsonl", [""]))


EXPERIMENT = """
models: [m1, m2]
tasks: [alpha, beta]
prompts_dir: prompts
sampling: {rollouts: 8, max_new_tokens: 128, temperature: 1.0, top_k: 100, top_p: 1.0,
           seed: 0, batch_size: 16, prompts_per_task: 3}
profiles:
  quick: {sampling: {rollouts: 4, max_new_tokens: 32, prompts_per_task: 2}}
  default: {}
"""


def test_experiment_profiles_and_overrides(model_dir, tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(EXPERIMENT)
    (tmp_path / "prompts").mkdir()
    for task in ("alpha", "beta"):
        write_lines(tmp_path / "prompts" / f"{task}.jsonl",
                    [json.dumps({"id": i, "prompt": f"{task} {i}"}) for i in range(5)])
    exp = load_experiment(path)
    assert exp.sampling.rollouts == 8 and exp.sampling.top_k == 100
    assert len(exp.prompts()) == 6 and exp.models == ["m1", "m2"]
    assert exp.out.name == "exp-default"
    quick = load_experiment(path, "quick")
    assert (quick.sampling.rollouts, quick.sampling.max_new_tokens, quick.sampling.top_k) == (4, 32, 100)
    assert [p.prompt_id for p in quick.prompts()] == ["0", "1", "0", "1"]
    flags = load_experiment(path, "quick", {"rollouts": 5, "models": ["x"], "seed": None})
    assert flags.sampling.rollouts == 5 and flags.models == ["x"] and flags.sampling.seed == 0
    table = load_experiment(path, "quick", {"rollouts": 2, "max_new_tokens": 4,
                                            "models": [str(model_dir)],
                                            "out": str(tmp_path / "r")}).rollouts(progress=False)
    assert len(table) == 8 and (tmp_path / "r").is_dir()
    with pytest.raises(ValueError, match="no profile huge"):
        load_experiment(path, "huge")
    with pytest.raises(ValueError, match="rollouts must be ≥ 1"):
        load_experiment(path, overrides={"rollouts": 0})


@pytest.mark.parametrize("text, message", [
    ("models: [a]\ntasks: [b]\nsampling: {rolouts: 3}\n", "unknown sampling key"),
    ("models: [a]\ntasks: [b]\nmodel: x\n", "unknown key"),
    ("models: a\ntasks: [b]\n", "'models' must be a non-empty list"),
    ("models: [a]\ntasks: [b]\nsampling: {top_p: 2}\n", "top_p must be in"),
    ("models: [a\n", "not valid YAML"),
])
def test_bad_experiment_files(tmp_path, text, message):
    path = tmp_path / "e.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_experiment(path)


def test_shipped_default_experiment_loads():
    exp = load_experiment(REPO_ROOT / "data" / "experiments" / "default.yaml")
    assert exp.sampling.rollouts >= 8 and exp.tasks
    quick = load_experiment(REPO_ROOT / "data" / "experiments" / "default.yaml", "quick")
    assert quick.sampling.rollouts <= exp.sampling.rollouts
    assert quick.sampling.max_new_tokens <= exp.sampling.max_new_tokens
    assert quick.prompts_per_task < exp.prompts_per_task
    assert "gemma-3-270m-sft-quick" in quick.models and "gemma-3-270m-sft" in exp.models
    # The paper's decoding settings in both profiles.
    for e in (exp, quick):
        assert (e.sampling.temperature, e.sampling.top_k, e.sampling.top_p) == (1.0, 100, 1.0)


def test_cli_models_lists_registry(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m-instruct" in out and "gemma-3-270m" in out


def test_cli_sample_then_metrics(model_dir, tmp_path, capsys):
    prompts = write_lines(tmp_path / "demo.jsonl", ['{"id": "a", "prompt": "a b"}',
                                                    '{"id": "b", "prompt": "c"}'])
    out = tmp_path / "r"
    args = ["sample", "--models", str(model_dir), "--variant", "fine-tuned", "--prompts",
            str(prompts), "--rollouts", "3", "--max-new-tokens", "6", "--top-k", "5",
            "--seed", "2", "--out", str(out)]
    assert main(args) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("canopy sample: 1 model(s) x 2 prompts x 3 rollouts = 6 rollouts")
    table = load_rollouts(out)
    assert set(table["variant"]) == {"fine-tuned"} and set(table["task"]) == {"demo"}
    assert main(args) == 0
    assert "2 prompt shards reused" in capsys.readouterr().out
    assert main(["metrics", "--rollouts", str(out), "--out", str(tmp_path / "m"),
                 "--n-boot", "0"]) == 0


def test_cli_family_pairs_a_base_and_a_fine_tuned_model(model_dir, tmp_path, capsys):
    """Two models given by path, one per variant, in one family: the bootstrap pairs them."""
    import shutil

    prompts = write_lines(tmp_path / "demo.jsonl", [f'{{"id": "{i}", "prompt": "a b"}}'
                                                    for i in range(4)])
    tuned = tmp_path / "tuned"
    shutil.copytree(model_dir, tuned)
    out = tmp_path / "r"
    common = ["--prompts", str(prompts), "--rollouts", "4", "--max-new-tokens", "5",
              "--family", "tiny", "--out", str(out)]
    assert main(["sample", "--models", str(model_dir), "--variant", "base", *common]) == 0
    assert main(["sample", "--models", str(tuned), "--variant", "fine-tuned", *common]) == 0
    table = load_rollouts(out)
    assert set(table["family"]) == {"tiny"}
    assert main(["metrics", "--rollouts", str(out), "--out", str(tmp_path / "m"),
                 "--n-boot", "20"]) == 0
    boot = pd.read_csv(tmp_path / "m" / "bootstrap.csv")
    assert set(boot["family"]) == {"tiny"} and (boot["n_prompts"] == 4).all()


@pytest.mark.parametrize("args, message", [
    (["sample", "--models", "nope", "--prompts", "P"], "model nope is not registered"),
    (["sample", "--prompts", "P"], "give --models"),
    (["sample", "--models", "M"], "give --prompts"),
    (["sample", "--models", "M", "--prompts", "P", "--rollouts", "0"], "rollouts must be"),
    (["sample", "--models", "M", "--prompts", "P", "--temperature", "0"], "temperature must be"),
    (["sample", "--models", "M", "--prompts", "missing.jsonl"], "prompt file not found"),
    (["sample", "--experiment", "missing.yaml"], "experiment file not found"),
])
def test_cli_sample_errors_are_one_line(model_dir, tmp_path, capsys, args, message):
    prompts = write_lines(tmp_path / "p.jsonl", ['{"prompt": "a"}'])
    args = [str(prompts) if a == "P" else str(model_dir) if a == "M" else
            str(tmp_path / a) if a.startswith("missing") else a for a in args]
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("canopy: error:") and message in err[0]


def test_paper_profile_is_the_paper_design():
    """The `paper` profile of the shipped experiment file: three families, each with a
    base and a fine-tuned model (Hugging Face ids), 4 tasks x 100 prompts x 100 rollouts,
    at most 4,000 new tokens, the paper's decoding settings, vLLM on a GPU. Running it needs
    network and a GPU, so this only validates it; the other profiles keep their sizes."""
    from canopy.models import get_spec
    from canopy.sampling import Runtime

    paper = load_experiment(None, "paper")
    specs = [get_spec(name) for name in paper.models]
    assert all(s.kind == "hub" and s.source.count("/") == 1 for s in specs)
    variants = {}
    for s in specs:
        variants.setdefault(s.family, set()).add(s.variant)
        assert s.chat_template == (s.variant == "fine-tuned")
    assert variants == {f: {"base", "fine-tuned"} for f in ("qwen3-8b", "llama-3.1-8b", "gemma-3-12b")}
    assert paper.tasks == ["coding", "math", "stories", "completion"]
    prompts = paper.prompts()
    assert len(prompts) == 400 and len({(p.task, p.prompt_id) for p in prompts}) == 400
    s = paper.sampling
    assert (s.rollouts, s.max_new_tokens, s.temperature, s.top_k, s.top_p) == (100, 4000, 1.0, 100, 1.0)
    assert paper.runtime == Runtime(engine="vllm", device="cuda", dtype="bfloat16")
    default, quick = load_experiment(None, "default"), load_experiment(None, "quick")
    assert (len(default.prompts()), default.sampling.rollouts, default.sampling.max_new_tokens) == (32, 8, 128)
    assert (len(quick.prompts()), quick.sampling.rollouts, quick.sampling.max_new_tokens) == (8, 6, 64)
    assert default.runtime == quick.runtime == Runtime()


def test_a_new_profile_is_one_edit_of_the_experiment_file(tmp_path, capsys):
    """Profiles are read in one place: a `classroom` profile added to a copy of the shipped
    experiment file is offered, loads with its own sizes and simulation seeds, and the fine-
    tunes it needs follow from its models; an unknown profile is a one-line error."""
    from canopy.experiment import DEFAULT_EXPERIMENT, profile_names
    from canopy.finetune import recipe_for

    path = tmp_path / "mine.yaml"
    path.write_text(DEFAULT_EXPERIMENT.read_text() + (
        "  classroom:\n"
        "    models: [gemma-3-270m, gemma-3-270m-sft-quick]\n"
        "    sampling: {rollouts: 4, max_new_tokens: 32, prompts_per_task: 1}\n"
        "    simulation_seeds: 10\n"))
    assert profile_names(path) == ["default", "classroom", "paper", "quick"]
    exp = load_experiment(path, "classroom")
    assert (exp.sampling.rollouts, len(exp.prompts()), exp.simulation_seeds) == (4, 4, 10)
    assert [m for m in exp.models if recipe_for(m)] == ["gemma-3-270m-sft-quick"]
    assert load_experiment(path).simulation_seeds == 200
    assert load_experiment(path, "quick").simulation_seeds == 40
    with pytest.raises(SystemExit) as info:
        main(["book", "--profile", "nope", "-p", "experiment_file", str(path)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "no profile nope" in err and err.count("\n") == 1
