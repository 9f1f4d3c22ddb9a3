"""How often vLLM's top-p nucleus differs from Canopy's, and by how much entropy.

    PYTHONPATH=. .venv/bin/python benchmarks/vllm_nucleus.py      # needs `make env-vllm`

Samples ``--rollouts`` rollouts of ``--tokens`` tokens with the vLLM engine at top-p
``--top-p`` (no top-k), then recomputes every step teacher-forced with transformers in
float32 and reports, over all steps:

- the nucleus size vLLM sampled from (the top-m set whose entropy and log q match the
  recorded ones, m within one of Canopy's size) against Canopy's
  (:func:`canopy.sampling.process_logits`) on the transformers logits;
- the same comparison with both rules applied to the *same* (transformers) logits —
  vLLM's ``apply_top_k_top_p`` vs Canopy's — which isolates the cut rule's rounding from
  the engines' logit rounding;
- the largest entropy difference between vLLM's recorded h_t and Canopy's nucleus.
"""

from __future__ import annotations

import argparse
import os

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--rollouts", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch
    from transformers import AutoModelForCausalLM
    from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p

    import canopy.vllm_engine as ve
    from canopy.sampling import Prompt, SamplingConfig, entropy, process_logits

    torch.set_num_threads(1)
    from canopy.sampling import Runtime

    runtime = Runtime(engine="vllm", device="cpu", dtype="float32", threads=1)
    loaded = ve.load(args.model, runtime)
    cfg = SamplingConfig(rollouts=args.rollouts, max_new_tokens=args.tokens,
                         top_p=args.top_p, seed=args.seed)
    table = ve.sample_prompts(loaded, [Prompt("bench", "0", PROMPT)], cfg)
    loaded.close()
    model = AutoModelForCausalLM.from_pretrained(str(ve.weights_dir(loaded.spec)),
                                                 dtype=torch.float32).eval()
    steps = differ_engine = differ_rule = 0
    worst_vs_canopy = worst_match = 0.0
    for row in table.itertuples():
        prompt, tokens = list(row.prompt_token_ids), [int(t) for t in row.token_ids]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + tokens])).logits[0].float()
        logits = logits[len(prompt) - 1: len(prompt) - 1 + len(tokens)]
        logq, _ = process_logits(logits, 1.0, 0, args.top_p)
        canopy_size = torch.isfinite(logq).sum(-1)
        canopy_h = entropy(logq)
        p = torch.full((logits.shape[0],), args.top_p, dtype=torch.float32)
        vllm_rule = apply_top_k_top_p(logits.clone(), None, p)
        differ_rule += int((torch.isfinite(vllm_rule).sum(-1) != canopy_size).sum())
        for s, token in enumerate(tokens):
            m = int(canopy_size[s])
            best = None
            for size in (m, m - 1, m + 1):
                if not 1 <= size <= logits.shape[-1]:
                    continue
                vals, ids = torch.topk(logits[s], size)
                if token not in ids.tolist():
                    continue
                lq = torch.log_softmax(vals, -1)
                err = max(abs(float(entropy(lq)) - float(row.step_entropy[s])),
                          abs(float(lq[ids.tolist().index(token)]) - float(row.step_logprob[s])))
                if best is None or err < best[0]:
                    best = (err, size)
            steps += 1
            if best is None:
                print(f"step {s}: no nucleus within one token of Canopy's explains the record")
                continue
            worst_match = max(worst_match, best[0])
            differ_engine += best[1] != m
            worst_vs_canopy = max(worst_vs_canopy,
                                  abs(float(row.step_entropy[s]) - float(canopy_h[s])))
    print(f"{args.model}, top-p {args.top_p}, {len(table)} rollouts, {steps} steps")
    print(f"  vLLM sampled from another nucleus than Canopy's: {differ_engine} steps "
          f"({100 * differ_engine / steps:.1f} %)")
    print(f"  the two rules on the same logits differ: {differ_rule} steps "
          f"({100 * differ_rule / steps:.1f} %)")
    print(f"  largest |h_vLLM - h_Canopy|: {worst_vs_canopy:.2e} nats; largest error of the "
          f"matching nucleus: {worst_match:.2e} nats")


if __name__ == "__main__":
    main()
