"""Compare the final evaluation metrics of MLflow runs, grouped by configuration.

Reads every finished run of an MLflow experiment (one run per ``kedro run``), keeps the
final evaluation metrics (``eval/<model>.<metric>``), groups the runs
by a set of parameters (the ablation knobs by default) and reports mean +- std over the
seeds of each group (``training.loop.seed``), as

* ``comparison.md``  - a Markdown table (``mean ± std``; std is the sample std, ddof=1,
  left out when a group has a single run),
* ``comparison.csv`` - the same numbers, one ``<metric>_mean`` / ``<metric>_std`` column
  pair per metric,
* ``comparison.png`` - grouped bars with the std as error bars.

Runs without any of the selected metrics (e.g. a ``data_ingestion``-only run) are
skipped. When a group holds several runs with the same seed (a configuration re-run),
only the most recent one counts, so a repeated run does not weigh twice.

Usage::

    .venv/bin/python benchmarks/compare_runs.py                       # dqe_cir_synthetic
    .venv/bin/python benchmarks/compare_runs.py --experiment dqe_cir_fashioniq \\
        --metrics recall_at_10 recall_at_50 avg --models dqe_cir zero_shot
    .venv/bin/python benchmarks/compare_runs.py --filter "tags.kedro_pipeline = 'train'"
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient

logger = logging.getLogger("compare_runs")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_GROUP_BY = (
    "training.loss.objective,training.loop.negatives,training.model.use_attribute_weights,"
    "training.loss.use_margins,mining.strategy"
)
UNSET = "<unset>"  # value shown for a group-by parameter a run did not log


def default_tracking_uri() -> str:
    """The project's store: ``MLFLOW_TRACKING_URI`` or ``sqlite:///<repo>/mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{(REPO / 'mlflow.db').as_posix()}")


def default_out_dir(experiment: str) -> Path:
    """``<data root>/compare_runs/<experiment>`` (``DQE_DATA_ROOT`` moves the data root)."""
    root = Path(os.environ.get("DQE_DATA_ROOT", REPO / "data"))
    return root / "compare_runs" / experiment


def fetch_runs(
    tracking_uri: str,
    experiment: str,
    metric_prefix: str,
    params: Sequence[str],
    filter_string: str = "",
) -> pd.DataFrame:
    """Finished runs of ``experiment`` as one row per run.

    Args:
        tracking_uri: MLflow tracking URI (e.g. ``sqlite:///.../mlflow.db``).
        experiment: Experiment name.
        metric_prefix: Only metrics whose key starts with this are kept; the prefix is
            stripped from the column names (``dqe_cir.recall_at_10``).
        params: Parameters to keep (missing ones become :data:`UNSET`).
        filter_string: Extra MLflow search filter, AND-ed with ``status = 'FINISHED'``.

    Returns:
        Columns ``run_id``, ``start_time`` (ms), one column per parameter and one per
        metric. Empty when the experiment has no matching runs.

    Raises:
        ValueError: The experiment does not exist in this store.
    """
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise ValueError(f"no experiment {experiment!r} in {tracking_uri}; found: {names}")
    query = "attributes.status = 'FINISHED'" + (f" AND {filter_string}" if filter_string else "")
    rows: list[dict[str, object]] = []
    token: str | None = None
    while True:
        page = client.search_runs([exp.experiment_id], query, max_results=1000, page_token=token)
        for run in page:
            metrics = {
                k[len(metric_prefix) :]: v
                for k, v in run.data.metrics.items()
                if k.startswith(metric_prefix)
            }
            row: dict[str, object] = {"run_id": run.info.run_id, "start_time": run.info.start_time}
            row.update({p: run.data.params.get(p, UNSET) for p in params})
            row.update(metrics)
            rows.append(row)
        token = page.token
        if not token:
            break
    logger.info("%d finished runs in %s", len(rows), experiment)
    return pd.DataFrame(rows)


def select_metrics(
    columns: Sequence[str], models: Sequence[str] | None, metrics: Sequence[str] | None
) -> list[str]:
    """Metric columns ``<model>.<metric>`` to compare, in a stable order.

    Args:
        columns: Every metric column found (prefix already stripped).
        models: Models to keep (``dqe_cir``, ``zero_shot``, ``text_blind``); ``None``: all.
        metrics: Metric names to keep (``recall_at_10``); ``None``: every headline metric,
            i.e. those without a ``/`` (per-category / per-edit-type / weight breakdowns
            are left out unless named).
    """
    chosen = []
    for col in columns:
        model, _, name = col.partition(".")
        if not name:
            continue
        if models is not None and model not in models:
            continue
        if metrics is None and "/" in name:
            continue
        if metrics is not None and name not in metrics:
            continue
        chosen.append(col)
    model_order = {m: i for i, m in enumerate(models or [])}
    metric_order = {m: i for i, m in enumerate(metrics or [])}
    return sorted(
        chosen,
        key=lambda c: (
            model_order.get(c.partition(".")[0], len(model_order)),
            c.partition(".")[0],
            metric_order.get(c.partition(".")[2], len(metric_order)),
            _natural_key(c.partition(".")[2]),
        ),
    )


def _natural_key(name: str) -> tuple[object, ...]:
    """Sort ``recall_at_5`` before ``recall_at_10``."""
    head, _, tail = name.rpartition("_")
    return (head, int(tail), "") if tail.isdigit() else (name, -1, name)


def summarise(
    runs: pd.DataFrame, group_by: Sequence[str], seed_param: str, metric_cols: Sequence[str]
) -> pd.DataFrame:
    """Mean and sample std (ddof=1) of each metric over the seeds of each group.

    Args:
        runs: Output of :func:`fetch_runs`.
        group_by: Parameters defining a configuration.
        seed_param: The parameter that distinguishes repeats of a configuration; of
            several runs with the same group and seed only the latest is kept.
        metric_cols: Metric columns to aggregate.

    Returns:
        One row per group: the group-by columns, ``n_runs``, ``seeds`` (comma-joined),
        then ``<metric>_mean`` and ``<metric>_std`` per metric (std NaN for one run).
        Sorted by the first metric's mean, best first.
    """
    runs = runs.dropna(subset=list(metric_cols), how="all")
    if runs.empty:
        return pd.DataFrame(columns=[*group_by, "n_runs", "seeds"])
    if seed_param not in runs:
        runs = runs.assign(**{seed_param: UNSET})
    keys = [*group_by, seed_param]
    latest = runs.sort_values("start_time").groupby(keys, dropna=False, sort=False).tail(1)
    dropped = len(runs) - len(latest)
    if dropped:
        logger.info(
            "kept the latest of repeated (group, seed) runs: %d older run(s) ignored", dropped
        )
    records = []
    for group, sub in latest.groupby(list(group_by), dropna=False, sort=False):
        values = group if isinstance(group, tuple) else (group,)
        rec: dict[str, object] = dict(zip(group_by, values, strict=True))
        rec["n_runs"] = len(sub)
        rec["seeds"] = ",".join(sorted(map(str, sub[seed_param]), key=_seed_key))
        for col in metric_cols:
            vals = sub[col].dropna().to_numpy(dtype=float) if col in sub else np.array([])
            rec[f"{col}_mean"] = float(vals.mean()) if len(vals) else math.nan
            rec[f"{col}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else math.nan
        records.append(rec)
    out = pd.DataFrame(records)
    if metric_cols:
        out = out.sort_values(f"{metric_cols[0]}_mean", ascending=False, kind="stable")
    return out.reset_index(drop=True)


def _seed_key(seed: str) -> tuple[int, object]:
    return (0, int(seed)) if seed.lstrip("-").isdigit() else (1, seed)


def _fmt(mean: float, std: float, digits: int) -> str:
    if math.isnan(mean):
        return "–"
    if math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def to_markdown(
    summary: pd.DataFrame, group_by: Sequence[str], metric_cols: Sequence[str], digits: int = 2
) -> str:
    """The summary as a Markdown table: group columns, runs, seeds, ``mean ± std``."""
    header = [*group_by, "runs", "seeds", *metric_cols]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in summary.iterrows():
        cells = [str(row[g]) for g in group_by] + [str(row["n_runs"]), str(row["seeds"])]
        cells += [_fmt(row[f"{m}_mean"], row[f"{m}_std"], digits) for m in metric_cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def group_label(row: pd.Series, group_by: Sequence[str]) -> str:
    """Short legend label: ``objective=pairwise_kl, negatives=mined, ...``."""
    return ", ".join(f"{g.rsplit('.', 1)[-1]}={row[g]}" for g in group_by)


def plot(
    summary: pd.DataFrame, group_by: Sequence[str], metric_cols: Sequence[str], title: str
) -> Figure:
    """Grouped bars: one cluster per metric, one bar per group, std as error bars."""
    n_groups = max(1, len(summary))
    fig = Figure(figsize=(max(6.0, 1.2 * len(metric_cols) * max(1, n_groups) / 2 + 2), 4.8))
    ax = fig.add_subplot()
    width = 0.8 / n_groups
    x = np.arange(len(metric_cols))
    for j, (_, row) in enumerate(summary.iterrows()):
        means = [row[f"{m}_mean"] for m in metric_cols]
        stds = [0.0 if math.isnan(row[f"{m}_std"]) else row[f"{m}_std"] for m in metric_cols]
        ax.bar(x + j * width, means, width, yerr=stds, capsize=3, label=group_label(row, group_by))
    ax.set_xticks(
        x + width * (n_groups - 1) / 2, list(metric_cols), rotation=30, ha="right", fontsize=8
    )
    ax.set_ylabel("value (recall in %)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    if len(summary):
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=1)
    fig.tight_layout()
    return fig


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default="dqe_cir_synthetic")
    ap.add_argument("--tracking-uri", default=None, help="default: the project's sqlite store")
    ap.add_argument("--metric-prefix", default="eval/")
    ap.add_argument(
        "--models",
        nargs="+",
        default=["dqe_cir"],
        help="models to compare (dqe_cir zero_shot text_blind) or 'all'",
    )
    ap.add_argument(
        "--metrics",
        nargs="+",
        default=None,
        help="metric names after the model, e.g. recall_at_10 avg (default: every headline metric)",
    )
    ap.add_argument("--group-by", default=DEFAULT_GROUP_BY, help="comma-separated parameter names")
    ap.add_argument("--seed-param", default="training.loop.seed")
    ap.add_argument(
        "--filter", default="", help="extra MLflow filter, e.g. \"tags.kedro_pipeline = 'train'\""
    )
    ap.add_argument(
        "--out-dir", type=Path, default=None, help="default: <data root>/compare_runs/<experiment>"
    )
    ap.add_argument("--digits", type=int, default=2)
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Write ``comparison.{md,csv,png}``; return 0, or 1 when no run has the metrics."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    group_by = [g.strip() for g in args.group_by.split(",") if g.strip()]
    tracking_uri = args.tracking_uri or default_tracking_uri()
    runs = fetch_runs(
        tracking_uri, args.experiment, args.metric_prefix, [*group_by, args.seed_param], args.filter
    )
    fixed = {"run_id", "start_time", *group_by, args.seed_param}
    metric_cols = select_metrics(
        [c for c in runs.columns if c not in fixed],
        None if args.models == ["all"] else args.models,
        args.metrics,
    )
    if not metric_cols:
        logger.error(
            "no run of %s has metrics matching %s%s",
            args.experiment,
            args.metric_prefix,
            args.models,
        )
        return 1
    summary = summarise(runs, group_by, args.seed_param, metric_cols)
    out_dir = args.out_dir or default_out_dir(args.experiment)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = to_markdown(summary, group_by, metric_cols, args.digits)
    (out_dir / "comparison.md").write_text(markdown)
    summary.to_csv(out_dir / "comparison.csv", index=False)
    plot(summary, group_by, metric_cols, f"{args.experiment}: mean ± std over seeds").savefig(
        out_dir / "comparison.png", dpi=110, bbox_inches="tight"
    )
    print(markdown)
    logger.info("wrote comparison.md, comparison.csv, comparison.png to %s", out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
