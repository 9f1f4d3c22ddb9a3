"""The ``canopy`` command.

Subcommands: ``metrics`` (tree metrics from stored rollouts), and — as they are built —
``models``, ``sample``, ``finetune``, ``book``. Parsers are cheap; each handler imports
what it needs so that ``canopy --help`` stays fast. Errors a user can cause print one
line (``canopy: error: …``) and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _cmd_metrics(args: argparse.Namespace) -> None:
    from canopy.entropy import paired_bootstrap, pool, prompt_metrics
    from canopy.store import load_rollouts

    rollouts = load_rollouts(args.rollouts)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="canopy", description="Canopy Entropy of language-model generation trees.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("metrics", help="per-prompt and pooled tree metrics from stored rollouts")
    p.add_argument("--rollouts", required=True, help="rollout directory written by `canopy sample`")
    p.add_argument("--out", required=True, help="output directory for the tables")
    p.add_argument("--n-boot", type=int, default=2000,
                   help="paired bootstrap resamples base vs fine-tuned (0 = skip; default 2000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.set_defaults(handler=_cmd_metrics)

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.handler(args)
    except (ValueError, FileNotFoundError) as exc:
        parser.exit(2, f"canopy: error: {str(exc).splitlines()[0] if str(exc) else exc!r}\n")
    except KeyboardInterrupt:
        parser.exit(130, "canopy: interrupted; finished work is kept and a rerun resumes\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
