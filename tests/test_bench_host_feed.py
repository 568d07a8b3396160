"""``benchmarks/bench_host_feed.py``: the host-side feed rates of the GPU path, at quick sizes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT
from tests.helpers.bench import on_benchmarks_path

SCRIPT = ROOT / "benchmarks" / "bench_host_feed.py"


@pytest.fixture(scope="module")
def stages() -> Iterator[ModuleType]:
    """The measured stages (``_host_feed_stages``, which imports its sibling ``_measure``)."""
    with on_benchmarks_path():
        import _host_feed_stages as module

        yield module


def _numbers(obj: object, path: str = "") -> Iterator[tuple[str, float]]:
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _numbers(value, f"{path}.{key}")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield path, float(obj)


def test_quick_run_reports_every_stage_against_the_gpu_needs(tmp_path: Path) -> None:
    work, out = tmp_path / "work", tmp_path / "host_feed.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--threads", "2"]
        + ["--workdir", str(work), "--out", str(out)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(out.read_text())

    for fmt in ("jpeg", "png"):
        decode = res["decode"][fmt]
        for key in (
            "per_core_images_per_s",
            "one_thread_images_per_s",
            "threads_images_per_s",
            "workers_images_per_s",
            "cores_for_target",
        ):
            assert decode[key] > 0
        assert decode["images_timed"] == res["sizes"]["images"] * res["sizes"]["passes"]
        assert 0 < decode["decode_share_of_cpu"] and 0 < decode["preprocess_share_of_cpu"]
        assert decode["preprocess_only_per_core_images_per_s"] > 0
    for key in (
        "gb_per_s",
        "write_shard_gb_per_s",
        "check_gb_per_s",
        "split_np_save_gb_per_s",
        "split_crc32_gb_per_s",
    ):
        assert res["writer"][key] > 0
    assert res["writer"]["bytes"] == res["sizes"]["rows"] * 257 * 1408 * 2
    for key in (
        "cold_gb_per_s",
        "warm_gb_per_s",
        "warm_reused_buffer_gb_per_s",
        "prefetch_gb_per_s",
        "prefetch_simulated_step_triplets_per_s",
    ):
        assert res["gather"][key] > 0
    # A step sleeping batch / 900 s can never run faster than 900 triplets/s.
    assert res["gather"]["prefetch_simulated_step_triplets_per_s"] <= 900.0
    assert res["copy"]["reused_gb_per_s"] > 0 and res["copy"]["fresh_gb_per_s"] > 0

    needs = res["verdicts"]["needs"]
    assert needs["gather_gb_per_s"] == pytest.approx(3 * 257 * 1408 * 2 * 900 / 1e9)
    assert needs["writer_gb_per_s"] == pytest.approx(257 * 1408 * 2 * 900 / 1e9)
    assert res["verdicts"]["decode_jpeg_cores_needed"] == math.ceil(
        res["decode"]["jpeg"]["cores_for_target"]
    )
    numbers = dict(_numbers(res))
    assert numbers and all(math.isfinite(v) for v in numbers.values()), numbers
    assert res["all_finite"] is True
    assert res["env"]["load_average_start"] and res["total_s"] > 0
    assert "gather warm, fresh arrays" in proc.stdout and "900 img/s" in proc.stdout
    assert not work.exists()  # generated files removed without --keep


def test_generated_images_decode_at_the_requested_sizes(stages: ModuleType, tmp_path: Path) -> None:
    sizes = replace(stages.QUICK, images=3, min_side=300, max_side=360)
    for fmt, suffix in (("jpeg", "JPEG"), ("png", "PNG")):
        paths = stages.make_images(tmp_path / fmt, sizes, fmt)
        assert len(paths) == 3
        for path in paths:
            with Image.open(path) as img:
                assert img.format == suffix
                assert all(300 <= side <= 360 for side in img.size)
                pixels = np.asarray(img.convert("RGB"))
            assert pixels.min() < 200 and pixels.max() > 240  # a shape on a light background


def test_written_cache_is_what_the_gather_reads(stages: ModuleType, tmp_path: Path) -> None:
    from dqe_cir_pipeline.datasets.feature_cache import FeatureCache
    from dqe_cir_pipeline.datasets.feature_shards import read_index, read_meta

    sizes = replace(stages.QUICK, rows=20, shard_size=8)
    key_dir = tmp_path / "cache" / "key"
    written = stages.write_cache(key_dir, sizes, seed=3)
    assert written["bytes"] == 20 * stages.ROW_BYTES
    assert sorted(p.name for p in key_dir.glob("shard-*.npy")) == [
        "shard-000000.npy",
        "shard-000001.npy",
        "shard-000002.npy",
    ]
    index = read_index(key_dir)
    cache = FeatureCache(root=key_dir, meta=read_meta(key_dir), index=index)
    tokens = cache.get(["img0000000", "img0000019", "img0000008"])
    assert tokens.shape == (3, 257, 1408) and tokens.dtype == np.float16
    # Shard 0 holds rows 0-7 from one random block, shard 2 rows 16-19 from another.
    assert np.isfinite(tokens).all() and tokens.astype(np.float32).std() > 0.5
    assert not np.array_equal(tokens[0], tokens[1])

    gather = stages.gather_rates(key_dir, sizes, seed=0)
    assert gather["rows"] == 20 and gather["step_bytes"] == 3 * sizes.batch * stages.ROW_BYTES


@pytest.mark.gpu
def test_cuda_section_measures_copies_and_the_resident_gather(stages: ModuleType) -> None:
    res = stages.cuda_rates(stages.QUICK, repeats=2)
    for key in (
        "h2d_pinned_gb_per_s",
        "h2d_pageable_gb_per_s",
        "d2h_pinned_gb_per_s",
        "resident_gather_gb_per_s",
    ):
        assert math.isfinite(res[key]) and res[key] > 0
    assert res["cirr_cache_gib"] == pytest.approx(21_551 * 257 * 1408 * 2 / 2**30)
    assert isinstance(res["fashioniq_fits_on_device"], bool)
