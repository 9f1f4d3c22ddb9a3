"""Throughput of the vLLM engine with exact capture vs vLLM without it vs canopy's loop.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_vllm.py      # needs `make env-vllm`

One process, one prompt (``--rollouts`` rows × up to ``--tokens`` new tokens, natural
stopping), the variants alternated, median of ``--repeats``; each variant first runs an
untimed 8-token warm-up. Tokens/s = generated tokens (up to and including the stop token) / wall
time of the call. Variants:

``vllm exact``     :func:`canopy.vllm_engine.generate` with the capture processor and
                   ``logprobs=0`` (what ``canopy sample --engine vllm`` does)
``vllm plain``     the same settings on an engine built without the processor and
                   without log-probabilities: vLLM's own throughput
``vllm +logprobs`` the plain engine with ``logprobs=0`` (splits the overhead)
``canopy hf``      :func:`canopy.sampling.sample_batch`, the built-in loop

Ratios printed: exact / plain (exact capture's cost = 1 − ratio), exact / hf.
Both vLLM engines live in this process (in-process mode).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--rollouts", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=100)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-hf", action="store_true", help="leave out canopy's built-in loop")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    torch.set_num_threads(args.threads)
    import canopy.vllm_engine as ve
    from canopy.models import load_model
    from canopy.prompts import render_prompt
    from canopy.sampling import SamplingConfig, rollout_uniforms, sample_batch

    from canopy.sampling import Runtime

    runtime = Runtime(engine="vllm", device="cpu", dtype="float32", threads=args.threads)
    exact = ve.load(args.model, runtime)
    plain = ve.load(args.model, runtime, capture=False)
    _, ids = render_prompt(exact.tokenizer, PROMPT, exact.spec.chat_template)
    cfg = SamplingConfig(rollouts=args.rollouts, max_new_tokens=args.tokens,
                         temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    hf = None if args.skip_hf else load_model(
        args.model, fingerprint=False,
        runtime=Runtime(engine="hf", device="cpu", dtype="float32", threads=args.threads))
    seeds = list(range(args.rollouts))

    warm = dataclasses.replace(cfg, max_new_tokens=8)

    def vllm_run(model, logprobs):
        def run(config=cfg):
            start = time.perf_counter()
            res = ve.generate(model, [ids] * args.rollouts, seeds, config, logprobs=logprobs)
            return int(res.lengths.sum()), time.perf_counter() - start
        return run

    def hf_run(config=cfg):
        u = rollout_uniforms(seeds, config.max_new_tokens)
        start = time.perf_counter()
        res = sample_batch(hf.model, [ids], [args.rollouts], u, hf.stop_ids,
                           temperature=args.temperature, top_k=args.top_k,
                           top_p=args.top_p, pad_id=hf.tokenizer.pad_token_id or 0)
        return int(res.lengths.sum()), time.perf_counter() - start

    variants = {"vllm exact": vllm_run(exact, True), "vllm plain": vllm_run(plain, False),
                "vllm +logprobs": vllm_run(plain, True)}
    if hf is not None:
        variants["canopy hf"] = hf_run
    for run in variants.values():  # warm-up (8 tokens)
        run(warm)
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for rep in range(args.repeats):
        for name, run in variants.items():
            n, seconds = run()
            rates[name].append(n / seconds)
            print(f"  repeat {rep + 1} {name:15s} {n:5d} tokens {seconds:7.2f} s "
                  f"{n / seconds:7.1f} tok/s", flush=True)
    med = {name: statistics.median(r) for name, r in rates.items()}
    print(f"\n{args.model}, {args.rollouts} rollouts × ≤ {args.tokens} tokens, T={args.temperature}"
          f" top-k {args.top_k} top-p {args.top_p}, {args.threads} thread(s), "
          f"median of {args.repeats}:")
    for name, rate in med.items():
        print(f"  {name:15s} {rate:7.1f} tok/s")
    print(f"  exact / plain       {med['vllm exact'] / med['vllm plain']:.3f}  "
          f"(capture overhead {100 * (1 - med['vllm exact'] / med['vllm plain']):.1f} %)")
    print(f"  +logprobs / plain   {med['vllm +logprobs'] / med['vllm plain']:.3f}")
    if hf is not None:
        print(f"  exact / canopy hf   {med['vllm exact'] / med['canopy hf']:.3f}")
    exact.close()
    plain.close()


if __name__ == "__main__":
    main()
