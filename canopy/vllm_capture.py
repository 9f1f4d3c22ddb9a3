"""Exact per-step statistics inside vLLM: a V1 logits processor (used by :mod:`canopy.vllm_engine`).

vLLM's sampler (``vllm.v1.sample.sampler.Sampler``, vLLM 0.32) turns the model's logits
into the sampled distribution in this order: cast to float32, run the logits processors
that are *not* argmax-invariant, apply penalties, divide by the temperature, run the
argmax-invariant processors (min-p), then mask with top-k/top-p
(``vllm.v1.sample.ops.topk_topp_sampler.apply_top_k_top_p``) and draw. :class:`ExactCapture`
declares itself not argmax-invariant, so it runs on the float32 logits *before* the
temperature; settings that would change the logits after it (penalties, min-p, logit
bias, bad words, allowed ids, min-tokens, structured outputs, watermarks) are rejected by :meth:`ExactCapture.validate_params`.
For every request that asks for it (``SamplingParams.extra_args[KEY] = slot``) and every
step it records, in float32:

- ``h_t``: the entropy of the distribution vLLM samples from — a copy of the logits
  divided by the request's temperature exactly as the sampler does, masked by vLLM's own
  ``apply_top_k_top_p`` (so its support is exactly the sampler's, ties and nucleus
  boundary included, on whatever platform), then ``log_softmax`` over the whole vocabulary;
- the raw entropy (temperature 1, no truncation) and the raw log-probability of stopping
  (log-sum-exp of the raw log-probabilities of the stop ids).

Records go to a float32 buffer on the engine's device, ``[slots, steps + 1, 3]``, indexed by
the request's slot and its position (the length of its output-token list at the step;
chunked-prefill and recomputed steps overwrite the same cell, an extra step past the end
lands in the spare last column), so nothing is copied to the host per step. The logits are
returned untouched. Cells never written stay NaN, which :mod:`canopy.vllm_engine` treats
as an error.

The buffer is set up and read by :func:`begin` / :func:`collect`, called through
``LLM.collective_rpc`` so they run wherever the worker lives. The processor of an engine is
found through ``additional_config["canopy_token"]``.
"""

from __future__ import annotations

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates
from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p

from canopy.sampling import entropy

__all__ = ["ExactCapture", "KEY", "TOKEN_KEY", "begin", "collect"]

#: ``SamplingParams.extra_args`` key holding the request's slot (an int ≥ 0).
KEY = "canopy_slot"
#: ``additional_config`` key naming an engine's processor.
TOKEN_KEY = "canopy_token"
#: processors of this process, by engine token.
_PROCESSORS: dict[str, "ExactCapture"] = {}


class ExactCapture(LogitsProcessor):
    """Records ``(h_t, raw entropy, raw stop log-prob)`` per request and step; see the
    module docstring. Returns the logits unchanged."""

    @classmethod
    def validate_params(cls, params: SamplingParams) -> None:
        """Reject, for requests that ask for capture, settings that change the logits after
        this processor or that vLLM treats as greedy decoding."""
        extra = params.extra_args or {}
        if KEY not in extra:
            return
        slot = extra[KEY]
        if isinstance(slot, bool) or not isinstance(slot, int) or slot < 0:
            raise ValueError(f"extra_args[{KEY!r}] must be an integer ≥ 0, got {slot!r}")
        bad = []
        if params.presence_penalty != 0 or params.frequency_penalty != 0:
            bad.append("presence/frequency penalty")
        if params.repetition_penalty != 1:
            bad.append("repetition penalty")
        if params.min_p != 0:
            bad.append("min-p")
        if params.logit_bias:
            bad.append("logit bias")
        if params.bad_words or getattr(params, "_bad_words_token_ids", None):
            bad.append("bad words")
        if params.allowed_token_ids:
            bad.append("allowed token ids")
        if params.min_tokens:
            bad.append("min-tokens")
        if params.structured_outputs is not None:
            bad.append("structured outputs")
        if getattr(params, "thinking_token_budget", None) is not None:
            bad.append("a thinking-token budget")
        if getattr(params, "watermarking", None):
            bad.append("watermarking")
        if params.n != 1:
            bad.append("n > 1 (children would share one slot; send one request per rollout)")
        if params.temperature < 1e-5:
            bad.append("temperature < 1e-5 (vLLM decodes greedily there)")
        if bad:
            raise ValueError("exact entropy capture cannot be combined with "
                             + ", ".join(bad))

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        self.device = device
        self.vocab = vllm_config.model_config.get_vocab_size()
        # batch index -> (slot, output-token list, temperature, top-k, top-p)
        self.rows: dict[int, tuple] = {}
        self.records: torch.Tensor | None = None
        self.stop: torch.Tensor | None = None
        self._batch = None  # tensors describing self.rows, rebuilt when the batch changes
        token = (vllm_config.additional_config or {}).get(TOKEN_KEY)
        if token is not None:
            _PROCESSORS[token] = self

    def is_argmax_invariant(self) -> bool:
        return False  # run on the raw logits, before temperature/top-k/top-p

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        def entry(params: SamplingParams, _prompt_ids, output_ids):
            slot = (params.extra_args or {}).get(KEY)
            if slot is None:
                return None
            top_k = params.top_k if 0 < params.top_k < self.vocab else self.vocab
            return (int(slot), output_ids, float(params.temperature), int(top_k),
                    float(params.top_p))

        if process_dict_updates(self.rows, batch_update, entry):
            self._batch = None

    def _describe_batch(self):
        index = sorted(self.rows)
        entries = [self.rows[i] for i in index]
        dev = self.device
        temps = [e[2] for e in entries]
        top_k = [e[3] for e in entries]
        top_p = [e[4] for e in entries]
        self._batch = {
            "index": torch.tensor(index, dtype=torch.long).to(dev, non_blocking=True),
            "slot": torch.tensor([e[0] for e in entries], dtype=torch.long).to(dev, non_blocking=True),
            "outputs": [e[1] for e in entries],
            "temperature": (None if all(t == 1.0 for t in temps) else
                            torch.tensor(temps, dtype=torch.float32).to(dev, non_blocking=True)),
            "top_k": (torch.tensor(top_k, dtype=torch.int32).to(dev, non_blocking=True)
                      if any(k < self.vocab for k in top_k) else None),
            "top_p": (torch.tensor(top_p, dtype=torch.float32).to(dev, non_blocking=True)
                      if any(p < 1.0 for p in top_p) else None),
        }
        return self._batch

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows or self.records is None:
            return logits
        batch = self._batch or self._describe_batch()
        steps = self.records.shape[1] - 1
        position = torch.tensor([min(len(o), steps) for o in batch["outputs"]],
                                dtype=torch.long).to(self.device, non_blocking=True)
        x = logits.index_select(0, batch["index"]).float()  # a copy
        logp_raw = torch.log_softmax(x, -1)
        h_raw = entropy(logp_raw)
        stop_logprob = torch.logsumexp(logp_raw.index_select(1, self.stop), -1)
        if batch["temperature"] is None and batch["top_k"] is None and batch["top_p"] is None:
            h = h_raw
        else:
            if batch["temperature"] is not None:
                x.div_(batch["temperature"].unsqueeze(1))  # the sampler's own operation
            x = apply_top_k_top_p(x, batch["top_k"], batch["top_p"])
            h = entropy(torch.log_softmax(x, -1))
        self.records[batch["slot"], position] = torch.stack([h, h_raw, stop_logprob], -1)
        return logits

    # ----------------------------------------------------------- host side (via rpc)

    def begin(self, slots: int, steps: int, stop_ids: list[int]) -> None:
        self.records = torch.full((slots, steps + 1, 3), float("nan"), dtype=torch.float32,
                                  device=self.device)
        self.stop = torch.tensor(sorted(set(int(s) for s in stop_ids)), dtype=torch.long,
                                 device=self.device)

    def collect(self) -> torch.Tensor:
        records, self.records = self.records, None
        return records[:, :-1].cpu()


def begin(worker, token: str, slots: int, steps: int, stop_ids: list[int]) -> None:
    """(rpc) Start a run of ``slots`` requests of at most ``steps`` tokens."""
    _PROCESSORS[token].begin(slots, steps, stop_ids)


def collect(worker, token: str) -> torch.Tensor:
    """(rpc) The run's records, ``[slots, steps, 3]`` float32 on the CPU
    (h_t, raw entropy, raw stop log-prob; NaN where no step was recorded)."""
    return _PROCESSORS[token].collect()
