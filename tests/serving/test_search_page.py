"""The search page over the session's trained model: its API against the evaluation's own
rankings, bad input refused by name, and the page itself in headless Chromium (a
benchmark query with its target marked, an uploaded image, a screenshot whose result
thumbnails are the gallery's images)."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from dqe_cir_pipeline.serving import GalleryIndex, QueryModel, Searcher
from dqe_cir_pipeline.serving.errors import ServingInputError
from dqe_cir_pipeline.serving.web import Example, benchmark_examples, create_app
from tests.conftest import ROOT
from tests.helpers.browser import browser_page, chromium_path, serve_app
from tests.helpers.net import answers, free_port, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def page_setup(kedro_test_run: dict[str, Any]) -> dict[str, Any]:
    """The run's searcher, every test query as an example, and the evaluation's ranks."""
    data = kedro_test_run["data"]
    searcher = Searcher(
        QueryModel.from_pretrained(data / "06_models/query_model"),
        GalleryIndex.load(data / "06_models/gallery_index"),
    )
    triplets = pd.read_parquet(data / "02_intermediate/triplets.parquet")
    images = pd.read_parquet(data / "02_intermediate/images.parquet")
    gallery = set(searcher.index.table["image_id"])
    examples = benchmark_examples(triplets, images, gallery, "test", limit=100_000)
    rankings = pd.read_parquet(data / "07_model_output/query_rankings.parquet")
    return {
        "searcher": searcher,
        "examples": examples,
        "rankings": rankings.set_index("query_id"),
        "images": images.drop_duplicates("image_id").set_index("image_id")["path"],
        "app": create_app(searcher, examples),
    }


def test_examples_are_the_gallery_splits_queries_spread_over_edit_types(
    page_setup: dict[str, Any],
) -> None:
    examples: list[Example] = page_setup["examples"]
    rankings = page_setup["rankings"]
    assert {e.example_id for e in examples} == set(rankings.index)  # every test query
    first = [e.edit_type for e in examples[:4]]
    assert len(set(first)) == 4  # interleaved: colour, shape, both, other up front
    for e in examples[:20]:
        row = rankings.loc[e.example_id]
        assert (e.reference_id, e.target_id, e.text) == (row.reference_id, row.target_id, row.text)


def test_api_ranks_agree_with_the_evaluation(page_setup: dict[str, Any]) -> None:
    client = TestClient(page_setup["app"])
    rankings = page_setup["rankings"]
    checked = 0
    for qid, row in rankings.head(12).iterrows():
        resp = client.post("/api/search", json={"example_id": qid, "text": row.text, "k": 5})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        ids = [r["image_id"] for r in body["results"]]
        assert ids == list(row.topk[:5])  # the evaluation's own top 5
        assert body["target"] == {"image_id": row.target_id, "rank": int(row["rank"]) + 1}
        assert [r["is_target"] for r in body["results"]] == [i == row.target_id for i in ids]
        checked += 1
    assert checked == 12
    # an edited text is no longer the benchmark's query: no target claimed
    qid, row = next(rankings.iterrows())
    body = client.post(
        "/api/search", json={"example_id": qid, "text": row.text + " and smaller", "k": 3}
    ).json()
    assert body["target"] is None and not any(r["is_target"] for r in body["results"])


def test_api_refuses_bad_input_by_name(page_setup: dict[str, Any], tmp_path: Path) -> None:
    client = TestClient(page_setup["app"])
    qid = page_setup["examples"][0].example_id
    cases = [
        ({"example_id": qid, "text": "  "}, "text is empty"),
        ({"example_id": "no-such", "text": "red"}, "no benchmark example 'no-such'"),
        ({"text": "red"}, "no reference image"),
        ({"image_b64": base64.b64encode(b"not an image").decode(), "text": "red"}, "uploaded"),
        ({"example_id": qid, "text": "red", "k": 0}, "k must be a whole number"),
        ({"example_id": qid, "text": "red", "k": 10**6}, "k=1000000"),
    ]
    for body, message in cases:
        resp = client.post("/api/search", json=body)
        assert resp.status_code == 400, (body, resp.text)
        assert message in resp.json()["detail"], (body, resp.json())
    # images are served by id only: a path in the URL reaches no file
    assert client.get("/images/..%2F..%2Fetc%2Fpasswd").status_code == 404
    assert client.get("/images/not-an-image").status_code == 404
    ref = page_setup["examples"][0].reference_id
    got = client.get(f"/images/{ref}")
    assert got.status_code == 200
    assert got.content == Path(page_setup["images"][ref]).read_bytes()


def test_an_example_missing_from_the_images_table_is_named() -> None:
    triplets = pd.DataFrame(
        {
            "query_id": ["q7"],
            "split": ["test"],
            "reference_id": ["ghost"],
            "target_id": ["t1"],
            "caption_eval": ["make it red"],
            "edit_type": ["color"],
        }
    )
    images = pd.DataFrame({"image_id": ["t1"], "path": ["/x/t1.png"]})
    with pytest.raises(ServingInputError, match="query q7 names reference image 'ghost'"):
        benchmark_examples(triplets, images, {"t1"}, "test")
    # a target outside the gallery drops the example (it could not be found), by rule
    assert benchmark_examples(triplets, images, set(), "test") == []


def _browser_or_skip() -> None:
    if chromium_path() is None:
        if os.environ.get("DQE_REQUIRE_BROWSER"):
            pytest.fail("DQE_REQUIRE_BROWSER is set but chromium is missing (.ci/run installs it)")
        pytest.skip("no chromium here: `apt-get install chromium` to run the browser test")


def _thumbnail_error(shot: bytes, original: str) -> float:
    """Mean absolute RGB difference (0-255) between a screenshot of a thumbnail and a
    gallery image scaled to it, inside a margin that skips the rounded corners."""
    got = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"), dtype=np.float64)
    h, w = got.shape[:2]
    want = Image.open(original).convert("RGB").resize((w, h), Image.Resampling.NEAREST)
    m = max(2, h // 12)
    diff = np.abs(got - np.asarray(want, dtype=np.float64))[m:-m, m:-m]
    return float(diff.mean())


def test_search_page_in_a_browser(page_setup: dict[str, Any], tmp_path: Path) -> None:
    _browser_or_skip()
    rankings = page_setup["rankings"]
    hit = rankings[rankings["rank"] == 0].index[0]  # the target ranks first
    miss_rows = rankings[rankings["rank"] >= 10]
    assert len(miss_rows), "every test query is in the top 10: the check below needs a miss"
    miss = miss_rows.index[0]
    with serve_app(page_setup["app"]) as url, browser_page() as page:
        page.goto(url)
        page.wait_for_function("document.querySelectorAll('#example option').length > 1")
        assert "gallery of" in page.inner_text("#info")

        # a benchmark query whose target the model ranks first
        page.select_option("#example", hit)
        assert page.input_value("#text") == rankings.loc[hit, "text"]
        page.fill("#k", "6")
        page.click("#search")
        page.wait_for_selector(".result >> nth=5")
        cards = page.query_selector_all(".result")
        ids = [c.get_attribute("data-image-id") for c in cards]
        assert ids == list(rankings.loc[hit, "topk"][:6])
        target = rankings.loc[hit, "target_id"]
        assert "target" in (cards[0].get_attribute("class") or "")
        assert cards[0].query_selector(".badge").inner_text() == "target"
        assert len(page.query_selector_all(".result.target")) == 1
        assert f"target {target} at rank 1" in page.inner_text("#target-status")
        loaded = page.evaluate(
            "[...document.querySelectorAll('.result img')].map(i => i.complete && i.naturalWidth)"
        )
        assert all(w and w > 0 for w in loaded), loaded
        # the screenshot shows each result's own gallery image, and no other result's
        for i, card in enumerate(cards):
            shot = card.query_selector("img").screenshot()
            errors = [_thumbnail_error(shot, page_setup["images"][other]) for other in ids]
            assert errors[i] < 2, (ids[i], errors)
            assert errors[i] == min(errors), (ids[i], errors)
        page.screenshot(path=str(tmp_path / "search_page.png"), full_page=True)
        whole = np.asarray(Image.open(tmp_path / "search_page.png").convert("L"))
        assert whole.std() > 10  # not a blank page

        # a query whose target is outside the top k: its exact rank is still given
        page.select_option("#example", miss)
        page.fill("#k", "5")
        page.click("#search")
        want = int(rankings.loc[miss, "rank"]) + 1
        page.wait_for_function(
            f"(document.getElementById('target-status')||{{}}).textContent?.includes('rank {want}')"
        )
        assert "outside the top 5" in page.inner_text("#target-status")
        assert page.query_selector_all(".result.target") == []

        # an uploaded reference image and a typed text
        upload = page_setup["images"][rankings.loc[hit, "reference_id"]]
        page.set_input_files("#file", upload)
        page.wait_for_function("!document.getElementById('reference-image').hidden")
        assert page.input_value("#example") == ""
        page.fill("#text", "make it red")
        page.fill("#k", "4")
        page.click("#search")
        page.wait_for_function("document.getElementById('status').textContent.startsWith('4 ')")
        assert len(page.query_selector_all(".result")) == 4
        assert page.query_selector("#target-status") is None
        assert page.inner_text("#error") == ""

        # an empty text: the page shows the server's reason
        page.fill("#text", "")
        page.click("#search")
        page.wait_for_function("document.getElementById('error').textContent.length > 0")
        assert "text is empty" in page.inner_text("#error")


def test_serve_command_answers_on_loopback_and_names_a_missing_model(
    kedro_test_run: dict[str, Any], tmp_path: Path
) -> None:
    """``dqe-cir-pipeline serve`` on the run's own model, index and benchmark queries."""
    port = free_port()
    cmd = [sys.executable, "-m", "dqe_cir_pipeline", "serve", "--env", "test"]
    proc = subprocess.Popen(
        [*cmd, "--port", str(port)],
        cwd=ROOT,
        env=kedro_test_run["env"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: answers(f"{base}/api/info"), proc, 120, "serve to answer")
        with urllib.request.urlopen(f"{base}/api/info", timeout=5) as resp:
            info = json.loads(resp.read())
        index = GalleryIndex.load(kedro_test_run["data"] / "06_models/gallery_index")
        assert info["gallery_images"] == len(index) and info["examples"] > 0
        with urllib.request.urlopen(f"{base}/api/examples", timeout=5) as resp:
            first = json.loads(resp.read())[0]
        body = json.dumps({"example_id": first["example_id"], "text": first["text"], "k": 3})
        req = urllib.request.Request(
            f"{base}/api/search", body.encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            answer = json.loads(resp.read())
        assert [r["rank"] for r in answer["results"]] == [1, 2, 3]
        assert answer["target"]["image_id"] == first["target_id"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    # no trained model under this data root: the next step is named, exit status 2
    empty = {**kedro_test_run["env"], "DQE_DATA_ROOT": str(tmp_path / "empty")}
    done = subprocess.run(
        [*cmd, "--port", str(free_port())],
        cwd=ROOT,
        env=empty,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "run `kedro run --pipelines=train` first" in done.stderr, done.stderr[-2000:]
