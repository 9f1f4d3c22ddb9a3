"""Small tables for the analysis tests, built from random numbers with known structure
(shared through ``conftest.py``'s fixtures, or called directly for other sizes)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from canopy.entropy import prompt_metrics


def random_rollouts(n_prompts=40, seed=0, model="m", family="f", variant="base",
                    tasks=("t1", "t2"), m_range=(2, 30)):
    """Random rollout table with varying M per prompt, ties in N, truncation."""
    rng = np.random.default_rng(seed)
    frames = []
    for p in range(n_prompts):
        m = int(rng.integers(*m_range))
        n = rng.integers(1, 12, m)
        h = rng.gamma(2.0, 0.5, m) * n * rng.uniform(0.5, 1.5)
        frames.append(pd.DataFrame({
            "model": model, "family": family, "variant": variant,
            "task": tasks[p % len(tasks)], "prompt_id": f"p{p:03d}", "rollout_id": np.arange(m),
            "length": n, "summed_entropy": h, "surprisal": h + rng.normal(0, 0.5, m) ** 2,
            "truncated": n == 11,
        }))
    return pd.concat(frames, ignore_index=True)


def paired_prompts(seed=0, n_prompts=30):
    base = random_rollouts(n_prompts, seed=seed, model="g", family="g", variant="base")
    tuned = random_rollouts(n_prompts, seed=seed + 100, model="g-sft", family="g",
                            variant="fine-tuned")
    return prompt_metrics(pd.concat([base, tuned], ignore_index=True))


def toy_rollouts(seed: int = 0, prompts_per_task: int = 4, m: int = 5, t_max: int = 7):
    """A rollout table with per-step lists, two models of one family and two tasks."""
    rng = np.random.default_rng(seed)
    rows = []
    for model, variant in (("toy-base", "base"), ("toy-ft", "fine-tuned")):
        for task in ("alpha", "beta"):
            for p in range(prompts_per_task):
                for r in range(m):
                    n = int(rng.integers(1, t_max + 1))
                    truncated = n == t_max and rng.random() < 0.7
                    h = rng.uniform(0.0, 3.0, n)
                    lp = -rng.uniform(0.0, 4.0, n)
                    rows.append({
                        "model": model, "family": "toy", "variant": variant, "task": task,
                        "prompt_id": f"p{p}", "rollout_id": r, "length": n,
                        "truncated": bool(truncated),
                        "step_entropy": h.astype(np.float32),
                        "step_logprob": lp.astype(np.float32),
                        "step_entropy_raw": (h + rng.uniform(0, 1, n)).astype(np.float32),
                        "step_stop_logprob": np.log(rng.uniform(1e-4, 1, n)).astype(np.float32),
                        "summed_entropy": float(h.astype(np.float32).astype(np.float64).sum()),
                        "surprisal": float(-lp.astype(np.float32).astype(np.float64).sum()),
                        "text": f"{model} {task} p{p} r{r}\nsecond line",
                    })
    return pd.DataFrame(rows)


def finetune_report() -> dict:
    """A small fine-tune report with the fields of canopy.finetune.read_report."""
    return {
        "config": {"name": "x-sft", "lora_r": 16, "lr": 5e-4},
        "n_train_examples": 3, "n_heldout_examples": 2, "stop_ids": [1, 106],
        "train_loss": [{"step": s, "epoch": 0, "loss": l, "tokens": t, "lr": 1e-3}
                       for s, l, t in [(2, 2.0, 300), (1, 3.0, 100), (3, 1.0, 100)]],
        "heldout_response_loss": {"base": 3.0, "fine_tuned": 2.0},
        "stop_fraction": {"max_new_tokens": 64, "n_prompts": 8, "base": 0.25, "fine_tuned": 0.75},
        "seconds": {"teacher": 1.5, "train": 10.0, "total": 12.0},
    }


#: The truth behind :func:`study_table`.
TRUTH = {"beta": 0.1, "eta": 0.2, "ratio": 3.0}


def study_table(beta, eta, ratio, kinds=None, converged=None, width=0.05):
    """A simulation-study table with the given estimates and intervals ± ``width``
    (the ratio ± 1) around them, covering flags against :data:`TRUTH`."""
    beta, eta, ratio = (np.asarray(v, dtype=float) for v in (beta, eta, ratio))
    n = beta.size
    kinds = kinds or ["bounded"] * n
    out = pd.DataFrame({
        "seed": np.arange(n), "converged": converged if converged is not None else [True] * n,
        "beta": beta, "beta_low": beta - width, "beta_high": beta + width,
        "eta": eta, "eta_low": eta - width, "eta_high": eta + width,
        "ratio": ratio, "ratio_low": ratio - 1, "ratio_high": ratio + 1, "ratio_kind": kinds,
    })
    for p in ("beta", "eta", "ratio"):
        out[f"covers_{p}"] = (out[f"{p}_low"] <= TRUTH[p]) & (TRUTH[p] <= out[f"{p}_high"])
    out.loc[out["ratio_kind"] == "whole line", "covers_ratio"] = True
    out.attrs["truth"] = dict(TRUTH)
    return out


def assert_rel(a, b, tol=1e-9, scale=None):
    """|a − b| ≤ tol·scale; scale defaults to |b|. A difference of two terms (which can
    be 0) is compared relative to the size of the terms, ``scale``."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    scale = np.abs(b) if scale is None else np.asarray(scale, float)
    assert np.all(np.abs(a - b) <= tol * np.maximum(scale, 1e-300)), (a, b)


def write_synthetic_store(root, families=("g",), tasks=("alpha", "beta"), prompts=3, m=5,
                          t_max=9, seed=0) -> None:
    """A store written with canopy.store.write_shard: per family a base and a fine-tuned
    model, every schema column, float32 steps, some rollouts truncated at ``t_max``."""
    import hashlib
    import json
    from pathlib import Path

    from canopy.sampling import ROLLOUT_SCHEMA_COLUMNS
    from canopy.store import shard_path, write_shard

    rng = np.random.default_rng(seed)
    root = Path(root)
    for family in families:
        for variant, model in (("base", family), ("fine-tuned", f"{family}-sft")):
            digest = hashlib.sha256(model.encode()).hexdigest()  # the same for any seed
            config_dir = root / model / digest[:12]
            config_dir.mkdir(parents=True, exist_ok=True)
            (root / model / "current.json").write_text(json.dumps({"config_hash": digest}))
            (config_dir / "manifest.json").write_text(json.dumps(
                {"config_hash": digest, "config": {"sampling": {"rollouts": m}}}))
            for task in tasks:
                for p in range(prompts):
                    rows = []
                    for r in range(m):
                        n = int(rng.integers(1, t_max + 1))
                        h = rng.uniform(0, 3, n).astype(np.float32)
                        lp = (-h - rng.exponential(0.5, n)).astype(np.float32)
                        rows.append({
                            "model": model, "family": family, "variant": variant,
                            "task": task, "prompt_id": f"p{p}", "rollout_id": r,
                            "prompt_text": f"{task} {p}", "prompt_token_ids": np.arange(3),
                            "token_ids": (np.tile([1, 2, 3], n)[:n] if r % 2
                                          else rng.integers(0, 6, n)),  # some loops
                            "text": f"{model} {r} " * n,
                            "step_entropy": h, "step_logprob": lp,
                            "step_entropy_raw": (h + rng.uniform(0, 1, n)).astype(np.float32),
                            "step_stop_logprob": np.log(rng.uniform(1e-4, 1, n)).astype(np.float32),
                            "length": n, "truncated": n == t_max and bool(rng.random() < 0.7),
                            "summed_entropy": float(h.astype(np.float64).sum()),
                            "surprisal": float(-lp.astype(np.float64).sum()),
                        })
                    table = pd.DataFrame(rows)[list(ROLLOUT_SCHEMA_COLUMNS)]
                    write_shard(shard_path(config_dir, task, f"p{p}"), table,
                                {"config_hash": digest, "rollouts": m})
