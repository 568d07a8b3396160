"""Headless Chromium for the browser tests and the docs' screenshots: Debian's
``chromium`` driven by Playwright (no browser download), and an HTTP app served on a
free loopback port in a background thread."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.helpers.net import free_port

#: Flags for a closed network: no background connections, no sandbox (root), no GPU.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    """``DQE_CHROMIUM``, else ``chromium`` on PATH (Debian's package), else ``None``."""
    return os.environ.get("DQE_CHROMIUM") or shutil.which("chromium")


@contextmanager
def browser_page(width: int = 1280, height: int = 860) -> Iterator[Any]:
    """A Playwright page in headless Chromium; the browser closes afterwards."""
    from playwright.sync_api import sync_playwright

    path = chromium_path()
    if path is None:
        raise RuntimeError("no chromium: `apt-get install chromium` or set DQE_CHROMIUM")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            yield page
        finally:
            browser.close()


@contextmanager
def serve_app(app: Any) -> Iterator[str]:
    """An ASGI ``app`` served by uvicorn on 127.0.0.1 in a thread; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the app did not start on port {port}")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
