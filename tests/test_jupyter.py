"""``kedro jupyter lab`` (the ``notebook`` extra) starts JupyterLab on the project's Kedro
kernel, and that kernel boots."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.blocking import BlockingKernelClient

from tests.conftest import ROOT
from tests.helpers.net import free_port, wait_until

pytest.importorskip("jupyterlab")
pytestmark = pytest.mark.slow

KERNEL = "kedro_dqe_cir_pipeline"
TOKEN = "dqe-test-token"


def _get(url: str, method: str = "GET", body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"Authorization": f"token {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        raw = resp.read()
        return (
            json.loads(raw)
            if raw and resp.headers.get_content_type() == "application/json"
            else resp.status
        )


def test_kedro_jupyter_lab_serves_the_projects_kernel(tmp_path: Path) -> None:
    port = free_port()
    args = [
        sys.executable, "-m", "kedro", "jupyter", "lab", "--no-browser",
        f"--port={port}", f"--IdentityProvider.token={TOKEN}", "--ServerApp.ip=127.0.0.1",
    ]  # fmt: skip
    if hasattr(os, "getuid") and os.getuid() == 0:
        args.append("--allow-root")  # containers run as root; Jupyter refuses without it
    env = {
        **os.environ,
        "JUPYTER_DATA_DIR": str(tmp_path / "jupyter_data"),  # the kernel spec goes here
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter_runtime"),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter_config"),
        "HF_HUB_OFFLINE": "1",
    }
    proc = subprocess.Popen(
        args,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    printed: list[str] = []
    try:
        specs = wait_until(lambda: _get(f"{base}/api/kernelspecs"), proc, 120, "the server", 1)
        assert specs["default"] == KERNEL, specs["default"]
        spec = specs["kernelspecs"][KERNEL]["spec"]
        assert "kedro.ipython" in " ".join(spec["argv"])  # the Kedro extension is loaded
        assert (tmp_path / "jupyter_data" / "kernels" / KERNEL / "kernel.json").is_file()
        assert _get(f"{base}/lab") == 200
        kernel = _get(f"{base}/api/kernels", "POST", {"name": KERNEL})
        # talk to the kernel the server started, through its connection file
        connection = tmp_path / "jupyter_runtime" / f"kernel-{kernel['id']}.json"
        client = BlockingKernelClient()
        client.load_connection_file(str(connection))
        client.start_channels()
        try:
            client.wait_for_ready(timeout=180)
            reply = client.execute_interactive(
                "print('train' in pipelines, 'model_checkpoint' in catalog, "
                "type(session).__name__)",
                timeout=120,
                output_hook=lambda msg: printed.append(msg["content"].get("text", "")),
            )
        finally:
            client.stop_channels()
        assert reply["content"]["status"] == "ok", reply["content"]
        assert "True True KedroSession" in "".join(printed), printed  # the project, loaded
        _get(f"{base}/api/kernels/{kernel['id']}", "DELETE")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
