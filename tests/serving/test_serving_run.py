"""The trained model in use, from the session's ``kedro run --env test --pipeline train``:
the registered MLflow model (fresh process, REST server), the search command and
function agreeing with the evaluation, the export folder and bad input."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from dqe_cir_pipeline.serving import (
    GalleryIndex,
    QueryModel,
    Searcher,
    ServingInputError,
    StaleIndexError,
    search,
)
from dqe_cir_pipeline.serving.query_model import weights_version
from tests.conftest import ROOT, kedro
from tests.helpers.net import answers, free_port, wait_until

pytestmark = pytest.mark.slow

MODEL_URI = "models:/dqe_cir_synthetic/latest"


@pytest.fixture(scope="module")
def served(kedro_test_run: dict[str, Any]) -> dict[str, Any]:
    """The run's serving outputs and the evaluated test queries the model ranks right."""
    data = kedro_test_run["data"]
    rankings = pd.read_parquet(data / "07_model_output/query_rankings.parquet")
    images = pd.read_parquet(data / "02_intermediate/images.parquet")
    paths = images.drop_duplicates("image_id").set_index("image_id")["path"]
    right = rankings[rankings["rank"] == 0].head(4)
    assert len(right), "the tiny model ranks no test query right"
    return {
        **kedro_test_run,
        "export": data / "06_models/query_model",
        "index": data / "06_models/gallery_index",
        "right": right.assign(reference_path=[paths[r] for r in right["reference_id"]]),
    }


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_search_agrees_with_the_evaluation_rankings(served: dict[str, Any]) -> None:
    searcher = Searcher(
        QueryModel.from_pretrained(served["export"]), GalleryIndex.load(served["index"])
    )
    for row in served["right"].itertuples():
        got = searcher.search(row.reference_path, row.text, k=len(row.topk))
        assert got["image_id"].iloc[0] == row.target_id
        assert got["image_id"].tolist() == list(row.topk)  # the evaluation's own top-k
        assert got["rank"].tolist() == list(range(1, len(row.topk) + 1))
    # the notebook function: same answer
    row = served["right"].iloc[0]
    frame = search(
        row.reference_path, row.text, 3, checkpoint=served["export"], gallery=served["index"]
    )
    assert frame["image_id"].tolist() == list(row.topk[:3])


def test_registered_model_answers_its_input_example_in_a_fresh_process(
    served: dict[str, Any],
) -> None:
    code = (
        "import json, time, mlflow.pyfunc\n"
        "t0 = time.perf_counter()\n"
        f"m = mlflow.pyfunc.load_model({MODEL_URI!r})\n"
        "t1 = time.perf_counter()\n"
        "example = m.input_example\n"
        "out = m.predict(example)\n"
        "t2 = time.perf_counter()\n"
        "print(json.dumps({'load_s': t1 - t0, 'first_answer_s': t2 - t1,"
        " 'text': example['text'][0],"
        " 'inputs': [c.name for c in m.metadata.get_input_schema().inputs],"
        " 'ids': out['image_id'].tolist(), 'ranks': out['rank'].tolist()}))\n"
    )
    proc = _run([sys.executable, "-c", code], served["env"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    assert answer["inputs"] == ["text", "image_b64", "image_path", "k"]
    first = served["right"].iloc[0]  # the example is the first query the model ranks right
    assert answer["text"] == first.text
    assert answer["ids"][0] == first.target_id and answer["ranks"] == list(range(1, 11))
    load, first_answer = answer["load_s"], answer["first_answer_s"]
    print(f"fresh process: load {load:.2f} s, first answer {first_answer:.2f} s")


def _post(url: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url, json.dumps(payload).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def test_mlflow_models_serve_answers_a_post_on_loopback(served: dict[str, Any]) -> None:
    port = free_port()
    # mlflow execs `uvicorn` from PATH: the venv's bin first, as an activated venv has it
    env = {
        **served["env"],
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", MODEL_URI,
         "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: answers(f"{url}/ping"), server, 180, "the server to answer /ping")
        row = served["right"].iloc[-1]
        b64 = base64.b64encode(Path(row.reference_path).read_bytes()).decode()
        url = f"{url}/invocations"
        status, body = _post(
            url,
            {
                "dataframe_split": {
                    "columns": ["text", "image_b64", "k"],
                    "data": [[row.text, b64, 3]],
                }
            },
        )
        assert status == 200, body
        assert [p["image_id"] for p in body["predictions"]] == list(row.topk[:3])
        status, body = _post(
            url, {"dataframe_split": {"columns": ["text", "image_b64"], "data": [["  ", b64]]}}
        )
        assert status >= 400 and "row 0: the text is empty" in json.dumps(body)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)  # the server and its uvicorn worker
            server.wait(timeout=30)


def test_search_command_prints_the_ranking_and_draws_the_grid(
    served: dict[str, Any], tmp_path: Path
) -> None:
    row = served["right"].iloc[0]
    grid = tmp_path / "answer.png"
    proc = _run(
        [sys.executable, "-m", "dqe_cir_pipeline", "search", "--image", row.reference_path,
         "--text", row.text, "-k", "5", "--model", MODEL_URI, "--grid", str(grid)],
        served["env"],
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["rank", "score"])
    results = [line.split() for line in lines[header + 1 : header + 6]]
    assert [r[0] for r in results] == ["1", "2", "3", "4", "5"]
    assert [r[2] for r in results] == list(row.topk[:5])
    assert grid.stat().st_size > 0


def test_export_folder_follows_the_hugging_face_convention(served: dict[str, Any]) -> None:
    export = served["export"]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (export / name).is_file(), name
    card = (export / "README.md").read_text()
    assert "## Metrics" in card and "## Limits" in card and "synthetic" in card
    config = json.loads((export / "config.json").read_text())
    ckpt = torch.load(served["data"] / "06_models/best_checkpoint.pt", weights_only=True)
    assert config["version"] == weights_version(ckpt["model"])  # the checkpoint it exports
    assert config["backbone"]["key"] == ckpt["backbone"]["key"]
    assert GalleryIndex.load(served["index"]).model_version == config["version"]


def _other_version(model: QueryModel, **changes: Any) -> QueryModel:
    """The same model with one weight nudged (another version) or another backbone key."""
    if not changes:
        with torch.no_grad():
            model.dqe.vision_projection.weight.add_(1e-3)
    fields = {
        "backbone_key": model.backbone_key,
        "backbone_name": model.backbone_name,
        "max_text_len": model.max_text_len,
        **changes,
    }
    return QueryModel(model._retrieval, model.dqe, model.tokenizer, model.preprocessor, **fields)


def test_bad_input_is_refused_with_what_is_wrong(served: dict[str, Any], tmp_path: Path) -> None:
    model = QueryModel.from_pretrained(served["export"])
    index = GalleryIndex.load(served["index"])
    searcher = Searcher(model, index)
    row = served["right"].iloc[0]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ServingInputError, match=r"broken\.png: not a readable image"):
        searcher.search(broken, row.text)
    with pytest.raises(ServingInputError, match="no such image file"):
        searcher.search(tmp_path / "missing.png", row.text)
    with pytest.raises(ServingInputError, match="the text is empty"):
        searcher.search(row.reference_path, "   ")
    with pytest.raises(ServingInputError, match=rf"k=1000 .* {len(index) - 1} images"):
        searcher.search(row.reference_path, row.text, k=1000)
    request = pd.DataFrame(
        {"text": ["ok", "ok"], "image_b64": ["%%%", None], "image_path": [None, None]}
    )
    with pytest.raises(ServingInputError, match="row 0 image_b64: not valid base64"):
        searcher.answer_request(request, 5)
    request = pd.DataFrame({"text": ["ok", "ok"], "image_path": [row.reference_path, None]})
    with pytest.raises(ServingInputError, match="row 1: no image"):
        searcher.answer_request(request, 5)
    with pytest.raises(StaleIndexError, match="backbone"):
        Searcher(_other_version(model, backbone_key="local-another"), index)
    other = _other_version(model)
    assert other.version != index.model_version
    with pytest.raises(StaleIndexError, match=rf"model version {index.model_version}.*rebuild"):
        Searcher(other, index)
    # the command says so too, for an index built by that other model
    stale = tmp_path / "stale_index"
    GalleryIndex.build(other, index.table.head(8), None).save(stale)
    proc = _run(
        [sys.executable, "-m", "dqe_cir_pipeline", "search", "--image", row.reference_path,
         "--text", row.text, "--checkpoint", str(served["export"]), "--gallery", str(stale)],
        served["env"],
    )  # fmt: skip
    assert proc.returncode == 2 and "rebuild the index" in proc.stderr, proc.stderr[-2000:]


def test_a_rerun_keeps_the_index_and_the_export(served: dict[str, Any]) -> None:
    before = json.loads((served["index"] / "meta.json").read_text())
    proc = kedro(["run", "--env", "test", "--pipelines", "serving"], served["env"])
    log = proc.stdout + proc.stderr
    assert "is up to date" in log and "already exported" in log
    assert json.loads((served["index"] / "meta.json").read_text()) == before
