"""The decode loop: M rollouts per prompt with exact per-step entropies (Method §1–2).

Read top to bottom:

1. :func:`process_logits` turns next-token logits into the sampling distribution ``q_t``:
   temperature, then top-k (ties with the k-th value kept, as transformers does), then
   top-p (the smallest set of most probable tokens with mass ≥ p), renormalised.
2. :func:`sample_batch` prefills a batch of prompts once (left-padded, attention mask,
   position ids), repeats each prompt's KV cache for its rollouts, then decodes one token
   per step for all live rows, recording per step ``h_t = H(q_t)`` (whole support),
   ``log q_t(y_t)``, the raw entropy (temperature 1, no truncation) and the raw
   log-probability of stopping (log-sum-exp over the stop ids). Per-step work stays on
   the model's device; stops are checked by the host every step on CPU and every 8
   steps elsewhere, and finished rows are then dropped from the batch (and its cache).
3. :func:`sample_prompts` packs (prompt, rollout) rows into batches of ``batch_size``
   rows, so several prompts share a batch when M is small, and returns the rollout
   DataFrame (format: :mod:`canopy.entropy`).

All quantities are in nats; statistics are computed in float32 from the model's logits
(``bfloat16``/``float16`` models give lower-precision logits, cast to float32: the
recorded entropy is exact for the distribution those logits define). Where and how the
model runs (engine, device, dtype, CPU threads) is a :class:`Runtime`; it is part of the
store's configuration hash (:mod:`canopy.store`).

Determinism. Each rollout draws its own uniforms ``u_1..u_T`` from a generator seeded
by ``(seed, task, prompt_id, rollout_id)`` and samples ``y_t`` by inverting the CDF of
``q_t`` (float64) at ``u_t``. Hence, for the same model, settings, prompts and
``batch_size``, reruns and resumed runs are bitwise identical. Other batchings (another
``batch_size``, other prompts in the batch) change the logits only by floating-point
rounding, so they give the same tokens except when a ``u_t`` falls within rounding of a
CDF boundary (probability ~1e-6 per token), with step entropies equal to ~1e-5 nats
(smollm2, batch 16 vs 3: identical tokens). Resumes replay the same batches, see
:func:`plan_batches`. The uniforms do not depend on the model, so models see common
random numbers.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from canopy.prompts import Prompt, render_prompts
from canopy.settings import ALGORITHM_VERSION, Runtime, SamplingConfig, default_threads
from canopy.store import ROLLOUT_SCHEMA_COLUMNS, progress_bar

__all__ = [
    "process_logits", "entropy", "rollout_seed", "rollout_uniforms", "sample_batch",
    "plan_batches", "sample_prompts", "ALGORITHM_VERSION",
    "model_forward", "BatchResult", "Finished", "rollout_rows",
    # defined in canopy.settings and canopy.store, named here for the sampling API's users
    "SamplingConfig", "Runtime", "ROLLOUT_SCHEMA_COLUMNS",
]

default_threads()  # pin torch's own default thread count before anyone changes it



# ------------------------------------------------------------------ the distribution


def entropy(logq: torch.Tensor) -> torch.Tensor:
    """``-Σ q log q`` over the last axis (nats); ``logq`` may hold ``-inf``. [..., K] → [...]."""
    # clamping -inf to the most negative finite value makes 0 * log 0 = 0 (not NaN)
    return -(logq.exp() * logq.clamp(min=torch.finfo(logq.dtype).min)).sum(-1)


def _top_p_candidates(x: torch.Tensor, top_p: float):
    """Sorted (descending) candidates of each row of ``x`` [R, V] that surely contain the
    top-p set: the top k for the smallest tried k whose mass reaches p in every row."""
    vocab = x.shape[-1]
    log_z = torch.logsumexp(x, -1, keepdim=True)
    k = min(vocab, 1024)
    while True:
        vals, idx = torch.topk(x, k, dim=-1)
        if k == vocab:
            return vals, idx, log_z
        mass = torch.exp(torch.logsumexp(vals, -1) - log_z[:, 0])
        if bool((mass >= top_p + 1e-5).all()):
            return vals, idx, log_z
        k = min(vocab, 4 * k)


def process_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
                   top_p: float = 1.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The sampling distribution ``q`` from next-token ``logits`` [R, V] (float32).

    Returns ``(logq, idx)``: ``logq`` [R, K] log-probabilities of ``q`` over candidate
    tokens (``-inf`` outside the support, each row sums to 1) and ``idx`` [R, K] their
    token ids, sorted by decreasing probability — or ``idx = None`` when nothing is
    truncated (``K = V``, candidates are the whole vocabulary in id order).
    """
    x = logits if temperature == 1.0 else logits / temperature
    vocab = x.shape[-1]
    top_k = 0 if top_k >= vocab else top_k
    if top_k == 0 and top_p >= 1.0:
        return torch.log_softmax(x, -1), None
    if top_k > 0:
        vals, idx = torch.topk(x, top_k, dim=-1)
        n_keep = (x >= vals[:, -1:]).sum(-1)  # ties with the k-th value are kept
        if bool((n_keep > top_k).any()):
            vals, idx = torch.topk(x, int(n_keep.max()), dim=-1)
            position = torch.arange(vals.shape[-1], device=x.device)
            vals = vals.masked_fill(position >= n_keep[:, None], float("-inf"))
        log_z = torch.logsumexp(vals, -1, keepdim=True)
    else:
        vals, idx, log_z = _top_p_candidates(x, top_p)
    if top_p < 1.0:
        probs = torch.exp(vals - log_z)
        mass_before = probs.cumsum(-1) - probs
        vals = vals.masked_fill(mass_before >= top_p, float("-inf"))
    return torch.log_softmax(vals, -1), idx


# ------------------------------------------------------------------------ randomness


def rollout_seed(seed: int, task: str, prompt_id: str, rollout_id: int) -> int:
    """The 63-bit generator seed of one rollout (a hash; independent of batching)."""
    key = json.dumps([int(seed), str(task), str(prompt_id), int(rollout_id)])
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") >> 1


def rollout_uniforms(seeds: Sequence[int], steps: int) -> torch.Tensor:
    """[len(seeds), steps] float64 uniforms in [0, 1), row i from its own seed."""
    out = torch.empty(len(seeds), steps, dtype=torch.float64)
    for i, s in enumerate(seeds):
        out[i] = torch.rand(steps, generator=torch.Generator().manual_seed(int(s)),
                            dtype=torch.float64)
    return out


_BLOCK = 1024


def _draw(logq: torch.Tensor, idx: torch.Tensor | None, u: torch.Tensor):
    """Invert the CDF of each row of ``logq`` [R, K] at ``u`` [R] (float64 arithmetic)
    → (token ids [R], log q(token) [R]). Long rows go in two stages (block masses, then
    within one block) because a float64 cumsum over 262k entries is slow on CPU."""
    q = logq.exp()
    rows, k = q.shape
    if k <= 4 * _BLOCK:
        cdf = q.double().cumsum(-1)
        target = u * cdf[:, -1]
        j = torch.searchsorted(cdf, target[:, None], right=True).clamp(max=k - 1)
    else:
        blocks = -(-k // _BLOCK)
        qb = torch.nn.functional.pad(q, (0, blocks * _BLOCK - k)).view(rows, blocks, _BLOCK)
        block_cdf = qb.sum(-1, dtype=torch.float64).cumsum(-1)  # [R, blocks]
        target = u * block_cdf[:, -1]
        b = torch.searchsorted(block_cdf, target[:, None], right=True).clamp(max=blocks - 1)
        before = torch.where(b > 0, block_cdf.gather(1, (b - 1).clamp(min=0)),
                             torch.zeros_like(target[:, None]))
        inner = qb[torch.arange(rows, device=q.device), b[:, 0]].double().cumsum(-1) + before
        j_in = torch.searchsorted(inner, target[:, None], right=True).clamp(max=_BLOCK - 1)
        j = (b * _BLOCK + j_in).clamp(max=k - 1)
    empty = q.gather(1, j)[:, 0] == 0  # rounding ran past the last token of positive mass
    if q.device.type == "cpu":  # (rare) repair only the rows that need it: cheap on CPU
        if bool(empty.any()):
            positive = torch.arange(k, device=q.device) * (q[empty] > 0)
            j[empty] = positive.argmax(-1, keepdim=True)
    else:  # the same result without a host synchronisation
        last = (torch.arange(k, device=q.device) * (q > 0)).argmax(-1, keepdim=True)
        j = torch.where(empty[:, None], last, j)
    lp = logq.gather(1, j)[:, 0]
    token = (j if idx is None else idx.gather(1, j))[:, 0]
    return token, lp


# --------------------------------------------------------------------- the decode loop


@dataclass
class BatchResult:
    """Output of :func:`sample_batch` for R rows (prompt-major, rollouts in order).

    ``tokens`` [R, T] int64 (valid up to ``lengths``), ``entropy``, ``logprob``,
    ``entropy_raw``, ``stop_logprob`` [R, T] float32, ``lengths`` [R] int64,
    ``truncated`` [R] bool."""

    tokens: torch.Tensor
    entropy: torch.Tensor
    logprob: torch.Tensor
    entropy_raw: torch.Tensor
    stop_logprob: torch.Tensor
    lengths: torch.Tensor
    truncated: torch.Tensor
    forward_tokens: int = 0


def model_forward(model, **kwargs):
    """``model(**kwargs)`` with the KV cache given under the name the installed
    transformers expects (``cache`` since 5.x, ``past_key_values`` before; passing the old
    name to a new version prints a ``FutureWarning`` on every call)."""
    if "cache" in kwargs and not _takes_cache_kwarg(type(model)):
        kwargs["past_key_values"] = kwargs.pop("cache")
    return model(**kwargs)


_CACHE_KWARG: dict[type, bool] = {}


def _takes_cache_kwarg(cls) -> bool:
    if cls not in _CACHE_KWARG:
        _CACHE_KWARG[cls] = "cache" in inspect.signature(cls.forward).parameters
    return _CACHE_KWARG[cls]


@torch.no_grad()
def sample_batch(model, prompt_token_ids: Sequence[Sequence[int]], counts: Sequence[int],
                 uniforms: torch.Tensor, stop_ids: Sequence[int], *, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, pad_id: int = 0,
                 check_every: int | None = None) -> BatchResult:
    """Sample ``counts[i]`` rollouts of prompt ``i`` in one batch.

    ``prompt_token_ids``: P token-id lists (rendered prompts). ``uniforms`` [R, T]
    (R = Σ counts, T = max_new_tokens), one row per rollout, prompt-major. Each prompt is
    run once; its KV cache is repeated for its rollouts. Empty ``stop_ids``: rows never
    stop (all truncated; stop log-prob ``-inf``), used by the benchmarks.

    Per-step work stays on the model's device: tokens and statistics go into device
    buffers, stops are tracked on the device, and the host looks at the stop flags only
    every ``check_every`` steps (default: 1 on CPU, where looking is free, 8 elsewhere),
    then drops the finished rows from the batch and its cache. A row that stopped keeps
    being fed until that check; what it computes after its stop is discarded. With
    ``check_every=1`` the rollouts are bit-identical to dropping each row the step it
    stops (tested). With a lag the batch holds a few more rows at some steps, which
    changes the logits of the others by floating-point rounding only (as any other
    batching does: same tokens except with probability ~1e-6 per token, statistics equal
    to ~1e-6 nats; measured in tests/test_runtime.py); the lag is fixed per device type,
    which is part of the configuration hash.
    """
    from transformers import DynamicCache

    device = next(model.parameters()).device
    if check_every is None:
        check_every = 1 if device.type == "cpu" else 8
    n_prompts = len(prompt_token_ids)
    rows, steps = uniforms.shape
    if sum(counts) != rows or len(counts) != n_prompts:
        raise ValueError("counts must give one count per prompt and sum to uniforms' rows")
    stop = torch.tensor(sorted(set(int(s) for s in stop_ids)), dtype=torch.long, device=device)

    # prefill: prompts left-padded to a common length
    width = max(len(p) for p in prompt_token_ids)
    input_ids = torch.full((n_prompts, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n_prompts, width), dtype=torch.long)
    for i, ids in enumerate(prompt_token_ids):
        input_ids[i, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        mask[i, width - len(ids):] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    out = model_forward(model, input_ids=input_ids, attention_mask=mask, position_ids=position,
                        cache=cache, use_cache=True, logits_to_keep=1)
    forward_tokens = sum(len(p) for p in prompt_token_ids)

    # repeat each prompt's cache, mask and logits for its rollouts
    owner = torch.repeat_interleave(torch.arange(n_prompts, device=device),
                                    torch.tensor(list(counts), device=device))
    cache.batch_select_indices(owner)
    mask = mask[owner]
    next_position = mask.sum(-1, keepdim=True)  # [R, 1]: position of the next token
    logits = out.logits[:, -1, :].float()[owner]

    tokens = torch.zeros(rows, steps, dtype=torch.long, device=device)
    buffers = {k: torch.zeros(rows, steps, dtype=torch.float32, device=device)
               for k in ("entropy", "logprob", "entropy_raw", "stop_logprob")}
    lengths = torch.full((rows,), steps, dtype=torch.long, device=device)
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    live = torch.arange(rows, device=device)  # original row index of each batch row
    u = uniforms.to(device)
    plain = temperature == 1.0 and top_p >= 1.0 and (top_k == 0 or top_k >= logits.shape[-1])

    for t in range(steps):
        logp_raw = torch.log_softmax(logits, -1)
        h_raw = entropy(logp_raw)
        if plain:
            logq, idx, h = logp_raw, None, h_raw
        else:
            logq, idx = process_logits(logits, temperature, top_k, top_p)
            h = entropy(logq)
        token, lp = _draw(logq, idx, u[live, t])
        tokens[live, t] = token
        buffers["entropy"][live, t] = h.float()
        buffers["logprob"][live, t] = lp.float()
        buffers["entropy_raw"][live, t] = h_raw.float()
        buffers["stop_logprob"][live, t] = torch.logsumexp(logp_raw[:, stop], -1).float()
        was_finished = finished[live]
        now = torch.isin(token, stop) & ~was_finished
        lengths[live] = torch.where(now, t + 1, lengths[live])
        finished[live] = was_finished | now
        if t == steps - 1:
            break
        if (t + 1) % check_every == 0:  # the only host synchronisation of the loop
            keep = ~finished[live]
            n_keep = int(keep.sum())
            if n_keep == 0:
                break
            if n_keep < keep.shape[0]:  # drop finished rows from the batch and its cache
                sel = keep.nonzero()[:, 0]
                cache.batch_select_indices(sel)
                mask, next_position, token = mask[sel], next_position[sel], token[sel]
                live = live[sel]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
        out = model_forward(model, input_ids=token[:, None], attention_mask=mask,
                            position_ids=next_position, cache=cache, use_cache=True)
        forward_tokens += token.shape[0]
        next_position = next_position + 1
        logits = out.logits[:, -1, :].float()

    # what rows computed after their stop (before a check dropped them) is discarded
    after = torch.arange(steps, device=device)[None, :] >= lengths[:, None]
    tokens = tokens.masked_fill(after, 0)
    buffers = {k: v.masked_fill(after, 0.0).cpu() for k, v in buffers.items()}
    return BatchResult(tokens=tokens.cpu(), lengths=lengths.cpu(), truncated=~finished.cpu(),
                       forward_tokens=forward_tokens, **buffers)


# ------------------------------------------------------------------ prompts → table


def plan_batches(n_prompts: int, rollouts: int, batch_size: int) -> list[list[tuple[int, int, int]]]:
    """Cut the rows (prompt, rollout), prompt-major, into consecutive batches of
    ``batch_size`` rows. Each batch is a list of ``(prompt_index, first_rollout,
    stop_rollout)`` segments. Depends only on its arguments (so resumes replay it)."""
    batches: list[list[tuple[int, int, int]]] = []
    current: list[tuple[int, int, int]] = []
    room = batch_size
    for p in range(n_prompts):
        start = 0
        while start < rollouts:
            take = min(room, rollouts - start)
            current.append((p, start, start + take))
            start += take
            room -= take
            if room == 0:
                batches.append(current)
                current, room = [], batch_size
    if current:
        batches.append(current)
    return batches


@dataclass
class _Pending:
    parts: dict = field(default_factory=dict)  # first_rollout -> list of row dicts
    rows: int = 0


def sample_prompts(loaded, prompts: Sequence[Prompt], config: SamplingConfig, *,
                   skip: Callable[[int], bool] | None = None,
                   on_prompt: Callable[[int, pd.DataFrame], None] | None = None,
                   progress: bool | object = False) -> pd.DataFrame:
    """Sample ``config.rollouts`` rollouts for every prompt with a loaded model.

    ``loaded``: a :class:`canopy.models.LoadedModel`. ``skip(i)``: prompt ``i`` is
    done or taken by another run (its rows are not returned; batches of such prompts
    only are skipped). It is asked when a batch holding the prompt is reached, so a
    ``skip`` that claims the prompt (:func:`canopy.store.fill_shards`) claims it just
    before sampling it and concurrent runs split the prompts.
    ``on_prompt(i, table)`` is called as soon as prompt ``i``'s rollouts are complete.
    ``progress``: True for a tqdm bar, or a tqdm instance to update. Returns the rollout
    table of the prompts sampled here (one row per rollout, columns
    :data:`ROLLOUT_SCHEMA_COLUMNS`).
    """
    spec, tok, model = loaded.spec, loaded.tokenizer, loaded.model
    rendered = render_prompts(prompts, tok, spec.chat_template)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else loaded.stop_ids[0]
    finished = Finished(progress, len(prompts), spec.name, on_prompt)
    skipping = finished.skipper(skip)
    stop_set = set(loaded.stop_ids)
    pending: dict[int, _Pending] = {}
    try:
        for batch in plan_batches(len(prompts), config.rollouts, config.batch_size):
            # asked as each batch is reached, never up front: skip() may take a claim
            skipped = {p: skipping(p) for p, _, _ in batch}
            if all(skipped.values()):
                continue
            uniforms = rollout_uniforms(
                [rollout_seed(config.seed, prompts[p].task, prompts[p].prompt_id, r)
                 for p, a, b in batch for r in range(a, b)], config.max_new_tokens)
            result = sample_batch(
                model, [rendered[p][1] for p, _, _ in batch], [b - a for _, a, b in batch],
                uniforms, loaded.stop_ids, temperature=config.temperature,
                top_k=config.top_k, top_p=config.top_p, pad_id=pad_id)
            row = 0
            for p, a, b in batch:
                part = rollout_rows(result, row, row + (b - a), a, spec, prompts[p],
                                    rendered[p], tok, stop_set)
                row += b - a
                if skipped[p]:
                    continue
                entry = pending.setdefault(p, _Pending())
                entry.parts[a] = part
                entry.rows += b - a
                if entry.rows == config.rollouts:
                    del pending[p]
                    finished.add(p, [r for k in sorted(entry.parts) for r in entry.parts[k]])
    finally:
        finished.close()
    return finished.table()


class Finished:
    """The prompts an engine has finished: each prompt's rows become its rollout table,
    handed to ``on_prompt(i, table)`` at once, and the progress bar (``progress``: True,
    a tqdm instance, or False) advances with rollouts/s and tokens/s; skipped prompts
    (:meth:`skipper`) advance it too. Shared by every engine's ``sample_prompts``."""

    def __init__(self, progress, total: int, name: str,
                 on_prompt: Callable[[int, pd.DataFrame], None] | None = None) -> None:
        self.bar, self._own_bar = progress_bar(progress, total, name)
        self.on_prompt = on_prompt
        self.tables: list[pd.DataFrame] = []
        self.started, self.rollouts, self.tokens = time.perf_counter(), 0, 0

    def skipper(self, skip: Callable[[int], bool] | None) -> Callable[[int], bool]:
        """``skip`` asked at most until it says yes for a prompt (then remembered), each
        skipped prompt advancing the bar once."""
        skipped: set[int] = set()

        def skipping(index: int) -> bool:
            if index in skipped:
                return True
            if skip is None or not skip(index):
                return False
            skipped.add(index)
            if self.bar is not None:
                self.bar.update(1)
            return True

        return skipping

    def add(self, index: int, rows: list[dict]) -> None:
        """Prompt ``index`` is complete with these rollout rows (rollout order)."""
        table = pd.DataFrame(rows)[list(ROLLOUT_SCHEMA_COLUMNS)]
        self.rollouts += len(table)
        self.tokens += int(table["length"].sum())
        if self.on_prompt is not None:
            self.on_prompt(index, table)
        self.tables.append(table)
        if self.bar is not None:
            elapsed = max(time.perf_counter() - self.started, 1e-9)
            self.bar.set_postfix_str(f"{self.rollouts / elapsed:.1f} rollouts/s, "
                                     f"{self.tokens / elapsed:.0f} tok/s")
            self.bar.update(1)

    def close(self) -> None:
        if self._own_bar:
            self.bar.close()

    def table(self) -> pd.DataFrame:
        """The rollout table of the prompts finished here (empty with the columns if none)."""
        if not self.tables:
            return pd.DataFrame(columns=list(ROLLOUT_SCHEMA_COLUMNS))
        return pd.concat(self.tables, ignore_index=True)


def rollout_rows(result: BatchResult, lo: int, hi: int, first_rollout: int, spec,
                 prompt: Prompt, rendered: tuple[str, list[int]], tok,
                 stop_set: set[int]) -> list[dict]:
    """The rollout-table rows (:data:`ROLLOUT_SCHEMA_COLUMNS`) of rows ``lo..hi-1`` of a
    :class:`BatchResult`, all of ``prompt`` (``rendered``: its text and ids), rollout ids
    from ``first_rollout``; the text leaves out a final stop token."""
    rows = []
    for k, r in enumerate(range(lo, hi)):
        n = int(result.lengths[r])
        ids = result.tokens[r, :n].numpy().astype(np.int64)
        text_ids = ids[:-1] if (n and int(ids[-1]) in stop_set and not result.truncated[r]) else ids
        ent = result.entropy[r, :n].numpy().copy()
        lp = result.logprob[r, :n].numpy().copy()
        rows.append({
            "model": spec.name, "family": spec.family, "variant": spec.variant,
            "task": prompt.task, "prompt_id": prompt.prompt_id,
            "rollout_id": first_rollout + k, "prompt_text": rendered[0],
            "prompt_token_ids": np.asarray(rendered[1], dtype=np.int64),
            "token_ids": ids,
            "text": tok.decode(text_ids.tolist(), skip_special_tokens=False),
            "step_entropy": ent, "step_logprob": lp,
            "step_entropy_raw": result.entropy_raw[r, :n].numpy().copy(),
            "step_stop_logprob": result.stop_logprob[r, :n].numpy().copy(),
            "length": n, "truncated": bool(result.truncated[r]),
            "summed_entropy": float(ent.astype(np.float64).sum()),
            "surprisal": float(-lp.astype(np.float64).sum()),
        })
    return rows
