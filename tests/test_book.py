"""The book: build pieces (unit) and the built quick book in headless Chromium (integration).

The browser test builds the quick book (real models, cached under $CANOPY_CACHE) and
opens every page from disk: no console errors, no request beyond local files, every
chart drew, math rendered, and key numbers on the pages equal the stored results.
"""

from __future__ import annotations

import json
import re
import os
import shutil
from pathlib import Path

import pytest

from canopy import REPO_ROOT, book, render
from canopy.display import SNAKE_CASE

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROME_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--disable-quic"]


# ------------------------------------------------------------------------ unit


def test_every_chapter_declares_its_parameters_and_the_toc_lists_it():
    toc = (REPO_ROOT / "_toc.yml").read_text()
    sources = book.chapters()
    assert [s.stem[:2] for s in sources] == [f"{i:02d}" for i in range(1, len(sources) + 1)]
    for source in sources:
        names = book.declared_parameters(book._read(source))
        assert names[0] == "profile", source.name
        assert f"_executed/{source.stem}" in toc, source.name
        assert f'rerun_note("{source.stem}"' in source.read_text(), source.name


def test_stamp_changes_with_parameters_and_source(tmp_path):
    source = tmp_path / "99_x.py"
    source.write_text("# %% tags=[\"parameters\"]\nprofile = 'default'\n")
    a = book.chapter_stamp(source, {"profile": "quick"})
    assert a == book.chapter_stamp(source, {"profile": "quick"})
    assert a != book.chapter_stamp(source, {"profile": "default"})
    source.write_text(source.read_text() + "x = 1\n")
    assert a != book.chapter_stamp(source, {"profile": "quick"})


def test_stamp_changes_with_the_charts_data_experiment_and_libraries(tmp_path, monkeypatch):
    """Issue 18 defect 4: every package file (canopy/charts too), every data file, the
    experiment file passed and the library versions are inputs of a chapter's stamp."""
    import importlib.metadata

    package, project = tmp_path / "canopy", tmp_path / "project"
    shutil.copytree(book.PACKAGE_DIR, package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO_ROOT / "data", project / "data")
    monkeypatch.setattr(book, "PACKAGE_DIR", package)
    monkeypatch.setattr(book, "REPO_ROOT", project)
    source = tmp_path / "99_x.py"
    source.write_text("# %% tags=[\"parameters\"]\nprofile = 'default'\n")
    experiment = tmp_path / "mine.yaml"
    experiment.write_text("models: [a, b]\n")
    params = {"profile": "quick", "experiment_file": str(experiment)}
    seen = [book.chapter_stamp(source, params)]
    assert book.chapter_stamp(source, params) == seen[0]  # deterministic

    def changed():
        seen.append(book.chapter_stamp(source, params))
        return seen[-1] not in seen[:-1]

    style = package / "charts" / "style.py"
    style.write_text(style.read_text() + "\n# an edit\n")
    assert changed(), "an edit under canopy/charts must change the stamp"
    (package / "charts" / "new_chart.py").write_text("X = 1\n")
    assert changed(), "a new chart module must change the stamp"
    pool = project / "data" / "finetune" / "pool.jsonl"
    pool.write_text(pool.read_text() + '{"id": "new", "prompt": "p"}\n')
    assert changed(), "every file under data/ counts"
    experiment.write_text("models: [a, c]\n")
    assert changed(), "the experiment file's content counts"
    real = importlib.metadata.version

    class Other:  # one library at another version
        metadata = {"Name": "numpy"}
        version = real("numpy") + ".post1"

    monkeypatch.setattr(importlib.metadata, "distributions",
                        lambda: [*importlib.metadata.Distribution.discover(), Other()])
    assert changed(), "the installed libraries' versions count"


def test_papermill_reads_every_parameter_of_every_chapter(caplog):
    """papermill skips parameter lines with a second "=" (e.g. a comment "# None = …")
    and then warns "Passed unknown parameter" (issue 17 item 3): each chapter's parameter
    cell must give papermill exactly the names the chapter declares, with no warning."""
    import logging

    from papermill.translators import PythonTranslator

    for source in book.chapters():
        notebook = book._read(source)
        cell = next(c for c in notebook.cells
                    if "parameters" in c.get("metadata", {}).get("tags", []))
        with caplog.at_level(logging.WARNING, logger="papermill"):
            found = [p.name for p in PythonTranslator.inspect(cell)]
        assert found == book.declared_parameters(notebook), source.name
        assert not caplog.records, (source.name, [r.getMessage() for r in caplog.records])


def test_kernels_show_no_progress_bars_or_widget_warnings(tmp_path):
    """Issue 18 defect 5: a chapter that uses tqdm.auto (as transformers' "Loading
    weights" does) leaves neither a bar nor the "IProgress not found" warning on the page."""
    import nbformat

    source = tmp_path / "98_bars.py"
    header = book.chapters()[0].read_text().split("\n# %%", 1)[0]  # jupytext, kernelspec
    source.write_text(
        header + '\n# %% tags=["parameters"]\nprofile = "default"\n\n'
        "# %%\nfrom tqdm.auto import tqdm\nfrom transformers.utils import logging as hf\n"
        'for _ in tqdm(range(3), desc="Counting"):\n    pass\n'
        'for _ in hf.tqdm(range(3), desc="Loading weights"):\n    pass\n'
        'print("done")\n')
    target, _, reused = book.execute_chapter(source, {"profile": "quick"}, out_dir=tmp_path)
    assert not reused
    outputs = [o for cell in nbformat.read(target, as_version=4).cells
               for o in cell.get("outputs", [])]
    text = json.dumps(outputs)
    assert "done" in text  # the cell ran and its output was kept
    for plumbing in ("IProgress", "TqdmWarning", "Loading weights", "Counting", "it/s"):
        assert plumbing not in text, (plumbing, outputs)
    assert book.KERNEL_ENV["TQDM_DISABLE"] == "1"


def test_only_in_a_fresh_clone_runs_the_chapter_and_skips_the_html(tmp_path, monkeypatch):
    """``--only NN`` with other chapters never executed runs NN and says in one line
    that the HTML build is skipped (issue 17 item 3)."""
    monkeypatch.setattr(book, "EXECUTED", tmp_path / "_executed")
    ran, lines = [], []
    monkeypatch.setattr(book, "execute_chapter",
                        lambda source, params, force=False: ran.append(source.stem) or
                        (tmp_path / f"{source.stem}.ipynb", 1.0, False))
    monkeypatch.setattr(book, "ensure_finetunes", lambda *a, **k: lines.append("finetunes"))
    assert book.build("quick", only=["01"], echo=lines.append) is None
    assert ran == ["01_canopy"]
    assert "finetunes" not in lines  # chapter 1 uses no model: nothing is trained for it
    skipped = [line for line in lines if "HTML not built" in line]
    assert len(skipped) == 1 and "build once without --only" in skipped[0], lines
    book.build("quick", only=["03"], html=False, echo=lines.append)
    assert ran[-1] == "03_canopy_entropy" and "finetunes" in lines


def test_book_checks_finetune_name_and_embedding_model_up_front(tmp_path):
    models = ["gemma-3-270m", "smollm2-135m-instruct"]  # no model made by canopy finetune
    book.check_parameters({}, models)  # the appendix then says what it would show
    book.check_parameters({}, models, only=["03"])
    book.check_parameters({"finetune_name": "gemma-3-270m-sft-quick"}, models)  # a recipe
    with pytest.raises(ValueError, match="-p finetune_name nope: no fine-tune report"):
        book.check_parameters({"finetune_name": "nope"}, models)
    with pytest.raises(ValueError, match="-p embedding_model: .*not in the Hugging Face cache"):
        book.check_parameters({"embedding_model": str(tmp_path / "none")}, ["gemma-3-270m-sft"])
    (tmp_path / "st").mkdir()
    (tmp_path / "st" / "modules.json").write_text("[]")
    book.check_parameters({"embedding_model": str(tmp_path / "st")}, ["gemma-3-270m-sft"],
                          only=["05"])


def test_declared_parameters_reads_the_tagged_cell():
    import jupytext

    nb = jupytext.reads('# %%\nimport os\n\n# %% tags=["parameters"]\nprofile = "x"  # c\n'
                        'n_boot: int = 5\nmodels = None\n\n# %%\ny = 2\n', fmt="py:percent")
    assert book.declared_parameters(nb) == ["profile", "n_boot", "models"]


def test_rerun_note_gives_both_commands_with_the_values_used():
    text = book.rerun_note("03_canopy_entropy", profile="quick", models=["a", "b"],
                           n_boot=200, experiment_file=None).data
    assert "canopy book --profile quick --only 03 -p models '[a, b]' -p n_boot 200" in text
    assert "papermill 03_canopy_entropy.ipynb" in text and "n_boot: 200" in text
    assert "`experiment_file = None`" in text


def test_static_assets_are_local(tmp_path):
    book.prepare_static(tmp_path)
    bundle = (tmp_path / render.BUNDLE_NAME).read_text()
    assert "window.canopyVega" in bundle and "http" not in bundle[:400]
    assert (tmp_path / "mathjax" / "tex-svg.js").stat().st_size > 1_000_000
    html = render.chart_html({"mark": "point"}, inline_bundle=False)
    assert "canopyVega.embed" in html and "<script src=" not in html


def test_chapters_use_only_names_the_package_has():
    """Smoke test of every chapter without running it: each ``canopy`` module it imports
    exists, each name it imports from one is defined there, and every attribute it
    reads of an imported module (``charts.x``, ``report.y``) exists."""
    import ast
    import importlib
    import types

    for source in book.chapters():
        tree = ast.parse(source.read_text())
        modules = {}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.ImportFrom) and (node.module or "").startswith("canopy")):
                continue
            parent = importlib.import_module(node.module)
            for alias in node.names:
                try:
                    obj = importlib.import_module(f"{node.module}.{alias.name}")
                except ModuleNotFoundError:
                    assert hasattr(parent, alias.name), (source.name, node.module, alias.name)
                    obj = getattr(parent, alias.name)
                if isinstance(obj, types.ModuleType):
                    modules[alias.asname or alias.name] = obj
        used = [(n.value.id, n.attr) for n in ast.walk(tree) if isinstance(n, ast.Attribute)
                and isinstance(n.value, ast.Name) and n.value.id in modules]
        assert used, f"{source.name} calls no canopy module"
        for name, attr in used:
            assert hasattr(modules[name], attr), f"{source.name}: {name}.{attr} does not exist"


def test_unknown_profile_is_a_clear_error():
    with pytest.raises(ValueError, match="no profile fast; profiles: default, paper, quick"):
        book.build("fast")


# ------------------------------------------------------------------ browser


def _require_chromium():
    if CHROMIUM:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("Debian chromium is missing; .ci/run installs it")
    pytest.skip("chromium is not installed (apt-get install chromium); the browser test "
                "runs in CI")


@pytest.fixture(scope="module")
def built_book():
    """The quick book, built once per test module (no browser needed to build it)."""
    return book.build("quick", echo=lambda *_: None)


def _pages(root: Path) -> list[Path]:
    # The root index.html is only a meta-refresh redirect to book/intro.html (listed
    # below); opening it races the redirect, so it is checked as text instead.
    index = (root / "index.html").read_text(encoding="utf-8")
    assert 'url=book/intro.html' in index, "index.html should redirect to the intro"
    return [*sorted((root / "_executed").glob("*.html")),
            *sorted((root / "book").glob("*.html"))]


@pytest.mark.integration
def test_quick_book_pages_render_offline_in_chromium(built_book):
    _require_chromium()
    from playwright.sync_api import sync_playwright

    pages = _pages(built_book)
    assert len(pages) >= 1 + len(book.chapters())  # intro + chapters
    report = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROME_FLAGS)
        try:
            for path in pages:
                page = browser.new_page()
                errors, remote = [], []
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.on("request", lambda r: remote.append(r.url)
                        if not r.url.startswith(("file:", "data:", "blob:", "about:")) else None)
                page.goto(path.as_uri())
                page.wait_for_load_state("load")
                # Charts draw asynchronously; wait until every one holds an SVG or canvas.
                page.wait_for_function(
                    "Array.from(document.querySelectorAll('.canopy-chart'))"
                    ".every(e => e.querySelector('svg, canvas'))", timeout=20_000)
                drawn = page.evaluate(
                    "Array.from(document.querySelectorAll('.canopy-chart'))"
                    ".map(e => e.querySelectorAll('svg path, svg rect, svg text, canvas').length)")
                has_math = page.evaluate("document.body.innerHTML.includes('\\\\(') || "
                                         "document.querySelectorAll('.math').length > 0")
                if has_math:
                    page.wait_for_function("document.querySelectorAll('mjx-container').length > 0",
                                           timeout=20_000)
                # Table headers a reader sees (the raw data inside a collapsed toggle
                # excepted) must be symbols or words, never snake_case column names.
                headers = page.evaluate(
                    "Array.from(document.querySelectorAll('th'))"
                    ".filter(th => !th.closest('details')).map(th => th.textContent.trim())")
                snake = [h for h in headers if SNAKE_CASE.match(h)]
                report[path.name] = {"errors": errors, "remote": remote, "drawn": drawn,
                                     "headers": snake}
                page.close()
        finally:
            browser.close()
    for name, r in report.items():
        assert r["headers"] == [], (name, "raw column names as table headers", r["headers"])
        assert r["errors"] == [], (name, r["errors"])
        assert r["remote"] == [], (name, r["remote"])
        assert all(n > 0 for n in r["drawn"]), (name, r["drawn"])
    # Every chapter except none has charts; the toy chapter has several.
    for source in book.chapters():
        assert report[f"{source.stem}.html"]["drawn"], f"{source.stem} shows no chart"


@pytest.mark.integration
def test_key_numbers_on_the_pages_equal_the_stored_results(built_book):
    from canopy.entropy import prompt_metrics
    from canopy.pooling import pool
    from canopy.experiment import load_experiment
    from canopy.finetune import read_report
    from canopy.toy import examples

    executed = built_book / "_executed"
    # Chapter 1: the exact CE* of the default toy, enumerated here independently.
    exact = examples()["chatty"].enumerate().leaf_entropy
    assert f"{exact:.12f}" in (executed / "01_canopy.html").read_text()
    # Chapter 3: pooled CE* of every model over all tasks, from the stored rollouts.
    rollouts = load_experiment(None, "quick").rollouts(progress=False)
    pooled = pool(prompt_metrics(rollouts))
    page = (executed / "03_canopy_entropy.html").read_text()
    for _, row in pooled[pooled["task"] == "all"].iterrows():
        assert f"{row['canopy_entropy']:.3f}" in page, row["model"]
    # Appendix: the held-out response losses of the quick fine-tune's report.
    report = read_report("gemma-3-270m-sft-quick")
    page = (executed / "07_appendix_finetune.html").read_text()
    for value in report["heldout_response_loss"].values():
        assert f"{value:.3f}" in page
    json.dumps(report)  # the report is plain JSON


def _glued_markdown(notebook: Path) -> list[str]:
    """The lines of every `{glue:md}` findings value the executed chapter recorded."""
    lines = []
    for cell in json.loads(notebook.read_text())["cells"]:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            value = data.get("application/papermill.record/text/markdown")
            name = output.get("metadata", {}).get("scrapbook", {}).get("name", "")
            if value and "findings" in name:
                lines += [line for line in value.splitlines() if line.strip()]
    return lines


@pytest.mark.integration
def test_findings_page_shows_its_verdicts_and_every_chapter_opens_with_its_findings(built_book):
    from canopy.experiment import load_experiment
    from canopy.entropy import prompt_metrics
    from canopy.pooling import paired_bootstrap
    from canopy.report import bootstrap_table, paired_claim

    executed = built_book / "_executed"
    page = (executed / "08_findings.html").read_text()
    assert "What this page finds" in page
    # The CE* claim, recomputed here from the stored rollouts with the page's settings.
    prompts = prompt_metrics(load_experiment(None, "quick").rollouts(progress=False))
    boot = paired_bootstrap(prompts, n_boot=2000, seed=0, confidence=0.95,
                            metrics=["canopy_entropy", "length_rate_pearson"])
    claim = paired_claim(bootstrap_table(boot), "canopy_entropy", "< 0", percent=True,
                         fmt="+.0f")
    assert claim is not None, "the quick experiment should have a matched family"
    assert claim["interval"] in page and claim["verdict"] in page
    for source in book.chapters():
        html = (executed / f"{source.stem}.html").read_text()
        head = html.split("What this", 1)
        assert len(head) == 2, f"{source.stem} has no findings box"
        # the box comes before the first table or chart of the page
        assert "<table" not in head[0] and "canopy-chart" not in head[0], source.stem
        box = head[1][:6000]
        glued_md = _glued_markdown(book.EXECUTED / f"{source.stem}.ipynb")
        if glued_md:  # a `{glue:md}` box renders its markdown inline, with no marker
            words = re.sub(r"<[^>]+>", " ", box)
            for line in glued_md:
                for number in re.findall(r"\d+(?:\.\d+)?%?", line):
                    assert number in words, f"{source.stem}: {number} of the box not shown"
        else:
            assert "pasted-text" in box, f"{source.stem}: the findings box glues no value"
