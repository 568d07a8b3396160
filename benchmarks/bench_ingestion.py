"""Benchmark: FashionIQ and CIRR ingestion at real scale with placeholder images.

Generates one tiny valid image per image id listed in the real annotation files (FashionIQ
as ``<id>.jpg``, every 10th as ``.png`` to exercise the extension fallback; CIRR at the
relative paths of its split files), then times the readers, including the image check.

Usage::

    .venv/bin/python benchmarks/bench_ingestion.py \\
        --annotations /path/to/annotations --workdir /tmp/dqe_bench_ingest

Images are generated once and reused on later runs (``--regenerate`` to force).
``--image-check decode`` (the default, as ``data.image_check``) decodes every pixel;
``header`` checks the container only (the faster, weaker check).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from dqe_cir_pipeline.data_sources.cirr import CIRRConfig, read_cirr
from dqe_cir_pipeline.data_sources.common import IngestResult, enforce_rejection_threshold
from dqe_cir_pipeline.data_sources.fashioniq import FashionIQConfig, read_fashioniq


def _encode(index: int, fmt: str) -> bytes:
    """An 8x8 image whose pixels encode ``index`` (so content hashes differ)."""
    r, g, b = index & 0xFF, (index >> 8) & 0xFF, (index >> 16) & 0xFF
    img = Image.new("RGB", (8, 8), (r, g, b))
    img.putpixel((0, 0), (255 - r, 255 - g, 255 - b))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _write_all(jobs: list[tuple[Path, int, str]], workers: int = 8) -> None:
    def one(job: tuple[Path, int, str]) -> None:
        path, index, fmt = job
        path.write_bytes(_encode(index, fmt))

    for d in {p.parent for p, _, _ in jobs}:
        d.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(workers) as ex:
        list(ex.map(one, jobs, chunksize=512))


def generate_images(ann: Path, work: Path, regenerate: bool) -> dict[str, float]:
    """Create placeholder images for FashionIQ and CIRR; return seconds per dataset."""
    out: dict[str, float] = {}
    fiq_dir = work / "fashioniq_images"
    stamp = work / ".generated"
    if stamp.exists() and not regenerate:
        return {"fashioniq": 0.0, "cirr": 0.0}
    t = time.perf_counter()
    ids: set[str] = set()
    for f in sorted((ann / "fashioniq" / "image_splits").glob("split.*.json")):
        ids.update(json.loads(f.read_text()))
    jobs = [
        (fiq_dir / f"{i}.{'png' if n % 10 == 0 else 'jpg'}", n, "PNG" if n % 10 == 0 else "JPEG")
        for n, i in enumerate(sorted(ids))
    ]
    _write_all(jobs)
    out["fashioniq"] = time.perf_counter() - t
    print(f"generated {len(jobs)} FashionIQ images in {out['fashioniq']:.1f}s")

    t = time.perf_counter()
    cirr_dir = work / "cirr_images"
    jobs = []
    for split in ("train", "val", "test1"):
        mapping = json.loads(
            (ann / "cirr" / "image_splits" / f"split.rc2.{split}.json").read_text()
        )
        jobs += [(cirr_dir / rel, len(jobs) + k, "PNG") for k, rel in enumerate(mapping.values())]
    _write_all(jobs)
    out["cirr"] = time.perf_counter() - t
    print(f"generated {len(jobs)} CIRR images in {out['cirr']:.1f}s")
    stamp.write_text("ok\n")
    return out


def report(name: str, wall: float, cpu: float, res: IngestResult) -> None:
    """Print throughput and the per-phase breakdown of one reader run."""
    c = res.counts()
    n_img = c["images"] + c["quarantined_images"]
    n_trip = c["triplets"] + c["quarantined_triplets"]
    print(
        f"\n== {name}: wall {wall:.2f}s, process CPU {cpu:.2f}s, load avg {os.getloadavg()[0]:.1f}"
    )
    print(f"   counts: {c}")
    print(
        f"   images: {n_img / wall:,.0f} memberships/s, distinct files "
        f"{res.images['path'].nunique():,}; triplets: {n_trip / wall:,.0f} records/s"
    )
    t = res.timings
    parts = ["json_s", "listdir_s", "image_check_s", "records_s", "frames_s"]
    print(
        "   breakdown: "
        + ", ".join(f"{k[:-2]} {t[k]:.2f}s ({t[k] / t['total_s']:.0%})" for k in parts if k in t)
    )
    if len(res.quarantine):
        print(
            "   quarantine reasons:",
            res.quarantine["reason"].str.split(": ").str[0].value_counts().to_dict(),
        )


def main() -> None:
    """Parse arguments, generate images, time both readers."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--annotations", type=Path, required=True, help="real annotation folder")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/dqe_bench_ingest"))
    ap.add_argument("--workers", type=int, default=None, help="image-check threads")
    ap.add_argument("--regenerate", action="store_true")
    ap.add_argument(
        "--image-check", choices=["decode", "header"], default="decode", help="data.image_check"
    )
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"cpus: {os.cpu_count()}, image check: {args.image_check}")
    generate_images(args.annotations, args.workdir, args.regenerate)

    t, c = time.perf_counter(), time.process_time()
    fiq = read_fashioniq(
        args.annotations / "fashioniq",
        args.workdir / "fashioniq_images",
        FashionIQConfig(workers=args.workers, image_check=args.image_check),
    )
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    report("FashionIQ (dress/shirt/toptee x train/val/test)", wall, cpu, fiq)
    enforce_rejection_threshold(fiq, 0.01)

    t, c = time.perf_counter(), time.process_time()
    cirr = read_cirr(
        args.annotations / "cirr",
        args.workdir / "cirr_images",
        CIRRConfig(
            image_only_splits=("train",), workers=args.workers, image_check=args.image_check
        ),
    )
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    report("CIRR rc2 (val, test1; train image-only)", wall, cpu, cirr)
    enforce_rejection_threshold(cirr, 0.01)


if __name__ == "__main__":
    main()
