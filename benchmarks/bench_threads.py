"""Why torch's default thread count collapses on a busy machine, and what fixes it.

Times the same short decode (smollm2-135m-instruct, 8 rollouts × 32 tokens, top-k 50)
in fresh processes that differ only in the CPU thread count and OpenMP's wait policy,
once on an idle machine and once while a busy-loop process (started here) keeps one core
busy. Prints seconds and ratios against 1 thread measured in the same run.

    python benchmarks/bench_threads.py [--rollouts 8] [--tokens 32]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CHILD = r"""
import json, os, sys, time
import torch
threads = int(sys.argv[1]); rollouts = int(sys.argv[2]); tokens = int(sys.argv[3])
torch.set_num_threads(threads)
from canopy.models import load_model
from canopy.prompts import render_prompt
from canopy.sampling import rollout_uniforms, sample_batch
loaded = load_model("smollm2-135m-instruct", fingerprint=False)
ids = render_prompt(loaded.tokenizer, "Write a short story about a lighthouse.", True)[1]
u = rollout_uniforms(range(rollouts), tokens)
sample_batch(loaded.model, [ids], [2], u[:2, :4], [], top_k=50)  # warm-up
start = time.perf_counter()
sample_batch(loaded.model, [ids], [rollouts], u, [], top_k=50)
print(json.dumps({"seconds": time.perf_counter() - start}))
"""


def run(threads: int, policy: str | None, args) -> float:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    try:
        out = subprocess.run([sys.executable, "-c", CHILD, str(threads), str(args.rollouts),
                              str(args.tokens)], env=env, capture_output=True, text=True,
                             timeout=args.timeout, check=True).stdout
    except subprocess.TimeoutExpired:
        return float("inf")
    return json.loads(out.strip().splitlines()[-1])["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollouts", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args()
    cases = [(1, None), (2, None), (2, "PASSIVE")]
    print(f"cores available: {len(os.sched_getaffinity(0))}; "
          f"{args.rollouts} rollouts x {args.tokens} tokens (smollm2-135m-instruct)")
    for busy in (False, True):
        hog = None
        if busy:  # one core kept busy by another process, as on a shared machine
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(0.5)
        try:
            times = {case: run(*case, args) for case in cases}
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
        base = times[(1, None)]
        label = "one core busy" if busy else "idle"
        for (threads, policy), sec in times.items():
            print(f"{label:>13}: threads={threads} OMP_WAIT_POLICY={policy or 'default':<8} "
                  f"{sec:7.2f} s  ({sec / base:5.2f}x the 1-thread time)")


if __name__ == "__main__":
    main()
