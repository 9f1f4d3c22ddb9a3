"""The model-fitting toolkit that :mod:`canopy.stats`, :mod:`canopy.beta` and
:mod:`canopy.simulation` share: Wald tables, aliased design columns, captured optimiser
warnings, a mixed-model fit that recovers from a failed gradient optimiser, and the
HTML pieces of a fit's notebook display.

A Wald table has one row per term (index ``term``) and the columns
:data:`TABLE_COLUMNS`: ``symbol`` (the Method page's symbol, ``""`` if none),
``estimate``, ``se``, ``z = estimate / se``, ``p`` (two-sided, normal reference) and
``ci_low``/``ci_high`` (Wald interval at ``level``). NaN in ``z``/``p``/``ci_*`` means a
non-finite or zero standard error.
"""

from __future__ import annotations

import html
from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy import stats as sps

from canopy.display import reader_table

__all__ = ["TABLE_COLUMNS", "check_level", "aliased_columns", "wald_table", "empty_table",
           "warning_notes", "fit_mixedlm", "notes_html", "table_html"]

#: Columns of every Wald table, in order (the index is ``term``).
TABLE_COLUMNS = ["symbol", "estimate", "se", "z", "p", "ci_low", "ci_high"]

# statsmodels' MixedLM warns this when a gradient method failed and it tries the next one.
_RETRY_MESSAGE = "retrying mixedlm optimization"


def check_level(level: float) -> None:
    """Raise a one-line ``ValueError`` unless the confidence ``level`` is in (0, 1)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")


def aliased_columns(x: pd.DataFrame, tol: float = 1e-9) -> list[str]:
    """Names of the columns of ``x`` (rows × columns) that are linear combinations of
    the columns before them (after scaling each column to max |value| 1)."""
    keep: list[int] = []
    dropped = []
    arr = x.to_numpy(dtype=np.float64)
    scale = np.maximum(np.abs(arr).max(axis=0), 1e-300) if arr.size else np.ones(arr.shape[1])
    arr = arr / scale
    for j in range(arr.shape[1]):
        s = np.linalg.svd(arr[:, keep + [j]], compute_uv=False)
        if s.size and s[-1] > tol * max(s[0], 1.0) * np.sqrt(arr.shape[0]):
            keep.append(j)
        else:
            dropped.append(x.columns[j])
    return dropped


def wald_table(params: pd.Series, bse: pd.Series, level: float,
               symbols: Mapping[str, str] | None = None) -> pd.DataFrame:
    """The Wald table (:data:`TABLE_COLUMNS`, index ``term``) of estimates ``params``
    with standard errors ``bse`` (same index); ``symbols`` maps terms to symbols."""
    symbols = symbols or {}
    crit = sps.norm.ppf(0.5 + level / 2)
    est = params.to_numpy(dtype=float)
    se = bse.to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = est / se
    return pd.DataFrame({
        "symbol": [symbols.get(t, "") for t in params.index],
        "estimate": est, "se": se, "z": z, "p": 2 * sps.norm.sf(np.abs(z)),
        "ci_low": est - crit * se, "ci_high": est + crit * se,
    }, index=pd.Index(list(params.index), name="term"))


def empty_table(extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """A Wald table with no rows (columns ``extra`` first, then :data:`TABLE_COLUMNS`)."""
    return pd.DataFrame(columns=[*extra, *TABLE_COLUMNS], index=pd.Index([], name="term"))


def warning_notes(caught, notes: list[str]) -> bool:
    """Append the distinct captured warnings ``caught`` to ``notes``; return True if one
    says the optimiser did not converge. statsmodels' boundary warning is skipped (its
    test is absolute, < 0.01; callers check the variance relative to the residual)."""
    failed = False
    seen = set()
    for w in caught:
        msg = str(w.message).strip()
        if msg in seen:
            continue
        seen.add(msg)
        low = msg.lower()
        if "boundary" in low:
            continue
        if "converge" in low or "singular" in low or "hessian" in low:
            failed = failed or "converge" in low
            notes.append(f"statsmodels warned: {msg}")
        elif issubclass(w.category, (RuntimeWarning, UserWarning)):
            notes.append(f"warning during fit: {msg}")
    return failed


def _gradient_failed(caught, start: int) -> bool:
    return any(_RETRY_MESSAGE in str(w.message).lower() for w in caught[start:])


def fit_mixedlm(model, reml: bool, caught: list, notes: list[str]):
    """``model.fit(reml=reml)`` for a statsmodels ``MixedLM``, recovering from a failed
    gradient optimiser; ``caught`` is the live list of a ``warnings.catch_warnings(record=True)``.

    statsmodels tries BFGS, then L-BFGS, then CG. When the first fit reports
    non-convergence, or reports convergence only after a gradient method failed (whether
    BFGS fails depends on the BLAS kernel's rounding — typically when the prompt variance
    sits at its boundary 0, where the gradient is not zero), the model is fitted once more
    with Powell's derivative-free method, and Powell's fit is kept when it converged to at
    least the same log-likelihood (relative tolerance 1e-8). The failed attempts'
    warnings are then removed from ``caught`` and a note says what happened. When a later
    gradient method converged and Powell does not do better, that fit is kept, with a note
    in place of the abandoned attempts' warnings.
    """
    start = len(caught)
    res = model.fit(reml=reml)
    end = len(caught)
    fell_back = res.converged and _gradient_failed(caught, start)
    if res.converged and not fell_back:
        return res
    try:
        retry = model.fit(reml=reml, method=["powell"])
    except (np.linalg.LinAlgError, ValueError):
        retry = None
    if (retry is not None and retry.converged
            and retry.llf >= res.llf - 1e-8 * max(1.0, abs(res.llf))):
        del caught[start:]
        failed = ("a gradient optimiser did not converge (statsmodels' next one then "
                  "reported convergence)" if fell_back else
                  "the gradient optimisers did not converge")
        notes.append(f"{failed}; Powell's derivative-free method converged"
                     f" (log-likelihood {retry.llf:.4f} vs {res.llf:.4f}), and its fit is used")
        return retry
    del caught[end:]
    if fell_back:
        kept = [w for w in caught[start:end]
                if _RETRY_MESSAGE not in str(w.message).lower()
                and "failed to converge" not in str(w.message).lower()]
        caught[start:end] = kept
        notes.append("a gradient optimiser did not converge and statsmodels' next one did; "
                     "Powell's method found no higher likelihood, so that fit is used")
    return res


def notes_html(notes: list[str]) -> str:
    """``notes`` as an HTML list under a bold "Notes" (``""`` when there are none)."""
    if not notes:
        return ""
    items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return f"<p><b>Notes</b></p><ul>{items}</ul>"


def table_html(table: pd.DataFrame) -> str:
    """A fit's table for a reader (symbol, estimate, se, z, p first; see canopy.display)."""
    if table.empty:
        return "<p>(no table)</p>"
    cols = [c for c in ["symbol", "estimate", "se", "z", "p"] if c in table.columns]
    view = table[cols + [c for c in table.columns if c not in cols]]
    return reader_table(view, name="fit")._repr_html_()
