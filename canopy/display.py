"""Tables for readers: the book's symbols as headers, units, rounding, merged intervals.

One mapping, :data:`COLUMNS`, says how each column name of the package's tables is shown
to a reader: its symbol (plain Unicode, so that it reads the same in a page, a notebook
and a terminal), its unit and its number format. :func:`reader_table` applies it to any
DataFrame; :func:`notation_table` writes the same mapping as the Markdown table that
``book/notation.md`` carries (a test keeps the two equal).

A reader table has no index column, rounds to the digits the mapping gives, writes an
estimate and its interval as ``x [lo, hi]`` (columns ``c``, ``c_lo``, ``c_hi``; or
``estimate`` with ``lo``/``hi`` or ``ci_low``/``ci_high``), and keeps the raw DataFrame
one click away: a collapsed "data" toggle holding the full-precision table and a CSV
download (a ``data:`` link, so it works offline). Hand-written rather than a pandas
``Styler``: the Styler cannot merge columns or rename headers from a mapping without
more code than this, and its HTML carries per-cell ids that bloat the page.
"""

from __future__ import annotations

import base64
import html
import re
from typing import Iterable, NamedTuple

import numpy as np
import pandas as pd

__all__ = ["Column", "COLUMNS", "header", "reader_table", "ReaderTable", "notation_table",
           "enable_reader_tables", "glue_values",
           "SNAKE_CASE"]

#: A raw column name as the code writes it: lower-case words joined by underscores.
SNAKE_CASE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)+$")


class Column(NamedTuple):
    """How one column is shown: ``symbol`` (header text), ``unit`` ('' for none),
    ``kind`` (``"num"`` with ``digits`` decimals, ``"sci"`` for errors near 0,
    ``"share"`` for a fraction shown in %, ``"pct"`` for a value already in %,
    ``"int"``, ``"bool"``, ``"text"``) and ``meaning`` (one line for the notation page)."""

    symbol: str
    unit: str = ""
    kind: str = "num"
    digits: int = 3
    meaning: str = ""


_C = Column
#: Column name → how a reader sees it. The single source of the tables' headers and of
#: the "Table headers" section of ``book/notation.md``.
COLUMNS: dict[str, Column] = {
    # keys
    "model": _C("model", kind="text", meaning="model (registry name or path)"),
    "task": _C("task", kind="text", meaning="prompt set; `all` pools every task"),
    "family": _C("family", kind="text", meaning="model family (base and fine-tuned variants)"),
    "metric": _C("quantity", kind="text", meaning="the quantity of the row"),
    "variant": _C("variant", kind="text", meaning="`base` or `fine-tuned`"),
    "n_prompts": _C("P", "prompts", "int", meaning="prompts pooled"),
    "n_rollouts": _C("rollouts", kind="int", meaning="rollouts counted"),
    "n_defined": _C("P defined", "prompts", "int",
                    meaning="prompts whose correlation is defined"),
    # one prompt / pooled (chapters 2–4)
    "canopy_entropy": _C("CE*", "nats", digits=2, meaning="Canopy Entropy: mean summed step entropy of the rollouts"),
    "canopy_entropy_se": _C("SE(CE*)", "nats", meaning="standard error of CE*"),
    "canopy_entropy_surprisal": _C("CE*_S", "nats", digits=2,
                                   meaning="CE* estimated by the mean surprisal"),
    "canopy_entropy_surprisal_se": _C("SE(CE*_S)", "nats", meaning="its standard error"),
    "estimator_gap": _C("S̄ − H̄", "nats", meaning="mean paired gap of the two estimators"),
    "estimator_gap_se": _C("SE(S̄ − H̄)", "nats", meaning="its standard error"),
    "gap_z": _C("gap / SE", digits=2, meaning="the gap in standard errors"),
    "estimators_agree": _C("agree (gap ≤ 4 SE)", kind="bool",
                           meaning="the pooled estimator check passes"),
    "n_prompts_agree": _C("prompts agreeing", kind="int",
                          meaning="prompts whose own estimator check passes"),
    "mean_length": _C("E[N]", "tokens", digits=1, meaning="mean rollout length"),
    "sd_length": _C("σ_N", "tokens", digits=1, meaning="sd of the length"),
    "min_length": _C("min N", "tokens", "int", meaning="shortest rollout"),
    "max_length": _C("max N", "tokens", "int", meaning="longest rollout"),
    "mean_entropy_rate": _C("R̄ = E[r]", "nats/token", meaning="mean entropy rate"),
    "sd_entropy_rate": _C("σ_r", "nats/token", meaning="sd of the entropy rate"),
    "gen_ppl": _C("GenPPL", digits=2, meaning="exp(CE*/E[N])"),
    "branching_factor": _C("BF", digits=2, meaning="exp(E[r])"),
    "truncation_rate": _C("truncated", "%", "share", 0,
                          meaning="share of rollouts without a stop token by T_max"),
    "repetition_rate": _C("rep-4", "%", "share", 1,
                          meaning="share of 4-grams repeating an earlier one in the same "
                                  "rollout (degeneration into loops)"),
    "n_prompts_flagged": _C("prompts > 5 % truncated", kind="int",
                            meaning="prompts whose truncation rate is above 5 %"),
    "length_term": _C("E[N]·E[r]", "nats", digits=2, meaning="length term of CE*"),
    "cov_residual": _C("C", "nats", meaning="CE* − E[N]E[r], the covariance term"),
    "within_prompt_cov": _C("C within", "nats", meaning="within-prompt part of C"),
    "between_prompt_cov": _C("C between", "nats", meaning="between-prompt part of C"),
    "length_share": _C("length share", "%", "share", 1, meaning="E[N]E[r] / CE*"),
    "cov_share": _C("Cov share", "%", "share", 1, meaning="C / CE*"),
    "log_genppl_minus_log_bf": _C("log GenPPL − log BF", meaning="equals C / E[N]"),
    "cov_over_length": _C("C / E[N]", "nats/token", meaning="covariance term per token"),
    "identity_error": _C("identity error", kind="sci",
                         meaning="(log GenPPL − log BF) − C/E[N]; 0 up to rounding"),
    "split_error": _C("split error", "nats", "sci",
                      meaning="CE* − (E[N]E[r] + within + between); 0 up to rounding"),
    "length_rate_pearson": _C("ρ(N, r)", meaning="Pearson correlation of length and rate"),
    "length_rate_spearman": _C("ρ_S(N, r)", meaning="Spearman correlation"),
    "length_rate_kendall": _C("τ_b(N, r)", meaning="Kendall's τ-b"),
    "length_rate_cov": _C("Cov(N, r)", "nats", meaning="sample covariance of length and rate"),
    "length_rate_cov_pop": _C("Cov_pop(N, r)", "nats", meaning="population covariance"),
    # bootstrap
    "base": _C("base", meaning="value for the base variant"),
    "fine_tuned": _C("fine-tuned", meaning="value for the fine-tuned variant"),
    "delta": _C("Δ = fine-tuned − base", meaning="paired difference"),
    "pct_delta": _C("Δ %", "%", "pct", 0, meaning="percent change (positive quantities)"),
    "change": _C("interval", kind="text",
                 meaning="where the interval of Δ lies: > 0, < 0 or includes 0"),
    "estimate": _C("estimate", meaning="point estimate"),
    "side": _C("interval", kind="text", meaning="where the interval lies relative to 0"),
    # semantic diversity (chapter 5)
    "diversity": _C("D", meaning="mean pairwise cosine dissimilarity"),
    "diversity_short": _C("D short", meaning="D among the shortest third of rollouts"),
    "diversity_medium": _C("D medium", meaning="D among the middle third"),
    "diversity_long": _C("D long", meaning="D among the longest third"),
    "vendi": _C("VS", digits=2, meaning="Vendi score: effective number of distinct rollouts"),
    "semantic_entropy": _C("SemEnt", "nats", meaning="semantic entropy over meaning clusters"),
    "semantic_entropy_norm": _C("SemEnt / log M", meaning="normalised semantic entropy"),
    "n_clusters": _C("clusters", digits=1, meaning="meaning clusters"),
    "length_diversity_pearson": _C("ρ(N, d)", meaning="Pearson correlation of length and d"),
    "length_diversity_spearman": _C("ρ_S(N, d)", meaning="Spearman correlation of length and d"),
    "length_diversity_kendall": _C("τ_b(N, d)", meaning="Kendall's τ-b of length and d"),
    # regressions (chapter 6)
    "symbol": _C("symbol", kind="text", meaning="the coefficient's symbol"),
    "se": _C("SE", meaning="standard error"),
    "z": _C("z", digits=2, meaning="estimate / SE"),
    "p": _C("p", kind="sci", meaning="two-sided p-value"),
    "slope_ratio": _C("(β+η)/β", meaning="fine-tuned over base slope"),
}
del _C

#: Interval partners of an estimate column: (low, high) suffixes tried in order.
_INTERVALS = (("_lo", "_hi"), ("_low", "_high"))
_ESTIMATE_INTERVALS = (("lo", "hi"), ("ci_low", "ci_high"))


def header(name) -> str:
    """The header a reader sees for column ``name``: ``symbol (unit)`` from
    :data:`COLUMNS`, else the name with underscores as spaces (never snake_case)."""
    col = COLUMNS.get(str(name))
    if col is None:
        return str(name).replace("_", " ").replace(":", " × ")
    unit = f" ({col.unit})" if col.unit and col.unit != "%" and col.kind not in ("share", "pct") \
        else (" (%)" if col.kind in ("share", "pct") else "")
    return col.symbol + unit


def _spec(name, series: pd.Series) -> Column:
    col = COLUMNS.get(str(name))
    if col is not None:
        return col
    if pd.api.types.is_bool_dtype(series):
        return Column(str(name), kind="bool")
    if pd.api.types.is_integer_dtype(series):
        return Column(str(name), kind="int")
    if pd.api.types.is_numeric_dtype(series):
        finite = np.abs(series.to_numpy(dtype=float))
        finite = finite[np.isfinite(finite) & (finite > 0)]
        if finite.size and finite.max() < 1e-3:
            return Column(str(name), kind="sci")
        return Column(str(name), digits=1 if finite.size and finite.min() >= 100 else 3)
    return Column(str(name), kind="text")


def _number(x, col: Column) -> str:
    """One value as text; NaN/None → ``—``."""
    if x is None or (isinstance(x, float) and np.isnan(x)) or x is pd.NA:
        return "—"
    if col.kind == "text" or isinstance(x, str):
        return str(x)
    if col.kind == "bool":
        return "yes" if bool(x) else "no"
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not np.isfinite(v):
        return "—" if np.isnan(v) else ("∞" if v > 0 else "−∞")
    if col.kind == "int":
        return f"{int(round(v))}"
    if col.kind == "sci":
        return f"{v:.1e}" if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e4) else f"{v:.3g}"
    if col.kind == "share":
        return f"{100 * v:.{col.digits}f}".replace("-", "−")
    return f"{v:.{col.digits}f}".replace("-", "−")


def _interval_of(df: pd.DataFrame, name: str) -> tuple[str, str] | None:
    if name == "estimate":
        for lo, hi in _ESTIMATE_INTERVALS:
            if lo in df.columns and hi in df.columns:
                return lo, hi
    for lo, hi in _INTERVALS:
        if f"{name}{lo}" in df.columns and f"{name}{hi}" in df.columns:
            return f"{name}{lo}", f"{name}{hi}"
    return None


class ReaderTable:
    """A formatted table (``table``: strings, reader headers) with the raw DataFrame
    it came from (``data``). Displays as HTML in a notebook or a book page."""

    def __init__(self, table: pd.DataFrame, data: pd.DataFrame, caption: str = "",
                 name: str = "table"):
        self.table, self.data, self.caption, self.name = table, data, caption, name

    def __repr__(self) -> str:
        return self.table.to_string(index=False)

    def _repr_html_(self) -> str:
        body = self.table.to_html(index=False, escape=True, border=0, na_rep="—",
                                  classes="canopy-table")
        caption = (f'<p class="canopy-table-caption">{html.escape(self.caption)}</p>'
                   if self.caption else "")
        csv = base64.b64encode(self.data.to_csv(index=True).encode()).decode()
        rows, cols = self.data.shape
        raw = (self.data.to_html(float_format=lambda v: f"{v:.6g}", border=0,
                                 classes="canopy-raw") if rows <= 200 else
               "<p>(over 200 rows: use the CSV)</p>")
        return (f'<div class="canopy-reader">{caption}<div class="canopy-table-wrap">{body}'
                f'</div><details class="canopy-data"><summary>data ({rows} rows × {cols} '
                f'columns, full precision)</summary><p><a download="{html.escape(self.name)}.csv" '
                f'href="data:text/csv;base64,{csv}">download CSV</a></p>'
                f'<div class="canopy-raw-wrap">{raw}</div></details></div>')


def reader_table(df: pd.DataFrame, columns: Iterable[str] | None = None, *,
                 caption: str = "", name: str = "table",
                 symbol_values: Iterable[str] = ("metric",)) -> ReaderTable:
    """``df`` for a reader (see the module docstring): ``columns`` picks and orders the
    columns shown (default: all; a named index becomes the first columns, an unnamed
    one is dropped); an estimate with interval partners is shown as ``x [lo, hi]`` and the
    partners are not shown alone; cells of ``symbol_values`` columns that name a
    quantity (e.g. ``metric`` = ``canopy_entropy``) are shown as its header.
    ``ReaderTable.data`` keeps the DataFrame as given. A column in ``columns`` that
    ``df`` lacks is a ``ValueError``."""
    if not isinstance(df, pd.DataFrame):
        raise ValueError("reader_table needs a pandas DataFrame")
    data = df
    flat = df
    named = any(n is not None for n in df.index.names)
    flat = df.reset_index(drop=not named)
    flat = flat.loc[:, ~flat.columns.duplicated()]
    wanted = list(flat.columns) if columns is None else list(columns)
    missing = [c for c in wanted if c not in flat.columns]
    if missing:
        raise ValueError(f"reader_table: no column {missing[0]!r}; the table has "
                         f"{', '.join(map(str, flat.columns))}")
    partners = {p for c in wanted for p in (_interval_of(flat, str(c)) or ())}
    shown = [c for c in wanted if c not in partners]
    out = {}
    for c in shown:
        series = flat[c]
        spec = _spec(c, series)
        pair = _interval_of(flat, str(c))
        if str(c) in symbol_values:
            cells = [header(v) if str(v) in COLUMNS else _number(v, spec) for v in series]
        elif pair:
            lo, hi = flat[pair[0]], flat[pair[1]]
            cells = [_number(x, spec) if _number(x, spec) == "—" else
                     f"{_number(x, spec)} [{_number(a, spec)}, {_number(b, spec)}]"
                     for x, a, b in zip(series, lo, hi)]
        else:
            cells = [_number(x, spec) for x in series]
        title = header(c) + (" [interval]" if pair else "")
        out[title] = cells
    table = pd.DataFrame(out, index=range(len(flat)))
    return ReaderTable(table, data, caption=caption, name=name)


def notation_table() -> str:
    """The Markdown table of :data:`COLUMNS` for ``book/notation.md``: one row per
    column name with the header a table shows, its unit and its meaning."""
    lines = ["| table header | name in code | unit | meaning |", "| --- | --- | --- | --- |"]
    def md(text: str) -> str:
        return re.sub(r"([*_|])", r"\\\1", text)

    for name, col in COLUMNS.items():
        lines.append(f"| {md(col.symbol)} | `{name}` | {md(col.unit) or '—'} | "
                     f"{md(col.meaning)} |")
    return "\n".join(lines)


def enable_reader_tables() -> bool:
    """Show every DataFrame a notebook displays as a :func:`reader_table` (its HTML
    form; the plain-text form is unchanged). Each chapter calls this once. Returns
    False outside IPython (nothing to do)."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with the book extra
        return False
    shell = get_ipython()
    if shell is None:
        return False
    shell.display_formatter.formatters["text/html"].for_type(
        pd.DataFrame, lambda df: reader_table(df)._repr_html_())
    return True


def glue_values(**values) -> None:
    """Glue each value under its name for the chapter's Markdown (MyST-NB ``glue``,
    not displayed): numpy scalars become Python numbers so that a ``{glue:text}`` role
    can apply a format spec (``{glue:text}`name:.2f```)."""
    from myst_nb import glue

    for name, value in values.items():
        if isinstance(value, np.generic):
            value = value.item()
        glue(name, value, display=False)
