"""Processes sharing a store: shard claims, a short lock, leftovers of dead processes.

- :class:`Claims`: one lock file per shard being sampled (``.<shard>.claim``), held with
  an operating-system file lock (the ``filelock`` package: ``fcntl.flock`` on Unix) for
  as long as the prompt is being sampled. Two runs into the same store therefore split
  the prompts instead of both sampling all of them, and a claim of a process that died
  (even by SIGKILL) is free again at once: the kernel drops its locks.
- :func:`store_lock`: the same kind of lock, blocking, for short read-modify-write
  sections (the manifest).
- :func:`remove_dead_temporaries`: deletes ``.<name>.tmp-PID`` files and directories
  whose writing process is no longer running on this machine (a killed shard write or
  GGUF conversion). A temporary of a live process is left alone.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path

__all__ = ["pid_alive", "Claims", "store_lock", "remove_dead_temporaries"]

_TMP = re.compile(r"^\..+\.tmp-(\d+)$")


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


class Claims:
    """The shard claims of this process. ``take(shard)`` claims the shard at path
    ``shard`` (True), or returns False while another live process holds it;
    ``release(shard)`` once the shard is written; ``release_all()`` on the way out."""

    def __init__(self) -> None:
        self.held: dict[Path, object] = {}

    @staticmethod
    def claim_path(shard: Path) -> Path:
        return Path(shard).with_name(f".{Path(shard).name}.claim")

    def take(self, shard: Path) -> bool:
        from filelock import FileLock, Timeout

        if shard in self.held:
            return True
        claim = self.claim_path(shard)
        claim.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(claim, timeout=0, is_singleton=False)
        try:
            lock.acquire()
        except Timeout:
            return False
        self.held[shard] = lock
        return True

    def busy(self, shard: Path) -> bool:
        """Whether another process holds ``shard``'s claim now (does not keep it)."""
        if shard in self.held:
            return False
        if not self.take(shard):
            return True
        self.release(shard, written=False)
        return False

    def release(self, shard: Path, *, written: bool = True) -> None:
        """Give up the claim. With ``written`` (the shard is in place) the claim file is
        removed first: a process that locks the removed file meanwhile finds the shard
        written and does not sample it."""
        lock = self.held.pop(shard, None)
        if lock is not None:
            if written:
                with contextlib.suppress(OSError):
                    self.claim_path(shard).unlink()
            lock.release()

    def release_all(self) -> None:
        """Give up every claim (shards not written: their claim files stay, unlocked)."""
        for shard in list(self.held):
            self.release(shard, written=False)


@contextlib.contextmanager
def store_lock(path: Path, timeout: float = 120.0):
    """Hold the exclusive lock file ``path`` for a short section (waits up to
    ``timeout`` seconds for another process to finish its section)."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path, timeout=timeout, is_singleton=False):
        yield


def remove_dead_temporaries(directory: Path, *, recursive: bool = False) -> list[Path]:
    """Delete the temporaries ``.<name>.tmp-PID`` (files or directories) in
    ``directory`` (and below it with ``recursive``) whose process ``PID`` is not running
    on this machine; returns what was removed."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = directory.rglob(".*.tmp-*") if recursive else directory.glob(".*.tmp-*")
    removed = []
    for path in sorted(found):
        match = _TMP.match(path.name)
        if not match or pid_alive(int(match.group(1))):
            continue
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            continue
        removed.append(path)
    return removed
