"""The ``canopy`` command.

Subcommands: ``metrics`` (tree metrics from stored rollouts), ``models``, ``sample``,
``score`` (exact statistics of generations made elsewhere), ``finetune``, ``book``. Parsers are cheap; each handler imports
what it needs so that ``canopy --help`` stays fast. Errors a user can cause are checked
first, before torch is imported or a model loaded, by the owners of the settings
(:mod:`canopy.settings`, :mod:`canopy.prompts`, :mod:`canopy.models`, :mod:`canopy.store`,
:mod:`canopy.book_checks`); the CLI turns arguments into their typed objects, and prints one
line (``canopy: error: …``, no traceback) with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace


def _cmd_metrics(args: argparse.Namespace) -> None:
    from canopy.store import check_metrics

    check_metrics(args.rollouts, args.out, args.n_boot, args.seed)
    from canopy.entropy import prompt_metrics
    from canopy.pooling import paired_bootstrap, pool
    from canopy.summaries import METRIC_COLUMNS, load_summaries

    rollouts = load_summaries(args.rollouts, METRIC_COLUMNS)  # one row per rollout
    prompts = prompt_metrics(rollouts)
    pooled = pool(prompts)
    tables = {"prompt_metrics": prompts, "pooled_metrics": pooled}
    if args.n_boot > 0:
        tables["bootstrap"] = paired_bootstrap(prompts, n_boot=args.n_boot, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        table.to_parquet(out / f"{name}.parquet", index=False)
        table.to_csv(out / f"{name}.csv", index=False)
    print(f"canopy metrics: {len(rollouts)} rollouts, {len(prompts)} prompts, "
          f"{len(pooled)} pooled rows -> {out}/ ({', '.join(tables)}; .parquet and .csv)")


def _cmd_models(args: argparse.Namespace) -> None:
    entries = _model_entries(args)
    if args.experiment or args.profile or entries:
        _show_taken(args, entries)
        return
    from canopy.models import list_models

    rows = list_models()
    width = max(len(r["name"]) for r in rows)
    print(f"{'name':<{width}}  {'family':<14} {'variant':<10} {'prompt':<6} status")
    for r in rows:
        status = ("available" + (" (converted)" if r["converted"] else "")
                  if r["available"] else f"missing: {r['needs']}")
        prompt = "chat" if r["chat_template"] else "raw"
        print(f"{r['name']:<{width}}  {r['family']:<14} {r['variant']:<10} {prompt:<6} {status}")


def _show_taken(args: argparse.Namespace, entries: list) -> None:
    """``canopy models --experiment FILE`` / ``--model SPEC``: how each model is taken
    (name, family, role, prompts, source) and whether it can be loaded now."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from canopy.entries import entry_specs
    from canopy.experiment import DEFAULT_EXPERIMENT, resolve_experiment
    from canopy.model_files import check_model_files
    from canopy.models import available

    if not entries:
        entries = resolve_experiment(args.experiment or DEFAULT_EXPERIMENT,
                                     args.profile or "default")["entries"]
    specs = entry_specs(entries, variant=args.variant, family=args.family,
                        chat_template=args.chat_template)
    width = max(len(s.name) for s in specs)
    fam = max(len("family"), *(len(s.family) for s in specs))
    print(f"{'name':<{width}}  {'family':<{fam}} {'role':<11} {'prompt':<6} source")
    families = {}
    for spec in specs:
        families.setdefault(spec.family, set()).add(spec.variant)
        ok, needs = available(spec)
        notes = []
        if ok:
            try:
                notes = check_model_files(spec)
            except ValueError as exc:
                ok, needs = False, str(exc)
        status = "" if ok else f"  (not usable: {needs})"
        role = "instruct" if spec.variant == "fine-tuned" else "base"
        prompt = "chat" if spec.chat_template else "raw"
        print(f"{spec.name:<{width}}  {spec.family:<{fam}} {role:<11} {prompt:<6} "
              f"{spec.source}{status}")
        for line in notes:
            print(f"  note: {line}")
    pairs = [f for f, variants in families.items() if variants == {"base", "fine-tuned"}]
    print(f"pairs compared (a base and an instruct model of one family): "
          f"{', '.join(pairs) if pairs else 'none; give the two models one family'}")


def _sample_plan(args: argparse.Namespace) -> SimpleNamespace:
    """``canopy sample``'s arguments as typed objects, every check run by the object's
    owner before torch is imported or a model loaded: ``specs`` (model specs), ``config``
    (:class:`~canopy.settings.SamplingConfig`), ``runtime``, ``prompts()`` (reads them),
    ``out`` (the store directory, created), ``ray``, ``workers``."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from canopy import cache_dir
    from canopy.entries import entry_specs
    from canopy.experiment import DEFAULT_EXPERIMENT, load_experiment
    from canopy.models import check_models
    from canopy.prompts import check_prompt_files, read_prompts
    from canopy.settings import Runtime, check_batch_memory, check_ray, check_sampling
    from canopy.store import check_out_dir

    flags = {"rollouts": args.rollouts, "max_new_tokens": args.max_new_tokens,
             "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
             "seed": args.seed, "batch_size": args.batch_size,
             "prompts_per_task": args.prompts_per_task}
    runtime_flags = {"engine": args.engine, "device": args.device, "dtype": args.dtype,
                     "threads": args.threads}
    if args.experiment or args.profile:
        exp = load_experiment(args.experiment or DEFAULT_EXPERIMENT, args.profile or "default",
                              {**flags, **runtime_flags,
                               "out": args.out, "ray": args.ray, "workers": args.workers})
        models, config, out, runtime = (_model_entries(args) or exp.entries, exp.sampling,
                                        exp.out, exp.runtime)
        stated = exp.runtime_stated
        per_task, ray, workers = exp.prompts_per_task, exp.ray, exp.workers
        files = [(exp.prompts_dir / f"{task}.jsonl", task) for task in exp.tasks]
    else:
        models = _model_entries(args)
        if not models:
            raise ValueError("give --models NAME … or --model SPEC (see `canopy models`) "
                             "or --experiment FILE")
        if not args.prompts:
            raise ValueError("give --prompts FILE.jsonl or --experiment FILE")
        config = check_sampling(flags)
        runtime = Runtime(**{k: v for k, v in runtime_flags.items() if v is not None})
        stated = {k for k, v in runtime_flags.items() if v is not None}
        out = args.out or cache_dir() / "rollouts" / "cli"
        per_task, ray, workers, files = args.prompts_per_task, args.ray, args.workers, []
    if args.prompts:
        files = [(path, None) for path in args.prompts]
    n_prompts = check_prompt_files(files, per_task)
    check_batch_memory(config, n_prompts)
    if ray not in (None, False) or workers is not None:
        check_ray(ray, workers, out)
    specs = check_models(entry_specs(models, variant=args.variant, family=args.family,
                                     chat_template=args.chat_template),
                         max_new_tokens=config.max_new_tokens)
    # about 64 bytes per generated token in a shard (ids, four float32 statistics, text)
    need = len(specs) * n_prompts * config.rollouts * config.max_new_tokens * 64
    out = check_out_dir(out, need_bytes=need)

    def prompts():
        found = []
        for path, task in files:
            these = read_prompts(path, task)
            found.extend(these[:per_task] if per_task else these)
        return found

    return SimpleNamespace(specs=specs, config=config, runtime=runtime, prompts=prompts,
                           out=out, ray=ray, workers=workers, stated=stated)


def _cmd_sample(args: argparse.Namespace) -> None:
    plan = _sample_plan(args)
    _refuse_changed_configuration(plan, args.resample)
    from canopy.model_files import beyond_tokenizer_lines
    from canopy.run import sample_to_store

    prompts = plan.prompts()
    table = sample_to_store(plan.specs, prompts, plan.config, plan.out, runtime=plan.runtime,
                            progress=True, ray=plan.ray, workers=plan.workers)
    for line in beyond_tokenizer_lines(table, plan.specs):
        print(f"canopy sample: {line}")
    info = table.attrs["canopy"]
    tokens = int(table["length"].sum())
    seconds = max(info["seconds"], 1e-9)
    print(f"canopy sample: {len(plan.specs)} model(s) x {len(prompts)} prompts x "
          f"{plan.config.rollouts} rollouts = {len(table)} rollouts, {tokens} tokens "
          f"({info['reused_prompts']} prompt shards reused, {info['sampled_prompts']} sampled) "
          f"in {seconds:.1f} s ({tokens / seconds:.0f} tok/s incl. loading) -> {plan.out}")


def _refuse_changed_configuration(plan: SimpleNamespace, resample: bool) -> None:
    """Stop (one line) when the store holds one of the models in another configuration,
    unless ``--resample``; before any model is loaded."""
    from canopy.store import changed_configuration_message, configuration_change

    if resample:
        return
    on_ray = plan.ray not in (None, False) or plan.workers is not None
    record = None if on_ray else plan.runtime.record()  # on Ray: the workers' device
    for spec in plan.specs:
        found = configuration_change(plan.out, spec, plan.config, record, plan.stated)
        if found is not None and found[1]:
            raise ValueError(changed_configuration_message(plan.out, spec.name, *found,
                                                           "add --resample"))


def _cmd_score(args: argparse.Namespace) -> None:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from canopy import cache_dir
    from canopy.entries import entry_spec
    from canopy.models import check_models
    from canopy.settings import (
        DEFAULT_BATCH_SIZE, Runtime, check_integer, check_ray, check_sampling,
    )

    entries = _model_entries(args)
    if len(entries) != 1:
        raise ValueError("canopy score takes one model (--models NAME or --model SPEC); "
                         "score another model in another run")
    config = check_sampling({"max_new_tokens": args.max_new_tokens,
                             "temperature": args.temperature, "top_k": args.top_k,
                             "top_p": args.top_p})
    batch_size = DEFAULT_BATCH_SIZE if args.batch_size is None else args.batch_size
    check_integer("--batch-size", batch_size, 1)
    runtime = Runtime(**{k: v for k, v in {"device": args.device, "dtype": args.dtype,
                                            "threads": args.threads}.items() if v is not None})
    out = args.out or cache_dir() / "rollouts" / "scored"
    on_ray = args.ray is not None or args.workers is not None
    if on_ray:  # on Ray the device is resolved on the workers
        check_ray(args.ray, args.workers, out)
    else:
        runtime.resolved()  # an unavailable device fails before anything is loaded
    from canopy.run import score_to_store
    from canopy.score import check_rows, read_rollouts_file

    table = read_rollouts_file(args.rollouts)
    check_rows(table)  # before the model is loaded
    spec = entry_spec(entries[0], variant=args.variant, family=args.family,
                      chat_template=args.chat_template)
    check_models([spec])  # tokenizer files, chat template: before the model is loaded
    scored = score_to_store(spec, table, config, out, batch_size=batch_size, progress=True,
                            runtime=runtime, ray=args.ray, workers=args.workers)
    info = scored.attrs["canopy"]
    outside = int(scored["outside_support"].sum())
    print(f"canopy score: {len(scored)} rollouts, {int(scored['length'].sum())} tokens "
          f"({info['reused_prompts']} prompt shards reused, {info['scored_prompts']} scored), "
          f"{outside} token(s) outside the support -> {out}")


def _model_entries(args: argparse.Namespace) -> list:
    """The models given on the command line: ``--models`` names/paths (plain strings,
    to which ``--variant``/``--family``/``--chat-template`` apply) then each ``--model``
    entry (a mapping)."""
    return list(getattr(args, "models", None) or []) + list(getattr(args, "model", None) or [])


def _model_option(text: str):
    """A ``--model`` value: ``KEY=VALUE,…`` with the keys of an experiment file's model
    entry (``path``, ``name``, ``family``, ``variant``, ``chat_template``, ``dtype``) → a
    mapping (``chat_template`` read as true/false); a value without ``=`` is a plain
    name or path, as in ``--models``. Parsed only: :mod:`canopy.entries` checks it."""
    if "=" not in text:
        return text
    entry = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise argparse.ArgumentTypeError(
                f"--model {text}: expected KEY=VALUE pairs separated by commas, e.g. "
                "path=./my-sft,family=mine,variant=instruct")
        if key == "chat_template":
            lowered = value.lower()
            if lowered not in ("true", "false", "yes", "no", "1", "0"):
                raise argparse.ArgumentTypeError(
                    f"--model {text}: chat_template must be true or false, got {value}")
            value = lowered in ("true", "yes", "1")
        entry[key] = value
    return entry


def _add_model_flags(p: argparse.ArgumentParser, *, many: bool = True) -> None:
    """``--models`` (names/paths) and ``--model`` (one entry with its role), and the
    flags that apply to plain names/paths."""
    p.add_argument("--models", nargs="+", metavar="MODEL",
                   help="registry names, local directories, .gguf files or Hugging Face ids" +
                        ("" if many else " (one)"))
    p.add_argument("--model", action="append", type=_model_option, metavar="SPEC",
                   help="one model with its role, repeatable: KEY=VALUE,… with the keys of an "
                        "experiment file's model entry: path (local folder or .gguf) or name "
                        "(registered or Hugging Face id), family, variant (base | instruct), "
                        "chat_template (true | false; default: on for instruct), dtype; e.g. "
                        "--model path=./base,family=mine --model "
                        "path=./sft,family=mine,variant=instruct")
    p.add_argument("--variant", choices=["base", "instruct", "fine-tuned"],
                   help="variant of the --models given by path or id (default base; "
                        "instruct and fine-tuned are the same)")
    p.add_argument("--family",
                   help="family of the --models given by path or id (default: the model's "
                        "own name); a base and an instruct model of one family are compared "
                        "as a pair")
    p.add_argument("--chat-template", action=argparse.BooleanOptionalAction, default=None,
                   help="render prompts of the --models given by path or id with the chat "
                        "template (default: on for instruct, off for base; registered models "
                        "keep theirs)")


def _add_decoding_flags(p: argparse.ArgumentParser) -> None:
    """The settings that define q_t, shared by ``sample`` and ``score`` (defaults: those
    of :class:`canopy.settings.SamplingConfig`)."""
    from canopy.settings import SamplingConfig

    p.add_argument("--max-new-tokens", type=_int, help=f"maximum generated tokens (default {SamplingConfig.max_new_tokens})")
    p.add_argument("--temperature", type=_float, help=f"temperature > 0 (default {SamplingConfig.temperature})")
    p.add_argument("--top-k", type=_int,
                   help=f"top-k, 0 = off (default {SamplingConfig.top_k}, the paper's setting)")
    p.add_argument("--top-p", type=_float, help=f"top-p in (0, 1], 1 = off (default {SamplingConfig.top_p})")


def _add_runtime_flags(p: argparse.ArgumentParser, engine: bool) -> None:
    from canopy.settings import DTYPES, ENGINES

    if engine:
        p.add_argument("--engine", choices=ENGINES,
                       help="decode loop: hf (built in, default) or vllm (optional extra, "
                            "install with `make env-vllm`)")
    p.add_argument("--device",
                   help="auto (default: CUDA when available, else CPU), cpu, cuda, cuda:N "
                        "or mps")
    p.add_argument("--dtype", choices=DTYPES,
                   help="weights dtype (default float32; statistics are always float32 from "
                        "the model's logits, but bfloat16/float16 logits are slightly "
                        "inexact)")
    p.add_argument("--threads", type=_int,
                   help="CPU threads (default: torch's own count, capped by the usable "
                        "CPUs, with OpenMP's passive wait policy; on a machine whose cores "
                        "are busy with other work --threads 1 can be faster). Part of the "
                        "configuration: another count writes other shards")


def _add_ray_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ray", nargs="?", const=True, metavar="ADDRESS",
                   help="spread the shards over Ray workers (pip install canopy[ray]): "
                        "without ADDRESS on a local Ray instance, with HOST:PORT, "
                        "ray://HOST:PORT or auto on that cluster (the store must be a "
                        "directory every node shares)")
    p.add_argument("--workers", type=_int,
                   help="Ray workers, each loading the model once (default: one per GPU, "
                        "else the CPUs // 4); needs --ray")


def _cmd_finetune(args: argparse.Namespace) -> None:
    from canopy.finetune import PROFILES, finetune, with_overrides

    config = with_overrides(PROFILES["quick" if args.quick else "default"],
                            n_train=args.n_train, epochs=args.epochs, lr=args.lr,
                            seed=args.seed)
    finetune(config, force=args.force, device=args.device or "auto", threads=args.threads)


def _parse_value(text: str):
    """A ``-p`` value: YAML scalars and lists (``8``, ``0.5``, ``true``, ``[a, b]``)."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _absolute_entry(entry):
    """A ``-p models`` entry with a relative local path made absolute (the chapters run
    in the project root, not in this directory); names and ids are left alone."""
    if isinstance(entry, dict) and isinstance(entry.get("path"), str):
        return {**entry, "path": str(Path(entry["path"]).expanduser().resolve())}
    if isinstance(entry, str) and not Path(entry).is_absolute() and Path(entry).exists():
        return str(Path(entry).resolve())
    return entry


def _cmd_book(args: argparse.Namespace) -> None:
    from canopy.book_checks import book_models, check_book
    from canopy.experiment import resolve_experiment

    params = {}
    for pair in args.parameter or []:
        name, value = pair
        params[name] = _parse_value(value)
    if args.experiment is not None:
        if "experiment_file" in params:
            raise ValueError("--experiment and -p experiment_file name the same thing; give one")
        params["experiment_file"] = args.experiment
    check_book(params, args.only, profile=args.profile)
    if params.get("experiment_file") is not None:
        # absolute: the chapters run in the project root, not in this directory
        params["experiment_file"] = str(Path(str(params["experiment_file"])).resolve())
    if isinstance(params.get("models"), list):  # local paths likewise
        params["models"] = [_absolute_entry(entry) for entry in params["models"]]
    experiment = resolve_experiment(params.get("experiment_file"), args.profile,
                                    {"models": params.get("models")})
    from canopy import book

    book.check_parameters(params, experiment["models"], args.only)
    if book.uses_models(book.selected_chapters(args.only)):
        to_sample = book.models_to_sample(args.profile, params.get("experiment_file"),
                                          params.get("models"))
        if to_sample:  # the models the store holds are read, not loaded
            book_models(to_sample)
    book.build(args.profile, params, only=args.only, force=args.force, html=not args.no_html)


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (no usage block) and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int(text: str) -> int:
    """An integer argument; also accepts integral scientific notation (``1e6``), so that
    a value beyond a bound gets the bound's message rather than a parse error."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text}") from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"expected an integer, got {text}")
    return int(value)


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="canopy", description="Canopy Entropy of language-model generation trees.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("metrics", help="per-prompt and pooled tree metrics from stored rollouts")
    p.add_argument("--rollouts", required=True, help="rollout directory written by `canopy sample`")
    p.add_argument("--out", required=True, help="output directory for the tables")
    p.add_argument("--n-boot", type=_int, default=2000, metavar="N",
                   help="paired bootstrap resamples base vs fine-tuned (0 = skip; default 2000)")
    p.add_argument("--seed", type=_int, default=0, help="bootstrap seed (default 0)")
    p.set_defaults(handler=_cmd_metrics)

    p = sub.add_parser(
        "models", help="list registered models, or show how an experiment's models are taken",
        description="Without options: the registered models and whether they are available. "
                    "With --experiment/--profile or --models/--model: how each of those "
                    "models is taken (family, role base or instruct, raw or chat-template "
                    "prompts), whether it can be loaded, and which families form pairs.")
    p.add_argument("--experiment", help="experiment YAML whose models to show")
    p.add_argument("--profile", help="profile of the experiment file")
    _add_model_flags(p)
    p.set_defaults(handler=_cmd_models)

    p = sub.add_parser(
        "sample", help="sample rollouts with exact per-step entropy into a resumable store",
        description="Sample M rollouts per prompt. Settings come from --experiment FILE "
                    "--profile NAME (default data/experiments/default.yaml when only "
                    "--profile is given) and/or flags; flags override the file.")
    p.add_argument("--experiment", help="experiment YAML (see canopy/experiment.py)")
    p.add_argument("--profile", help="profile of the experiment file (quick, default, ...)")
    _add_model_flags(p)
    p.add_argument("--prompts", nargs="+", metavar="FILE",
                   help="prompt JSONL file(s) (fields: prompt, optional id, task)")
    p.add_argument("--prompts-per-task", type=_int, help="use the first N prompts of each file/task")
    p.add_argument("--rollouts", type=_int, help="rollouts M per prompt (default 8)")
    _add_decoding_flags(p)
    p.add_argument("--seed", type=_int, help="seed (default 0)")
    p.add_argument("--batch-size", type=_int, help="rows per forward pass (default 16)")
    _add_runtime_flags(p, engine=True)
    p.add_argument("--resample", action="store_true",
                   help="sample even when the store (--out) holds a model in another "
                        "configuration (other family, variant, chat template, sampling or "
                        "stated runtime settings); without it that is an error naming both. "
                        "The new configuration becomes the store's current one")
    p.add_argument("--out", help="rollout directory (default from the experiment, else "
                                 "$CANOPY_CACHE/rollouts/cli)")
    _add_ray_flags(p)
    p.set_defaults(handler=_cmd_sample)

    p = sub.add_parser(
        "score", help="exact per-step statistics of generations made by any engine "
                      "(teacher forcing) into the same resumable store",
        description="Score existing rollouts: one teacher-forced pass per packed batch "
                    "computes what `canopy sample` records, under the stated decoding "
                    "settings. FILE: JSONL (one rollout per line) or Parquet with "
                    "prompt_token_ids or prompt (raw text, rendered as canopy sample "
                    "would), token_ids or completion (text), optional task (default "
                    "'default'), prompt_id (default: order of the distinct prompts), "
                    "rollout_id (default: order of the prompt's rows). A completion ends "
                    "at its first stop token (tokens after it are an error); without one "
                    "it is cut at --max-new-tokens and counted truncated. Tokens outside "
                    "the support of q_t get step_logprob NaN and are counted in "
                    "outside_support.")
    _add_model_flags(p, many=False)
    p.add_argument("--rollouts", required=True, metavar="FILE",
                   help="rollouts to score (.jsonl or .parquet)")
    _add_decoding_flags(p)
    p.add_argument("--batch-size", type=_int, help="rollouts per forward pass (default 16)")
    _add_runtime_flags(p, engine=False)
    p.add_argument("--out", help="rollout directory (default $CANOPY_CACHE/rollouts/scored)")
    _add_ray_flags(p)
    p.set_defaults(handler=_cmd_score)

    p = sub.add_parser("finetune", help="make gemma-3-270m-sft by LoRA fine-tuning (cached)")
    p.add_argument("--quick", action="store_true",
                   help="the small configuration for tests and classrooms (~2 min); "
                        "its result is gemma-3-270m-sft-quick")
    p.add_argument("--n-train", type=_int, help="pool prompts to train on")
    p.add_argument("--epochs", type=_int, help="passes over the training examples")
    p.add_argument("--lr", type=_float, help="peak learning rate")
    p.add_argument("--seed", type=_int, help="seed of the teacher sampling and the training")
    p.add_argument("--force", action="store_true", help="retrain even when a result is cached")
    p.add_argument("--device", help="auto (default: CUDA when available, else CPU), cpu, "
                                    "cuda, cuda:N or mps")
    p.add_argument("--threads", type=_int, help="CPU threads (default: as canopy sample)")
    p.set_defaults(handler=_cmd_finetune)

    p = sub.add_parser("book", help="execute the chapters and build the offline HTML book")
    p.add_argument("--profile", default="default",
                   help="profile of the experiment file the chapters use (default: default; "
                        "data/experiments/default.yaml has quick, default and paper)")
    p.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="override a chapter parameter (YAML value, e.g. -p n_boot 500 "
                        "-p models '[gemma-3-270m, gemma-3-270m-sft]'); repeatable")
    p.add_argument("--experiment", metavar="FILE",
                   help="experiment file the chapters use (default: "
                        "data/experiments/default.yaml); same as -p experiment_file FILE")
    p.add_argument("--only", nargs="+", metavar="CHAPTER",
                   help="execute only these chapters (e.g. 03 or 03_canopy_entropy); in a "
                        "fresh clone they run and the HTML build is skipped")
    p.add_argument("--force", action="store_true", help="re-execute unchanged chapters too")
    p.add_argument("--no-html", action="store_true", help="execute chapters, skip the HTML")
    p.set_defaults(handler=_cmd_book)

    return parser


def _one_line(exc: BaseException) -> str:
    """The first line of an error's message, without repr quotes."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename:
        return f"{exc.filename}: {exc.strerror}"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.handler(args)
    except (ValueError, OSError) as exc:  # bad input, missing or unwritable files
        parser.exit(2, f"canopy: error: {_one_line(exc)}\n")
    except RuntimeError as exc:  # a failed chapter or book build: keep its details
        parser.exit(1, f"canopy: error: {exc}\n")
    except KeyboardInterrupt:
        parser.exit(130, "canopy: interrupted; finished work is kept and a rerun resumes\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
