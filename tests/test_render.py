"""canopy.render: the HTML a chart becomes, offline (the bundle itself is checked by
test_book's static-asset test)."""

from __future__ import annotations

import json

import altair as alt

from canopy import render


def test_chart_html_embeds_the_spec_safely_and_loads_nothing_remote():
    spec = {"mark": "point", "title": "</script><b>x</b> & y"}
    html = render.chart_html(spec, inline_bundle=False, element_id="c1")
    assert '<div id="c1" class="canopy-chart">' in html
    assert "</script><b>" not in html                    # no breakout of the JSON script
    payload = html.split('id="c1-spec">')[1].split("</script>")[0]
    assert json.loads(payload) == spec
    assert "canopyVega.embed" in html and "<script src=" not in html and "http" not in html


def test_renderer_gives_html_and_a_plain_title(monkeypatch):
    monkeypatch.setenv("CANOPY_BOOK", "1")
    assert render.in_book_build()
    bundle = render.renderer({"mark": "point", "title": {"text": "Lengths"}})
    assert bundle["text/plain"] == "<canopy chart: Lengths>"
    assert "canopyVega" in bundle["text/html"] and "vegaEmbed" not in bundle["text/html"]
    assert render.spec_of(alt.Chart().mark_point()) == alt.Chart().mark_point().to_dict()


def test_importing_the_charts_enables_the_canopy_renderer():
    import canopy.charts  # noqa: F401

    assert alt.renderers.active == "canopy"
