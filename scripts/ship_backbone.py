"""Copy a pretrained backbone folder into the repository, with what reproduces it.

    .venv/bin/kedro run --pipelines=pretraining
    .venv/bin/python scripts/ship_backbone.py data/synthetic/06_models/pretrained_backbone \
        models/tiny-blip2-synthetic

Copies the current backbone of the pretraining output folder (``current.json``) and
writes ``SHIPPED.json`` beside it: the backbone key, the SHA-256 of every file, and the
command that produced it. ``tests/test_shipped_backbone.py`` checks the hashes, so a
shipped file can never change silently.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

COMMAND = "kedro run --pipelines=pretraining"
SHIPPED_FILE = "SHIPPED.json"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path, help="the pretraining output folder (with current.json)")
    ap.add_argument("dest", type=Path, help="the folder in the repository")
    args = ap.parse_args()
    key = json.loads((args.source / "current.json").read_text())["key"]
    folder = args.source / key
    if args.dest.exists():
        shutil.rmtree(args.dest)
    shutil.copytree(folder, args.dest)
    files = sorted(p for p in args.dest.iterdir() if p.is_file())
    shipped = {
        "key": key,
        "command": COMMAND,
        "settings": "pretraining.json (description: the configuration the key hashes)",
        "sha256": {p.name: sha256(p) for p in files},
        "bytes": sum(p.stat().st_size for p in files),
    }
    (args.dest / SHIPPED_FILE).write_text(json.dumps(shipped, indent=2, sort_keys=True) + "\n")
    print(f"shipped {key} to {args.dest} ({shipped['bytes'] / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
