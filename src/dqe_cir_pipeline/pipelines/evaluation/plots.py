"""Figures for the evaluation pipeline (matplotlib, headless)."""

from __future__ import annotations

import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from dqe_cir_pipeline.data_sources.schema import EDIT_TYPES  # noqa: E402
from dqe_cir_pipeline.model.evaluate import EvaluationConfig  # noqa: E402


def recall_curves(table: pd.DataFrame) -> Figure:
    """Recall@K per model (rows of ``table``: model, metric, value)."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    all_ks: set[int] = set()
    for model, rows in table.groupby("model", sort=False):
        pts = rows[rows["metric"].str.fullmatch(r"recall@\d+")]
        if pts.empty:
            pts = rows[rows["metric"].str.fullmatch(r"mean/recall@\d+")]
        if pts.empty:
            continue
        ks = pts["metric"].str.extract(r"@(\d+)")[0].astype(int)
        all_ks.update(ks.tolist())
        order = np.argsort(ks.to_numpy())
        ax.plot(ks.to_numpy()[order], pts["value"].to_numpy()[order], marker="o", label=model)
    ax.set_xscale("log")
    ticks = sorted(all_ks)
    ax.set_xticks(ticks, [str(k) for k in ticks])  # K = 1, 5, 10, 50, not 10^0, 10^1
    ax.minorticks_off()
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Recall@K")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    fig.tight_layout()
    return fig


def edit_type_bars(table: pd.DataFrame, k: int = 10) -> Figure:
    """Recall@k per edit type and model (generated benchmark; real data: lexicon buckets)."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    models = list(dict.fromkeys(table["model"]))
    width = 0.8 / max(1, len(models))
    for j, model in enumerate(models):
        rows = table[table["model"] == model].set_index("metric")["value"]
        vals = [rows.get(f"{et}/recall@{k}", np.nan) for et in EDIT_TYPES]
        ax.bar(np.arange(len(EDIT_TYPES)) + j * width, vals, width, label=model)
    ax.set_xticks(np.arange(len(EDIT_TYPES)) + width * (len(models) - 1) / 2, EDIT_TYPES)
    ax.set_ylabel(f"Recall@{k} (%)")
    ax.set_title(f"Recall@{k} by edit type")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig


def attribute_weights(per_query: pd.DataFrame) -> Figure:
    """Mean learned attribute weights (base / color / shape) per edit type."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    cols = [c for c in ("w_base", "w_color", "w_shape") if c in per_query]
    if cols:
        means = (
            per_query.groupby("edit_type")[cols]
            .mean()
            .reindex([e for e in EDIT_TYPES if e in set(per_query["edit_type"])])
        )
        width = 0.8 / len(cols)
        for j, c in enumerate(cols):
            ax.bar(np.arange(len(means)) + j * width, means[c], width, label=c[2:])
        ax.set_xticks(np.arange(len(means)) + width * (len(cols) - 1) / 2, list(means.index))
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
        spread = float((means.max() - means.min()).max()) if len(means) > 1 else 0.0
        if spread < 0.02:  # say it: the weights do not depend on the text
            ax.text(
                0.5,
                0.95,
                f"weights equal across edit types (spread {spread:.3f}): not text-conditioned",
                transform=ax.transAxes,
                ha="center",
                va="top",
                fontsize=7,
                color="darkred",
            )
    ax.set_ylabel("mean weight")
    ax.set_title("Learned attribute weights by edit type")
    fig.tight_layout()
    return fig


def qualitative_grid(
    rows: pd.DataFrame,
    paths: dict[str, str],
    title: str,
    k: int = 5,
    show_target: bool = False,
) -> Figure:
    """Reference + text, then the top-k retrievals labelled ``rank 1..k``; the target is
    framed in green. ``show_target`` adds a last column with the target and its rank
    (failures: the right answer is otherwise not on the page).

    ``rows`` needs ``reference_id, text, target_id, topk`` columns (and ``rank``, 0-based,
    for ``show_target``).
    """
    n = max(1, len(rows))
    cols = k + 1 + int(show_target)
    fig, axes = plt.subplots(n, cols, figsize=(1.7 * cols, 1.9 * n), squeeze=False)
    for i, row in enumerate(rows.itertuples(index=False)):
        cells = [row.reference_id, *list(row.topk)[:k]]
        if show_target:
            for j in range(len(cells), k + 1):
                axes[i][j].axis("off")
            ax = axes[i][k + 1]
            ax.set_xticks([])
            ax.set_yticks([])
            with Image.open(paths[row.target_id]) as img:
                ax.imshow(img.convert("RGB"))
            for side in ax.spines.values():
                side.set_edgecolor("limegreen")
                side.set_linewidth(4)
            ax.set_title(f"target: rank {int(row.rank) + 1}", fontsize=7, color="green")
        for j in range(k + 1):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(cells):
                ax.axis("off")
                continue
            with Image.open(paths[cells[j]]) as img:
                ax.imshow(img.convert("RGB"))
            if j == 0:
                ax.set_title("\n".join(textwrap.wrap(str(row.text), 22))[:90], fontsize=6)
                ax.set_ylabel("reference", fontsize=7)
            elif cells[j] == row.target_id:
                for side in ax.spines.values():
                    side.set_edgecolor("limegreen")
                    side.set_linewidth(4)
                ax.set_title(f"rank {j}: target", fontsize=7, color="green")
            else:
                ax.set_title(f"rank {j}", fontsize=7)
    if rows.empty:
        axes[0][0].text(0.5, 0.5, "no queries", ha="center")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def _qualitative_picks(rankings: pd.DataFrame, n: int, k: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Up to ``n`` random labelled queries whose target is in the top ``k``, and ``n`` whose
    target is not (one seeded draw, so both grids are stable across runs)."""
    labelled = rankings[rankings["rank"] >= 0]
    rng = np.random.default_rng(0)
    good = labelled[labelled["rank"] < k]
    bad = labelled[labelled["rank"] >= k]
    good = good.iloc[rng.permutation(len(good))[:n]] if len(good) else good
    bad = bad.iloc[rng.permutation(len(bad))[:n]] if len(bad) else bad
    return good, bad


def _image_paths(images: pd.DataFrame) -> dict[str, str]:
    return images.drop_duplicates("image_id").set_index("image_id")["path"].to_dict()


def qualitative_successes(
    query_rankings: pd.DataFrame, images: pd.DataFrame, evaluation: EvaluationConfig
) -> Figure:
    """Queries the trained model gets right (target within ``qualitative_topk``)."""
    k = evaluation.qualitative_topk
    good, _ = _qualitative_picks(query_rankings, evaluation.qualitative_queries, k)
    return qualitative_grid(
        good, _image_paths(images), f"dqe_cir: successes (target in top {k})", k
    )


def qualitative_failures(
    query_rankings: pd.DataFrame, images: pd.DataFrame, evaluation: EvaluationConfig
) -> Figure:
    """Queries the trained model gets wrong (target outside ``qualitative_topk``)."""
    k = evaluation.qualitative_topk
    _, bad = _qualitative_picks(query_rankings, evaluation.qualitative_queries, k)
    return qualitative_grid(
        bad, _image_paths(images), f"dqe_cir: failures (target not in top {k})", k, show_target=True
    )
