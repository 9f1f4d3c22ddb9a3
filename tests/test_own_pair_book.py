"""Issue 17, done when: a new user's own pair — two local folders, a base model and its
instruct sibling, made here with random weights and SmolLM2's real tokenizer (one
folder with its chat template) — named in an experiment file by path with their roles,
yields the whole book with ``canopy book --experiment FILE`` and no Python, the pair
compared in every chapter.

The book runs in a fresh folder holding the book's sources (``$CANOPY_ROOT``), with its
own cache, so nothing of the checkout's build is touched. Sizes are minimal (2 prompts
per task, 6 rollouts, 16 new tokens, 2 simulated panels per scenario).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from book_project import book_project
from canopy import REPO_ROOT
from tiny_pair import make_pair, smollm2_tokenizer

EXPERIMENT = """\
# a user's own pair, by path (relative to this file), with their roles
models:
  - {path: models/base, name: my-base, family: mypair, variant: base}
  - {path: models/sft, name: my-sft, family: mypair, variant: instruct}
tasks: [coding, math, stories, completion]
out: store
simulation_seeds: 2
sampling: {rollouts: 6, max_new_tokens: 16, temperature: 1.0, top_k: 100, top_p: 1.0,
           seed: 0, batch_size: 16, prompts_per_task: 2}
runtime: {threads: 1}
"""


def _env(root: Path, cache: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(PYTHONPATH=str(REPO_ROOT), CANOPY_ROOT=str(root), CANOPY_CACHE=str(cache),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    return env


def _text(notebook: Path) -> str:
    """Everything an executed chapter shows: its markdown and its cells' outputs."""
    cells = json.loads(notebook.read_text())["cells"]
    parts = []
    for cell in cells:
        if cell["cell_type"] == "markdown":
            parts.append("".join(cell["source"]))
        for output in cell.get("outputs", []):
            parts.append("".join(output.get("text", "")))
            for value in (output.get("data") or {}).values():
                parts.append(value if isinstance(value, str) else "".join(value)
                             if isinstance(value, list) else json.dumps(value))
    return "\n".join(parts)


@pytest.mark.integration
def test_the_whole_book_on_a_users_own_pair(tmp_path):
    project = book_project(tmp_path / "project")
    mine = tmp_path / "mine"
    make_pair(mine / "models", smollm2_tokenizer(tmp_path / "smollm2-tokenizer"))
    (mine / "exp.yaml").write_text(EXPERIMENT)
    env = _env(project, tmp_path / "cache")

    shown = subprocess.run([sys.executable, "-m", "canopy.cli", "models", "--experiment",
                            str(mine / "exp.yaml")], capture_output=True, text=True,
                           env=env, cwd=project, timeout=300)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[1].split()[:4] == ["my-base", "mypair", "base", "raw"], shown.stdout
    assert lines[2].split()[:4] == ["my-sft", "mypair", "instruct", "chat"], shown.stdout
    assert lines[-1].endswith(": mypair"), shown.stdout

    done = subprocess.run([sys.executable, "-m", "canopy.cli", "book", "--experiment",
                           str(mine / "exp.yaml")], capture_output=True, text=True,
                          env=env, cwd=project, timeout=3600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    chapters = sorted(p.stem for p in (project / "notebooks").glob("[0-9][0-9]_*.py"))
    executed = {stem: project / "_executed" / f"{stem}.ipynb" for stem in chapters}
    assert all(path.is_file() for path in executed.values()), done.stdout
    assert (project / "_build" / "html" / "index.html").is_file()

    # a second build reuses every chapter (nothing changed), without --html cost
    again = subprocess.run([sys.executable, "-m", "canopy.cli", "book", "--experiment",
                            str(mine / "exp.yaml"), "--no-html"], capture_output=True,
                           text=True, env=env, cwd=project, timeout=1800)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert again.stdout.count("unchanged, reused") == len(chapters), again.stdout

    # the store holds the pair as stated: family, roles, the instruct model's template
    import pandas as pd

    from canopy.store import load_rollouts

    table = load_rollouts(mine / "store")
    roles = table[["model", "family", "variant"]].drop_duplicates().sort_values("model")
    assert roles.values.tolist() == [["my-base", "mypair", "base"],
                                     ["my-sft", "mypair", "fine-tuned"]]
    texts = table.groupby("model")["prompt_text"].first()
    assert "<|im_start|>assistant" in texts["my-sft"]
    assert "<|im_start|>assistant" not in texts["my-base"]
    assert isinstance(table, pd.DataFrame)

    # every chapter on measured data names both models; none speaks of the default pair
    pages = {stem: _text(path) for stem, path in executed.items()}
    for stem in chapters[1:]:
        if stem.startswith("07"):
            continue  # the fine-tune appendix: no model of this experiment is made by canopy finetune
        assert "my-base" in pages[stem] and "my-sft" in pages[stem], stem
        assert "gemma-3-270m pair" not in pages[stem], stem
    # the paired comparison ran: chapter 3's bootstrap pairs them
    assert "`my-base` → `my-sft`" in pages["03_canopy_entropy"]
    assert "no paired comparison" not in pages["04_length_rate"]
    # the fine-tune appendix says what it would show instead of failing
    assert "canopy finetune" in pages["07_appendix_finetune"]
