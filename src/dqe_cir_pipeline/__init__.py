"""DQE-CIR composed image retrieval training as a Kedro project."""

__version__ = "0.1.0"
