"""Benchmark: per-prompt tree metrics, vectorised vs a per-prompt loop over scipy.

Both run in this process on the same synthetic rollout table (10,000 prompts × 100
rollouts by default). Targets (issue 2): the vectorised path takes ≤ 2 s and is ≥ 3×
faster than the loop. Prints both times and the ratio; run with
``.venv/bin/python benchmarks/bench_metrics.py [--prompts P] [--rollouts M]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from scipy import stats

from canopy.entropy import prompt_metrics
from canopy.pooling import pool


def synthetic_rollouts(n_prompts: int, m: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = n_prompts * m
    length = rng.integers(1, 257, rows)
    summed = rng.gamma(2.0, 0.6, rows) * length
    return pd.DataFrame({
        "model": "bench", "family": "bench", "variant": "base",
        "task": np.repeat(np.arange(n_prompts) % 4, m).astype(str),
        "prompt_id": np.repeat(np.arange(n_prompts), m),
        "rollout_id": np.tile(np.arange(m), n_prompts),
        "length": length, "summed_entropy": summed,
        "surprisal": summed + rng.exponential(1.0, rows), "truncated": length == 256,
    })


def loop_baseline(df: pd.DataFrame) -> pd.DataFrame:
    """The straightforward version: one prompt at a time with numpy/scipy calls."""
    out = []
    for _, g in df.groupby(["model", "task", "prompt_id"], sort=True):
        n = g["length"].to_numpy(float)
        h = g["summed_entropy"].to_numpy()
        s = g["surprisal"].to_numpy()
        r = h / n
        m = len(n)
        cov_pop = np.cov(n, r, ddof=0)[0, 1]
        out.append({
            "canopy_entropy": h.mean(), "canopy_entropy_se": h.std(ddof=1) / np.sqrt(m),
            "canopy_entropy_surprisal": s.mean(), "canopy_entropy_surprisal_se": s.std(ddof=1) / np.sqrt(m),
            "mean_length": n.mean(), "mean_entropy_rate": r.mean(),
            "gen_ppl": np.exp(h.mean() / n.mean()), "branching_factor": np.exp(r.mean()),
            "truncation_rate": g["truncated"].mean(),
            "length_rate_pearson": stats.pearsonr(n, r)[0],
            "length_rate_spearman": stats.spearmanr(n, r)[0],
            "length_rate_kendall": stats.kendalltau(n, r)[0],
            "length_rate_cov": np.cov(n, r, ddof=1)[0, 1], "length_rate_cov_pop": cov_pop,
            "length_share": n.mean() * r.mean() / h.mean(), "cov_share": cov_pop / h.mean(),
        })
    return pd.DataFrame(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=10_000)
    parser.add_argument("--rollouts", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    args = parser.parse_args()
    df = synthetic_rollouts(args.prompts, args.rollouts)

    def best(fn):
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            result = fn(df)
            times.append(time.perf_counter() - t0)
        return min(times), result

    t_vec, ours = best(prompt_metrics)
    t_loop, ref = best(loop_baseline)
    # Same numbers, or the comparison means nothing.
    for col in ref.columns:
        np.testing.assert_allclose(ours[col].to_numpy(float), ref[col].to_numpy(float),
                                   rtol=1e-8, atol=1e-10, err_msg=col)
    t0 = time.perf_counter()
    pool(ours)
    t_pool = time.perf_counter() - t0
    print(f"{args.prompts} prompts x {args.rollouts} rollouts ({len(df):,} rows), best of {args.repeat}")
    print(f"  canopy.entropy.prompt_metrics (vectorised): {t_vec:7.3f} s   target <= 2 s")
    print(f"  per-prompt loop over scipy/numpy          : {t_loop:7.3f} s")
    print(f"  speed-up ratio (loop / vectorised)         : {t_loop / t_vec:7.1f}x  target >= 3x")
    print(f"  pool() over the per-prompt table           : {t_pool:7.3f} s")


if __name__ == "__main__":
    main()
