"""Facts about this process: its data root, its ``torchrun`` rank, its peak memory.

``settings.py`` imports this module on every ``kedro`` command, and the hooks, the
data-parallel helpers and the benchmarks read the same facts from here, so it uses the
standard library only (no torch, no Kedro). Which project a command runs in is Kedro's
business: ``config_loader.kedro_project_root``.
"""

from __future__ import annotations

import os
from pathlib import Path


def data_root(project: Path) -> Path:
    """Where every catalog path lives: ``DQE_DATA_ROOT``, else ``<project>/data``.

    Args:
        project: The root of the Kedro project the command runs in.
    """
    return Path(os.environ.get("DQE_DATA_ROOT", (project / "data").as_posix()))


def launch_rank() -> tuple[int, int]:
    """Returns this process's place in a ``torchrun`` launch.

    ``torchrun`` sets ``RANK`` and ``WORLD_SIZE`` in every process it starts; a plain
    ``kedro run`` sets neither and is rank 0 of 1.

    Returns:
        ``(rank, world_size)``; ``(0, 1)`` without ``torchrun``.
    """
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def peak_rss_bytes(*, children: bool = False) -> int:
    """Returns the peak resident memory so far, from ``getrusage``.

    The value only grows over the life of the process. Linux reports ``ru_maxrss`` in
    KiB, which is what the conversion to bytes assumes.

    Args:
        children: Report the largest peak among the terminated child processes that
            were waited for (e.g. a ``kedro run`` started with ``subprocess``)
            instead of this process's own peak.

    Returns:
        The peak resident set size in bytes.
    """
    import resource  # POSIX only; imported here so importing this module works anywhere

    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss * 1024


def process_start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, from ``/proc``), or ``None``.

    Together with the PID it names one process: a PID reused by a later process has
    another start time. ``None`` when the process does not exist, is a zombie, or
    ``/proc`` is not there (then only the PID is known).
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name, in (), may hold spaces
    if fields[0] == "Z":  # exited, not yet waited for
        return None
    return int(fields[19])  # field 22 of proc(5): starttime


def process_alive(pid: int, start_ticks: int | None = None) -> bool:
    """Whether process ``pid`` still runs (and, given ``start_ticks``, is the same one).

    Args:
        pid: The process id.
        start_ticks: Its start time as :func:`process_start_ticks` gave it, if known.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    now = process_start_ticks(pid)
    if now is None:
        return not Path("/proc/self/stat").exists()  # a zombie, unless /proc is missing
    return start_ticks is None or now == start_ticks
