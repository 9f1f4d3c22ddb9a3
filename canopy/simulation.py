"""Simulated panels with known coefficients, the coverage study, and the scenarios and
verdicts chapter 6 reports (§6 of the book's Method page: the estimators must recover
β and η, with 95 % intervals covering them about 95 % of the time).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from canopy.fitting import check_level
from canopy.stats import interaction_regression
from canopy.tables import matched_families, require_columns

__all__ = ["simulate_panel", "simulation_study", "simulation_summary", "scenarios",
           "run_scenarios", "coverage_verdict", "COVERAGE_VERDICTS"]


def simulate_panel(n_prompts: int = 40, n_tasks: int = 2, n_families: int = 2,
                   beta: float = 0.08, eta: float = 0.16, tau: float = -0.1,
                   gamma: float = -5e-4, curvature: float = 0.0, prompt_sd: float = 0.05,
                   noise_sd: float = 0.03, rate_sd: float = 0.3,
                   length_confounding: float = 0.6, single_variant_families: int = 0,
                   seed: int | None = 0) -> pd.DataFrame:
    """A synthetic panel with known coefficients, for tests and the simulation study.

    Each prompt ``p`` has a latent openness ``z_p ~ N(0, 1)`` that raises both its entropy
    rate and (with strength ``length_confounding``) its length, so omitting ``N̄`` would
    bias the slope; and a random intercept ``u_p ~ N(0, prompt_sd²)`` independent of the
    regressors. For every family ``f`` and variant:

    - ``R̄ = 1.5 + 0.1 f + 0.15 FT + rate_sd (0.7 z_p + 0.7 ξ)``, ``ξ ~ N(0, 1)``;
    - ``N̄ = 120 exp(0.4 length_confounding z_p + 0.25 ν)`` tokens, ``ν ~ N(0, 1)``;
    - ``D = 0.25 + β R̄ + τ FT + η R̄ FT + γ N̄ + curvature (R̄ − 1.5)² + 0.03 task
      − 0.02 f + u_p + ε``, ``ε ~ N(0, noise_sd²)``.

    The last ``single_variant_families`` families have the base variant only. Truth is in
    ``panel.attrs["truth"]`` (``beta, eta, tau, gamma, ratio, curvature``).
    """
    if n_prompts < 1 or n_tasks < 1 or n_families < 1:
        raise ValueError("n_prompts, n_tasks and n_families must be at least 1")
    if not 0 <= single_variant_families <= n_families:
        raise ValueError("single_variant_families must be between 0 and n_families")
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n_prompts)
    u = rng.normal(scale=prompt_sd, size=n_prompts)
    task_idx = np.arange(n_prompts) % n_tasks
    frames = []
    for f in range(n_families):
        variants = (0,) if f >= n_families - single_variant_families else (0, 1)
        for ft in variants:
            rate = 1.5 + 0.1 * f + 0.15 * ft + rate_sd * (0.7 * z + 0.7 * rng.normal(size=n_prompts))
            length = 120 * np.exp(0.4 * length_confounding * z + 0.25 * rng.normal(size=n_prompts))
            d = (0.25 + beta * rate + tau * ft + eta * rate * ft + gamma * length
                 + curvature * (rate - 1.5) ** 2 + 0.03 * task_idx - 0.02 * f + u
                 + rng.normal(scale=noise_sd, size=n_prompts))
            frames.append(pd.DataFrame({
                "model": f"fam{f}-{'ft' if ft else 'base'}", "family": f"fam{f}",
                "variant": "fine-tuned" if ft else "base", "task": [f"task{t}" for t in task_idx],
                "prompt_id": np.arange(n_prompts), "fine_tuned": ft,
                "diversity": d, "mean_entropy_rate": rate, "mean_length": length}))
    panel = pd.concat(frames, ignore_index=True)
    panel.insert(5, "prompt_uid", panel["task"] + "/" + panel["prompt_id"].astype(str))
    panel.attrs["truth"] = {"beta": beta, "eta": eta, "tau": tau, "gamma": gamma,
                            "ratio": (beta + eta) / beta if beta else np.nan,
                            "curvature": curvature}
    return panel


def simulation_study(n_seeds: int = 200, level: float = 0.95, first_seed: int = 0,
                     progress: bool = False, **simulate_kwargs) -> pd.DataFrame:
    """Fit :func:`interaction_regression` to ``n_seeds`` panels of :func:`simulate_panel`.

    One row per seed: ``beta``, ``beta_low``, ``beta_high``, ``eta``, ``eta_low``,
    ``eta_high``, ``ratio``, ``ratio_low``, ``ratio_high``, ``ratio_kind``, the
    ``covers_beta``/``covers_eta``/``covers_ratio`` flags against the truth, and
    ``converged``. The mean of a ``covers_*`` column estimates the coverage, with binomial
    standard error sqrt(c(1−c)/n_seeds). ``simulate_kwargs`` go to :func:`simulate_panel`.
    """
    from tqdm.auto import tqdm

    rows = []
    for seed in tqdm(range(first_seed, first_seed + n_seeds), disable=not progress,
                     desc="simulating"):
        panel = simulate_panel(seed=seed, **simulate_kwargs)
        truth = panel.attrs["truth"]
        res = interaction_regression(panel, level=level)
        row = {"seed": seed, "converged": res.converged}
        for key, term in (("beta", "mean_entropy_rate"), ("eta", "mean_entropy_rate:fine_tuned")):
            if term in res.table.index:
                est, lo, hi = res.table.loc[term, ["estimate", "ci_low", "ci_high"]]
            else:
                est = lo = hi = np.nan
            row.update({key: est, f"{key}_low": lo, f"{key}_high": hi,
                        f"covers_{key}": bool(lo <= truth[key] <= hi)})
        ratio = res.ratio
        row.update(ratio=np.nan if ratio is None else ratio.estimate,
                   ratio_low=np.nan if ratio is None else ratio.ci_low,
                   ratio_high=np.nan if ratio is None else ratio.ci_high,
                   ratio_kind="" if ratio is None else ratio.kind,
                   covers_ratio=bool(ratio is not None and ratio.covers(truth["ratio"])))
        rows.append(row)
    out = pd.DataFrame(rows)
    out.attrs["truth"] = simulate_panel(n_prompts=1, seed=0, **{
        k: v for k, v in simulate_kwargs.items() if k != "n_prompts"}).attrs["truth"]
    return out


# ---------------------------------------------------- simulation summary (chapter 6)

_SIM_PARAMETERS = (("beta", "β"), ("eta", "η"), ("ratio", "(β+η)/β"))


def simulation_summary(study: pd.DataFrame, truth: dict | None = None,
                       level: float = 0.95) -> pd.DataFrame:
    """Summarise :func:`simulation_study`: one row per parameter (β, η, (β+η)/β).

    ``truth`` defaults to ``study.attrs["truth"]``. Columns: ``symbol``, ``truth``,
    ``n_fits`` (seeds with a finite estimate), ``n_converged``, ``mean``, ``median``,
    ``bias`` (mean − truth), ``sd`` (ddof = 1), ``rmse``, ``median_abs_error``,
    ``coverage`` (share of the fits whose interval contains the truth; for the ratio,
    the Fieller set, which covers everything when it is the whole line), ``coverage_se``
    (binomial, sqrt(c(1−c)/n_fits)), ``coverage_check``: ``"nominal"`` when the coverage
    is within two binomial SEs at the nominal rate, sqrt(level(1−level)/n_fits), of
    ``level`` (the intervals' level in the study), else ``"low"`` (intervals too narrow)
    or ``"high"`` (conservative); and ``bounded_share`` (share of bounded intervals; 1
    for β and η). The ratio's mean and RMSE are dominated by the fits where β is near 0
    (the ratio has no finite moments then); read its median and median absolute error.
    NaN where no seed gave an estimate.
    """
    needed = [c for key, _ in _SIM_PARAMETERS for c in (key, f"covers_{key}")]
    require_columns(study, (*needed, "converged", "ratio_kind"), "study",
                    hint="make it with canopy.simulation.simulation_study")
    check_level(level)
    truth = study.attrs.get("truth") if truth is None else truth
    if not truth or any(key not in truth for key, _ in _SIM_PARAMETERS):
        raise ValueError("truth must give beta, eta and ratio (simulation_study stores it in "
                         "study.attrs['truth'])")
    rows = []
    for key, symbol in _SIM_PARAMETERS:
        est = pd.to_numeric(study[key], errors="coerce").to_numpy(dtype=np.float64)
        ok = np.isfinite(est)
        n = int(ok.sum())
        t = float(truth[key])
        e = est[ok]
        covers = study[f"covers_{key}"].to_numpy(dtype=bool)[ok]
        cov = float(covers.mean()) if n else np.nan
        bounded = (float((study["ratio_kind"].to_numpy()[ok] == "bounded").mean())
                   if key == "ratio" and n else (1.0 if n else np.nan))
        rows.append({
            "parameter": key, "symbol": symbol, "truth": t, "n_fits": n,
            "n_converged": int(study["converged"].to_numpy(dtype=bool)[ok].sum()),
            "mean": float(e.mean()) if n else np.nan,
            "median": float(np.median(e)) if n else np.nan,
            "bias": float(e.mean() - t) if n else np.nan,
            "sd": float(e.std(ddof=1)) if n > 1 else np.nan,
            "rmse": float(np.sqrt(np.mean((e - t) ** 2))) if n else np.nan,
            "median_abs_error": float(np.median(np.abs(e - t))) if n else np.nan,
            "coverage": cov,
            "coverage_se": float(np.sqrt(cov * (1 - cov) / n)) if n else np.nan,
            "coverage_check": ("" if not n else "nominal" if abs(cov - level) <= 2 * np.sqrt(
                level * (1 - level) / n) else "low" if cov < level else "high"),
            "bounded_share": bounded,
        })
    return pd.DataFrame(rows).set_index("parameter")


# ------------------------------------------------------ scenarios and verdicts (chapter 6)

#: What a ``coverage_check`` of :func:`simulation_summary` says, in words.
COVERAGE_VERDICTS = {"nominal": "consistent with the nominal level",
                     "low": "below the nominal level (intervals too narrow)",
                     "high": "above the nominal level (intervals conservative)",
                     "": "not estimable"}


def coverage_verdict(check: str) -> str:
    """The verdict on a coverage in words, from :func:`simulation_summary`'s
    ``coverage_check`` (``nominal``, ``low``, ``high`` or '' when not estimable)."""
    if check not in COVERAGE_VERDICTS:
        raise ValueError(f"coverage check must be one of {sorted(COVERAGE_VERDICTS)}, got {check!r}")
    return COVERAGE_VERDICTS[check]


def scenarios(panel: pd.DataFrame, scale_up: int = 4) -> dict[str, dict]:
    """Designs of simulated panels that copy a real ``panel``: name → keyword arguments
    of :func:`simulate_panel` (``n_prompts``, ``n_tasks``, ``n_families``).

    Scenario 1 has as many prompts and tasks as the panel's matched families (all of
    the panel when no family has both variants) and as many matched families (at least
    one). With ``scale_up`` > 0, scenario 2 has ``scale_up`` times the prompts and two
    matched families.
    """
    require_columns(panel, ["family", "task", "prompt_uid"], "panel", allow_empty=False,
                    hint="build it with canopy.stats.build_panel")
    if isinstance(scale_up, bool) or not isinstance(scale_up, (int, np.integer)) or scale_up < 0:
        raise ValueError(f"scale_up must be a non-negative integer (0: no second scenario), "
                         f"got {scale_up!r}")
    matched, _ = matched_families(panel)
    real = panel[panel["family"].isin(matched)] if matched else panel
    n_prompts, n_tasks = int(real["prompt_uid"].nunique()), int(real["task"].nunique())
    out = {"1: like our panel": dict(n_prompts=n_prompts, n_tasks=n_tasks,
                                     n_families=max(1, len(matched)))}
    if scale_up:
        out[f"2: {scale_up}× the prompts, 2 families"] = dict(
            n_prompts=int(scale_up * n_prompts), n_tasks=n_tasks, n_families=2)
    return out


def run_scenarios(designs: dict[str, dict], n_seeds: int, level: float = 0.95,
                  first_seed: int = 0, progress: bool = False
                  ) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame]]:
    """:func:`simulation_study` and :func:`simulation_summary` of every design of
    :func:`scenarios`: ``(studies, summaries)``, both keyed by scenario name."""
    studies, summaries = {}, {}
    for name, design in designs.items():
        studies[name] = simulation_study(n_seeds=n_seeds, level=level, first_seed=first_seed,
                                         progress=progress, **design)
        summaries[name] = simulation_summary(studies[name], level=level)
    return studies, summaries
