"""Content digests of rollout shards: what makes a flipped bit visible.

A shard's Parquet metadata carries a digest of its content, checked on every read
(:func:`canopy.store.read_shard`). Two kinds exist:

- ``content_digest`` = ``"arrow-sha256-v1:<hex>"`` (written since this module): sha256
  over the Arrow buffers the shard decodes to — per column its name and type, then the
  lengths of every list and string and the raw bytes of every value, fed straight from
  the buffers (no conversion to Python objects), so verification runs at disk speed.
  It does not depend on how Parquet or Arrow chunk the data. Floats are hashed bit for
  bit (a flipped NaN payload is detected too). Columns holding nulls, or of types without
  a plain buffer layout, are hashed value by value as in the legacy digest.
- ``content_sha256`` (legacy, :func:`legacy_sha256`): sha256 of the JSON of every value;
  shards written before keep verifying with it.

Because the new digest covers every decoded value, shards carrying it are read without
recomputing Parquet's page CRCs (:func:`skips_page_checksums`); legacy shards still are.
Either way a single flipped bit is detected or changes nothing that is read.
"""

from __future__ import annotations

import functools
import hashlib
import json

import numpy as np

__all__ = ["DIGEST_KIND", "arrow_digest", "legacy_sha256", "digest_meta", "verify",
           "skips_page_checksums", "type_name"]

#: The kind (and version) of digest :func:`digest_meta` writes.
DIGEST_KIND = "arrow-sha256-v1"
_CANOPY_KEY = b"canopy"


def type_name(arrow_type) -> str:
    """An Arrow type's name without the child field names (Arrow says ``list<item: …>``
    and Parquet gives back ``list<element: …>`` for the same values)."""
    import pyarrow as pa

    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return f"list<{type_name(arrow_type.value_type)}>"
    return str(arrow_type)


def _extra_metadata(arrow) -> bytes:
    """The schema metadata other than canopy's own, as canonical JSON bytes."""
    extra = {k.decode("utf-8", "replace"): v.decode("utf-8", "replace")
             for k, v in (arrow.schema.metadata or {}).items() if k != _CANOPY_KEY}
    return json.dumps(extra, sort_keys=True).encode()


def legacy_sha256(arrow) -> str:
    """sha256 (hex) of a shard's content as written before :data:`DIGEST_KIND`: column
    names, types and values (as Python objects: floats exactly, NaN as NaN), and the
    schema metadata other than canopy's own. Slow (about 10 MB/s); kept so that old
    shards verify."""
    digest = hashlib.sha256()
    digest.update(_extra_metadata(arrow))
    for name, column in zip(arrow.column_names, arrow.columns):
        digest.update(json.dumps([name, type_name(column.type)]).encode())
        digest.update(json.dumps(column.to_pylist(), default=str).encode())
    return digest.hexdigest()


# ------------------------------------------------------------------- the buffer digest


def _buffer_layout(arrow_type) -> bool:
    """Whether values of this type are hashed from their buffers (else value by value)."""
    import pyarrow as pa

    t = arrow_type
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _buffer_layout(t.value_type)
    return (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
            or pa.types.is_string(t) or pa.types.is_large_string(t)
            or pa.types.is_binary(t) or pa.types.is_large_binary(t))


def _has_nulls(array) -> bool:
    """Nulls anywhere in ``array`` (list children included, slicing respected)."""
    import pyarrow as pa

    if array.null_count:
        return True
    if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        return _has_nulls(array.flatten())
    return False


def _offsets(array, wide: bool) -> np.ndarray:
    """The ``len + 1`` offsets of a list/string array, slicing respected."""
    raw = np.frombuffer(array.buffers()[1], dtype=np.int64 if wide else np.int32)
    return raw[array.offset:array.offset + len(array) + 1]


class _Streams(dict):
    """One sha256 per component of a column (keyed by its path), made when first fed."""

    def __missing__(self, key: str):
        self[key] = hashlib.sha256(key.encode())
        return self[key]


def _feed(array, path: str, streams: dict) -> None:
    """Add one null-free array chunk to the per-component sha256 ``streams`` (keyed by
    ``path``): list/string lengths as int64, values as their raw bytes."""
    import pyarrow as pa

    t = array.type
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        offsets = _offsets(array, pa.types.is_large_list(t))
        streams[path + "/lengths"].update(np.diff(offsets).astype(np.int64).tobytes())
        _feed(array.flatten(), path + "/item", streams)
    elif pa.types.is_boolean(t):
        streams[path + "/values"].update(
            array.to_numpy(zero_copy_only=False).astype(np.uint8).tobytes())
    elif pa.types.is_string(t) or pa.types.is_binary(t) or pa.types.is_large_string(t) \
            or pa.types.is_large_binary(t):
        offsets = _offsets(array, pa.types.is_large_string(t) or pa.types.is_large_binary(t))
        streams[path + "/lengths"].update(np.diff(offsets).astype(np.int64).tobytes())
        data = array.buffers()[2]
        if data is not None and len(offsets) > 1:
            streams[path + "/values"].update(memoryview(data)[int(offsets[0]):int(offsets[-1])])
        else:
            streams[path + "/values"].update(b"")
    else:  # fixed-width integers and floats
        width = t.bit_width // 8
        data = array.buffers()[1]
        start = array.offset * width
        streams[path + "/values"].update(
            memoryview(data)[start:start + len(array) * width] if data is not None else b"")


@functools.lru_cache(maxsize=None)
def _components(arrow_type) -> tuple[str, ...]:
    """The stream keys :func:`_feed` uses for a column of this type."""
    import pyarrow as pa

    streams = _Streams()
    _feed(pa.array([], type=arrow_type), "", streams)
    return tuple(streams)


def arrow_digest(arrow) -> str:
    """sha256 (hex) of an Arrow table's content from its buffers (see the module
    docstring): schema metadata other than canopy's own, then per column its name, type
    and content. The same for any chunking of the same values."""
    import pyarrow as pa

    digest = hashlib.sha256(DIGEST_KIND.encode())
    digest.update(_extra_metadata(arrow))
    for name, column in zip(arrow.column_names, arrow.columns):
        digest.update(json.dumps([name, type_name(column.type)]).encode())
        chunks = column.chunks
        if not _buffer_layout(column.type) or any(_has_nulls(c) for c in chunks):
            digest.update(b"values-as-json")
            digest.update(json.dumps(column.to_pylist(), default=str).encode())
            continue
        streams = _Streams()
        for key in _components(column.type):  # every component, even if it gets no chunk
            streams[key]
        for chunk in chunks:
            _feed(chunk, "", streams)
        digest.update(b"buffers")
        for key in sorted(streams):
            digest.update(streams[key].digest())
    return digest.hexdigest()


# ---------------------------------------------------------------- writing and checking


def digest_meta(arrow) -> dict:
    """The digest entry a new shard's canopy metadata carries for ``arrow``."""
    return {"content_digest": f"{DIGEST_KIND}:{arrow_digest(arrow)}"}


def skips_page_checksums(meta: dict) -> bool:
    """Whether a shard with this canopy metadata can be read without recomputing page
    CRCs: it carries a digest of :data:`DIGEST_KIND`, which covers every decoded value."""
    value = meta.get("content_digest")
    return isinstance(value, str) and value.startswith(DIGEST_KIND + ":")


def verify(arrow, meta: dict) -> str | None:
    """Check the digest a shard carries in its canopy metadata ``meta`` against its
    content ``arrow``; ``None`` when it matches (or a shard of the first format carries
    none), else a one-line reason."""
    if "content_digest" in meta:
        value = meta["content_digest"]
        kind, _, hexdigest = value.partition(":") if isinstance(value, str) else ("", "", "")
        if kind != DIGEST_KIND:
            return (f"its digest is of an unknown kind {kind!r} (written by a newer canopy? "
                    "upgrade canopy to read it)")
        if arrow_digest(arrow) != hexdigest:
            return "damaged: its content differs from the digest written with it"
        return None
    if "content_sha256" in meta:
        if legacy_sha256(arrow) != meta["content_sha256"]:
            return "damaged: its content differs from the sha256 written with it"
    return None
