"""Screenshots for the docs: the search page, the MLflow run page and kedro viz, taken in
headless Chromium (Debian's ``chromium``, driven by Playwright) from a finished run.

    DQE_DATA_ROOT=/tmp/run/data MLFLOW_TRACKING_URI=sqlite:////tmp/run/mlflow.db \\
        .venv/bin/python scripts/screenshots.py --out docs/figures

Needs a finished ``kedro run --pipelines=train`` under ``DQE_DATA_ROOT`` logged to
``MLFLOW_TRACKING_URI`` (both default to the project's own). Writes ``search_page.png``,
``mlflow_run.png``, ``mlflow_charts.png`` and ``kedro_viz.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.helpers.browser: the same browser set-up as the tests

from tests.helpers.browser import browser_page, serve_app  # noqa: E402
from tests.helpers.net import answers, free_port, wait_until  # noqa: E402


@contextmanager
def server(args: list[str], url: str, seconds: float = 120) -> Iterator[None]:
    """A server process (started in the project root), until ``url`` answers; its output
    goes to ``$TMPDIR/screenshots_server.log``."""
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / "screenshots_server.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            what = f"{args[:4]} to serve {url} (log: {log_path})"
            wait_until(lambda: answers(url, timeout=5), proc, seconds, what, 1)
            yield
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def search_page(out: Path) -> None:
    from dqe_cir_pipeline.serving.resolve import open_searcher, project_examples
    from dqe_cir_pipeline.serving.web import create_app

    searcher = open_searcher()
    examples = project_examples(set(searcher.index.table["image_id"]))
    colour = next(e for e in examples if e.edit_type == "color")
    with serve_app(create_app(searcher, examples)) as url, browser_page(1280, 780) as page:
        page.goto(url)
        page.wait_for_function("document.querySelectorAll('#example option').length > 1")
        page.select_option("#example", colour.example_id)
        page.click("#search")
        page.wait_for_selector(".result >> nth=9")
        page.wait_for_function(
            "[...document.querySelectorAll('.result img')].every(i => i.complete)"
        )
        page.screenshot(path=str(out / "search_page.png"))


def mlflow_pages(out: Path, uri: str) -> None:
    import mlflow

    client = mlflow.MlflowClient(uri)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string="tags.mlflow.runName = 'train'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise SystemExit(f"no finished `train` run in {uri}")
    run = runs[0]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    mlflow_cli = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri]
    with (
        server([*mlflow_cli, "--host", "127.0.0.1", "--port", str(port)], base),
        browser_page(1400, 1000) as page,
    ):
        page_url = f"{base}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
        view = "?workflowType=machine_learning"  # MLflow 3's training view, not GenAI
        page.goto(page_url + view)
        page.wait_for_selector("text=Description", timeout=60_000)
        _close_popups(page)
        page.wait_for_timeout(2500)
        page.screenshot(path=str(out / "mlflow_run.png"))
        page.goto(f"{page_url}/model-metrics{view}")
        page.wait_for_timeout(6000)
        _close_popups(page)
        page.screenshot(path=str(out / "mlflow_charts.png"))


def _close_popups(page: Any) -> None:
    """Close the side panels and guided tours the UIs open on a first visit."""
    for name in ("Close", "Close guidance", "Dismiss", "Got it", "Skip", "Close tour"):
        for button in page.get_by_role("button", name=name, exact=True).all():
            if button.is_visible():
                button.click()
                page.wait_for_timeout(300)


def kedro_viz(out: Path) -> None:
    port = 4141  # kedro viz refuses ports above 49151 (free_port's range) and moves up if busy
    while _in_use(port):
        port += 1
    base = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "kedro", "viz", "run", "--no-browser", f"--port={port}"]
    with server(args, base, seconds=240), browser_page(1400, 900) as page:
        # kedro viz keeps its settings in localStorage: no feature tour, no minimap
        settings = {
            "showFeatureHints": False,
            "theme": "light",
            "visible": {"miniMap": False, "sidebar": True, "graph": True, "code": False},
        }
        page.add_init_script(f"localStorage.setItem('KedroViz', '{json.dumps(settings)}')")
        page.goto(base)
        page.wait_for_selector(".pipeline-node", timeout=120_000)
        page.wait_for_timeout(3000)
        _close_popups(page)
        page.keyboard.press("Escape")
        page.wait_for_timeout(1000)
        page.screenshot(path=str(out / "kedro_viz.png"))


def _in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "figures")
    ap.add_argument("--only", nargs="+", choices=["search", "mlflow", "viz"])
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    uri = os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{ROOT / 'mlflow.db'}")
    todo = args.only or ["search", "mlflow", "viz"]
    if "search" in todo:
        search_page(args.out)
    if "mlflow" in todo:
        mlflow_pages(args.out, uri)
    if "viz" in todo:
        kedro_viz(args.out)
    print(f"screenshots in {args.out}")


if __name__ == "__main__":
    main()
