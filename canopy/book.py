"""Build the book: run the chapters with papermill, then Jupyter Book (1.x) on the result.

``canopy book --profile quick|default`` (``make book`` builds ``default``):

1. Each chapter ``notebooks/NN_name.py`` (jupytext percent format, with a cell tagged
   ``parameters``) is converted to a notebook and executed with papermill, in order,
   with the parameters ``profile`` plus any overrides (``-p name value``; only the
   names a chapter declares are passed to it). The executed notebook goes to
   ``_executed/NN_name.ipynb`` (git-ignored, inside the book root, where ``_toc.yml``
   points). The parameter cells are tagged ``remove-cell`` so the page does not show
   them; each chapter prints the values it used and the command to rerun it.
   Before the chapters run, the fine-tuned models the experiment names are made if
   missing (``canopy finetune``; cached), and the store's shards the chapters will read
   are verified once for the build (:func:`verify_store`; a damaged shard stops the
   build there, naming it); the chapters then read them without verifying again. Kernels run with :data:`KERNEL_ENV`. The
   sources are found under :func:`canopy.project_root` (a checkout, ``$CANOPY_ROOT``
   or the working directory), so a non-editable install builds the book too.
2. A chapter is not re-executed when nothing it depends on changed: a stamp next to the
   executed notebook hashes its source, its parameters, every file of the package
   (``canopy/charts`` too), every file under ``data/``, the experiment file, the
   weights' files of its models, the store's shards it reads, the published fine-tunes
   and the installed libraries' versions (:func:`chapter_stamp`; written as it stands after the chapter ran, so a
   model the chapter converted on the way does not re-execute it next time).
   Rollouts, embeddings and fine-tunes are cached under ``$CANOPY_CACHE`` as well, so a
   rebuild after an edit re-runs one chapter from cached data.
3. The offline assets are written into ``book/_static`` (git-ignored): the Vega bundle
   (:func:`canopy.render.write_bundle`) and MathJax (from the PyPI package
   ``django-static-mathjax``; only its standalone SVG build and the TeX extensions it
   may load are copied). Nothing on the page comes from the network.
4. ``jupyter-book build`` runs with execution off and warnings as errors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from canopy import REPO_ROOT, cache_dir
from canopy.reading import VERIFIED_ENV

__all__ = ["chapters", "declared_parameters", "chapter_stamp", "execute_chapter",
           "prepare_static", "build_html", "build", "ensure_finetunes", "rerun_note",
           "selected_chapters", "uses_models", "check_parameters", "verify_store",
           "models_to_sample",
           "EXECUTED", "STATIC", "BUILD", "PACKAGE_DIR", "KERNEL_ENV"]

EXECUTED = REPO_ROOT / "_executed"
STATIC = REPO_ROOT / "book" / "_static"
BUILD = REPO_ROOT / "_build"
#: The installed package's folder (``canopy/``, with ``canopy/charts/``).
PACKAGE_DIR = Path(__file__).resolve().parent

#: The environment of the kernels that execute the chapters: offline, and no progress
#: bars or widget warnings on a reader's page. tqdm.auto in a kernel without ipywidgets
#: warns "IProgress not found" and falls back to the console bar; TQDM_DISABLE turns the
#: console bars off (transformers' "Loading weights" too, as does
#: HF_HUB_DISABLE_PROGRESS_BARS) and PYTHONWARNINGS drops that warning.
KERNEL_ENV = {"CANOPY_BOOK": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
              "TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1",
              "HF_HUB_DISABLE_PROGRESS_BARS": "1",
              "PYTHONWARNINGS": "ignore:IProgress not found"}


def chapters() -> list[Path]:
    """The chapter sources, in book order (``notebooks/NN_*.py``)."""
    return sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.py"))


def _read(path: Path):
    import jupytext

    return jupytext.read(path)


def declared_parameters(notebook) -> list[str]:
    """Names assigned in the cell tagged ``parameters`` (top-level ``name = …`` lines)."""
    for cell in notebook.cells:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            return re.findall(r"^([A-Za-z_]\w*)\s*(?::[^=]+)?=", cell.source, flags=re.M)
    return []


def _tree_digest(root: Path) -> str:
    """sha256 over every file under ``root`` (relative path and bytes), caches excepted."""
    digest = hashlib.sha256()
    files = [p for p in Path(root).rglob("*") if p.is_file()
             and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")]
    for path in sorted(files):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _library_versions() -> dict[str, str]:
    """Name → version of every installed distribution, and Python's version."""
    import importlib.metadata
    import platform

    found = {(d.metadata["Name"] or "").lower(): d.version
             for d in importlib.metadata.distributions()}
    return {"python": platform.python_version(), **dict(sorted(found.items()))}


def _experiment_bytes(path) -> str:
    """sha256 of the experiment file a chapter is given (relative paths as the kernel,
    which runs in the project root, and the command line see them); "" when none."""
    if path is None:
        return ""
    for candidate in (Path(str(path)), REPO_ROOT / str(path)):
        if candidate.is_file():
            return hashlib.sha256(candidate.read_bytes()).hexdigest()
    return f"missing: {path}"


def _model_files(parameters: dict) -> dict:
    """The weights' file signatures (:func:`canopy.models.source_signature`: sizes and
    modification times) of the models a chapter's experiment names, so that a model
    folder written anew (a user's fine-tune trained again) re-executes the chapter."""
    from canopy.experiment import load_experiment
    from canopy.models import source_signature

    try:
        experiment = load_experiment(parameters.get("experiment_file"),
                                     parameters.get("profile", "default"),
                                     {"models": parameters.get("models")})
        return {spec.name: source_signature(spec) for spec in experiment.specs}
    except (ValueError, OSError) as exc:  # the chapter reports it when it runs
        return {"unresolved": str(exc)}


def _store_files(parameters: dict) -> dict:
    """Per model of the chapter's experiment, the stored configuration it reads and the
    name, size and ``mtime_ns`` of each of its shards (:func:`canopy.reading.stored_model`;
    nothing is read), so that a store copied anew or resampled re-executes the chapter."""
    from canopy.experiment import load_experiment
    from canopy.reading import stated_runtime, stored_model

    try:
        experiment = load_experiment(parameters.get("experiment_file"),
                                     parameters.get("profile", "default"),
                                     {"models": parameters.get("models")})
        prompts = experiment.prompts()
        stated = stated_runtime(experiment.runtime, experiment.runtime_stated)
        state = {}
        for spec in experiment.specs:
            found = stored_model(spec, prompts, experiment.sampling, experiment.out, stated)
            if found is not None:
                state[spec.name] = [found.config_hash] + [
                    [path.name, path.stat().st_size, path.stat().st_mtime_ns]
                    for path, _ in found.shards if path.is_file()]
        return state
    except (ValueError, OSError) as exc:  # the chapter reports it when it runs
        return {"unresolved": str(exc)}


def chapter_stamp(source: Path, parameters: dict) -> str:
    """sha256 of what a chapter's output depends on: its source and parameters, every
    file of the package (``canopy/**``, charts included), every file under ``data/``,
    the experiment file passed, the weights' files of its models, the store's shards it
    reads (a chapter that declares ``resample``: :func:`_store_files`), the published
    fine-tunes, the versions of the installed libraries and Python, and the cache
    directory."""
    finetunes = sorted((cache_dir() / "finetune").glob("*/canopy-finetune.json"))
    inputs = {
        "source": hashlib.sha256(source.read_bytes()).hexdigest(),
        "parameters": parameters,
        "package": _tree_digest(PACKAGE_DIR),
        "data": _tree_digest(REPO_ROOT / "data"),
        "experiment": _experiment_bytes(parameters.get("experiment_file")),
        "models": _model_files(parameters),
        "store": _store_files(parameters)
        if "resample" in declared_parameters(_read(source)) else {},
        "finetunes": {p.parent.name: p.read_text() for p in finetunes},
        "libraries": _library_versions(),
        "cache": str(cache_dir()),
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def _tag(cell, tag: str) -> None:
    tags = cell.setdefault("metadata", {}).setdefault("tags", [])
    if tag not in tags:
        tags.append(tag)


def execute_chapter(source: Path, parameters: dict, *, force: bool = False,
                    out_dir: Path = EXECUTED) -> tuple[Path, float, bool]:
    """Execute one chapter into ``out_dir``; returns (path, seconds, reused).

    Only the parameters the chapter declares are passed. A failing chapter raises
    ``RuntimeError`` naming it and the partly executed notebook it left (for reading);
    the previous good output is kept.
    """
    import nbformat
    import papermill

    notebook = _read(source)
    names = set(declared_parameters(notebook))
    passed = {k: v for k, v in parameters.items() if k in names}
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{source.stem}.ipynb"
    stamp_path = out_dir / f"{source.stem}.stamp"
    stamp = chapter_stamp(source, passed)
    if not force and target.is_file() and stamp_path.is_file() \
            and stamp_path.read_text() == stamp:
        return target, 0.0, True
    for cell in notebook.cells:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            _tag(cell, "remove-cell")
    work = out_dir / f".{source.stem}.input.ipynb"
    partial = out_dir / f".{source.stem}.partial.ipynb"
    nbformat.write(notebook, work)
    started = time.perf_counter()
    saved = {k: os.environ.get(k) for k in KERNEL_ENV}
    os.environ.update(KERNEL_ENV)
    # papermill logs its progress at INFO; its warnings (e.g. a parameter it does not
    # find in the chapter's parameter cell) still show.
    logging.getLogger("papermill").setLevel(logging.WARNING)
    try:
        papermill.execute_notebook(str(work), str(partial), parameters=passed,
                                   cwd=str(REPO_ROOT), kernel_name="python3",
                                   progress_bar=False, log_output=False,
                                   # the kernel's own start-up notices (e.g. about its
                                   # local TCP transport) are noise here; errors still show
                                   extra_arguments=["--log-level=ERROR"])
    except Exception as exc:  # papermill raises PapermillExecutionError with the cell
        first = str(exc).strip().splitlines()
        raise RuntimeError(f"chapter {source.name} failed ({first[-1] if first else exc}); "
                           f"see {partial}") from None
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    executed = nbformat.read(partial, as_version=4)
    for cell in executed.cells:
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            _tag(cell, "remove-cell")
    nbformat.write(executed, partial)
    os.replace(partial, target)
    # what the chapter ran on: a model it converted on the way (a GGUF) is part of it
    stamp_path.write_text(chapter_stamp(source, passed))
    work.unlink(missing_ok=True)
    return target, time.perf_counter() - started, False


def _mathjax_root() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("mathjax")
    root = Path(next(iter(spec.submodule_search_locations))) / "static" / "mathjax" / "es5" \
        if spec and spec.submodule_search_locations else None
    if root is None or not (root / "tex-svg.js").is_file():
        raise FileNotFoundError("MathJax not found: install the book extra "
                                "(pip install 'canopy[book]', which brings django-static-mathjax)")
    return root


#: Page style added to the theme's: long lines of a chapter's code cells wrap instead of
#: running past the page width; reader tables (canopy.display) fit the page width, wrap
#: their cells and scroll vertically (sticky header) when long, never sideways.
BOOK_CSS = """\
div.cell_input pre { white-space: pre-wrap; overflow-wrap: anywhere; }
.canopy-table-wrap { max-height: 36em; overflow-y: auto; overflow-x: hidden; margin: 0.5em 0; }
table.canopy-table { width: 100%; table-layout: auto; border-collapse: collapse;
  font-size: 0.85em; }
table.canopy-table th, table.canopy-table td { white-space: normal; overflow-wrap: anywhere;
  padding: 0.2em 0.45em; text-align: right; vertical-align: top; }
table.canopy-table td:first-child, table.canopy-table th:first-child { text-align: left; }
table.canopy-table thead th { position: sticky; top: 0; background: var(--pst-color-background, #fff);
  border-bottom: 1px solid var(--pst-color-border, #ccc); }
table.canopy-table tbody tr:nth-child(odd) { background: var(--pst-color-surface, #f7f7f7); }
details.canopy-data { font-size: 0.8em; margin-bottom: 1em; }
details.canopy-data summary { cursor: pointer; color: var(--pst-color-text-muted, #666); }
.canopy-raw-wrap { max-height: 24em; overflow: auto; }
"""


def prepare_static(static: Path = STATIC) -> None:
    """Write the offline assets into ``static``: the Vega bundle, MathJax and the
    book's small style sheet (``canopy.css``)."""
    from canopy.render import write_bundle

    write_bundle(static)
    (static / "canopy.css").write_text(BOOK_CSS)
    source, target = _mathjax_root(), static / "mathjax"
    if not (target / "tex-svg.js").is_file():
        tmp = static / ".mathjax.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        shutil.copy2(source / "tex-svg.js", tmp / "tex-svg.js")
        # Extensions that the TeX input may load on demand (autoload, e.g. \boldsymbol).
        shutil.copytree(source / "input" / "tex" / "extensions",
                        tmp / "input" / "tex" / "extensions")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)


def build_html(*, quiet: bool = False) -> Path:
    """Run ``jupyter-book build`` (execution off, warnings as errors) → ``_build/html``."""
    command = [str(Path(sys.executable).with_name("jupyter-book")), "build", str(REPO_ROOT),
               "--warningiserror", "--keep-going"]
    if not Path(command[0]).exists():
        command[:1] = [sys.executable, "-m", "jupyter_book"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if result.returncode != 0:
        log = (result.stdout + result.stderr).strip().splitlines()
        problems = [line for line in log if "WARNING" in line or "ERROR" in line]
        detail = "\n".join(problems[-20:] or log[-20:])
        raise RuntimeError(f"jupyter-book build failed:\n{detail}")
    if not quiet:
        print(result.stdout.strip().splitlines()[-1] if result.stdout.strip() else "built")
    return BUILD / "html"


def ensure_finetunes(profile: str, experiment_file=None, models=None, echo=print) -> None:
    """Make (or find cached) every fine-tune the experiment's models need: a model named
    after a :data:`canopy.finetune.PROFILES` entry is made by that recipe."""
    from canopy.experiment import load_experiment
    from canopy.finetune import finetune, published_dir, recipe_for

    experiment = load_experiment(experiment_file, profile, overrides={"models": models})
    for name in experiment.models:
        recipe = recipe_for(name)
        if recipe is not None:
            fresh = not (published_dir(name) / "canopy-finetune.json").is_file()
            if fresh:
                echo(f"  making the fine-tuned model {name} (canopy finetune; cached)")
            finetune(recipe, progress=fresh)


def _selected(source: Path, only) -> bool:
    return only is None or source.stem in only or source.stem[:2] in only


def selected_chapters(only=None) -> list[Path]:
    """The chapters ``--only`` selects (stems or numbers; ``None``: all), in book order."""
    return [source for source in chapters() if _selected(source, only)]


def uses_models(sources) -> bool:
    """Whether any of these chapters reads the experiment's models (declares ``models``)."""
    from canopy.book_checks import chapter_parameters

    declared = chapter_parameters()
    return any("models" in declared.get(source.stem, []) for source in sources)


def check_parameters(parameters: dict, models: list[str], only=None) -> None:
    """The book's up-front checks of what the selected chapters will need, before any
    runs (no torch): a ``finetune_name`` has a report or a recipe (without one the
    appendix reports the experiment's model made by ``canopy finetune``, or says what it
    would show when ``models`` has none); the ``embedding_model`` can be loaded offline;
    the ``embedding_window`` is one of :data:`canopy.windows.WINDOWS`. One-line
    ``ValueError`` naming the fix."""
    from canopy.embedders import DEFAULT_EMBEDDING_MODEL, check_embedding_model
    from canopy.finetune import PROFILES, published_dir, recipe_for
    from canopy.book_checks import chapter_parameters

    parameters_of = chapter_parameters()
    declared = {}
    for source in selected_chapters(only):
        for name in parameters_of.get(source.stem, []):
            declared.setdefault(name, source.stem)
    if "finetune_name" in declared:
        name = parameters.get("finetune_name")
        if name is not None:
            if not isinstance(name, str) or not (
                    recipe_for(name) is not None or (published_dir(name) / "report.json").is_file()):
                recipes = ", ".join(sorted({r.name for r in PROFILES.values()}))
                raise ValueError(f"-p finetune_name {name}: no fine-tune report at "
                                 f"{published_dir(name)} and no built-in recipe makes it "
                                 f"(recipes: {recipes}); run `canopy finetune` first")
    if "embedding_model" in declared:
        model = parameters.get("embedding_model", DEFAULT_EMBEDDING_MODEL)
        try:
            check_embedding_model(model)
        except ValueError as exc:
            raise ValueError(f"-p embedding_model: {exc}") from None
    if "embedding_window" in declared:
        from canopy.windows import check_window
        try:
            check_window(parameters.get("embedding_window", "start"))
        except ValueError as exc:
            raise ValueError(f"-p embedding_window: {exc}") from None


def build(profile: str = "default", parameters: dict | None = None, *,
          only: list[str] | None = None, force: bool = False, html: bool = True,
          echo=print) -> Path | None:
    """Execute the chapters (reusing unchanged ones), then build the HTML.

    ``parameters`` override chapter parameters (each chapter receives the ones it
    declares). ``only``: chapter stems or numbers to execute; the others reuse their
    last output, and when one of them has never been executed (a fresh clone) the
    selected chapters still run and the HTML build is skipped, with one line saying so.
    Returns ``_build/html`` (or ``None`` when no HTML was built).
    """
    params = {"profile": profile, **(parameters or {})}
    sources = chapters()
    if not sources:
        raise FileNotFoundError("no chapters in notebooks/ (expected notebooks/NN_*.py)")
    started = time.perf_counter()
    if uses_models(selected_chapters(only)):
        ensure_finetunes(profile, params.get("experiment_file"), params.get("models"),
                         echo=echo)
    saved = os.environ.get(VERIFIED_ENV)
    if uses_models(selected_chapters(only)):
        verify_store(profile, params.get("experiment_file"), params.get("models"), echo=echo)
    try:
        missing = _execute(sources, params, only, force, echo)
    finally:
        if saved is None:
            os.environ.pop(VERIFIED_ENV, None)
        else:
            os.environ[VERIFIED_ENV] = saved
    if not html:
        return None
    if missing:
        echo(f"canopy book: HTML not built: {len(missing)} chapter(s) never executed "
             f"({', '.join(name[:2] for name in missing)}); build once without --only for "
             f"the HTML; executed chapters are in {EXECUTED}")
        return None
    prepare_static()
    path = build_html(quiet=True)
    echo(f"canopy book: profile {profile}, {len(sources)} chapters, "
         f"{time.perf_counter() - started:.0f} s -> {path / 'index.html'}")
    return path


def _stored(profile: str, experiment_file, models):
    """(experiment, [(spec, its stored configuration or None)]) of a book build."""
    from canopy.experiment import load_experiment
    from canopy.reading import stated_runtime, stored_model

    experiment = load_experiment(experiment_file, profile, overrides={"models": models})
    prompts = experiment.prompts()
    stated = stated_runtime(experiment.runtime, experiment.runtime_stated)
    return experiment, [(spec, stored_model(spec, prompts, experiment.sampling,
                                            experiment.out, stated))
                        for spec in experiment.specs]


def models_to_sample(profile: str, experiment_file=None, models=None) -> list:
    """The specs of the experiment's models whose rollouts the store does not hold in
    full (:func:`canopy.reading.stored_model`): the models a build must be able to load.
    The others are read from the store, wherever they were sampled."""
    _, found = _stored(profile, experiment_file, models)
    return [spec for spec, stored in found if stored is None or stored.missing]


def verify_store(profile: str, experiment_file=None, models=None, echo=print,
                 record: Path | None = None) -> int:
    """Verify, once for this build, every shard the experiment's chapters will read
    (:func:`canopy.reading.verify_shards`) and point the chapters' kernels at the record
    (:data:`canopy.reading.VERIFIED_ENV`, set in this process's environment, which the
    kernels inherit), so that they read without verifying again. Models the store does
    not hold yet are left to the chapters (they sample them). A damaged shard: the
    one-line ``ValueError`` naming it, before any chapter runs. Returns the number of
    shards verified."""
    from canopy.reading import verify_shards

    experiment, found = _stored(profile, experiment_file, models)
    stored = [stored for _, stored in found if stored is not None]
    record = record or EXECUTED / ".verified-store.json"
    started = time.perf_counter()
    count = verify_shards(stored, record)  # written even when empty: no earlier build's
    os.environ[VERIFIED_ENV] = str(record)
    if count:
        echo(f"  store {experiment.out}: {count} shards verified in "
             f"{time.perf_counter() - started:.1f} s (once for this build)")
    return count


def _execute(sources, params: dict, only, force: bool, echo) -> list[str]:
    """Execute the selected chapters in order; returns the stems of unselected chapters
    never executed."""
    missing = []
    for source in sources:
        if not _selected(source, only):
            if not (EXECUTED / f"{source.stem}.ipynb").is_file():
                missing.append(source.stem)
                echo(f"  {source.stem:<28} skipped (--only; never executed)")
            else:
                echo(f"  {source.stem:<28} skipped (--only)")
            continue
        _, seconds, reused = execute_chapter(source, params, force=force)
        echo(f"  {source.stem:<28} {'unchanged, reused' if reused else f'executed in {seconds:.0f} s'}")
    return missing


def rerun_note(chapter: str, **parameters):
    """Markdown (an IPython display object) with the parameter values a chapter ran with
    and the two commands that rerun it: ``canopy book --only`` and jupytext + papermill.

    ``chapter`` is the notebook stem, e.g. ``"03_canopy_entropy"``; ``parameters`` are
    the values of its parameter cell.
    """
    import shlex

    import yaml
    from IPython.display import Markdown

    def flow(value) -> str:
        # A scalar dumps as "2000\n...\n": keep the part before the document end marker.
        return yaml.safe_dump(value, default_flow_style=True, width=1000).split("\n...")[0].strip()

    profile = parameters.get("profile", "default")
    others = {k: v for k, v in parameters.items() if k != "profile" and v is not None}
    book = ["canopy", "book", "--profile", str(profile), "--only", chapter[:2]]
    for name, value in others.items():
        book += ["-p", name, flow(value)]
    paper = (f"jupytext --to ipynb -o {chapter}.ipynb notebooks/{chapter}.py && "
             f"papermill {chapter}.ipynb {chapter}.out.ipynb -y "
             + shlex.quote(flow({k: v for k, v in parameters.items() if v is not None})))
    lines = ["**Parameters used:** " + ", ".join(f"`{k} = {v!r}`" for k, v in parameters.items()),
             "", "**Rerun** this chapter (from the repository root; results are cached):",
             "", "```bash", shlex.join(book), paper, "```"]
    return Markdown("\n".join(lines))


# ------------------------------------------------------------ Sphinx extension


def _theme_defaults(app, config) -> None:
    # A first visit has no stored colour mode; without a default the theme logs an error.
    config.html_context = {**(config.html_context or {}), "default_mode": "light"}


def _drop_online_scripts(app, pagename, templatename, context, doctree) -> None:
    """Remove the Thebe ("run code online") scripts: they name an unpkg.com URL and
    would need a network; the book's code cells are static."""
    def online(js) -> bool:
        body = getattr(js, "attributes", {}).get("body", "") or ""
        return "thebe" in str(js).lower() or "THEBE_JS_URL" in body

    if "script_files" in context:
        context["script_files"] = [js for js in context["script_files"] if not online(js)]


def setup(app):
    """Sphinx extension (``_config.yml``, ``sphinx.extra_extensions``): keep every page
    offline and its console clean."""
    app.connect("config-inited", _theme_defaults)
    app.connect("html-page-context", _drop_online_scripts)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
