"""Run ``run_fit`` under ``torchrun`` (one process per rank); rank 0 saves the result.

torchrun --standalone --nproc_per_node 2 tests/helpers/ddp_worker.py BACKBONE_DIR OUT JSON_OVERRIDES
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dqe_cir_pipeline.model.distributed import Distributed  # noqa: E402
from helpers.tiny_training import run_fit, save_result, tiny_backbone  # noqa: E402


def main() -> None:
    backbone_dir, out, overrides = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    dist = Distributed.from_env()
    result = run_fit(
        tiny_backbone(backbone_dir), None, no_dropout=True, distributed=dist, **overrides
    )
    if dist.is_main:
        save_result(result, out)
    dist.teardown()


if __name__ == "__main__":
    main()
