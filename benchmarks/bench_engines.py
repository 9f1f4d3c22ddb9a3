"""Engines compared on the same prompts and settings, each with exact capture.

    .venv/bin/python benchmarks/bench_engines.py               # smollm2, CPU, 1 thread
    .venv/bin/python benchmarks/bench_engines.py --device cuda --model DIR --rollouts 64

One process, one loaded model, variants alternated, median of ``--repeats``:

* ``canopy``: the built-in decode loop (:func:`canopy.sampling.sample_prompts`), which
  records h_t, log q_t(y_t), the raw entropy and the stop log-prob at every step;
* ``generate``: ``model.generate(do_sample=True)`` with ``output_scores`` (processed) and
  ``output_logits`` (raw), and the same four statistics computed from them after each
  call (included in its time);
* ``vllm``: :mod:`canopy.vllm_engine` when it and ``vllm`` import (else reported as not
  run); see :func:`run_vllm`;
* ``score``: :func:`canopy.score.score_rollouts` on the built-in engine's rollouts,
  reported as a fraction of the built-in engine's generation time.

Every row generates ``--tokens`` tokens (no stop ids: the rows never stop, so every
engine does the same work); ``--prompts`` prompts × ``--rollouts`` rollouts each, one
batch. Prints tokens/s and the ratios measured in this run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time

PROMPTS = ["Write a short story about a lighthouse keeper who finds a message in a bottle.",
           "Explain how a bicycle stays upright, step by step.",
           "List three uses of a paperclip and say which is the most surprising.",
           "Describe the smell of rain to someone who has never experienced it."]


def _sync(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def setup(args):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    from canopy.models import load_model
    from canopy.prompts import Prompt
    from canopy.sampling import Runtime

    hf_logging.disable_progress_bar()
    runtime = Runtime(device=args.device, dtype=args.dtype, threads=args.threads)
    loaded = load_model(args.model, fingerprint=False, runtime=runtime)
    # no stop ids: every row generates exactly --tokens tokens in every engine
    loaded = dataclasses.replace(loaded, stop_ids=[])
    if loaded.tokenizer.pad_token_id is None:
        loaded.tokenizer.pad_token = loaded.tokenizer.eos_token or loaded.tokenizer.unk_token
    prompts = [Prompt("bench", str(i), PROMPTS[i % len(PROMPTS)] + " " * (i // len(PROMPTS)))
               for i in range(args.prompts)]
    return loaded, prompts


def config_of(args, tokens=None):
    from canopy.sampling import SamplingConfig

    return SamplingConfig(rollouts=args.rollouts, max_new_tokens=tokens or args.tokens,
                          temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                          seed=0, batch_size=args.rollouts * args.prompts)


def run_canopy(loaded, prompts, args, tokens=None):
    from canopy.sampling import sample_prompts

    device = next(loaded.model.parameters()).device
    _sync(device)
    start = time.perf_counter()
    table = sample_prompts(loaded, prompts, config_of(args, tokens))
    _sync(device)
    return table, int(table["length"].sum()), time.perf_counter() - start


def run_generate(loaded, prompts, args, tokens=None):
    """``generate`` with exact capture: per step H(q_t), log q_t(y_t) from the processed
    scores, raw entropy and stop log-prob from the raw logits."""
    import torch

    from canopy.prompts import render_prompt
    from canopy.sampling import entropy

    tokens = tokens or args.tokens
    model, tok = loaded.model, loaded.tokenizer
    device = next(model.parameters()).device
    ids = [render_prompt(tok, p.text, loaded.spec.chat_template)[1] for p in prompts]
    width = max(map(len, ids))
    pad = tok.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids for _ in range(args.rollouts)],
                             device=device)
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids
                         for _ in range(args.rollouts)], device=device)
    stop = torch.tensor(loaded.stop_ids, dtype=torch.long, device=device)
    torch.manual_seed(0)
    _sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=mask, do_sample=True,
                             max_new_tokens=tokens, min_new_tokens=tokens,
                             temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                             pad_token_id=pad, output_scores=True, output_logits=True,
                             return_dict_in_generate=True)
        chosen = out.sequences[:, width:]
        stats = []
        for t, (scores, raw) in enumerate(zip(out.scores, out.logits)):
            logq = torch.log_softmax(scores.float(), -1)
            logp = torch.log_softmax(raw.float(), -1)
            stats.append((entropy(logq), logq.gather(1, chosen[:, t:t + 1])[:, 0],
                          entropy(logp), torch.logsumexp(logp[:, stop], -1)))
        h = torch.stack([s[0] for s in stats], 1)
        lp = torch.stack([s[1] for s in stats], 1)
        assert torch.isfinite(h).all() and torch.isfinite(lp).all()
    _sync(device)
    return None, int(chosen.numel()), time.perf_counter() - start


def run_vllm(loaded, prompts, args, tokens=None):
    """vLLM through :mod:`canopy.vllm_engine` (same prompts, settings, exact capture).

    Returns None when the engine or ``vllm`` is not importable (``make env-vllm``).
    vLLM cannot be run without stop ids the way the built-in engine is here, so it samples
    up to ``--tokens`` tokens per rollout with the model's stop ids; its rate counts the
    tokens it generated."""
    try:
        import vllm  # noqa: F401
        import canopy.vllm_engine as engine
    except ImportError:
        return None
    from canopy.sampling import Runtime

    if not hasattr(run_vllm, "model"):
        run_vllm.model = engine.load(loaded.spec, Runtime(engine="vllm", device=args.device,
                                                          dtype=args.dtype,
                                                          threads=args.threads).resolved())
    start = time.perf_counter()
    table = engine.sample_prompts(run_vllm.model, prompts, config_of(args, tokens))
    return table, int(table["length"].sum()), time.perf_counter() - start


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct",
                   help="registry name, directory or .gguf (default smollm2-135m-instruct)")
    p.add_argument("--prompts", type=int, default=2, help="prompts (default 2)")
    p.add_argument("--rollouts", type=int, default=8, help="rollouts per prompt (default 8)")
    p.add_argument("--tokens", type=int, default=128, help="tokens per rollout (default 128)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=100)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--score-batch", type=int, default=16, help="scorer rows per pass")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)

    import torch

    from canopy.score import score_rollouts

    loaded, prompts = setup(args)
    device = next(loaded.model.parameters()).device
    print(f"bench_engines: {args.model} on {device} ({torch.get_num_threads()} threads), "
          f"{args.dtype}, {args.prompts} prompts x {args.rollouts} rollouts x {args.tokens} "
          f"tokens, temperature {args.temperature}, top-k {args.top_k}, top-p {args.top_p}",
          flush=True)
    engines = {"canopy": run_canopy, "generate": run_generate, "vllm": run_vllm}
    for fn in engines.values():  # warm-up (and the vLLM engine's start)
        fn(loaded, prompts, args, 4)
    runs = {name: [] for name in engines}
    score_seconds, table = [], None
    for _ in range(args.repeats):
        for name, fn in engines.items():
            result = fn(loaded, prompts, args)
            if result is None:
                continue
            t, n, s = result
            runs[name].append((n / s, s))
            if name == "canopy":
                table = t
                _sync(device)
                start = time.perf_counter()
                scored = score_rollouts(loaded, t, config_of(args), batch_size=args.score_batch)
                _sync(device)
                score_seconds.append(time.perf_counter() - start)
                worst = max(float(abs(a - b).max()) for a, b in
                            zip(t["step_entropy"], scored["step_entropy"]))
    rate = {k: statistics.median(r[0] for r in v) for k, v in runs.items() if v}
    gen_s = statistics.median(r[1] for r in runs["canopy"])
    results = {"tok_s": rate, "score_fraction": statistics.median(score_seconds) / gen_s,
               "score_max_abs_entropy_diff": worst}
    for name in engines:
        print(f"  {name:8} " + (f"{rate[name]:9.1f} tok/s" if name in rate else "not run "
                                "(vllm or canopy.vllm_engine not importable)"))
    print(f"  ratio canopy / generate: {rate['canopy'] / rate['generate']:.2f}")
    if "vllm" in rate:
        print(f"  ratio vllm / canopy: {rate['vllm'] / rate['canopy']:.2f}")
    print(f"  score time / canopy generation time: {results['score_fraction']:.3f} "
          f"(scored statistics equal the sampler's to {worst:.1e} nats)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
