"""Shared by the benchmarks: wall time and peak resident-memory growth of a call, and
dropping a feature cache's pages from the page cache (cold-read measurements)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def measure(fn: Callable[[], T]) -> tuple[float, int, T]:
    """Run ``fn``; return (seconds, peak RSS growth in bytes, result), RSS sampled every 2 ms."""
    base = rss_bytes()
    peak = [base]
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.002)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    done.set()
    th.join()
    peak[0] = max(peak[0], rss_bytes())
    return dt, peak[0] - base, out


def drop_page_cache(directory: Path) -> None:
    """Ask the kernel to evict the pages of every ``shard-*.npy`` below ``directory``.

    Best effort (``posix_fadvise(DONTNEED)``, no root needed): a hypervisor's cache may
    still serve the next read, so a "cold" figure is a lower bound on real-disk slowness.
    """
    if not hasattr(os, "posix_fadvise"):
        return
    for path in directory.rglob("shard-*.npy"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
