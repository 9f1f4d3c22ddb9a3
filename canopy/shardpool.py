"""Reading many shards at once: a small thread pool whose results come back in order.

Verifying a store is Parquet decoding, sha256 and numpy per shard; pyarrow and hashlib
release the GIL for all of it, so shards verified on a few threads overlap on the
machine's cores. :func:`map_in_order` runs a function over the shards on
:func:`read_threads` threads and yields the results in the shards' order (a bounded
window ahead, so memory stays a few shards' worth when the caller streams). The
thread count changes only the speed: every result is the one the function returns
for its shard alone, and the caller sees them in the same order.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor

__all__ = ["READ_THREADS_ENV", "MAX_READ_THREADS", "read_threads", "map_in_order"]

#: The environment variable that sets how many threads read shards (a positive integer).
READ_THREADS_ENV = "CANOPY_READ_THREADS"
#: The most threads :func:`read_threads` uses by default (beyond this the disk, not
#: the CPUs, sets the pace).
MAX_READ_THREADS = 8


def read_threads(threads: int | None = None) -> int:
    """How many threads read shards: ``threads`` when given, else
    ``$CANOPY_READ_THREADS``, else the CPUs this process may run on, at most
    :data:`MAX_READ_THREADS`. A one-line ``ValueError`` for a count that is not a
    positive integer."""
    where = "threads"
    if threads is None and os.environ.get(READ_THREADS_ENV):
        where, threads = f"${READ_THREADS_ENV}", os.environ[READ_THREADS_ENV]
    if threads is None:
        try:
            usable = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            usable = os.cpu_count() or 1
        return max(1, min(usable, MAX_READ_THREADS))
    try:
        count = int(threads)
    except (TypeError, ValueError):
        count = 0
    if count < 1 or str(threads).strip() != str(count):
        raise ValueError(f"{where} = {threads!r}: give a positive integer number of threads "
                         "to read shards with")
    return count


def map_in_order(func, items, threads: int | None = None):
    """Yield ``func(item)`` for each of ``items``, in their order, computed on
    :func:`read_threads` threads (at most ``2 × threads`` results ahead of the one
    yielded). An exception raised by ``func`` is raised here when its item's turn
    comes; callers that collect per-item errors catch them inside ``func``."""
    count = read_threads(threads)
    items = iter(items)
    if count == 1:
        yield from map(func, items)
        return
    with ThreadPoolExecutor(max_workers=count, thread_name_prefix="canopy-read") as pool:
        pending: deque = deque()
        try:
            for item in items:
                pending.append(pool.submit(func, item))
                if len(pending) >= 2 * count:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
