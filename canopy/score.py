"""Exact statistics for generations made anywhere: teacher-forced scoring (Method §1–2).

Given rollouts (a rendered prompt and the completion's token ids) made by any engine or
API, :func:`score_rollouts` runs the model once over each packed batch of (prompt +
completion) sequences and computes, at every step ``t``, what the sampler records: the
sampling distribution ``q_t`` of the stated settings (:func:`canopy.sampling.process_logits`,
the one definition), ``step_entropy = H(q_t)`` over its whole support, ``step_logprob =
log q_t(y_t)``, the raw entropy and the raw log-probability of stopping.

Rules (documented in the README, "Scoring generations made elsewhere"):

* A completion ends at its first stop id (that token counts, ``truncated = False``). A
  completion with tokens after its first stop is an error (it was not made by this
  stopping rule). Without a stop in the first ``max_new_tokens`` tokens the rollout is
  cut there (``truncated = True``) — exactly what the sampler does; a shorter completion
  without a stop is also ``truncated = True`` (e.g. an API that strips the EOS), and the
  summary line counts those.
* A token outside the support of ``q_t`` (e.g. the rollouts were not made with that
  top-k) gets ``step_logprob = NaN`` (so the rollout's ``surprisal`` is NaN, never a
  silent ``-inf``); ``outside_support`` counts such steps per rollout and a one-line
  warning summarises them. The entropies stay defined.

Packing: prompts are left-padded so that all completions start in the same column and
are right-padded after it (attention mask, position ids from the mask); rows per batch
are capped so the kept logits stay under about 512 MB.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from canopy.engines import config_record
from canopy.prompts import render_prompt
from canopy.sampling import ROLLOUT_SCHEMA_COLUMNS, entropy, model_forward, process_logits
from canopy.settings import SamplingConfig
from canopy.store import ShardError, now, open_config, read_shard, shard_path, write_shard

__all__ = ["score_rollouts", "read_rollouts_file", "row_place", "check_rows",
           "prepare_rollouts", "rows_per_batch", "score_record", "plan_scoring",
           "score_shards"]

#: Why an empty completion text cannot be scored, and the fix.
EMPTY_COMPLETION = (
    "the completion is empty (\"\"); a rollout that stopped at once is its stop token "
    "alone, which text cannot show (engines drop the stop token from the text, so the "
    "row cannot say whether it stopped or was cut at 0 tokens): give that row "
    "token_ids: [ID] with the model's stop id (its tokenizer's eos_token_id) instead of "
    "completion")
#: floats of kept logits per forward pass (512 MB in float32)
_LOGIT_BUDGET = 2 ** 27
#: positions processed at once when computing q_t
_CHUNK = 256


# ----------------------------------------------------------------------------- input


def read_rollouts_file(path) -> pd.DataFrame:
    """A JSONL (one rollout per line) or Parquet file → DataFrame. One-line errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"rollouts file not found: {path}")
    if path.suffix == ".parquet":
        try:
            table = pd.read_parquet(path)
        except Exception as exc:  # noqa: BLE001 - any failure means an unreadable file
            raise ValueError(f"{path}: not a readable Parquet file ({type(exc).__name__})") from None
        table.attrs["canopy_source"] = {"path": str(path)}
        return table
    rows, lines = [], []
    with open(path, encoding="utf-8") as handle:
        for n, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                raise ValueError(f"{path}:{n}: not valid JSON") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{n}: each line must be a JSON object")
            rows.append(row)
            lines.append(n)
    if not rows:
        raise ValueError(f"{path}: no rollouts in the file")
    table = pd.DataFrame(rows)
    table.attrs["canopy_source"] = {"path": str(path), "lines": lines}
    return table


def row_place(table: pd.DataFrame, n: int) -> str:
    """Where row ``n`` (0-based) of an input table is, as its writer counts: ``FILE:L``
    (its line number, from 1) for a JSONL file read by :func:`read_rollouts_file`, else
    ``row n+1`` (counting from 1, of the Parquet file or table)."""
    source = table.attrs.get("canopy_source") or {}
    lines = source.get("lines") or []
    if n < len(lines):
        return f"{source['path']}:{lines[n]}"
    return f"{source['path']}: row {n + 1}" if source.get("path") else f"rollout row {n + 1}"


def check_rows(table: pd.DataFrame) -> None:
    """Cheap checks of input rows before a model is loaded: each row has a prompt
    (``prompt_token_ids`` or ``prompt``) and a completion (``token_ids`` or
    ``completion``). One-line ``ValueError`` naming the first bad row."""
    if table.empty:
        raise ValueError("no rollouts to score")
    for n, row in enumerate(table.to_dict("records")):
        where = row_place(table, n)
        if not (_present(row, "prompt_token_ids") or _present(row, "prompt")):
            raise ValueError(f"{where}: give prompt_token_ids (the rendered prompt) "
                             "or prompt (raw text)")
        if not (_present(row, "token_ids") or _present(row, "completion")):
            raise ValueError(f"{where}: give token_ids or completion (text)")
        if not _present(row, "token_ids") and row["completion"] == "":
            raise ValueError(f"{where}: {EMPTY_COMPLETION}")


def _ids(value, where: str, name: str) -> list[int]:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0 for v in value):
        raise ValueError(f"{where}: {name} must be a list of non-negative integer token ids")
    return [int(v) for v in value]


def _present(row: dict, key: str) -> bool:
    value = row.get(key)
    if value is None:
        return False
    if isinstance(value, float) and np.isnan(value):
        return False
    return True


def prepare_rollouts(loaded, table: pd.DataFrame) -> pd.DataFrame:
    """Normalise input rows to ``task, prompt_id, rollout_id, prompt_text,
    prompt_token_ids, token_ids``.

    Each row needs ``prompt_token_ids`` (the rendered prompt) or ``prompt`` (raw text,
    rendered as ``canopy sample`` would with the model's chat-template setting), and
    ``token_ids`` or ``completion`` (text, tokenised without special tokens added).
    Defaults: ``task`` = ``"default"``; ``prompt_id`` = the index of the prompt among the
    distinct prompts of its task in order of appearance; ``rollout_id`` = the row's rank
    among its prompt's rows. Bad rows are one-line ``ValueError``\\ s naming the row.
    """
    tok, spec = loaded.tokenizer, loaded.spec
    head = loaded.model.get_output_embeddings() if hasattr(loaded.model, "get_output_embeddings") else None
    vocab = head.weight.shape[0] if head is not None else None
    out, rendered_cache, prompt_ids = [], {}, {}
    for n, row in enumerate(table.to_dict("records")):
        where = row_place(table, n)
        task = str(row["task"]) if _present(row, "task") else "default"
        if _present(row, "prompt_token_ids"):
            ids = _ids(row["prompt_token_ids"], where, "prompt_token_ids")
            text = (str(row["prompt"]) if _present(row, "prompt")
                    else tok.decode(ids, skip_special_tokens=False))
        elif _present(row, "prompt"):
            if not isinstance(row["prompt"], str) or not row["prompt"].strip():
                raise ValueError(f"{where}: prompt must be a non-empty string")
            if row["prompt"] not in rendered_cache:
                rendered_cache[row["prompt"]] = render_prompt(tok, row["prompt"], spec.chat_template)
            text, ids = rendered_cache[row["prompt"]]
        else:
            raise ValueError(f"{where}: give prompt_token_ids (the rendered prompt) or "
                             "prompt (raw text)")
        if not ids:
            raise ValueError(f"{where}: the prompt has no tokens")
        if _present(row, "token_ids"):
            completion = _ids(row["token_ids"], where, "token_ids")
        elif _present(row, "completion"):
            if not isinstance(row["completion"], str):
                raise ValueError(f"{where}: completion must be a string")
            completion = [int(i) for i in tok(row["completion"], add_special_tokens=False)["input_ids"]]
        else:
            raise ValueError(f"{where}: give token_ids or completion (text)")
        if not completion:
            raise ValueError(f"{where}: " + (EMPTY_COMPLETION if not _present(row, "token_ids")
                                             else "token_ids is empty; a rollout has at least "
                                                  "one token (its stop token if it stopped at "
                                                  "once)"))
        if vocab is not None and max(ids + completion) >= vocab:
            raise ValueError(f"{where}: token id {max(ids + completion)} is outside the "
                             f"model's vocabulary ({vocab} ids); wrong tokenizer?")
        if _present(row, "prompt_id"):
            prompt_id = str(row["prompt_id"])
        else:
            key = (task, tuple(ids))
            known = prompt_ids.setdefault(task, {})
            prompt_id = known.setdefault(key, str(len(known)))
        out.append({"task": task, "prompt_id": prompt_id,
                    "rollout_id": row.get("rollout_id") if _present(row, "rollout_id") else None,
                    "prompt_text": text, "prompt_token_ids": ids, "token_ids": completion})
    frame = pd.DataFrame(out)
    for (task, pid), group in frame.groupby(["task", "prompt_id"], sort=False):
        if len({tuple(p) for p in group["prompt_token_ids"]}) > 1:
            raise ValueError(f"prompt {task}/{pid}: its rows have different prompts")
        given = group["rollout_id"]
        if given.isna().all():
            frame.loc[group.index, "rollout_id"] = range(len(group))
        elif given.isna().any():
            raise ValueError(f"prompt {task}/{pid}: give rollout_id on all of its rows or none")
        elif sorted(int(r) for r in given) != list(range(len(group))):
            raise ValueError(f"prompt {task}/{pid}: rollout ids must be 0..{len(group) - 1}")
    frame["rollout_id"] = frame["rollout_id"].astype(np.int64)
    return frame


# ----------------------------------------------------------------------------- scoring


def _ends(tokens: list[int], stop: set[int], max_new_tokens: int, where: str) -> tuple[int, bool]:
    """(scored length, truncated) of a completion under the stopping rule."""
    for j, token in enumerate(tokens[:max_new_tokens]):
        if token in stop:
            if j + 1 < len(tokens):
                raise ValueError(f"{where}: {len(tokens) - j - 1} token(s) follow the stop "
                                 f"token at step {j + 1}; cut the completion at its first stop")
            return j + 1, False
    return min(len(tokens), max_new_tokens), True


@torch.no_grad()
def _score_batch(model, prompts: list[list[int]], completions: list[list[int]],
                 stop: torch.Tensor, config: SamplingConfig, pad_id: int) -> list[dict]:
    """Per-step statistics [n_i] of each completion (already cut to its scored length)."""
    device = next(model.parameters()).device
    rows = len(prompts)
    width = max(map(len, prompts))
    steps = max(map(len, completions))
    total = width + steps - 1  # the last completion token is never an input
    input_ids = torch.full((rows, total), pad_id, dtype=torch.long)
    mask = torch.zeros((rows, total), dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        seq = p + c[:-1]
        input_ids[i, width - len(p): width - len(p) + len(seq)] = torch.tensor(seq)
        mask[i, width - len(p): width - len(p) + len(seq)] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model_forward(model, input_ids=input_ids, attention_mask=mask,
                           position_ids=position, use_cache=False, logits_to_keep=steps).logits
    lengths = torch.tensor([len(c) for c in completions], device=device)
    valid = torch.arange(steps, device=device)[None, :] < lengths[:, None]  # [rows, steps]
    target = torch.zeros((rows, steps), dtype=torch.long)
    for i, c in enumerate(completions):
        target[i, :len(c)] = torch.tensor(c)
    flat_logits = logits[valid]  # [N, V] in row-major order
    flat_target = target.to(device)[valid]
    del logits
    parts = {k: [] for k in ("entropy", "logprob", "entropy_raw", "stop_logprob", "outside")}
    for lo in range(0, flat_logits.shape[0], _CHUNK):
        x = flat_logits[lo:lo + _CHUNK].float()
        y = flat_target[lo:lo + _CHUNK]
        logp_raw = torch.log_softmax(x, -1)
        logq, idx = process_logits(x, config.temperature, config.top_k, config.top_p)
        if idx is None:
            lp = logq.gather(1, y[:, None])[:, 0]
        else:
            hit = idx == y[:, None]  # the token among the candidates (at most once)
            found = logq.gather(1, hit.int().argmax(-1, keepdim=True))[:, 0]
            lp = found.masked_fill(~hit.any(-1), float("-inf"))
        outside = ~torch.isfinite(lp)
        parts["entropy"].append(entropy(logq))
        parts["logprob"].append(lp.masked_fill(outside, float("nan")))
        parts["entropy_raw"].append(entropy(logp_raw))
        parts["stop_logprob"].append(torch.logsumexp(logp_raw[:, stop], -1))
        parts["outside"].append(outside)
    flat = {k: torch.cat(v).cpu() for k, v in parts.items()}
    out, start = [], 0
    for c in completions:
        n = len(c)
        out.append({k: v[start:start + n].numpy() for k, v in flat.items()})
        start += n
    return out


def score_rollouts(loaded, rollouts: pd.DataFrame, config: SamplingConfig, *,
                   batch_size: int = 16, progress: bool | object = False) -> pd.DataFrame:
    """Teacher-forced exact statistics of given rollouts under ``config``'s distribution.

    ``loaded``: a :class:`canopy.models.LoadedModel`. ``rollouts``: rows with
    ``prompt_token_ids`` and ``token_ids`` (or the raw forms accepted by
    :func:`prepare_rollouts`, applied when those columns are missing or incomplete).
    ``config``: temperature, top-k, top-p and ``max_new_tokens`` define ``q_t`` and the
    stopping rule (``rollouts``, ``seed`` and ``batch_size`` are not used). Returns a
    rollout table (:data:`~canopy.sampling.ROLLOUT_SCHEMA_COLUMNS` plus
    ``outside_support``: int, steps whose token is outside the support of ``q_t``, whose
    ``step_logprob`` is NaN). Rules for stops and truncation: module docstring.
    """
    if not isinstance(config, SamplingConfig):
        raise ValueError("config must be a canopy.settings.SamplingConfig")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer ≥ 1, got {batch_size!r}")
    needed = {"task", "prompt_id", "rollout_id", "prompt_text", "prompt_token_ids", "token_ids"}
    table = rollouts if needed <= set(rollouts.columns) else prepare_rollouts(loaded, rollouts)
    if table.empty:
        raise ValueError("no rollouts to score")
    spec, tok, model = loaded.spec, loaded.tokenizer, loaded.model
    stop_set = set(int(s) for s in loaded.stop_ids)
    device = next(model.parameters()).device
    stop = torch.tensor(sorted(stop_set), dtype=torch.long, device=device)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else loaded.stop_ids[0]
    vocab = model.get_output_embeddings().weight.shape[0]
    records = table.to_dict("records")
    prompts, completions, ends = [], [], []
    for n, row in enumerate(records):
        where = f"rollout {row['task']}/{row['prompt_id']}/{row['rollout_id']}"
        tokens = [int(t) for t in row["token_ids"]]
        if not tokens:
            raise ValueError(f"{where}: the completion has no tokens")
        length, truncated = _ends(tokens, stop_set, config.max_new_tokens, where)
        prompts.append([int(t) for t in row["prompt_token_ids"]])
        completions.append(tokens[:length])
        ends.append((length, truncated))
    per_batch = rows_per_batch(loaded, config, batch_size)
    bar = None
    if progress is True:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(records), desc=f"score {spec.name}", unit="rollout")
    elif progress:
        bar = progress
    stats = []
    try:
        for lo in range(0, len(records), per_batch):
            stats.extend(_score_batch(model, prompts[lo:lo + per_batch],
                                      completions[lo:lo + per_batch], stop, config, pad_id))
            if bar is not None:
                bar.update(min(per_batch, len(records) - lo))
    finally:
        if progress is True:
            bar.close()
    rows = []
    for row, comp, (length, truncated), s in zip(records, completions, ends, stats):
        text_ids = comp[:-1] if not truncated else comp
        rows.append({
            "model": spec.name, "family": spec.family, "variant": spec.variant,
            "task": str(row["task"]), "prompt_id": str(row["prompt_id"]),
            "rollout_id": int(row["rollout_id"]), "prompt_text": row["prompt_text"],
            "prompt_token_ids": np.asarray(row["prompt_token_ids"], dtype=np.int64),
            "token_ids": np.asarray(comp, dtype=np.int64),
            "text": tok.decode(text_ids, skip_special_tokens=False),
            "step_entropy": s["entropy"].astype(np.float32),
            "step_logprob": s["logprob"].astype(np.float32),
            "step_entropy_raw": s["entropy_raw"].astype(np.float32),
            "step_stop_logprob": s["stop_logprob"].astype(np.float32),
            "length": length, "truncated": truncated,
            "summed_entropy": float(s["entropy"].astype(np.float64).sum()),
            "surprisal": float(-s["logprob"].astype(np.float64).sum()),
            "outside_support": int(s["outside"].sum()),
        })
    result = pd.DataFrame(rows, columns=list(ROLLOUT_SCHEMA_COLUMNS) + ["outside_support"])
    bad = result["outside_support"] > 0
    if bad.any():
        warnings.warn(f"{int(bad.sum())} of {len(result)} rollouts have "
                      f"{int(result['outside_support'].sum())} token(s) outside the support of "
                      f"q_t (temperature {config.temperature}, top-k {config.top_k}, top-p "
                      f"{config.top_p}): their step_logprob and surprisal are NaN (were they "
                      "sampled with other settings?)", stacklevel=2)
    early = result["truncated"] & (result["length"] < config.max_new_tokens)
    if early.any():
        warnings.warn(f"{int(early.sum())} rollouts end before max_new_tokens "
                      f"({config.max_new_tokens}) without a stop token: counted as truncated "
                      "(append the EOS token to count them as stopped)", stacklevel=2)
    return result


# ------------------------------------------------------------------------------ store


def _prompt_digest(group: pd.DataFrame) -> str:
    """sha256 over a prompt's rendered ids and all its completions (its shard's key)."""
    digest = hashlib.sha256()
    digest.update(json.dumps([int(t) for t in group["prompt_token_ids"].iloc[0]]).encode())
    for rid, ids in sorted(zip(group["rollout_id"], group["token_ids"])):
        digest.update(json.dumps([int(rid), [int(t) for t in ids]]).encode())
    return digest.hexdigest()


def rows_per_batch(loaded, config: SamplingConfig, batch_size: int) -> int:
    """Rows per teacher-forced pass: ``batch_size``, capped so the kept logits stay under
    :data:`_LOGIT_BUDGET` floats. :func:`score_rollouts` packs consecutive rows."""
    vocab = loaded.model.get_output_embeddings().weight.shape[0]
    return max(1, min(batch_size, _LOGIT_BUDGET // (config.max_new_tokens * vocab)))


def score_record(loaded, config: SamplingConfig) -> dict:
    """The configuration record of scored rollouts: engine ``"score"``, without the
    sampling keys scoring does not use (``rollouts``, ``seed``)."""
    record = config_record(loaded, config, engine="score")
    for key in ("rollouts", "seed"):  # not used by scoring
        record["sampling"].pop(key, None)
    return record


def plan_scoring(record: dict, spec, table: pd.DataFrame, out) -> tuple[list, list]:
    """Open the configuration directory of ``record`` under ``out``
    (:func:`canopy.store.open_config`, keyed by each prompt's rendered ids and
    completions) and split the prepared ``table`` by (task, prompt) into ``done`` (valid
    shards already there, as tables) and ``todo`` (``(task, prompt_id, group, expect,
    path)`` in table order). Shared by :func:`canopy.run.score_to_store` and the Ray
    workers (:mod:`canopy.cluster`)."""
    groups = list(table.groupby(["task", "prompt_id"], sort=False))
    keys = {(t, p): _prompt_digest(g) for (t, p), g in groups}
    config_dir, digest = open_config(out, spec, record,
                                     {f"{t}/{p}": k for (t, p), k in keys.items()})
    done, todo = [], []
    for (task, pid), group in groups:
        expect = {"config_hash": digest, "prompt_sha256": keys[(task, pid)],
                  "rollouts": len(group)}
        path = shard_path(config_dir, task, pid)
        if path.exists():
            try:
                done.append(read_shard(path, expect))
                continue
            except ShardError as exc:
                warnings.warn(f"rescoring shard {path}: {exc}", stacklevel=3)
        todo.append((task, pid, group, expect, path))
    return done, todo


def score_shards(loaded, todo: list, config: SamplingConfig, *, batch_size: int = 16,
                 progress: bool | object = False) -> list[pd.DataFrame]:
    """Score the ``todo`` shards of :func:`plan_scoring` in one :func:`score_rollouts`
    call (rows packed in ``todo`` order) and write each shard atomically; returns their
    tables."""
    if not todo:
        return []
    pending = pd.concat([g for _, _, g, _, _ in todo], ignore_index=True)
    scored = score_rollouts(loaded, pending, config, batch_size=batch_size, progress=progress)
    fresh = []
    for task, pid, _, expect, path in todo:
        part = scored[(scored["task"] == task) & (scored["prompt_id"] == pid)]
        part = part.sort_values("rollout_id").reset_index(drop=True)
        write_shard(path, part, {**expect, "task": task, "prompt_id": pid, "written": now()})
        fresh.append(part)
    return fresh
