"""Start-up noise that is not the user's business, silenced at its source.

:func:`install` runs before Kedro loads its plugins (registered as a ``kedro.init`` entry
point in ``pyproject.toml``) and again when ``settings.py`` is imported (notebooks,
``python -m dqe_cir_pipeline``), so the filters are in place before the libraries that
warn are imported:

* Kedro and kedro-mlflow still call OmegaConf's deprecated ``register_new_resolver``.
* kedro-mlflow's ``KedroPipelineModel`` subclasses MLflow's ``PythonModel`` without type
  hints on ``predict``; MLflow warns about it when the class is defined, at import.
  MLflow raises that warning inside its own ``catch_warnings`` block with a ``once``
  filter in front of every other, so no filter reaches it: it is dropped where warnings
  are shown (``warnings.showwarning``, which Python documents as replaceable).
* When kedro-mlflow logs the inference model, MLflow logs a WARNING that the model is a
  pickled Python object (kedro-mlflow's design, nothing a user can change) and draws
  "Downloading artifacts" progress bars for its own validation; both are dropped
  (a logging filter; ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR`` unless the user set it).
* MLflow's system-metrics thread warns when its last sample cannot be written because
  the run is being closed (its own message says "this is expected if the experiment/run
  is already terminated"; on a busy sqlite store the closing run's writes can also keep
  it waiting for a connection until it gives up). The sample is lost, nothing else: the
  warning is dropped.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from typing import Any, TextIO

#: (message regex, category) pairs ignored; the regex is matched from the start.
SILENCED: tuple[tuple[str, type[Warning]], ...] = (
    (r"register_new_resolver\(\) is deprecated", UserWarning),
    (r".*Add type hints to the `predict` method", UserWarning),
)


_PATTERNS = tuple((re.compile(m, re.IGNORECASE), c) for m, c in SILENCED)


def silenced(message: Warning | str, category: type[Warning]) -> bool:
    """Whether a warning is one of :data:`SILENCED`."""
    text = str(message)
    return any(p.match(text) and issubclass(category, c) for p, c in _PATTERNS)


#: ``warnings.showwarning`` as it was before :func:`install` put :func:`_show` in front.
_shown_by: Any = None


def _show(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    if not silenced(message, category):
        _shown_by(message, category, filename, lineno, file, line)


class _PickledModelFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Passing a Python object as `python_model`")


class _MonitorStopFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (
            message.startswith(("Failed to log system metrics", "Failed to get mlflow run"))
            and record.levelno == logging.WARNING
        )


_PICKLED_MODEL_FILTER = _PickledModelFilter()
_MONITOR_STOP_FILTER = _MonitorStopFilter()


def install() -> None:
    """Add the filters and the display guard (idempotent)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow.pyfunc").addFilter(_PICKLED_MODEL_FILTER)  # a set: idempotent
    monitor = logging.getLogger("mlflow.system_metrics.system_metrics_monitor")
    monitor.addFilter(_MONITOR_STOP_FILTER)
    for message, category in SILENCED:
        warnings.filterwarnings("ignore", message=message, category=category)
    global _shown_by
    if warnings.showwarning is not _show:
        _shown_by = warnings.showwarning
        warnings.showwarning = _show
