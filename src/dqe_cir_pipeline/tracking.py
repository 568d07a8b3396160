"""Metric dicts in the shape kedro-mlflow's metric datasets log.

Every node that reports figures to MLflow returns them through one of these two
formatters, so keys are named one way (MLflow forbids ``@``: ``recall@10`` becomes
``recall_at_10``) and missing values (None, NaN) are dropped the same way everywhere.
Imports no MLflow: the catalog's ``MlflowMetricsHistoryDataset`` does the logging.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

MetricPoint = dict[str, float]
MetricHistory = dict[str, list[MetricPoint]]


def _key(name: str) -> str:
    return name.replace("@", "_at_")


def _present(value: object) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def metric_values(
    values: Mapping[str, float | None], step: int = 0, prefix: str = ""
) -> dict[str, MetricPoint]:
    """A flat dict of figures -> one point each at ``step``."""
    return {
        _key(prefix + k): {"value": float(v), "step": int(step)}
        for k, v in values.items()
        if _present(v)
    }


def metric_history(
    records: Iterable[Mapping[str, float]], prefix: str = "", step_key: str = "epoch"
) -> MetricHistory:
    """Per-step records (each with ``step_key``) -> one history per key."""
    out: MetricHistory = {}
    for rec in records:
        step = int(rec[step_key])
        for k, v in rec.items():
            if k != step_key and _present(v):
                out.setdefault(_key(prefix + k), []).append({"value": float(v), "step": step})
    return out
