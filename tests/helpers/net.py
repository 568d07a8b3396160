"""Loopback helpers for tests (and the docs' screenshots) that start servers: a free
port, and waiting for a started process to answer."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from typing import Any


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answers(url: str, timeout: float = 2) -> bool:
    """Whether ``url`` answers a GET with a success status (raises ``OSError`` if not)."""
    with urllib.request.urlopen(url, timeout=timeout):
        return True


def _output(proc: subprocess.Popen[Any]) -> str:
    stream = proc.stdout or proc.stderr
    if stream is None:
        return ""
    out = stream.read()
    return (out.decode(errors="replace") if isinstance(out, bytes) else out)[-3000:]


def wait_until(
    check: Callable[[], Any],
    proc: subprocess.Popen[Any],
    seconds: float,
    what: str,
    poll: float = 0.5,
) -> Any:
    """Call ``check`` until it returns something truthy, and return that.

    An ``OSError`` from ``check`` (connection refused, HTTP errors, timeouts) means "not
    yet". Fails (``AssertionError``, with the tail of the process's piped output) when
    ``proc`` exits first or ``seconds`` pass.
    """
    deadline = time.monotonic() + seconds
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"exited ({proc.returncode}) before {what}:\n{_output(proc)}")
        try:
            got = check()
            if got:
                return got
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")
        time.sleep(poll)
