"""The project's Kedro hooks, one module per concern; ``settings.py`` registers them.

* :mod:`.guards`: one run per data root, inputs that do not exist yet, the ingestion
  verdict (a run is refused before its first node).
* :mod:`.store`: the MLflow tracking store made safe for concurrent starts; runs left
  RUNNING by a killed process are failed.
* :mod:`.provenance`: what an MLflow run records about itself (params, tags, name,
  dataset input, ingestion artifacts, the training run an evaluation used).
* :mod:`.distributed`: under ``torchrun`` only rank 0 writes.
* :mod:`.resources`: time and memory of every node.
* :mod:`.summary`: the headline a run that evaluated ends with.
* :mod:`.serving`: what only the run knows about the MLflow model kedro-mlflow logs.

Nodes never talk to MLflow; only these hooks and kedro-mlflow do.
"""
