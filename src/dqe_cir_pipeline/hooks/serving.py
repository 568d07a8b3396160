"""Completes the MLflow model that kedro-mlflow logs at the end of a training run.

``pipeline_registry`` binds the ``inference`` pipeline to ``train`` with kedro-mlflow's
``pipeline_ml_factory``; kedro-mlflow then logs it with ``mlflow.pyfunc.log_model`` in its
``after_pipeline_run`` hook, using the ``log_model_kwargs`` the binding holds. What only
the run knows is added here, just before (``tryfirst``): the input example the run wrote
(``serving_input_example``: a test query with its image inlined), the registered model
name (``serving.registered_model_name``, one per benchmark) and the requirements (pinned
to the installed versions, so MLflow does not have to infer them by loading the model).

No torch here: ``settings.py`` imports this module for every ``kedro`` command.
"""

from __future__ import annotations

import logging
from importlib import metadata
from typing import Any

from kedro.framework.hooks import hook_impl
from kedro.io import DataCatalog
from kedro.pipeline import Pipeline

from dqe_cir_pipeline.launch import launch_rank

logger = logging.getLogger(__name__)

#: The catalog entry holding the input example.
INPUT_EXAMPLE = "serving_input_example"
#: Distributions the logged model needs, pinned to what is installed.
REQUIREMENTS = (
    "mlflow",
    "kedro",
    "kedro-mlflow",
    "kedro-datasets",
    "torch",
    "transformers",
    "safetensors",
    "pandas",
    "pyarrow",
    "pillow",
    "faiss-cpu",
    "pydantic",
)


def pinned_requirements() -> list[str]:
    """``name==version`` for each of :data:`REQUIREMENTS` that is installed."""
    out = []
    for name in REQUIREMENTS:
        try:
            out.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return out


class ServingModelHooks:
    """Adds the run's input example, registered name and requirements to the model log."""

    @hook_impl(tryfirst=True)
    def after_pipeline_run(self, pipeline: Pipeline, catalog: DataCatalog) -> None:
        kwargs: dict[str, Any] | None = getattr(pipeline, "log_model_kwargs", None)
        if kwargs is None or launch_rank()[0] > 0:  # not a pipeline_ml_factory binding
            return
        if INPUT_EXAMPLE in catalog and catalog.exists(INPUT_EXAMPLE):
            kwargs.setdefault("input_example", catalog.load(INPUT_EXAMPLE))
        if "params:serving" in catalog:
            name = getattr(catalog.load("params:serving"), "registered_model_name", None)
            if name:
                kwargs.setdefault("registered_model_name", name)
        kwargs.setdefault("pip_requirements", pinned_requirements())
        logger.info(
            "logging the inference pipeline as MLflow model %r (registered as %s)",
            kwargs.get("name"),
            kwargs.get("registered_model_name"),
        )
