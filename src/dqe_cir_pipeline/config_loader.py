"""The project's config loader: Kedro's OmegaConfigLoader plus a ``conf/local`` overlay.

Kedro reads ``conf/base`` plus exactly one environment, so ``kedro run --env fashioniq``
would never see the data roots and weight locations a user keeps in ``conf/local``. For
the real-data environments (``fashioniq``, ``cirr``) this loader merges the parameters
files of ``conf/local`` over the environment's, key by key; ``--params`` still wins.
Every other environment (``test`` above all) stays isolated from a user's local files.

:func:`project_config_loader` is the one way code outside a Kedro session (pre-flight
check, benchmarks, test fixtures) reads the project's configuration: it builds the loader
exactly as ``kedro run --env <env> --params ...`` does.

Every path the configuration names resolves against the project the command runs in
(:func:`kedro_project_root`: the folder holding ``conf``), never against where the
package is installed: two checkouts sharing one environment each read their own files.
"""

from __future__ import annotations

import copy
import difflib
import logging
import os
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from functools import cached_property
from pathlib import Path
from typing import Any

from kedro.config import OmegaConfigLoader
from kedro.utils import find_kedro_project, is_kedro_project
from omegaconf import OmegaConf

logger = logging.getLogger(__name__)

#: The root of the loader resolving configuration right now (``__getitem__``), which the
#: ``${project_root:}`` family of resolvers reads: resolvers are global to OmegaConf,
#: loaders of two projects may live in one process.
_RESOLVING_FOR: ContextVar[Path | None] = ContextVar("dqe_project_root", default=None)


class NotInProjectError(RuntimeError):
    """A command that reads the project's configuration runs outside any Kedro project."""


def kedro_project_root(conf_source: str | os.PathLike[str] | None = None) -> Path:
    """The project a command runs in.

    With a local ``conf_source`` (Kedro's own ``<project>/conf``, or ``--conf-source``: a
    folder or an archive), the folder holding it; otherwise the Kedro project around the
    current directory as ``kedro`` finds it (a ``pyproject.toml`` with ``[tool.kedro]``
    here or above), else the current directory.
    """
    if conf_source is not None and "://" not in str(conf_source):
        return Path(conf_source).expanduser().resolve().parent
    cwd = Path.cwd()
    return Path(find_kedro_project(cwd) or cwd).resolve()


def active_project_root() -> Path:
    """The root the configuration being resolved now belongs to (the project loader's),
    else :func:`kedro_project_root`; what ``${project_root:}`` and ``${data_root:}`` mean."""
    return _RESOLVING_FOR.get() or kedro_project_root()


class LocalOverlayConfigLoader(OmegaConfigLoader):
    """``OmegaConfigLoader`` that layers ``conf/local/parameters*`` over chosen environments.

    Args:
        local_overlay_envs: environments that get the overlay.
        local_env: the folder holding the user's overrides.
        **kwargs: passed to ``OmegaConfigLoader``.
    """

    def __init__(
        self,
        *args: Any,
        local_overlay_envs: Iterable[str] = (),
        local_env: str = "local",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.local_overlay_envs = frozenset(local_overlay_envs)
        self.local_env = local_env
        root = Path(self.conf_source)
        if self.env and root.is_dir() and not (root / self.env).is_dir():
            known = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != "base")
            raise ValueError(
                f"unknown environment --env {self.env!r}: {root / self.env} does not exist "
                f"(environments: {', '.join(known)})"
            )

    @cached_property
    def project_root(self) -> Path:
        """The folder holding ``conf_source``: the project's paths resolve against it."""
        return kedro_project_root(self.conf_source)

    def __getitem__(self, key: str) -> dict[str, Any]:
        token = _RESOLVING_FOR.set(self.project_root)
        try:
            return self._load(key)
        finally:
            _RESOLVING_FOR.reset(token)

    def _load(self, key: str) -> dict[str, Any]:
        config = super().__getitem__(key)
        if key == "parameters" and self.runtime_params:
            self._refuse_unknown_runtime_blocks()
        run_env = self.env or self.default_run_env
        if (
            key != "parameters"
            or run_env not in self.local_overlay_envs
            or run_env == self.local_env
        ):
            return config
        local_path = Path(self.conf_source) / self.local_env
        if not local_path.is_dir():
            return config
        overlay = self._local_parameters(local_path)
        if not overlay:
            return config
        logger.info("conf/%s overrides %s for --env %s", self.local_env, sorted(overlay), run_env)
        if self.runtime_params:
            logger.info("--params overrides %s", sorted(self.runtime_params))
        # ``--params`` keeps the last word over conf/local too
        merged = OmegaConf.unsafe_merge(config, overlay, self.runtime_params or {})
        return OmegaConf.to_container(merged)  # type: ignore[return-value]

    def _without_runtime_params(self) -> LocalOverlayConfigLoader:
        """This loader without the command-line overrides (``--params``)."""
        plain = copy.copy(self)
        plain.runtime_params = {}
        if hasattr(plain, "_runtime_params_oc"):
            plain._runtime_params_oc = None
        return plain

    def _local_parameters(self, local_path: Path) -> dict[str, Any]:
        """The parameters of ``conf/<local_env>`` alone (Kedro merges ``--params`` into
        every parameters folder it loads; these must not count as local overrides)."""
        patterns = [*self.config_patterns["parameters"]]
        plain = self._without_runtime_params()
        return plain.load_and_merge_dir_config(str(local_path), patterns, "parameters", set())

    def _refuse_unknown_runtime_blocks(self) -> None:
        """Refuse a ``--params`` key whose first part no configuration file defines.

        ``--params trainng.lr=1e-4`` would otherwise add a parameter no node reads and
        train with the old rate. Keys inside a block are checked by the typed blocks
        (``model/config.py``); this catches the block name itself.

        Raises:
            ValueError: naming the unknown key and the closest known block.
        """
        plain = self._without_runtime_params()
        known = set(super(LocalOverlayConfigLoader, plain).__getitem__("parameters"))
        run_env = self.env or self.default_run_env
        local = Path(self.conf_source) / self.local_env
        if run_env in self.local_overlay_envs and run_env != self.local_env and local.is_dir():
            known |= set(self._local_parameters(local))
        unknown = sorted(set(self.runtime_params) - known)
        if unknown:
            name = unknown[0]
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(
                f"unknown parameter block {name!r} in --params: no configuration file "
                f"defines it, so no node would read it; {hint}known blocks: "
                f"{', '.join(sorted(known))}"
            )


def project_config_loader(
    env: str | None = None,
    project_path: str | os.PathLike[str] | None = None,
    runtime_params: Mapping[str, Any] | None = None,
) -> OmegaConfigLoader:
    """Returns the config loader ``kedro run --env <env> --params ...`` would use.

    Bootstraps the project like the ``kedro`` command does, then builds the project's
    ``CONFIG_LOADER_CLASS`` with its ``CONFIG_LOADER_ARGS`` (``settings.py``), so the
    environments merge, the resolvers (``${data_root:}``, ``${globals:...}``) and the
    ``conf/local`` overlay behave exactly as in a run. Read a kind of configuration by
    key: ``loader["parameters"]``, ``loader["catalog"]``.

    Args:
        env: Kedro environment (``test``, ``fashioniq``, ...); ``None`` is Kedro's
            default run environment (``local``), and ``"base"`` reads ``conf/base``
            alone.
        project_path: Project root; defaults to the Kedro project around the current
            directory (:func:`kedro_project_root`), as for the ``kedro`` command.
        runtime_params: Overrides, as ``kedro run --params`` gives them (nested dicts).

    Returns:
        The configured loader.

    Raises:
        NotInProjectError: ``project_path`` (default: the current directory and those
            above it) is no Kedro project.
    """
    from kedro.framework.project import settings
    from kedro.framework.startup import bootstrap_project

    root = Path(project_path) if project_path is not None else kedro_project_root()
    if not is_kedro_project(root):
        raise NotInProjectError(
            f"{root} is not a Kedro project (no pyproject.toml with [tool.kedro] there or "
            "above): run the command inside the project folder"
        )
    bootstrap_project(root)
    return settings.CONFIG_LOADER_CLASS(
        conf_source=str(root / settings.CONF_SOURCE),
        env=env,
        runtime_params=dict(runtime_params or {}),
        **settings.CONFIG_LOADER_ARGS,
    )
