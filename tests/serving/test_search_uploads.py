"""``POST /api/search`` with an uploaded reference that cannot be used: a 400 that says why
and names the upload by its file name (a decompression bomb, an unreadable file).

The app runs over a stand-in searcher: an upload is decoded before the model is asked,
so these answers never reach it."""

from __future__ import annotations

import base64
import io
import warnings
from types import SimpleNamespace

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from dqe_cir_pipeline.serving.web import create_app


@pytest.fixture()
def client() -> TestClient:
    index = SimpleNamespace(table=pd.DataFrame({"image_id": ["g1"], "path": ["/nowhere/g1.png"]}))
    return TestClient(create_app(SimpleNamespace(index=index, default_k=5)))  # type: ignore[arg-type]


def _png_b64(side: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (200, 30, 30)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _search(client: TestClient, **body: object) -> tuple[int, str]:
    resp = client.post("/api/search", json={"text": "make it blue", **body})
    return resp.status_code, str(resp.json()["detail"])


def test_a_decompression_bomb_is_refused_with_the_reason(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL errors above twice this
    status, detail = _search(client, image_b64=_png_b64(64), image_name="huge.png")
    assert status == 400, detail
    assert detail.startswith("the uploaded image 'huge.png': refused as a decompression bomb")
    assert "4096 pixels" in detail  # PIL's reason: the size against the limit


def test_the_decompression_bomb_warning_turned_into_an_error_is_refused_too(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 40 x 40 only warns
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        status, detail = _search(client, image_b64=_png_b64(40), image_name="big.png")
    assert status == 400, detail
    assert "'big.png': refused as a decompression bomb" in detail and "1600 pixels" in detail


def test_an_unreadable_upload_is_named_by_its_file_name(client: TestClient) -> None:
    junk = base64.b64encode(b"not an image at all").decode("ascii")
    status, detail = _search(client, image_b64=junk, image_name="holiday.jpg")
    assert status == 400
    assert detail.startswith("the uploaded image 'holiday.jpg': not a readable image")
    assert "BytesIO" not in detail and "0x" not in detail
    status, detail = _search(client, image_b64=junk)  # a client that sends no name
    assert status == 400
    assert detail.startswith("the uploaded image: not a readable image") and "BytesIO" not in detail


def test_an_upload_over_the_size_limit_is_named(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("dqe_cir_pipeline.serving.web.MAX_UPLOAD_CHARS", 2**20)
    status, detail = _search(client, image_b64="A" * (2**20 + 4), image_name="scan.tiff")
    assert (status, detail) == (400, "the uploaded image 'scan.tiff' is larger than 1 MiB")
