"""GGUF files: read a header and tensor table (not the weights) to tell an intact file
from a damaged or half-downloaded one, in one line, before anything is loaded."""

from __future__ import annotations

import math
import struct
from pathlib import Path

__all__ = ["check_gguf"]


_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q",
                 11: "q", 12: "d"}


def check_gguf(path) -> dict:
    """Read a GGUF file's header and tensor table (not its weights); returns
    ``{"architecture", "context_length", "tensors", "size", "add_bos_token"}`` (the last:
    whether the model's tokenizer puts BOS in front of a text, ``False`` when unsaid).

    Raises a one-line ``ValueError`` naming the file when it is not GGUF, its header is
    garbage, or it is shorter than its tensor table says (half-downloaded). Hand-written
    on purpose: ``gguf.GGUFReader`` parses every metadata value into numpy objects, which
    takes seconds for a large vocabulary (4.6 s measured on smollm2's file); this walks
    the same layout in a fraction of that. Block sizes come from the ``gguf`` package.
    """
    path = Path(path)

    def damaged(why: str) -> ValueError:
        return ValueError(f"damaged GGUF file {path}: {why}; reinstall the package that "
                          "provides it or download the file again")

    import mmap

    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            if size < 24:
                raise damaged(f"only {size} bytes")
            data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as exc:
        raise ValueError(f"cannot read GGUF file {path}: {exc.strerror}") from None
    try:
        if data[:4] != b"GGUF":
            raise damaged("it does not start with the GGUF magic bytes")
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", data, 4)
        if version not in (2, 3) or n_tensors > 1 << 20 or n_kv > 1 << 20:
            raise damaged(f"implausible header (version {version}, {n_tensors} tensors, "
                          f"{n_kv} metadata keys)")
        pos = 24

        def take(fmt: str):
            nonlocal pos
            need = struct.calcsize(fmt)
            if pos + need > size:
                raise damaged("it ends inside its header")
            value = struct.unpack_from("<" + fmt, data, pos)
            pos += need
            return value[0] if len(value) == 1 else value

        def string() -> bytes:
            nonlocal pos
            length = take("Q")
            if pos + length > size:
                raise damaged("a header string runs past the end of the file")
            value = data[pos:pos + length]
            pos += length
            return value

        def value(kind: int, depth: int = 0):
            nonlocal pos
            if kind in _GGUF_SCALARS:
                return take(_GGUF_SCALARS[kind])
            if kind == 8:
                return string()
            if kind == 9 and depth == 0:
                inner, count = take("I"), take("Q")
                if inner in _GGUF_SCALARS:
                    step = struct.calcsize(_GGUF_SCALARS[inner])
                    if pos + count * step > size:
                        raise damaged("a header array runs past the end of the file")
                    pos += count * step
                    return None
                for _ in range(count):
                    value(inner, depth + 1)
                return None
            raise damaged(f"unknown metadata type {kind}")

        meta = {}
        for _ in range(n_kv):
            key = string()
            meta[key.decode("utf-8", "replace")] = value(take("I"))
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

        end = 0
        infos = []
        for _ in range(n_tensors):
            string()
            n_dims = take("I")
            if n_dims > 8:
                raise damaged(f"a tensor with {n_dims} dimensions")
            dims = [take("Q") for _ in range(n_dims)]
            kind, offset = take("I"), take("Q")
            infos.append((dims, kind, offset))
        alignment = meta.get("general.alignment") or 32
        start = -(-pos // alignment) * alignment
        for dims, kind, offset in infos:
            try:
                block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
            except (ValueError, KeyError):
                raise damaged(f"unknown tensor type {kind}") from None
            end = max(end, start + offset + math.prod(dims) // block * type_size)
        if end > size:
            raise damaged(f"it has {size} bytes but its tensors need {end} "
                          "(truncated, e.g. half-downloaded)")
    finally:
        data.close()
    arch = meta.get("general.architecture")
    arch = arch.decode("utf-8", "replace") if isinstance(arch, bytes) else None
    ctx = meta.get(f"{arch}.context_length") if arch else None
    return {"architecture": arch, "context_length": int(ctx) if isinstance(ctx, int) else None,
            "tensors": n_tensors, "size": size,
            "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False))}
