"""Shard digests (canopy.digests): flipped bits are detected or harmless, old shards read."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from canopy.digests import DIGEST_KIND, arrow_digest, legacy_sha256, verify
from canopy.sampling import ROLLOUT_SCHEMA_COLUMNS
from canopy.store import ShardError, read_shard, read_verified, write_shard


def small_table(rollouts: int = 2, steps: int = 2) -> pd.DataFrame:
    """A rollout table shaped like the sampler's (every schema column, float32 steps)."""
    rng = np.random.default_rng(7)
    rows = []
    for r in range(rollouts):
        h = rng.random(steps).astype(np.float32)
        lp = -rng.random(steps).astype(np.float32)
        rows.append({
            "model": "m", "family": "f", "variant": "base", "task": "t", "prompt_id": "p",
            "rollout_id": r, "prompt_text": "hi", "prompt_token_ids": np.array([1, 2]),
            "token_ids": rng.integers(0, 50, steps), "text": f"ab{r}", "step_entropy": h,
            "step_logprob": lp, "step_entropy_raw": h + np.float32(0.5),
            "step_stop_logprob": -rng.random(steps).astype(np.float32), "length": steps,
            "truncated": r == 1, "summed_entropy": float(h.astype(np.float64).sum()),
            "surprisal": float(-lp.astype(np.float64).sum()),
        })
    return pd.DataFrame(rows)[list(ROLLOUT_SCHEMA_COLUMNS)]


def as_lists(table: pd.DataFrame) -> pd.DataFrame:
    """The table with array cells as lists (arrays do not compare with ==)."""
    return table.apply(lambda col: col.map(lambda v: v.tolist() if hasattr(v, "tolist")
                                           and not isinstance(v, (int, float)) else v))


def write_legacy_shard(path, table: pd.DataFrame, meta: dict) -> None:
    """A shard as canopy wrote them before canopy.digests: content_sha256 over the values
    as JSON, page CRCs (an independent re-implementation of that writer)."""
    import hashlib

    arrow = pa.Table.from_pandas(table, preserve_index=False)
    digest = hashlib.sha256()
    extra = {k.decode(): v.decode() for k, v in arrow.schema.metadata.items()}
    digest.update(json.dumps(extra, sort_keys=True).encode())
    for name, column in zip(arrow.column_names, arrow.columns):
        kind = str(column.type).replace("list<item: ", "list<").replace("item: ", "")
        digest.update(json.dumps([name, kind]).encode())
        digest.update(json.dumps(column.to_pylist(), default=str).encode())
    meta = {**meta, "content_sha256": digest.hexdigest()}
    arrow = arrow.replace_schema_metadata({**arrow.schema.metadata,
                                           b"canopy": json.dumps(meta).encode()})
    pq.write_table(arrow, path, write_page_checksum=True)


def flips(path, positions, bits):
    """Yield the file's bytes with one bit flipped, for each position and bit."""
    original = path.read_bytes()
    for position in positions:
        for bit in bits(position):
            data = bytearray(original)
            data[position] ^= 1 << bit
            yield position, bit, bytes(data)


@pytest.mark.integration
def test_every_bit_flip_is_detected_or_changes_nothing(tmp_path):
    """Every bit of the data pages and one bit of every footer byte (the footer is
    Parquet's Thrift metadata and pandas' JSON): each flipped shard is refused or reads
    back equal to the table that was written (about 24,000 reads: minutes)."""
    check_flips(tmp_path, stride=1)


def test_bit_flips_at_every_31st_byte_are_detected_or_change_nothing(tmp_path):
    """The quick version: all 8 bits of every 31st page byte, one bit of every 31st
    footer byte."""
    check_flips(tmp_path, stride=31)


def check_flips(tmp_path, stride: int) -> None:
    truth = small_table()
    path = tmp_path / "p.parquet"
    write_shard(path, truth, {"rollouts": len(truth)})
    written = read_verified(path)
    pd.testing.assert_frame_equal(as_lists(written.to_pandas()), as_lists(truth),
                                  check_exact=True)
    size = path.stat().st_size
    footer = pq.ParquetFile(path).metadata.serialized_size
    pages_end = size - footer - 8  # the footer, its length and the magic come last
    copy = tmp_path / "flipped.parquet"
    detected = harmless = 0
    positions = range(0, size, stride)
    for position, bit, data in flips(path, positions,
                                     lambda p: range(8) if p < pages_end else [p % 8]):
        try:  # the bytes as read_verified would read them from the file
            arrow = read_verified(copy, data=data)
        except ShardError:
            detected += 1
            continue
        harmless += 1
        # What read_shard returns is arrow.to_pandas(): a function of the values, their
        # types and the schema's metadata other than canopy's own (which to_pandas does
        # not read). When those equal the written shard's, so does the DataFrame; only
        # otherwise is the (slower) DataFrame comparison needed.
        if arrow.equals(written) and _pandas_metadata(arrow) == _pandas_metadata(written):
            continue
        copy.write_bytes(data)
        pd.testing.assert_frame_equal(as_lists(read_shard(copy)), as_lists(truth),
                                      check_exact=True,
                                      obj=f"bit {bit} of byte {position} flipped")
    in_pages = len(range(0, pages_end, stride))
    assert detected + harmless == 8 * in_pages + len(positions) - in_pages
    assert detected > 0.75 * 8 * in_pages  # most page bits are values, lengths or headers


def _pandas_metadata(arrow) -> dict:
    """The schema metadata ``to_pandas`` may read (all but canopy's own key)."""
    return {k: v for k, v in (arrow.schema.metadata or {}).items() if k != b"canopy"}


def test_new_shards_carry_the_buffer_digest_and_skip_page_crcs(tmp_path):
    path = tmp_path / "p.parquet"
    write_shard(path, small_table(), {"rollouts": 2})
    meta = json.loads(pq.read_schema(path).metadata[b"canopy"])
    kind, _, hexdigest = meta["content_digest"].partition(":")
    assert kind == DIGEST_KIND and len(hexdigest) == 64 and "content_sha256" not in meta
    assert hexdigest == arrow_digest(pq.read_table(path))


def test_shards_of_the_first_format_still_read_and_verify(tmp_path):
    truth = small_table(3, 4)
    path = tmp_path / "old.parquet"
    write_legacy_shard(path, truth, {"rollouts": 3})
    pd.testing.assert_frame_equal(as_lists(read_shard(path)), as_lists(truth))
    arrow = pq.read_table(path)
    assert legacy_sha256(arrow) == json.loads(arrow.schema.metadata[b"canopy"])["content_sha256"]
    # a changed value under a legacy digest is refused
    meta = json.loads(arrow.schema.metadata[b"canopy"])
    changed = arrow.set_column(arrow.column_names.index("surprisal"), "surprisal",
                               pa.array([9.0, 9.0, 9.0]))
    assert verify(changed, meta).startswith("damaged")
    # a flipped bit in the data pages of an old shard is caught (CRC or its sha256)
    original = path.read_bytes()
    caught = 0
    pages_end = len(original) - pq.ParquetFile(path).metadata.serialized_size - 8
    for position in range(4, pages_end, 7):
        data = bytearray(original)
        data[position] ^= 1 << (position % 8)
        path.write_bytes(bytes(data))
        try:
            table = read_shard(path)
        except ShardError:
            caught += 1
            continue
        pd.testing.assert_frame_equal(as_lists(table), as_lists(truth))
    assert caught > 0


def test_digest_ignores_chunking_and_sees_every_value():
    table = pa.Table.from_pandas(small_table(6, 5), preserve_index=False)
    whole = arrow_digest(table)
    rechunked = pa.concat_tables([table.slice(0, 2), table.slice(2, 3), table.slice(5)])
    assert rechunked.column(0).num_chunks == 3
    assert arrow_digest(rechunked) == whole
    assert arrow_digest(table.combine_chunks()) == whole
    # one float's last bit, one token id, one text byte, one truncation flag
    column = table.column("step_entropy").to_pylist()
    column[3][2] = float(np.nextafter(np.float32(column[3][2]), np.float32(2)))
    changes = {"step_entropy": pa.array(column, type=pa.list_(pa.float32())),
               "text": pa.array(["ab0", "ab1", "ab2", "ab3", "ab4", "ab6"]),
               "truncated": pa.array([False] * 6)}
    for name, values in changes.items():
        other = table.set_column(table.column_names.index(name), name, values)
        assert arrow_digest(other) != whole, name
    # the same lengths split differently between two rollouts' lists
    moved = table.column("token_ids").to_pylist()
    moved[0], moved[1] = moved[0] + moved[1][:1], moved[1][1:]
    other = table.set_column(table.column_names.index("token_ids"), "token_ids",
                             pa.array(moved, type=table.column("token_ids").type))
    assert arrow_digest(other) != whole
    # a null where a value was is seen (values with nulls are hashed one by one)
    nulled = table.set_column(table.column_names.index("text"), "text",
                              pa.array(["ab0", None, "ab2", "ab3", "ab4", "ab5"]))
    assert arrow_digest(nulled) != whole


def test_unknown_digest_kind_is_refused(tmp_path):
    path = tmp_path / "p.parquet"
    write_shard(path, small_table(), {"rollouts": 2})
    arrow = pq.read_table(path)
    meta = json.loads(arrow.schema.metadata[b"canopy"])
    meta["content_digest"] = "blake9-v7:00"
    assert re.search(r"unknown kind 'blake9-v7'.*upgrade canopy", verify(arrow, meta))
