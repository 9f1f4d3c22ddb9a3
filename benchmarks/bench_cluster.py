"""Wall time of sampling in one process vs on a local Ray instance with N workers.

    .venv/bin/python benchmarks/bench_cluster.py          # smollm2-135m-instruct, 2 workers

Both runs sample the same shards (``--prompts`` prompts of data/prompts/stories.jsonl,
``--rollouts`` rollouts of up to ``--max-new-tokens`` tokens, batches of ``--batch-size``
rows) into fresh stores, each including its model loading (a GGUF is converted before,
untimed): the single process with all
``--cpus`` torch threads, the Ray run with ``--workers`` workers of ``cpus // workers``
threads each (:mod:`canopy.cluster`). The local Ray instance is started beforehand and its
start-up is reported apart (on a cluster it is already running). Printed: both wall times,
their ratio (> 1: Ray is faster), and the overhead per shard, (Ray wall − single wall) /
shards: what Ray costs per shard at this size (negative = a gain). On 2 cores expect no
gain: the same 2 cores do the same arithmetic, and the Ray run adds worker processes,
each importing torch and loading the model, and the dispatch. The rollouts of the two
runs are also compared (equal unless the thread counts differ, which changes rounding).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--rollouts", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=os.cpu_count())
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import ray
    import torch

    from canopy import REPO_ROOT
    from canopy.prompts import read_prompts
    from canopy.sampling import Runtime, SamplingConfig
    from canopy.run import sample_to_store

    prompts = read_prompts(REPO_ROOT / "data" / "prompts" / "stories.jsonl")[: args.prompts]
    config = SamplingConfig(rollouts=args.rollouts, max_new_tokens=args.max_new_tokens,
                            top_k=100, seed=0, batch_size=args.batch_size)
    work = Path(tempfile.mkdtemp(prefix="bench-cluster-"))

    from canopy.models import load_model

    del load_model(args.model, fingerprint=False).model  # untimed: converts a GGUF once
    torch.set_num_threads(args.cpus)
    started = time.perf_counter()
    single = sample_to_store(args.model, prompts, config, work / "single", progress=False,
                             runtime=Runtime(device="cpu", threads=args.cpus))
    single_s = time.perf_counter() - started

    started = time.perf_counter()
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False,
             log_to_driver=False, logging_level=logging.ERROR,
             object_store_memory=128 * 2 ** 20)
    init_s = time.perf_counter() - started
    started = time.perf_counter()
    on_ray = sample_to_store(args.model, prompts, config, work / "ray", ray=True,
                             workers=args.workers, progress=False,
                             runtime=Runtime(device="cpu",
                                             threads=max(1, args.cpus // args.workers)))
    ray_s = time.perf_counter() - started
    ray.shutdown()

    shards, tokens = len(prompts), int(single["length"].sum())
    same = (single["token_ids"].map(list).tolist() == on_ray["token_ids"].map(list).tolist())
    print(f"{args.model}: {shards} shards x {args.rollouts} rollouts, up to "
          f"{args.max_new_tokens} tokens, batch {args.batch_size}; {args.cpus} CPUs")
    rows = [(f"one process, {args.cpus} thread(s)", f"{single_s:7.1f} s  "
             f"({tokens / single_s:.0f} tok/s incl. loading)"),
            (f"Ray, {args.workers} workers x {max(1, args.cpus // args.workers)} thread(s)",
             f"{ray_s:7.1f} s  (+ {init_s:.1f} s to start the local instance)"),
            ("ratio one process / Ray", f"{single_s / ray_s:7.2f}  (> 1: Ray faster)"),
            ("overhead per shard (Ray - one) / shards", f"{(ray_s - single_s) / shards:+7.2f} s")]
    for label, value in rows:
        print(f"{label:<40}: {value}")
    print("worker summaries:")
    for line in on_ray.attrs["canopy"]["workers"]:
        print(line)
    print(f"same tokens in both runs: {same}")


if __name__ == "__main__":
    main()
