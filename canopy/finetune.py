"""``canopy finetune``: make ``gemma-3-270m-sft``, a matched fine-tuned partner of
``gemma-3-270m``, by LoRA supervised fine-tuning on a teacher's responses.

The recipe (distillation-style SFT):

1. The teacher ``smollm2-135m-instruct`` answers the fine-tuning prompt pool
   (``data/finetune/pool.jsonl``) once, sampled with :mod:`canopy.sampling` through the
   resumable rollout store. By default a response that hit ``teacher_max_new_tokens``
   is dropped, so every training target ends where the teacher chose to stop.
2. Each (prompt, response) pair is written in the Gemma chat format
   ``<bos><start_of_turn>user\\n{prompt}<end_of_turn>\\n<start_of_turn>model\\n{response}<end_of_turn>``;
   the loss covers the response and its ``<end_of_turn>`` only.
3. LoRA adapters (``peft``) on every attention and MLP projection of ``gemma-3-270m``,
   plus the embedding row of ``<end_of_turn>`` (peft's trainable tokens), are trained
   with AdamW; checkpoints make the run resumable.
4. The adapter is saved with a tokenizer that carries the chat template and a generation
   config whose stop ids include ``<end_of_turn>``, then published under
   ``cache_dir()/finetune/<name>/`` where the model registry finds it.
5. A held-out report (JSON) shows it is a real fine-tune: the loss per step, the
   response loss of base vs fine-tuned on held-out teacher responses, and the fraction of
   rollouts that stop within ``max_new_tokens`` for both.

Everything is cached under a hash of the data and the configuration: a rerun with the
same configuration does nothing. The adapter derives from Gemma weights and is never
committed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from canopy import REPO_ROOT, cache_dir
from canopy.locks import store_lock

__all__ = ["FinetuneConfig", "PROFILES", "GEMMA_CHAT_TEMPLATE", "finetune", "published_dir",
           "read_report", "recipe_for", "experiment_report", "teacher_pairs", "finetune_hash"]

#: Gemma's chat format, written for this project as a Jinja template: user and model
#: turns, and the opening of the model turn as the generation prompt.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
END_OF_TURN = "<end_of_turn>"

#: Bump when the training recipe changes in a way that changes the result.
RECIPE_VERSION = 3


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of one fine-tuning run (all of them enter the cache hash).

    ``name``: registry name of the result. ``n_train`` / ``n_heldout``: pool prompts used
    for training / held out for the report (the held-out ones are the last of the pool).
    ``teacher_*``: how the teacher's responses are sampled. ``max_seq_len``: tokens per
    training example (longer ones are dropped, never cut). ``epochs``, ``batch_size``, ``lr``,
    ``warmup_steps``: the optimiser schedule (linear warm-up, then linear decay to 0).
    ``lora_r``, ``lora_alpha``, ``lora_dropout``: the adapters. ``train_stop_embedding``:
    also train the embedding row of ``<end_of_turn>`` (peft's trainable tokens; the base
    model gives that token almost no probability, and LoRA on the projections alone barely
    moves it). ``teacher_truncated``:
    what happens to a teacher response that hit ``teacher_max_new_tokens``: ``"drop"`` it,
    or ``"trim"`` it after its last complete sentence. ``eval_max_new_tokens``,
    ``eval_top_k``, ``eval_rollouts``: the stop-fraction check (temperature 1.0, as in the
    experiment), rollouts per held-out prompt.
    """

    name: str = "gemma-3-270m-sft"
    base: str = "gemma-3-270m"
    teacher: str = "smollm2-135m-instruct"
    pool: str = "data/finetune/pool.jsonl"
    n_train: int = 256
    n_heldout: int = 24
    teacher_max_new_tokens: int = 128
    teacher_temperature: float = 0.7
    teacher_top_k: int = 50
    teacher_top_p: float = 1.0
    max_seq_len: int = 256
    epochs: int = 1
    batch_size: int = 8
    lr: float = 1e-3
    warmup_steps: int = 4
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    train_stop_embedding: bool = True
    teacher_truncated: str = "drop"
    eval_max_new_tokens: int = 192
    eval_top_k: int = 100
    eval_rollouts: int = 2
    seed: int = 0
    save_every: int = 4

    def __post_init__(self) -> None:
        for key in ("n_train", "n_heldout", "teacher_max_new_tokens", "max_seq_len", "epochs",
                    "batch_size", "lora_r", "eval_max_new_tokens", "eval_rollouts", "save_every"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"finetune setting {key} must be a positive integer, got {value!r}")
        if self.teacher_truncated not in ("drop", "trim"):
            raise ValueError(f"finetune setting teacher_truncated must be 'drop' or 'trim', "
                             f"got {self.teacher_truncated!r}")
        if isinstance(self.eval_top_k, bool) or not isinstance(self.eval_top_k, int) \
                or self.eval_top_k < 0:
            raise ValueError(f"finetune setting eval_top_k must be an integer >= 0, "
                             f"got {self.eval_top_k!r}")
        if not self.lr > 0:
            raise ValueError(f"finetune setting lr must be > 0, got {self.lr!r}")

    def pool_path(self) -> Path:
        path = Path(self.pool)
        return path if path.is_absolute() else REPO_ROOT / path


#: ``default``: the book's fine-tune (within 15 minutes on a 2-core CPU, teacher
#: included; the README has the measured time). ``quick``: a small but real fine-tune for
#: tests and classrooms (about 2 minutes); its short teacher budget leaves few finished
#: responses, so it trims the others instead of dropping them, and its stop check uses
#: the quick experiment's 64-token limit.
PROFILES = {
    "default": FinetuneConfig(),
    "quick": FinetuneConfig(name="gemma-3-270m-sft-quick", n_train=36, n_heldout=8,
                            teacher_max_new_tokens=64, teacher_truncated="trim",
                            max_seq_len=160, batch_size=4, lr=1e-3, warmup_steps=2,
                            eval_max_new_tokens=64),
}


def recipe_for(model: str) -> FinetuneConfig | None:
    """The recipe (a :data:`PROFILES` entry) that makes the model called ``model``, or
    ``None`` when no recipe here makes it (the link from an experiment's models to the
    fine-tunes it needs)."""
    return next((recipe for recipe in PROFILES.values() if recipe.name == model), None)


def experiment_report(models, name: str | None = None, *, progress: bool = False
                      ) -> tuple[str | None, dict[str, Any] | None]:
    """(name, held-out report) of the fine-tune an experiment uses: ``name``, or the first of
    ``models`` that a recipe makes; ``(None, None)`` when ``name`` is None and no recipe
    makes any of ``models`` (an experiment of one's own models: nothing to report). A
    missing result is made first (cached, resumable): the fine-tune is a dependency of
    the experiment. One-line ``ValueError`` when ``name`` is given, no recipe makes it
    and no report exists."""
    if name is None:
        name = next((m for m in models if recipe_for(m) is not None), None)
        if name is None:
            return None, None
    try:
        return name, read_report(name)
    except FileNotFoundError:
        recipe = recipe_for(name)
        if recipe is None:
            raise ValueError(f"no fine-tune report for {name} and no built-in recipe makes "
                             "it; run `canopy finetune` for it first") from None
    finetune(recipe, progress=progress)
    return name, read_report(name)


def published_dir(name: str) -> Path:
    """Where the finished adapter called ``name`` lives (the registry points here)."""
    return cache_dir() / "finetune" / name


def read_report(name: str = "gemma-3-270m-sft") -> dict[str, Any]:
    """The held-out report of the published fine-tune ``name``."""
    path = published_dir(name) / "report.json"
    if not path.is_file():
        raise FileNotFoundError(f"no fine-tune report at {path}; run `canopy finetune`"
                                + (" --quick" if name.endswith("-quick") else ""))
    return json.loads(path.read_text())


# -------------------------------------------------------------------------- data


def _read_pool(config: FinetuneConfig):
    from canopy.prompts import read_prompts

    path = config.pool_path()
    if not path.is_file():
        raise FileNotFoundError(f"fine-tuning pool not found: {path}")
    prompts = read_prompts(path)
    need = config.n_train + config.n_heldout
    if len(prompts) < need:
        raise ValueError(f"fine-tuning pool {path.name} has {len(prompts)} prompts; the "
                         f"configuration needs n_train + n_heldout = {need}")
    return prompts[: config.n_train], prompts[-config.n_heldout:]


def trim_to_sentence(text: str) -> str:
    """``text`` cut after its last complete sentence (``.``, ``!`` or ``?``), or '' if it
    has none. Used on teacher responses that hit ``max_new_tokens``."""
    match = re.search(r"^(.*[.!?])(?=\s|$)", text, flags=re.S)
    return match.group(1).strip() if match else ""


def _teacher_responses(config: FinetuneConfig, prompts, out: Path, progress: bool,
                       runtime=None):
    """One teacher response per prompt: (prompt text, response) pairs.

    Sampled once through the rollout store under ``out`` (cached, resumable). A response
    that hit ``teacher_max_new_tokens`` is dropped, or with ``teacher_truncated="trim"``
    cut after its last complete sentence (dropped if it has none).
    """
    from canopy.models import get_spec
    from canopy.run import cached_rollouts, sample_to_store
    from canopy.settings import Runtime, SamplingConfig

    sampling = SamplingConfig(rollouts=1, max_new_tokens=config.teacher_max_new_tokens,
                              temperature=config.teacher_temperature,
                              top_k=config.teacher_top_k, top_p=config.teacher_top_p,
                              seed=config.seed, batch_size=16)
    table = cached_rollouts(get_spec(config.teacher), prompts, sampling, out,
                            runtime or Runtime())  # without loading the teacher
    if table is None:
        table = sample_to_store([config.teacher], prompts, sampling, out, runtime=runtime,
                                progress=progress)
    return teacher_pairs(table, prompts, config.teacher_truncated)


def teacher_pairs(table, prompts, truncated: str = "drop"):
    """(prompt text, response) training pairs from a teacher's rollout table (one rollout
    per prompt; columns ``task``, ``prompt_id``, ``text``, ``truncated``), in prompt order.

    ``truncated``: ``"drop"`` leaves out responses that hit the token budget; ``"trim"``
    cuts them after their last complete sentence. Empty responses are left out.
    """
    if truncated not in ("drop", "trim"):
        raise ValueError(f"truncated must be 'drop' or 'trim', got {truncated!r}")
    by_key = {(row.task, str(row.prompt_id)): row for row in table.itertuples()}
    pairs = []
    for p in prompts:
        row = by_key[(p.task, str(p.prompt_id))]
        if row.truncated and truncated == "drop":
            continue
        text = trim_to_sentence(row.text) if row.truncated else row.text.strip()
        if text:
            pairs.append((p.text, text))
    return pairs


def encode_example(tokenizer, prompt: str, response: str):
    """Token ids and labels of one chat example; labels are -100 outside the response.

    Returns ``(input_ids, labels)``, lists of equal length; the response's labels
    include its ``<end_of_turn>``, so the model learns where to stop.
    """
    head = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                         tokenize=False, add_generation_prompt=True)
    head_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    body_ids = tokenizer(response + END_OF_TURN, add_special_tokens=False)["input_ids"]
    return head_ids + body_ids, [-100] * len(head_ids) + body_ids


def encode_examples(tokenizer, pairs, max_seq_len: int):
    """Encode (prompt, response) pairs; an example longer than ``max_seq_len`` tokens is
    dropped rather than cut (a cut would remove its ``<end_of_turn>``). Returns the
    examples and the number dropped."""
    encoded = [encode_example(tokenizer, p, r) for p, r in pairs]
    kept = [e for e in encoded if len(e[0]) <= max_seq_len]
    return kept, len(encoded) - len(kept)


def _batches(examples, batch_size: int, pad_id: int, rng: np.random.Generator):
    """Shuffled, right-padded batches: (input_ids, attention_mask, labels) tensors."""
    import torch

    order = rng.permutation(len(examples))
    for lo in range(0, len(order), batch_size):
        chunk = [examples[i] for i in order[lo: lo + batch_size]]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        for row, (x, y) in enumerate(chunk):
            ids[row, : len(x)] = torch.tensor(x)
            mask[row, : len(x)] = 1
            labels[row, : len(y)] = torch.tensor(y)
        yield ids, mask, labels


def response_loss(model, ids, mask, labels):
    """Sum of next-token NLL over labelled positions (nats) and their count.

    The LM head runs only at labelled positions (the vocabulary has 262k tokens, so
    full logits would dominate time and memory); the result equals the usual shifted
    cross-entropy over ``logits``.
    """
    import torch

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    device = next(inner.parameters()).device
    ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
    hidden = inner.model(input_ids=ids, attention_mask=mask).last_hidden_state
    target = labels[:, 1:]
    keep = target != -100
    logits = inner.lm_head(hidden[:, :-1][keep]).float()
    cap = getattr(inner.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    nll = torch.nn.functional.cross_entropy(logits, target[keep], reduction="sum")
    return nll, int(keep.sum())


# ---------------------------------------------------------------------- training


def finetune_hash(config: FinetuneConfig, pool_sha: str, runtime_record: dict,
                  base_signature: dict, pairs) -> str:
    """The 16-hex-digit hash that names a fine-tune result: everything that changes it —
    the settings, the prompt pool's sha256, :data:`RECIPE_VERSION`, the runtime
    (:meth:`canopy.settings.Runtime.record`: engine, device type, dtype, CPU threads),
    the base weights' :func:`~canopy.models.source_signature` and the teacher's
    (prompt, response) training and held-out pairs."""
    payload = json.dumps({"config": asdict(config), "pool_sha256": pool_sha,
                          "recipe": RECIPE_VERSION, "runtime": runtime_record,
                          "base": base_signature,
                          "pairs_sha256": hashlib.sha256(
                              json.dumps([list(p) for p in pairs]).encode()).hexdigest()},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _save_atomic(obj, path: Path) -> None:
    import torch

    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _lr_at(step: int, total: int, config: FinetuneConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    return config.lr * max(0.0, (total - step) / max(1, total - config.warmup_steps))


def _train(config: FinetuneConfig, base, examples, run_dir: Path, progress: bool,
           stop_id: int):
    """LoRA training with checkpoints in ``run_dir``; returns (peft model, losses).
    ``stop_id``: the ``<end_of_turn>`` token, whose embedding row is trained too when
    ``config.train_stop_embedding``."""
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, \
        set_peft_model_state_dict
    from tqdm.auto import tqdm

    torch.manual_seed(config.seed)
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                      lora_dropout=config.lora_dropout, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                      "gate_proj", "up_proj", "down_proj"],
                      trainable_token_indices=[stop_id] if config.train_stop_embedding
                      else None)
    with warnings.catch_warnings():  # peft calls a transformers method deprecated in v5
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*",
                                category=FutureWarning)
        model = get_peft_model(base.model, lora)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(examples) / config.batch_size)
    total = steps_per_epoch * config.epochs
    losses: list[dict[str, float]] = []
    step = 0
    ckpt = run_dir / "checkpoint.pt"
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        set_peft_model_state_dict(model, state["adapter"])
        optimizer.load_state_dict(state["optimizer"])
        step, losses = state["step"], state["losses"]
    pad_id = base.tokenizer.pad_token_id or 0
    model.train()
    bar = tqdm(total=total, initial=step, desc=f"finetune {config.name}", unit="step",
               disable=not progress)
    try:
        for epoch in range(config.epochs):
            rng = np.random.default_rng([config.seed, epoch])  # same order after a resume
            for k, (ids, mask, labels) in enumerate(_batches(examples, config.batch_size,
                                                             pad_id, rng)):
                if epoch * steps_per_epoch + k < step:
                    continue
                for group in optimizer.param_groups:
                    group["lr"] = _lr_at(step, total, config)
                nll, count = response_loss(model, ids, mask, labels)
                loss = nll / max(count, 1)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                step += 1
                losses.append({"step": step, "epoch": epoch, "loss": loss.item(),
                               "tokens": count, "lr": optimizer.param_groups[0]["lr"]})
                bar.set_postfix(loss=f"{losses[-1]['loss']:.3f}")
                bar.update(1)
                if step % config.save_every == 0 or step == total:
                    _save_atomic({"adapter": get_peft_model_state_dict(model),
                                  "optimizer": optimizer.state_dict(), "step": step,
                                  "losses": losses}, ckpt)
    finally:
        bar.close()
    model.eval()
    return model, losses


def _mean_response_loss(model, examples, pad_id: int) -> float:
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for ids, mask, labels in _batches(examples, 8, pad_id, np.random.default_rng(0)):
            nll, n = response_loss(model, ids, mask, labels)
            total, count = total + float(nll), count + n
    return total / max(count, 1)


def _stop_fraction(loaded, prompts, config: FinetuneConfig) -> float:
    """Fraction of rollouts on ``prompts`` that stop within ``eval_max_new_tokens``
    (temperature 1.0, top-k ``eval_top_k``, ``eval_rollouts`` per prompt)."""
    from canopy.sampling import sample_prompts
    from canopy.settings import SamplingConfig

    table = sample_prompts(loaded, prompts, SamplingConfig(
        rollouts=config.eval_rollouts, max_new_tokens=config.eval_max_new_tokens,
        temperature=1.0, top_k=config.eval_top_k, seed=config.seed, batch_size=16))
    return float((~table["truncated"]).mean())


def finetune(config: FinetuneConfig | str = "default", *, progress: bool = True,
             force: bool = False, device: str = "auto", threads: int | None = None) -> Path:
    """Run (or reuse) the fine-tune; returns the published adapter directory.

    ``config``: a :class:`FinetuneConfig` or a profile name (``default``, ``quick``).
    ``device``: where the teacher samples and the LoRA trains (``auto``: CUDA when
    available, else CPU; see :class:`canopy.settings.Runtime`); float32 always. The
    result's hash is :func:`finetune_hash` (runtime and thread count included); the
    teacher's responses come first (from the rollout store when cached).
    ``threads``: CPU threads (default: :func:`canopy.settings.default_threads`).
    A published result whose hash matches is reused unless ``force``. Interrupted runs
    resume from the last checkpoint (and the teacher's cached responses). Processes
    making the same fine-tune take turns (a file lock); the later ones reuse the result.
    """
    from canopy.models import get_spec
    from canopy.settings import Runtime

    runtime = Runtime(device=device, threads=threads).resolved()
    if isinstance(config, str):
        if config not in PROFILES:
            raise ValueError(f"unknown fine-tune profile {config!r}; choose from "
                             f"{', '.join(PROFILES)}")
        config = PROFILES[config]
    pool_sha = hashlib.sha256(config.pool_path().read_bytes()).hexdigest() \
        if config.pool_path().is_file() else ""
    train_prompts, heldout_prompts = _read_pool(config)
    for name in (config.base, config.teacher):
        get_spec(name)  # one-line error for an unknown model
    target = published_dir(config.name)
    # One process makes a fine-tune at a time (two book builds, two test workers): the
    # others wait here and then find it made.
    with store_lock(cache_dir() / "finetune" / f".{config.name}.lock", timeout=-1):
        started = time.perf_counter()
        teacher_dir = cache_dir() / "finetune" / "teacher"
        train = _teacher_responses(config, train_prompts, teacher_dir, progress, runtime)
        heldout = _teacher_responses(config, heldout_prompts, teacher_dir, progress, runtime)
        if not train:
            raise ValueError("the teacher finished no response within "
                             "teacher_max_new_tokens; raise it")
        key = finetune_hash(config, pool_sha, runtime.record(), _base_signature(config.base),
                            train + heldout)
        stamp = target / "canopy-finetune.json"
        if not force and stamp.is_file() and json.loads(stamp.read_text()).get("hash") == key:
            if progress:
                print(f"canopy finetune: {config.name} is up to date ({target})")
            return target
        return _make(config, key, pool_sha, train, heldout, train_prompts, heldout_prompts,
                     runtime, started, target, progress)


def _base_signature(name: str) -> dict:
    """:func:`~canopy.models.source_signature` of the base model ``name``, of its
    converted weights for a GGUF source (converted first when needed)."""
    from canopy.models import convert_gguf, get_spec, source_signature

    spec = get_spec(name)
    if spec.kind in ("package", "gguf"):
        convert_gguf(spec)
    return source_signature(spec)


def _make(config: FinetuneConfig, key: str, pool_sha: str, train, heldout, train_prompts,
          heldout_prompts, runtime, started: float, target: Path, progress: bool) -> Path:
    """The work of :func:`finetune` once it holds the fine-tune's lock and has the
    teacher's (prompt, response) pairs ``train`` and ``heldout``."""
    import torch
    from transformers import GenerationConfig

    from canopy.models import LoadedModel, get_spec, load_model

    t_teacher = time.perf_counter() - started
    run_dir = cache_dir() / "finetune" / "runs" / f"{config.name}-{key}"
    run_dir.mkdir(parents=True, exist_ok=True)

    base = load_model(config.base, fingerprint=False, runtime=runtime)
    tok = base.tokenizer
    tok.chat_template = GEMMA_CHAT_TEMPLATE
    eot = tok.convert_tokens_to_ids(END_OF_TURN)
    if eot is None or eot == tok.unk_token_id:
        raise ValueError(f"base model {config.base!r} has no {END_OF_TURN} token; "
                         "this recipe needs a Gemma tokenizer")
    train_ex, train_dropped = encode_examples(tok, train, config.max_seq_len)
    held_ex, held_dropped = encode_examples(tok, heldout, config.max_seq_len)
    if not train_ex:
        raise ValueError(f"every training example is longer than max_seq_len="
                         f"{config.max_seq_len} tokens; raise it")
    pad_id = tok.pad_token_id or 0

    base_loss = _mean_response_loss(base.model, held_ex, pad_id)
    base_stop = _stop_fraction(base, heldout_prompts, config)
    model, losses = _train(config, base, train_ex, run_dir, progress, eot)
    t_train = time.perf_counter() - started - t_teacher
    tuned_loss = _mean_response_loss(model, held_ex, pad_id)

    # Save the adapter with the tokenizer (chat template) and the stop ids.
    out = run_dir / "adapter"
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    stops = sorted({int(i) for i in base.stop_ids} | {int(eot)})
    gen = GenerationConfig.from_model_config(base.model.config)
    gen.eos_token_id = stops
    gen.bos_token_id, gen.pad_token_id = tok.bos_token_id, pad_id
    gen.save_pretrained(out)

    # Stop fractions on held-out prompts: fine-tuned (chat prompts) vs base (raw prompts).
    merged = model.merge_and_unload()
    spec = get_spec(config.name) if config.name in _registered() else None
    tuned = LoadedModel(model=merged.eval(), tokenizer=tok, spec=spec or _adhoc_spec(config),
                        stop_ids=stops, fingerprint="")
    tuned_stop = _stop_fraction(tuned, heldout_prompts, config)

    report = {
        "name": config.name, "base": config.base, "teacher": config.teacher, "hash": key,
        "config": asdict(config), "pool_sha256": pool_sha,
        "n_train_examples": len(train_ex), "n_heldout_examples": len(held_ex),
        "n_dropped_too_long": {"train": train_dropped, "heldout": held_dropped},
        "n_train_prompts": len(train_prompts),
        "train_loss": losses,
        "heldout_response_loss": {"base": base_loss, "fine_tuned": tuned_loss},
        "stop_fraction": {"max_new_tokens": config.eval_max_new_tokens,
                          "n_prompts": len(heldout_prompts),
                          "rollouts_per_prompt": config.eval_rollouts,
                          "top_k": config.eval_top_k,
                          "base": base_stop, "fine_tuned": tuned_stop},
        "stop_ids": stops,
        "seconds": {"teacher": round(t_teacher, 1), "train": round(t_train, 1),
                    "total": round(time.perf_counter() - started, 1)},
        "torch_threads": torch.get_num_threads(),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "canopy-finetune.json").write_text(json.dumps({"hash": key, "name": config.name}))
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(out, tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    if progress:
        print(f"canopy finetune: {config.name}: held-out response loss {base_loss:.3f} -> "
              f"{tuned_loss:.3f} nats/token; stops within {config.eval_max_new_tokens} "
              f"tokens: base {base_stop:.0%}, fine-tuned {tuned_stop:.0%}; "
              f"{report['seconds']['total']:.0f} s -> {target}")
    return target


def _registered() -> set[str]:
    from canopy.models import REGISTRY
    return set(REGISTRY)


def _adhoc_spec(config: FinetuneConfig):
    from canopy.models import ModelSpec, get_spec

    return ModelSpec(name=config.name, family=get_spec(config.base).family,
                     variant="fine-tuned", kind="adapter",
                     source=str(published_dir(config.name)), chat_template=True,
                     base=config.base)


def with_overrides(config: FinetuneConfig, **overrides) -> FinetuneConfig:
    """``config`` with the non-None ``overrides`` applied."""
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})
