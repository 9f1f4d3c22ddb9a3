"""The offline renderer of the book's charts: one Vega bundle and an Altair renderer.

Every chart is a Vega-Lite spec drawn in the browser by Vega. The book must work with no
network, so nothing comes from a CDN:

- :func:`write_bundle` writes one JavaScript file (Vega, Vega-Lite, Vega-Embed, from
  ``vl-convert-python``) wrapped in a function so that the only global it creates is
  ``window.canopyVega`` (``embed``, ``vega``, ``vegaLite``, ``version``). The Sphinx
  extension in :mod:`canopy.book` writes it to ``book/_static/vega-bundle.js`` and loads
  it in the ``<head>`` of every page, whatever its depth.
- The ``canopy`` Altair renderer (enabled when this module or :mod:`canopy.charts` is
  imported) outputs HTML: a ``<div>``, the spec as JSON, and a few lines that call
  ``canopyVega.embed``. In the book build (environment variable ``CANOPY_BOOK=1``, set
  by ``canopy book``) the page already has the bundle. Anywhere else (JupyterLab, VS
  Code) the bundle is inlined in the output, so a chart draws in any trusted notebook
  with no network (≈0.9 MB per chart output: the price of working offline everywhere).
- :func:`save_svg` and :func:`save_png` export a chart with vl-convert (no browser).

Tooltips work (Vega-Embed's tooltip handler is part of the bundle). The action menu
offers SVG/PNG export only: no links to online editors.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import altair as alt

__all__ = ["BUNDLE_NAME", "VL_VERSION", "bundle_source", "write_bundle", "chart_html",
           "renderer", "enable", "in_book_build", "save_svg", "save_png", "spec_of"]

BUNDLE_NAME = "vega-bundle.js"
#: Vega-Lite version of the specs Altair writes (e.g. "v6.4"): the bundle must match it.
VL_VERSION = ".".join(alt.SCHEMA_VERSION.split(".")[:2])
#: Vega-Embed options used everywhere: export actions only, no online editor links.
EMBED_OPTIONS = {"actions": {"export": True, "source": False, "compiled": False,
                             "editor": False}, "renderer": "svg"}
_GLOBAL = "canopyVega"


# ------------------------------------------------------------------- the bundle


def bundle_source() -> str:
    """The Vega JavaScript bundle, wrapped so that it defines only ``window.canopyVega``.

    vl-convert's bundle declares its modules at the top level of a script; loaded as is,
    those names would become page globals (and clash with any other script using the
    same short names). Wrapping it in a function keeps them local.
    """
    import vl_convert as vlc

    snippet = (f"window.{_GLOBAL} = {{embed: vegaEmbed, vega: vega, vegaLite: vegaLite, "
               f"version: {json.dumps(VL_VERSION)}}};")
    body = vlc.javascript_bundle(snippet, vl_version=VL_VERSION)
    return ("/* Vega, Vega-Lite and Vega-Embed (BSD-3-Clause), bundled by vl-convert "
            f"{vlc.__version__} for Vega-Lite {VL_VERSION}.\n"
            f"   Defines window.{_GLOBAL} only; written by canopy.render.write_bundle. */\n"
            f"(function () {{\n{body}\n}})();\n")


def write_bundle(directory: str | os.PathLike) -> Path:
    """Write ``vega-bundle.js`` into ``directory`` unless an identical one is there.

    Returns the path. The file is rewritten only when its content would change (a new
    vl-convert or Altair), so Sphinx's incremental builds stay incremental.
    """
    path = Path(directory) / BUNDLE_NAME
    text = bundle_source()
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return path


# --------------------------------------------------------------------- renderer


def spec_of(chart) -> dict:
    """The Vega-Lite spec (a dict) of an Altair chart or of a spec dict."""
    return chart if isinstance(chart, dict) else chart.to_dict()


def _script_json(obj) -> str:
    """JSON safe to put inside a ``<script>`` element (no ``</script>`` breakout)."""
    return (json.dumps(obj, allow_nan=False, separators=(",", ":"))
            .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


def chart_html(spec: dict, *, inline_bundle: bool = False, element_id: str | None = None) -> str:
    """HTML that draws ``spec`` with ``window.canopyVega``.

    With ``inline_bundle`` the bundle itself is included (for notebooks outside the
    book); otherwise the page must load ``vega-bundle.js`` first. A chart that cannot
    draw says why in place of the chart and logs the error to the console.
    """
    el = element_id or f"canopy-chart-{uuid.uuid4().hex[:12]}"
    bundle = f"<script>{bundle_source()}</script>\n" if inline_bundle else ""
    return (
        f'{bundle}<div id="{el}" class="canopy-chart"></div>\n'
        f'<script type="application/json" id="{el}-spec">{_script_json(spec)}</script>\n'
        "<script>\n(function () {\n"
        f'  var el = document.getElementById("{el}");\n'
        f'  var spec = JSON.parse(document.getElementById("{el}-spec").textContent);\n'
        f"  if (!window.{_GLOBAL}) {{\n"
        '    el.textContent = "This chart needs vega-bundle.js (canopy.render), which did '
        'not load.";\n'
        '    console.error("canopy chart: window.canopyVega is missing");\n'
        "    return;\n  }\n"
        f"  window.{_GLOBAL}.embed(el, spec, {_script_json(EMBED_OPTIONS)})"
        '.catch(function (err) {\n'
        '    el.textContent = "Chart failed: " + err;\n'
        '    console.error("canopy chart:", err);\n  });\n'
        "})();\n</script>\n"
    )


def in_book_build() -> bool:
    """True while ``canopy book`` executes chapters (the page will load the bundle)."""
    return os.environ.get("CANOPY_BOOK", "") == "1"


def renderer(spec: dict, **_options) -> dict:
    """Altair renderer: a MIME bundle with HTML (see the module docstring) and text."""
    inline = not in_book_build()
    title = spec.get("title")
    if isinstance(title, dict):
        title = title.get("text")
    plain = f"<canopy chart{': ' + str(title) if title else ''}>"
    return {"text/html": chart_html(spec, inline_bundle=inline), "text/plain": plain}


def enable() -> None:
    """Register and enable the ``canopy`` Altair renderer (done on import)."""
    if "canopy" not in alt.renderers.names():
        alt.renderers.register("canopy", renderer)
    alt.renderers.enable("canopy")


enable()


def save_svg(chart, path: str | os.PathLike) -> Path:
    """Write ``chart`` as an SVG file (vl-convert; no browser, no network)."""
    import vl_convert as vlc

    path = Path(path)
    path.write_text(vlc.vegalite_to_svg(spec_of(chart), vl_version=VL_VERSION), encoding="utf-8")
    return path


def save_png(chart, path: str | os.PathLike, scale: float = 2.0) -> Path:
    """Write ``chart`` as a PNG file at ``scale`` × its size (vl-convert)."""
    import vl_convert as vlc

    path = Path(path)
    path.write_bytes(vlc.vegalite_to_png(spec_of(chart), vl_version=VL_VERSION, scale=scale))
    return path
