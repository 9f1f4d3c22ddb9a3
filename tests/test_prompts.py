"""Checks on the evaluation prompt sets (data/prompts/) and the fine-tuning pool (data/finetune/).

Near-duplicate detection: two prompts are near-duplicates when, after normalising
(lower case, punctuation to spaces, whitespace collapsed), any of these holds:

* the normalised texts are identical;
* one normalised text contains the other (e.g. "Continue this scene: <eval prompt>");
* the Jaccard similarity of their word sets is >= 0.75;
* the Jaccard similarity of their character-trigram sets is >= 0.70;
* their difflib.SequenceMatcher ratio is >= 0.85.

The thresholds leave a margin above the committed data (measured with these
definitions, 100 prompts per task): the highest word-set Jaccard is 0.53 between
two evaluation prompts and 0.67 between an evaluation and a pool prompt; the
highest trigram Jaccard 0.50 and 0.60; the highest difflib ratio 0.71 and 0.80.

``test_detector_catches_real_near_duplicates`` shows that these thresholds flag a
one-word edit (substitution, insertion, deletion, swap) of every evaluation prompt,
so the near-duplicate tests cannot pass because the detector is too lax.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ROOT / "data" / "prompts"
FINETUNE = ROOT / "data" / "finetune"
POOL = FINETUNE / "pool.jsonl"
GENERATOR = FINETUNE / "make_pool.py"
TASKS = ("coding", "math", "stories", "completion")
POOL_TASKS = {"chat", "coding", "math", "stories", "completion"}

PER_TASK = 100  # the paper's count per task
# The first 52 prompts of each task (all there were before the files grew to 100) feed
# the quick and default profiles (the first N prompts of each file), so they are frozen:
# sha256 of those 52 lines, newlines included.
FROZEN_PREFIX = 52
FROZEN_SHA256 = {
    "coding": "56558e665e5330746c97bab4129e04b727193620751137f5561cf7c529c01caf",
    "math": "350b8502ea7499f1261690db28516d0ba2dbbe2923211d97391d8d07486526c1",
    "stories": "9347d95b4bd4588b72dba1cdcaf9f124906824d78999fa72b051f6ab547d8005",
    "completion": "545518d66f512c420543919d2ef061bf379e0fde486c31965f87fce582912f5c",
}
MIN_POOL = 400
JACCARD_THRESHOLD = 0.75
TRIGRAM_THRESHOLD = 0.70
RATIO_THRESHOLD = 0.85
MAX_PROMPT_CHARS = 400


def load_jsonl(path: Path) -> list[dict]:
    rows = []
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n"), f"{path.name}: missing final newline"
    for lineno, line in enumerate(text.split("\n")[:-1], 1):
        assert line.strip(), f"{path.name}:{lineno}: blank line"
        row = json.loads(line)
        assert isinstance(row, dict), f"{path.name}:{lineno}: not a JSON object"
        rows.append(row)
    return rows


def normalise(text: str) -> str:
    """Lower case, punctuation to spaces, whitespace collapsed."""
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


def squash(text: str) -> str:
    """Only case and whitespace normalised (the issue's minimal overlap rule)."""
    return " ".join(text.lower().split())


def trigrams(norm: str) -> frozenset[str]:
    """Character trigrams of a normalised text, padded with one space at each end."""
    padded = f" {norm} "
    return frozenset(padded[i:i + 3] for i in range(len(padded) - 2))


class Prepared:
    __slots__ = ("text", "norm", "tokens", "trigrams")

    def __init__(self, text: str):
        self.text = text
        self.norm = normalise(text)
        self.tokens = frozenset(self.norm.split())
        self.trigrams = trigrams(self.norm)


def near_duplicate(a: Prepared, b: Prepared) -> str | None:
    """Return the reason two prompts are near-duplicates, or None."""
    if a.norm == b.norm:
        return "identical after normalising"
    short, long_ = (a, b) if len(a.norm) <= len(b.norm) else (b, a)
    if len(short.tokens) >= 3 and f" {short.norm} " in f" {long_.norm} ":
        return "one contains the other"
    jaccard = len(a.tokens & b.tokens) / len(a.tokens | b.tokens)
    if jaccard >= JACCARD_THRESHOLD:
        return f"word-set Jaccard {jaccard:.2f}"
    tri = len(a.trigrams & b.trigrams) / len(a.trigrams | b.trigrams)
    if tri >= TRIGRAM_THRESHOLD:
        return f"trigram Jaccard {tri:.2f}"
    la, lb = len(a.norm), len(b.norm)
    if 2 * min(la, lb) / (la + lb) < RATIO_THRESHOLD:  # upper bound on the ratio
        return None
    matcher = difflib.SequenceMatcher(None, a.norm, b.norm, autojunk=False)
    if matcher.real_quick_ratio() < RATIO_THRESHOLD or matcher.quick_ratio() < RATIO_THRESHOLD:
        return None
    ratio = matcher.ratio()
    if ratio >= RATIO_THRESHOLD:
        return f"difflib ratio {ratio:.2f}"
    return None


@pytest.fixture(scope="module")
def eval_sets() -> dict[str, list[dict]]:
    return {task: load_jsonl(PROMPTS / f"{task}.jsonl") for task in TASKS}


@pytest.fixture(scope="module")
def pool() -> list[dict]:
    return load_jsonl(POOL)


@pytest.fixture(scope="module")
def eval_rows(eval_sets) -> list[dict]:
    return [row for task in TASKS for row in eval_sets[task]]


@pytest.mark.parametrize("task", TASKS)
def test_eval_file_fields_and_size(task, eval_sets):
    rows = eval_sets[task]
    assert len(rows) == PER_TASK
    # ids run task-001 ... task-100 in file order (so they are unique and gap-free)
    assert [row["id"] for row in rows] == [f"{task}-{i:03d}" for i in range(1, PER_TASK + 1)]
    for i, row in enumerate(rows, 1):
        for field in ("id", "task", "prompt"):
            assert isinstance(row.get(field), str) and row[field].strip(), (task, i, field)
        assert row["task"] == task, row
        assert re.fullmatch(rf"{task}-\d{{3}}", row["id"]), row["id"]
        assert row["prompt"] == row["prompt"].strip(), row["id"]
        assert len(row["prompt"]) <= MAX_PROMPT_CHARS, row["id"]


@pytest.mark.parametrize("task", TASKS)
def test_profile_prompts_frozen(task):
    """Appending prompts must not change the first 52, which the quick and default profiles use."""
    lines = (PROMPTS / f"{task}.jsonl").read_bytes().splitlines(keepends=True)
    digest = hashlib.sha256(b"".join(lines[:FROZEN_PREFIX])).hexdigest()
    assert digest == FROZEN_SHA256[task], f"{task}.jsonl: one of the first {FROZEN_PREFIX} lines changed"


def test_math_answers_are_numbers(eval_sets, pool):
    for row in eval_sets["math"]:
        answer = row.get("answer")
        assert isinstance(answer, (int, float)) and not isinstance(answer, bool), row["id"]
        assert math.isfinite(answer), row["id"]
    for row in pool:
        if "answer" in row:
            assert row["task"] == "math", row["id"]
            answer = row["answer"]
            assert isinstance(answer, (int, float)) and not isinstance(answer, bool), row["id"]


def test_completion_prompts_are_scene_openings(eval_sets):
    # Used as raw continuation prompts for base models: no instructions.
    instruction = re.compile(r"^(write|continue|tell|describe|please|imagine|compose)\b", re.I)
    for row in eval_sets["completion"]:
        assert not instruction.match(row["prompt"]), row["id"]


def test_pool_fields_and_size(pool):
    assert len(pool) >= MIN_POOL
    for i, row in enumerate(pool, 1):
        for field in ("id", "task", "prompt"):
            assert isinstance(row.get(field), str) and row[field].strip(), (i, field)
        assert row["task"] in POOL_TASKS, row
        assert re.fullmatch(r"pool-\d{4}", row["id"]), row["id"]
        assert len(row["prompt"]) <= MAX_PROMPT_CHARS, row["id"]
    # every kind of evaluation task is represented in the pool
    assert set(TASKS) <= {row["task"] for row in pool}


def test_ids_unique(eval_rows, pool):
    ids = [row["id"] for row in eval_rows] + [row["id"] for row in pool]
    duplicates = {i for i in ids if ids.count(i) > 1}
    assert not duplicates


def test_no_exact_duplicates(eval_rows, pool):
    for rows in (eval_rows, pool):
        seen: dict[str, str] = {}
        for row in rows:
            key = normalise(row["prompt"])
            assert key not in seen, (seen.get(key), row["id"])
            seen[key] = row["id"]


def test_no_near_duplicates_within_eval_sets(eval_rows):
    prepared = [(row["id"], Prepared(row["prompt"])) for row in eval_rows]
    found = []
    for (ida, a), (idb, b) in itertools.combinations(prepared, 2):
        reason = near_duplicate(a, b)
        if reason:
            found.append((ida, idb, reason))
    assert not found


def test_pool_disjoint_from_eval_sets(eval_rows, pool):
    eval_keys = {squash(row["prompt"]) for row in eval_rows}
    overlap = [row["id"] for row in pool if squash(row["prompt"]) in eval_keys]
    assert not overlap
    eval_prepared = [(row["id"], Prepared(row["prompt"])) for row in eval_rows]
    found = []
    for prow in pool:
        p = Prepared(prow["prompt"])
        for eid, e in eval_prepared:
            reason = near_duplicate(p, e)
            if reason:
                found.append((prow["id"], eid, reason))
    assert not found


def test_detector_catches_real_near_duplicates(eval_rows):
    """Every one-word edit or reformatting of an evaluation prompt is flagged."""
    for row in eval_rows:
        original = Prepared(row["prompt"])
        words = original.norm.split()
        mid = len(words) // 2
        variants = {
            "reformatted": "  " + row["prompt"].upper().replace(" ", "   ") + " !",
            "prefixed": "Continue this scene: " + row["prompt"],
            "last word replaced": " ".join(words[:-1] + ["zebra"]),
            "middle word replaced": " ".join(words[:mid] + ["zebra"] + words[mid + 1:]),
            "word deleted": " ".join(words[:mid] + words[mid + 1:]),
            "word inserted": " ".join(words[:2] + ["very"] + words[2:]),
            "words swapped": " ".join(words[:mid - 1] + [words[mid], words[mid - 1]] + words[mid + 1:]),
        }
        for kind, text in variants.items():
            assert near_duplicate(original, Prepared(text)), (row["id"], kind)
    # ... while clearly different prompts on the same theme are not.
    assert not near_duplicate(
        Prepared("Write a story about a toy soldier who wants to retire."),
        Prepared("Write a story about a detective who is a goldfish."),
    )


def test_generator_reproduces_pool(tmp_path):
    out = tmp_path / "pool.jsonl"
    # -S: no site-packages, proving the generator needs only the standard library
    subprocess.run([sys.executable, "-S", str(GENERATOR), str(out)], check=True,
                   capture_output=True, timeout=60)
    assert out.read_bytes() == POOL.read_bytes()
