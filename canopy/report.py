"""What the chapters display: intervals in words, readable tables, and the sentences
that put the measured numbers into the text.

Every paragraph a chapter shows with numbers in it is built here by a small function
with a test, so that a notebook only calls and displays. Each returns Markdown text
(a ``str``) or a DataFrame; none computes a statistic of its own — the numbers come from
:mod:`canopy.pooling`, :mod:`canopy.semantic`, :mod:`canopy.stats` and
:mod:`canopy.simulation`.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from canopy.display import enable_reader_tables, glue_values, reader_table
from canopy.entropy import entropy_rate
from canopy.simulation import coverage_verdict
from canopy.tables import matched_families, require_columns

__all__ = [
    "MIN_BOOTSTRAP_PROMPTS", "interval_side", "format_interval", "bootstrap_table",
    "example_rollouts", "check_report", "finetune_summary", "finetune_config_table",
    # chapter 3
    "estimator_check_text", "cov_share_text", "identities_text", "pairs_text",
    "bootstrap_change_text",
    # chapter 5
    "diversity_extremes_text", "missing_buckets_text", "length_diversity_text",
    "clusters_text",
    # chapter 6
    "design_text", "main_slope_text", "ratio_text", "families_text", "curvature_text",
    "beta_fit_text", "simulation_design_text", "coverage_text",
    # tables and the findings page
    "reader_table", "enable_reader_tables", "glue_values", "VERDICTS", "claim_verdict", "prompts_to_resolve", "ratio_verdict",
    "paired_claim", "ratio_claim", "findings_table",
]


def _code(names: Iterable) -> str:
    """Names as inline code, comma-separated."""
    return ", ".join(f"`{n}`" for n in names)


# ------------------------------------------------------------------------- intervals
#: Fewer prompts than this: a bootstrap over prompts cannot say much (it takes only a
#: handful of distinct values), and :func:`interval_side` says so instead of a sign.
MIN_BOOTSTRAP_PROMPTS = 5


def interval_side(lo, hi, n=None, min_n: int = MIN_BOOTSTRAP_PROMPTS) -> np.ndarray:
    """Where an interval ``[lo, hi]`` lies relative to 0, element-wise: ``"> 0"`` when
    lo > 0, ``"< 0"`` when hi < 0, ``"includes 0"`` otherwise, ``"undefined"`` when
    either end is NaN, and ``"too few prompts"`` where ``n`` (the prompts behind the
    interval, optional) is below ``min_n``. For bootstrap CIs of a difference or a
    correlation."""
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    out = np.where(lo > 0, "> 0", np.where(hi < 0, "< 0", "includes 0")).astype(object)
    out = np.atleast_1d(out)
    if n is not None:
        few = np.broadcast_to(np.asarray(n, dtype=np.float64) < min_n, out.shape)
        out[few] = "too few prompts"
    out[np.atleast_1d(np.isnan(lo) | np.isnan(hi))] = "undefined"
    return out


def format_interval(estimate, lo, hi, fmt: str = "+.2f", unit: str = "") -> str:
    """``"estimate<unit> [lo, hi]"`` with ``fmt``, or ``"undefined"`` when the estimate is
    NaN (an interval end that is NaN prints as ``?``). For sentences in the chapters."""
    def one(x) -> str:
        return "?" if x is None or not np.isfinite(x) else format(float(x), fmt)

    if estimate is None or not np.isfinite(estimate):
        return "undefined"
    return f"{one(estimate)}{unit} [{one(lo)}, {one(hi)}]"


def bootstrap_table(boot: pd.DataFrame, metrics: Iterable[str] | None = None,
                    min_prompts: int = MIN_BOOTSTRAP_PROMPTS) -> pd.DataFrame:
    """A readable view of :func:`canopy.pooling.paired_bootstrap`'s output (chapters 3–4).

    Keeps ``family, task, metric, n_prompts, base, fine_tuned, delta, delta_lo,
    delta_hi, pct_delta, pct_delta_lo, pct_delta_hi`` (rows of ``metrics`` only, in
    that order, when given) and adds ``change`` = :func:`interval_side` of the delta's
    CI: ``"> 0"`` (fine-tuned higher at this confidence), ``"< 0"`` (lower) or
    ``"includes 0"`` (no difference resolved with these prompts), ``"too few prompts"``
    when fewer than ``min_prompts`` paired prompts stand behind it, ``"undefined"``.
    """
    cols = ["family", "task", "metric", "n_prompts", "base", "fine_tuned", "delta",
            "delta_lo", "delta_hi", "pct_delta", "pct_delta_lo", "pct_delta_hi"]
    require_columns(boot, cols, "bootstrap table",
                    hint="build it with canopy.pooling.paired_bootstrap")
    out = boot[cols].copy()
    if metrics is not None:
        order = {m: i for i, m in enumerate(metrics)}
        out = out[out["metric"].isin(order)]
        out = out.assign(_o=out["metric"].map(order)).sort_values(
            ["family", "_o"], kind="stable").drop(columns="_o")
    out["change"] = interval_side(out["delta_lo"], out["delta_hi"], out["n_prompts"],
                                  min_prompts)
    return out.reset_index(drop=True)


# ------------------------------------------------------------------ rollouts


def example_rollouts(rollouts: pd.DataFrame, task: str, prompt_id=None, rollout_ids=(0, 1),
                     models: Iterable[str] | None = None, max_chars: int = 400) -> pd.DataFrame:
    """Rollouts of one prompt side by side: one row per rollout id, one column per model.

    ``prompt_id`` None picks the first prompt (sorted) of ``task`` that every requested
    model has. Each cell is the decoded text (stop token stripped), newlines shown as
    ``⏎``, cut at ``max_chars`` characters (``…``), followed by ``[N tokens, r = …]`` and
    ``truncated`` when no stop token came. ``df.attrs['prompt_id']`` holds the prompt.
    """
    require_columns(rollouts, ["model", "task", "prompt_id", "rollout_id", "text", "length",
                               "summed_entropy", "truncated"], "rollout table")
    names = list(models) if models is not None else list(dict.fromkeys(rollouts["model"]))
    sub = rollouts[(rollouts["task"] == task) & rollouts["model"].isin(names)]
    if sub.empty:
        raise ValueError(f"no rollouts for task {task!r} and models {names}")
    if prompt_id is None:
        have = sub.groupby("prompt_id")["model"].nunique()
        common = sorted(have.index[have == len(names)].astype(str))
        if not common:
            raise ValueError(f"no prompt of task {task!r} has rollouts from every model {names}")
        prompt_id = common[0]
    sub = sub[sub["prompt_id"].astype(str) == str(prompt_id)]
    if sub.empty:
        raise ValueError(f"no rollouts for prompt {prompt_id!r} of task {task!r}")
    if max_chars < 1:
        raise ValueError("max_chars must be ≥ 1")

    def cell(row) -> str:
        text = str(row["text"]).replace("\r", "").replace("\n", " ⏎ ").strip()
        if len(text) > max_chars:
            text = text[:max_chars].rstrip() + " …"
        rate = entropy_rate(row["summed_entropy"], row["length"])
        tail = f"[{int(row['length'])} tokens, r = {rate:.2f} nats/token"
        tail += ", truncated]" if row["truncated"] else "]"
        return f"{text} {tail}"

    sub = sub[sub["rollout_id"].isin(list(rollout_ids))]
    table = (sub.assign(cell=[cell(r) for _, r in sub.iterrows()])
             .pivot(index="rollout_id", columns="model", values="cell"))
    table = table.reindex(columns=[m for m in names if m in table.columns])
    table.columns.name = None
    table.attrs["prompt_id"] = str(prompt_id)
    table.attrs["task"] = task
    return table


# ------------------------------------------------------------- the fine-tune report


def check_report(report) -> dict:
    """``report`` itself when it is a fine-tune report (the dict of
    :func:`canopy.finetune.read_report`), else a one-line ``ValueError``."""
    if not isinstance(report, dict) or "train_loss" not in report:
        raise ValueError("report must be the dict of canopy.finetune.read_report(name)")
    return report


def finetune_summary(report: dict) -> pd.DataFrame:
    """Held-out comparison of base and fine-tuned model from a fine-tune report: rows
    ``held-out response loss (nats/token)``, ``held-out response perplexity`` (exp of
    the loss), ``stops within <k> tokens`` (fraction of rollouts on the held-out prompts); columns
    ``base``, ``fine_tuned``, ``change`` (fine-tuned − base)."""
    rep = check_report(report)
    loss = rep["heldout_response_loss"]
    stop = rep["stop_fraction"]
    k = stop.get("max_new_tokens", "?")
    rows = [("held-out response loss (nats/token)", float(loss["base"]), float(loss["fine_tuned"])),
            ("held-out response perplexity", float(np.exp(loss["base"])),
             float(np.exp(loss["fine_tuned"]))),
            (f"stops within {k} tokens (share of rollouts, {stop.get('n_prompts', '?')} "
             "held-out prompts)",
             float(stop["base"]), float(stop["fine_tuned"]))]
    out = pd.DataFrame(rows, columns=["quantity", "base", "fine_tuned"]).set_index("quantity")
    out["change"] = out["fine_tuned"] - out["base"]
    return out


def finetune_config_table(report: dict) -> pd.DataFrame:
    """The fine-tune's configuration and bookkeeping as a two-column table (``setting``,
    ``value`` as text): every key of ``report["config"]``, then the example counts,
    stop ids, timings (seconds) and the CPU threads used."""
    rep = check_report(report)
    rows = [(k, v) for k, v in (rep.get("config") or {}).items()]
    for key in ("n_train_prompts", "n_train_examples", "n_heldout_examples", "stop_ids",
                "torch_threads", "hash"):
        if key in rep:
            rows.append((key, rep[key]))
    for key, value in (rep.get("seconds") or {}).items():
        rows.append((f"seconds: {key}", value))
    return pd.DataFrame([(k, str(v)) for k, v in rows], columns=["setting", "value"]).set_index("setting")


# ------------------------------------------------------------------------ chapter 3


def estimator_check_text(check: pd.DataFrame, n_rollouts: int) -> str:
    """How often the two CE* estimators agree, per (model, task) cell and per prompt.

    ``check``: :func:`canopy.pooling.estimator_check`'s output (its ``task == "all"``
    rows are left out); ``n_rollouts``: M, the rollouts per prompt."""
    require_columns(check, ["task", "estimators_agree", "n_prompts_agree", "n_prompts",
                            "canopy_entropy_se", "canopy_entropy_surprisal_se"],
                    "estimator check", hint="build it with canopy.pooling.estimator_check")
    scoped = check[check["task"] != "all"]
    larger = int((scoped["canopy_entropy_surprisal_se"] > scoped["canopy_entropy_se"]).sum())
    return (
        f"The pooled check passes in {int(scoped['estimators_agree'].sum())} of {len(scoped)} "
        f"(model, task) cells; per prompt it passes for {int(scoped['n_prompts_agree'].sum())} "
        f"of {int(scoped['n_prompts'].sum())} prompts. For the pooled mean a failure of a "
        "4-SE check by chance is very rare, so a failing cell would point to a problem in "
        "the recorded quantities. Per prompt, the standard error rests on only "
        f"M = {n_rollouts} rollouts ({n_rollouts - 1} "
        "degrees of freedom), so with small M an occasional per-prompt failure is expected "
        "by chance. The surprisal estimator's standard error is larger than the summed-"
        f"entropy one in {larger}"
        f" of {len(scoped)} cells here; that lower variance is why $\\widehat{{CE}}^*_H$ is the "
        "primary estimator.")


def cov_share_text(pooled: pd.DataFrame) -> str:
    """The covariance term's share of CE* over all tasks per model, and its range over
    every (model, task) cell. ``pooled``: :func:`canopy.pooling.pool`'s output."""
    require_columns(pooled, ["model", "task", "cov_share", "cov_residual", "canopy_entropy"],
                    "pooled table", hint="build it with canopy.pooling.pool")
    allrows = pooled[pooled["task"] == "all"].set_index("model")
    return ("Over all tasks, the covariance term's share of $CE^*$ is: " + "; ".join(
        f"`{m}` {row.cov_share:+.1%} ({row.cov_residual:+.3f} nats of {row.canopy_entropy:.2f})"
        for m, row in allrows.iterrows()) + ". Over all (model, task) cells the covariance "
        f"share ranges from {pooled['cov_share'].min():+.1%} to {pooled['cov_share'].max():+.1%}. "
        "A share near 0 can mean that $N$ and $r$ do not co-move, or that $N$ barely varies "
        "(truncation at $T_{\\max}$ makes $\\operatorname{Cov}(N, r)$ exactly 0 for a prompt whose "
        "rollouts are all truncated); compare with the truncation rates above.")


def identities_text(identities: pd.DataFrame) -> str:
    """The largest errors of the two pooled identities
    (:func:`canopy.pooling.decomposition_identities`)."""
    require_columns(identities, ["identity_error", "split_error"], "identities table")
    return (f"Largest |identity_error|: {identities['identity_error'].abs().max():.1e}; largest "
            f"|split_error|: {identities['split_error'].abs().max():.1e} nats.")


def pairs_text(boot: pd.DataFrame, models: Mapping[str, str]) -> str:
    """Which base → fine-tuned pairs the paired bootstrap compared, and which models it
    left unpaired. ``models`` maps each name the experiment lists to the model's name in
    the tables (its registry name)."""
    require_columns(boot, ["base_model", "fine_tuned_model"], "bootstrap table")
    paired = set(boot["base_model"]) | set(boot["fine_tuned_model"])
    pairs = boot[["base_model", "fine_tuned_model"]].drop_duplicates().itertuples(index=False)
    return ("Pairs compared: " + (", ".join(f"`{b}` → `{f}`" for b, f in pairs) or "none")
            + ". Not paired: " + (_code(m for m, name in models.items() if name not in paired)
                                  or "none") + ".")


def bootstrap_change_text(table: pd.DataFrame, confidence: float, n_boot: int,
                          metric: str = "canopy_entropy") -> str:
    """Fine-tuned vs base percent change of ``metric`` per task with its interval and
    :func:`interval_side` verdict. ``table``: :func:`bootstrap_table`'s output."""
    require_columns(table, ["metric", "task", "n_prompts", "pct_delta", "pct_delta_lo",
                            "pct_delta_hi", "change"], "bootstrap table",
                    hint="build it with canopy.report.bootstrap_table")
    rows = table[table["metric"] == metric].set_index("task")
    return (f"{confidence:.0%} intervals from {n_boot} resamples of the paired prompts. "
            "Fine-tuned vs base $CE^*$ (percent change): "
            + "; ".join(f"{t} ({int(row.n_prompts)} prompts): "
                        f"{format_interval(row.pct_delta, row.pct_delta_lo, row.pct_delta_hi, '+.0f', ' %')}"
                        f" — {row.change}" for t, row in rows.iterrows())
            + f". With fewer than {MIN_BOOTSTRAP_PROMPTS} prompts a bootstrap over "
            "prompts takes only a handful of distinct values, so such rows are marked 'too few "
            "prompts' whatever their interval says.")


# ------------------------------------------------------------------------ chapter 5


def _overall(pooled: pd.DataFrame, columns) -> pd.DataFrame:
    require_columns(pooled, ["model", "task", *columns], "pooled semantic table",
                    hint="build it with canopy.semantic.pool_semantic")
    return pooled[pooled["task"] == "all"].set_index("model")


def diversity_extremes_text(pooled: pd.DataFrame) -> str:
    """The models with the highest and the lowest mean D over all tasks.
    ``pooled``: :func:`canopy.semantic.pool_semantic`'s output."""
    overall = _overall(pooled, ["diversity", "n_prompts"])
    top, bottom = overall["diversity"].idxmax(), overall["diversity"].idxmin()
    return (
        f"Over all tasks, `{top}` has the highest mean D ({overall.loc[top, 'diversity']:.3f}) and "
        f"`{bottom}` the lowest ({overall.loc[bottom, 'diversity']:.3f}). Each value is a mean over "
        f"{int(overall['n_prompts'].max())} prompts; the strip chart below shows how much single "
        "prompts scatter around it, which is the honest measure of how far apart two models' "
        "means have to be before the difference means anything.")


def missing_buckets_text(pooled: pd.DataFrame, n_rollouts: int) -> str:
    """Which length buckets have no D for any model over all tasks, and why ('' when
    every bucket has a value)."""
    columns = ("diversity_short", "diversity_medium", "diversity_long")
    overall = _overall(pooled, columns)
    missing = [c.split("_")[1] for c in columns if overall[c].isna().all()]
    if not missing:
        return ""
    return (f"**No value for the {' and '.join(missing)} bucket(s):** with M = {n_rollouts} rollouts "
            "per prompt those thirds hold fewer than two rollouts, so D is undefined there. Rerun "
            "with more rollouts (the default profile) for a real comparison.")


def length_diversity_text(pooled: pd.DataFrame, correlation: str, n_rollouts: int) -> str:
    """The pooled ρ(N, d) over all tasks per model (``correlation``: pearson, spearman or
    kendall), with how to read it."""
    column = f"length_diversity_{correlation}"
    rho = _overall(pooled, [column])[column]
    if not rho.notna().any():
        return (f"No pooled ρ(N, d) is defined: with M = {n_rollouts} rollouts a prompt's Fisher weight "
                "M − 3 is at most 1 and prompts with constant length or diversity drop out. More "
                "rollouts per prompt are needed.")
    return (
        "Pooled over all tasks (" + correlation + "): " + ", ".join(
            f"`{m}` {v:+.3f}" for m, v in rho.items() if pd.notna(v))
        + "".join(f"; `{m}` undefined" for m, v in rho.items() if pd.isna(v))
        + ". (Undefined: no prompt has a defined correlation, typically because every "
        "rollout ran to the token budget, so length does not vary; see `reason`.) "
        "These are within-prompt correlations from only "
        f"{n_rollouts} rollouts per prompt: each prompt's correlation is very noisy, and the "
        "pooled value is a weighted average of such noisy values. Read the sign across tasks "
        "and models rather than any single number.")


def clusters_text(per_prompt: pd.DataFrame, n_rollouts: int) -> str:
    """Mean number of meaning clusters per prompt, per model
    (:func:`canopy.semantic.semantic_metrics`'s ``n_clusters``)."""
    require_columns(per_prompt, ["model", "n_clusters"], "semantic table")
    clusters = per_prompt.groupby("model")["n_clusters"].mean()
    return ("Mean number of meaning clusters per prompt (out of "
            f"{n_rollouts} rollouts): " + ", ".join(f"`{m}` {v:.2f}" for m, v in clusters.items())
            + ".")


# ------------------------------------------------------------------------ chapter 6


def design_text(panel: pd.DataFrame) -> str:
    """The panel's size and which families have both variants (and so enter the
    interaction, curvature and beta fits). ``panel``: :func:`canopy.stats.build_panel`."""
    require_columns(panel, ["prompt_uid", "task", "family"], "panel")
    matched, single = matched_families(panel)
    return (
        f"{len(panel)} rows, {panel['prompt_uid'].nunique()} prompts, {panel['task'].nunique()} "
        f"tasks. Families with both a base and a fine-tuned model: "
        f"{_code(matched) or 'none'}. "
        + (f"Families with one variant only: {_code(single)} — they enter "
           "the main regression but not the interaction, curvature or beta fits, because there "
           "the fine-tuning effect would be confounded with the family." if single else ""))


def _unconverged(converged: bool) -> str:
    return "" if converged else " **The fit did not converge; treat it as unreliable.**"


def main_slope_text(main, level: float) -> str:
    """The main regression's slope of R̄ with its interval, in a sentence
    (``main``: :func:`canopy.stats.main_regression`'s result)."""
    if not (main.fitted and "mean_entropy_rate" in main.table.index):
        return "The main regression could not be fitted on this panel; see its notes."
    pct = int(round(100 * level))
    r = main.coef("mean_entropy_rate")
    return (
        f"Slope of R̄: {r['estimate']:+.4f} per nat/token (SE {r['se']:.4f}, {pct} % CI "
        f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}], p = {r['p']:.3g}), with length, task and "
        f"family × variant held fixed. "
        + ("The interval excludes 0." if r["ci_low"] > 0 or r["ci_high"] < 0 else
           "The interval contains 0: this panel does not establish a link either way.")
        + _unconverged(main.converged))


def ratio_text(inter, level: float, paper_ratio: float = 3.0) -> str:
    """The slope ratio (β+η)/β with its Fieller set in words, and whether the paper's
    value lies inside (``inter``: :func:`canopy.stats.interaction_regression`'s result;
    '' when it has no ratio)."""
    ratio = inter.ratio
    if ratio is None:
        return ""
    pct = int(round(100 * level))
    kind_text = {
        "bounded": f"bounded: {ratio.interval_text()}",
        "two rays": (f"**unbounded**: {ratio.interval_text()}, because β's {pct} % interval "
                     "contains 0"),
        "whole line": (f"**unbounded**: every real number, {ratio.interval_text()}, because "
                       f"β's {pct} % interval contains 0 (and so does that of β + η)"),
    }.get(ratio.kind, "undefined")
    return (f"Slope ratio (β + η)/β = {ratio.estimate:.3g}; {pct} % Fieller confidence set "
            f"{kind_text}. The paper's value of about {paper_ratio:g} is "
            + ("inside" if ratio.covers(paper_ratio) else "outside")
            + " this set." + _unconverged(inter.converged))


def families_text(inter) -> str:
    """Which families entered the interaction fit and which were left out."""
    return (f"Families in the fit: {_code(inter.families)}"
            + (f"; left out (one variant): {_code(inter.excluded_families)}"
               if inter.excluded_families else "") + ".")


def curvature_text(curv) -> str:
    """The curvature LRT in words and whether β and η moved by more than one SE
    (``curv``: :func:`canopy.stats.curvature_check`'s result)."""
    if not np.isfinite(curv.p_value):
        return "The curvature test could not be computed on this panel (see notes)."
    moved = curv.shifts[~curv.shifts["within_one_se"]].index.tolist()
    return (
        f"{curv.summary()}. "
        + ("Curvature is detectable at the 5 % level. " if curv.p_value < 0.05 else
           "No detectable curvature at the 5 % level (with this few prompts, the test has "
           "little power against mild curvature). ")
        + ("β and η stay within one SE of their linear values."
           if not moved else f"Moved by more than one SE (or SE not finite): {', '.join(moved)}.")
        + ("" if curv.linear.converged and curv.quadratic.converged else
           " **At least one of the two ML fits did not converge (see the notes), so this "
           "check is unreliable here.**"))


def beta_fit_text(beta_fit) -> str:
    """A warning when the statsmodels beta regression was not fitted or did not converge
    ('' when it did; ``beta_fit``: :func:`canopy.beta.beta_regression`'s result)."""
    if not (beta_fit.table.empty or not beta_fit.converged):
        return ""
    return ("**The statsmodels beta regression " + ("was not fitted" if beta_fit.table.empty else
                                                    "did not converge")
            + f"** on this panel ({beta_fit.n_obs} rows; reasons in the notes above): the paper's "
            "specification has many coefficients (splines in both the mean and the precision "
            "model), and a small panel cannot carry them.")


def simulation_design_text(truth: Mapping[str, float], n_seeds: int,
                           scenarios: Mapping[str, Mapping]) -> str:
    """The true coefficients of the simulation and the design of each scenario
    (``scenarios``: :func:`canopy.simulation.scenarios`)."""
    return (f"True values: β = {truth['beta']:g}, η = {truth['eta']:g}, so "
            f"(β+η)/β = {truth['ratio']:g}; τ = {truth['tau']:g}, γ = {truth['gamma']:g}. "
            f"{n_seeds} simulated panels per scenario; designs: " + "; ".join(
                f"scenario {n.split(':')[0]}: {kw['n_prompts']} prompts, {kw['n_tasks']} tasks, "
                f"{kw['n_families']} matched famil{'y' if kw['n_families'] == 1 else 'ies'}"
                for n, kw in scenarios.items()) + ".")


def coverage_text(summaries: Mapping[str, pd.DataFrame], level: float) -> str:
    """One bullet per scenario: coverage, median estimates and the ratio's behaviour,
    with :func:`canopy.simulation.coverage_verdict`, then how to read coverage
    (``summaries``: scenario name → :func:`canopy.simulation.simulation_summary`)."""
    pct = int(round(100 * level))
    lines = []
    for name, s in summaries.items():
        b, e, q = s.loc["beta"], s.loc["eta"], s.loc["ratio"]
        lines.append(
            f"- **Scenario {name}.** Coverage of the {pct} % intervals: β {b['coverage']:.1%} "
            f"(± {b['coverage_se']:.1%}), η {e['coverage']:.1%} (± {e['coverage_se']:.1%}), "
            f"slope ratio {q['coverage']:.1%}. Median estimates β {b['median']:.3f} and "
            f"η {e['median']:.3f} against the truth {b['truth']:.3f} and {e['truth']:.3f}. "
            f"The Fieller set of the ratio was bounded in {q['bounded_share']:.0%} of the panels; "
            f"the typical (median) error of the ratio estimate was {q['median_abs_error']:.2f}. "
            f"Coverage of β is {coverage_verdict(b['coverage_check'])}; of η, "
            f"{coverage_verdict(e['coverage_check'])}.")
    return ("\n".join(lines) + "\n\n"
            "Coverage within about two binomial standard errors of the nominal level "
            "means the intervals can be taken at face value for designs like these; "
            "coverage clearly below it means the real fit's intervals are too narrow "
            "and its p-values too small (the normal reference and the REML variance "
            "estimates are least accurate with few prompts).")


# ------------------------------------------------------------------ findings page
#: The verdicts a claim can get (:func:`claim_verdict`).
VERDICTS = ("supported", "contradicted", "unresolved at this power", "undefined")


def claim_verdict(lo, hi, expected: str) -> str:
    """A claim about the sign of a difference, judged by its interval ``[lo, hi]``:
    ``expected`` is ``"> 0"`` or ``"< 0"`` (the sign the paper reports).
    ``"supported"`` when the interval lies on the expected side of 0, ``"contradicted"``
    when it lies on the other side, ``"unresolved at this power"`` when it includes 0,
    ``"undefined"`` when an end is NaN."""
    if expected not in ("> 0", "< 0"):
        raise ValueError(f"expected must be '> 0' or '< 0', not {expected!r}")
    side = interval_side(lo, hi)[0]
    if side == "undefined":
        return "undefined"
    if side == "includes 0":
        return "unresolved at this power"
    return "supported" if side == expected else "contradicted"


def prompts_to_resolve(estimate, lo, hi, n_prompts: int) -> float:
    """Prompts a rerun would need for the interval of ``estimate`` to exclude 0, if the
    estimate stayed where it is.

    The rule: a bootstrap (or Wald) interval over prompts narrows as 1/√P, so the
    distance from the estimate to the interval's end on the side of 0,
    w = |estimate − (lo if estimate > 0 else hi)|, becomes w·√(P/P′) with P′ prompts.
    The interval excludes 0 once that is below |estimate|:
    P′ = ⌈P · (w / |estimate|)²⌉. Returns ``n_prompts`` when the interval already
    excludes 0 and NaN when the estimate is 0 or not finite (no number of prompts
    resolves a zero effect). A planning figure, not a power analysis: the estimate
    itself will move with new prompts."""
    est, lo, hi = float(estimate), float(lo), float(hi)
    if n_prompts < 1:
        raise ValueError("n_prompts must be ≥ 1")
    if not (np.isfinite(est) and np.isfinite(lo) and np.isfinite(hi)) or est == 0:
        return float("nan")
    if lo > 0 or hi < 0:
        return float(n_prompts)
    w = est - lo if est > 0 else hi - est
    # (rounded to 9 digits first, so that floating-point noise does not add a prompt)
    return float(np.ceil(round(n_prompts * (w / abs(est)) ** 2, 9)))


def ratio_verdict(ratio, paper_ratio: float = 3.0, null_ratio: float = 1.0) -> str:
    """The claim "the slope of D on R̄ is about ``paper_ratio`` times larger after
    fine-tuning", judged by the Fieller set of (β+η)/β (``ratio``: a
    :class:`canopy.stats.SlopeRatio`, or None): ``"supported"`` when the set is bounded,
    holds ``paper_ratio`` and excludes ``null_ratio`` (no change); ``"contradicted"``
    when it is bounded and excludes ``paper_ratio``; ``"unresolved at this power"``
    otherwise (unbounded, or holding both); ``"undefined"`` without a ratio."""
    if ratio is None or not np.isfinite(ratio.estimate):
        return "undefined"
    if not ratio.bounded:
        return "unresolved at this power"
    if not ratio.covers(paper_ratio):
        return "contradicted"
    return "supported" if not ratio.covers(null_ratio) else "unresolved at this power"


def paired_claim(table: pd.DataFrame, metric: str, expected: str, task: str = "all",
                 percent: bool = False, fmt: str = "+.3f") -> dict | None:
    """One claim about a fine-tuned − base difference, from :func:`bootstrap_table`'s
    rows of ``metric`` and ``task`` (the first family): ``estimate``, ``lo``, ``hi``
    (the percent change when ``percent``), ``interval`` (text, :func:`format_interval`),
    ``n_prompts``, ``verdict`` (:func:`claim_verdict` against ``expected``) and
    ``prompts_needed`` (:func:`prompts_to_resolve`). None when the table has no such row
    (no matched family in the run)."""
    require_columns(table, ["metric", "task", "n_prompts", "delta", "delta_lo", "delta_hi"],
                    "bootstrap table", hint="build it with canopy.report.bootstrap_table")
    rows = table[(table["metric"] == metric) & (table["task"] == task)]
    if rows.empty:
        return None
    row = rows.iloc[0]
    key = "pct_delta" if percent else "delta"
    est, lo, hi, n = (float(row[key]), float(row[f"{key}_lo"]), float(row[f"{key}_hi"]),
                      int(row["n_prompts"]))
    return {"estimate": est, "lo": lo, "hi": hi, "n_prompts": n,
            "interval": format_interval(est, lo, hi, fmt, " %" if percent else ""),
            "verdict": claim_verdict(lo, hi, expected),
            "prompts_needed": prompts_to_resolve(est, lo, hi, n)}


def ratio_claim(inter, paper_ratio: float = 3.0) -> dict | None:
    """The slope-ratio claim from :func:`canopy.stats.interaction_regression`'s result:
    ``estimate``, ``interval`` (the Fieller set as text), ``summary`` (both),
    ``n_prompts`` (prompts in the
    fit), ``verdict`` (:func:`ratio_verdict`) and ``prompts_needed``: the larger of the
    prompts for β's and for η's Wald interval to exclude 0 (:func:`prompts_to_resolve`;
    a bounded Fieller set needs β resolved, a change of slope needs η resolved).
    None when the fit has no ratio."""
    ratio = getattr(inter, "ratio", None)
    if ratio is None or not inter.fitted:
        return None
    n = int(inter.n_groups)
    need = [prompts_to_resolve(r["estimate"], r["ci_low"], r["ci_high"], n)
            for r in (inter.coef("mean_entropy_rate"), inter.coef("mean_entropy_rate:fine_tuned"))]
    need = [x for x in need if np.isfinite(x)]
    return {"estimate": float(ratio.estimate), "interval": ratio.interval_text(),
            "summary": f"{ratio.estimate:.3g}, Fieller set {ratio.interval_text()}",
            "n_prompts": n, "verdict": ratio_verdict(ratio, paper_ratio),
            "prompts_needed": float(max(need)) if need else float("nan")}


def findings_table(claims: Mapping[str, tuple[str, dict | None]]) -> pd.DataFrame:
    """The Findings page's table: one row per claim (``claims``: claim text → (what
    was measured, the dict of :func:`paired_claim` or :func:`ratio_claim`, or None when
    the run could not measure it)). Columns ``claim``, ``measured``, ``estimate``,
    ``prompts``, ``verdict``, ``prompts to resolve``."""
    rows = []
    for claim, (measured, c) in claims.items():
        if c is None:
            rows.append({"claim": claim, "measured": measured, "estimate": "not measured",
                         "prompts": "—", "verdict": "undefined", "prompts to resolve": "—"})
            continue
        need = c["prompts_needed"]
        rows.append({"claim": claim, "measured": measured,
                     "estimate": c.get("summary", c["interval"]),
                     "prompts": str(c["n_prompts"]), "verdict": c["verdict"],
                     "prompts to resolve": "—" if not np.isfinite(need) else
                     ("resolved" if need <= c["n_prompts"] else f"about {int(need)}")})
    return pd.DataFrame(rows)
