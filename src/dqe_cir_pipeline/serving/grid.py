"""A picture of one query's answer: the reference and its text, then the top-k images."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pandas as pd
from PIL import Image

from dqe_cir_pipeline.io_utils import atomic_save

#: Tiles per row of the grid.
COLUMNS = 6


def save_grid(reference: Image.Image, text: str, results: pd.DataFrame, out: str | Path) -> Path:
    """Write ``out`` (PNG): the reference with the text, then each result with its rank,
    id and score. A result whose file cannot be read is drawn as a grey tile."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tiles = len(results) + 1
    cols = min(COLUMNS, tiles)
    rows = math.ceil(tiles / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes[0][0].imshow(reference)
    axes[0][0].set_title("\n".join(textwrap.wrap(f"reference + {text}", 28)[:4]), fontsize=8)
    for n, row in enumerate(results.itertuples(index=False), start=1):
        ax = axes[n // cols][n % cols]
        try:
            with Image.open(row.path) as img:
                ax.imshow(img.convert("RGB"))
        except OSError:
            ax.imshow(Image.new("RGB", (8, 8), (128, 128, 128)))
        ax.set_title(
            f"#{row.rank} {textwrap.shorten(str(row.image_id), 24)}\n{row.score:.3f}", fontsize=8
        )
    fig.tight_layout()

    def write(tmp: Path) -> None:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")

    try:
        return atomic_save(out, write)
    finally:
        plt.close(fig)
