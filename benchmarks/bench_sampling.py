"""Speed and memory of canopy's decode loop vs transformers' ``model.generate``.

    .venv/bin/python benchmarks/bench_sampling.py            # smollm2-135m-instruct, 2 threads

Throughput (one process, variants alternated, median of ``--repeats``): tokens/s of
``canopy.sampling.sample_batch`` (which records h_t, log q_t(y_t), raw entropy and stop
log-prob at every step) vs ``model.generate(do_sample=True)`` with the same prompt,
batch (``--rollouts`` rows), temperature, top-k, top-p and ``--tokens``. Two modes:
``natural`` (rows stop at the stop token; tokens counted up to and including it) and
``fixed`` (no stopping: every row generates ``--tokens``; generate gets
``min_new_tokens``).

Memory: each variant runs in its own subprocess at ``--memory-tokens`` (fixed length):
ours, and ``generate(output_scores=True)`` followed by the entropy of every step from the
scores. Each first generates 2 tokens (touching the memory-mapped weights). Reported:
resident memory after that warm-up ("loaded"), the peak during generation
(VmHWM, reset after loading via /proc/self/clear_refs; ``ru_maxrss`` where that is
unavailable), the extra = peak − loaded, and the float32 KV cache size at the end
(the same for both: layers × 2 × kv heads × head dim × 4 B × rows × positions).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def _setup(args):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()
    from canopy.models import load_model
    from canopy.prompts import render_prompt

    loaded = load_model(args.model, fingerprint=False)
    _, ids = render_prompt(loaded.tokenizer, PROMPT, loaded.spec.chat_template)
    return loaded, ids


def run_ours(loaded, ids, args, tokens, fixed):
    import torch
    from canopy.sampling import rollout_uniforms, sample_batch

    stop_ids = [] if fixed else loaded.stop_ids
    u = rollout_uniforms(range(args.rollouts), tokens)
    start = time.perf_counter()
    res = sample_batch(loaded.model, [ids], [args.rollouts], u, stop_ids,
                       temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                       pad_id=loaded.tokenizer.pad_token_id or 0)
    seconds = time.perf_counter() - start
    assert torch.isfinite(res.entropy).all()
    return int(res.lengths.sum()), seconds


def run_generate(loaded, ids, args, tokens, fixed, scores=False):
    import torch

    input_ids = torch.tensor([ids] * args.rollouts)
    kwargs = dict(do_sample=True, max_new_tokens=tokens, temperature=args.temperature,
                  top_k=args.top_k, top_p=args.top_p,
                  pad_token_id=loaded.tokenizer.pad_token_id or 0)
    if fixed:
        kwargs["min_new_tokens"] = tokens
    if scores:
        kwargs.update(output_scores=True, return_dict_in_generate=True)
    torch.manual_seed(0)
    start = time.perf_counter()
    with torch.no_grad():
        out = loaded.model.generate(input_ids=input_ids,
                                    attention_mask=torch.ones_like(input_ids), **kwargs)
        if scores:  # entropy of the processed distribution at every step
            entropies = torch.stack([
                -(torch.log_softmax(s.float(), -1).exp()
                  * torch.log_softmax(s.float(), -1).clamp(min=-1e30)).sum(-1)
                for s in out.scores], 1)
            assert torch.isfinite(entropies).all()
            out = out.sequences
    seconds = time.perf_counter() - start
    new = out[:, len(ids):]
    stop = torch.tensor(loaded.stop_ids)
    count = 0
    for row in new:
        hits = torch.isin(row, stop).nonzero()
        count += int(hits[0, 0]) + 1 if len(hits) and not fixed else len(row)
    return count, seconds


def throughput(args):
    loaded, ids = _setup(args)
    run_ours(loaded, ids, args, 8, False)  # warm-up
    run_generate(loaded, ids, args, 8, False)
    results = {}
    for mode in ("natural", "fixed"):
        runs = {"canopy": [], "generate": []}
        for _ in range(args.repeats):
            for name, fn in (("canopy", run_ours), ("generate", run_generate)):
                n, s = fn(loaded, ids, args, args.tokens, mode == "fixed")
                runs[name].append((n / s, n, s))
        rate = {k: statistics.median(r[0] for r in v) for k, v in runs.items()}
        results[mode] = {"canopy_tok_s": rate["canopy"], "generate_tok_s": rate["generate"],
                         "ratio": rate["canopy"] / rate["generate"],
                         "tokens": {k: [r[1] for r in v] for k, v in runs.items()}}
        print(f"throughput [{mode:7}] {args.rollouts}x{args.tokens}: canopy "
              f"{rate['canopy']:7.1f} tok/s | generate {rate['generate']:7.1f} tok/s | "
              f"ratio {rate['canopy'] / rate['generate']:.2f}", flush=True)
    return results


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def memory_child(args):
    import gc

    loaded, ids = _setup(args)
    # warm-up: touch the memory-mapped weights and the kernels' work space once
    (run_ours if args.child == "canopy" else run_generate)(loaded, ids, args, 2, True)
    gc.collect()
    after_load = _rss_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # reset the peak (VmHWM) to the current RSS
        peak_source = "VmHWM"
    except OSError:
        peak_source = "ru_maxrss"
    if args.child == "canopy":
        n, s = run_ours(loaded, ids, args, args.child_tokens, True)
    else:
        n, s = run_generate(loaded, ids, args, args.child_tokens, True, scores=True)
    peak = (_rss_kib("VmHWM") if peak_source == "VmHWM"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    cfg = loaded.model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_bytes = (cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * head_dim * 4
                * args.rollouts * (len(ids) + args.child_tokens))
    print(json.dumps({"after_load_mib": after_load / 1024, "peak_mib": peak / 1024,
                      "kv_cache_mib": kv_bytes / 2**20,
                      "extra_mib": (peak - after_load) / 1024, "tokens": n, "seconds": s,
                      "peak_source": peak_source}))


def memory(args):
    results = {}
    for tokens in args.memory_tokens:
        row = {}
        for variant in ("canopy", "generate"):
            cmd = [sys.executable, __file__, "--child", variant, "--child-tokens", str(tokens),
                   "--model", args.model, "--rollouts", str(args.rollouts),
                   "--threads", str(args.threads), "--temperature", str(args.temperature),
                   "--top-k", str(args.top_k), "--top-p", str(args.top_p)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            row[variant] = json.loads(out.strip().splitlines()[-1])
        c, g = row["canopy"], row["generate"]
        row["peak_ratio"] = c["peak_mib"] / g["peak_mib"]
        row["extra_ratio"] = c["extra_mib"] / g["extra_mib"]
        results[tokens] = row
        print(f"memory [{args.rollouts}x{tokens}]: canopy peak {c['peak_mib']:7.0f} MiB "
              f"(+{c['extra_mib']:6.0f} over loaded) | generate+scores peak "
              f"{g['peak_mib']:7.0f} MiB (+{g['extra_mib']:6.0f}) | peak ratio "
              f"{row['peak_ratio']:.2f}, extra ratio {row['extra_ratio']:.2f} | "
              f"KV cache (both) {c['kv_cache_mib']:.0f} MiB", flush=True)
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--rollouts", type=int, default=16)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--memory-tokens", type=int, nargs="*", default=[128, 512])
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=100)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--child", choices=["canopy", "generate"], help=argparse.SUPPRESS)
    p.add_argument("--child-tokens", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return memory_child(args)
    print(f"bench_sampling: {args.model}, float32, {args.threads} threads, temperature "
          f"{args.temperature}, top-k {args.top_k}, top-p {args.top_p}", flush=True)
    results = {"throughput": None if args.skip_throughput else throughput(args),
               "memory": memory(args) if args.memory_tokens else None}
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
