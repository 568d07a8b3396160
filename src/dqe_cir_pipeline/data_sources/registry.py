"""The benchmark registry: one entry per benchmark, and the only list of their names.

An entry (:class:`Benchmark`) holds what the project knows of one benchmark: the typed
``data.<name>`` block, the reader, the annotation layout (which the reader and the
pre-flight check share), the evaluation protocol and the pre-flight rule. ``DataConfig``,
ingestion, the pre-flight check, evaluation and the training data look a benchmark up
here instead of comparing names.

Discovery, once per process: every module of ``dqe_cir_pipeline.data_sources.benchmarks``
that defines ``BENCHMARK`` (``pkgutil``), then every entry point of the group
``dqe_cir_pipeline.benchmarks`` (an installed package's ``name = "module:BENCHMARK"``).
Each entry's protocol is registered under its name for ``model.protocol.protocol_for``.
How to add a benchmark: docs/architecture.md.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Generic, TypeVar

from dqe_cir_pipeline.data_sources.common import IngestResult
from dqe_cir_pipeline.data_sources.layout import AnnotationFile, AnnotationLayout
from dqe_cir_pipeline.model.config import build_strict
from dqe_cir_pipeline.model.protocol import BenchmarkProtocol, register_protocol

#: The package whose modules are the built-in benchmarks.
BUILT_IN = "dqe_cir_pipeline.data_sources.benchmarks"
#: The entry-point group through which an installed package adds benchmarks.
ENTRY_POINT_GROUP = "dqe_cir_pipeline.benchmarks"

S = TypeVar("S")


@dataclass(frozen=True)
class ReadSettings:
    """How a reader checks images (the ``data`` block's settings common to benchmarks)."""

    workers: int
    image_check: str  # one of image_check.IMAGE_CHECKS


@dataclass(frozen=True)
class Folders:
    """Where a reader finds a benchmark, and what generating it reported (if it was)."""

    annotation_root: str
    image_root: str
    generation: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PreflightRule:
    """What the pre-flight check looks at before a run on the benchmark.

    Attributes:
        check_files: The annotation files of the layout, the images they list and the
            verdict ingestion would reach (a downloaded benchmark). Otherwise nothing is
            on disk yet to look at and ``note`` is the report's data line.
        note: The data line when ``check_files`` is off.
    """

    check_files: bool
    note: str = ""


#: A downloaded benchmark: its files are checked before the run.
CHECK_FILES = PreflightRule(check_files=True)
#: A generated benchmark: written by the run itself.
GENERATED = PreflightRule(check_files=False, note="generated benchmark (written on the first run)")


@dataclass(frozen=True)
class Benchmark(Generic[S]):
    """One benchmark: its ``data.<name>`` block, reader, layout, protocol and pre-flight rule.

    Attributes:
        name: ``data.benchmark``'s value, the ``data.<name>`` block, and the ``dataset``
            column the reader writes (the protocol is looked up by it).
        source_type: The ``data.<name>`` block's dataclass; every field has a default.
        read: ``(annotation_root, image_root, block, settings)`` -> the canonical tables.
        protocol: How its splits are evaluated (and its training negatives pooled).
        layout: The annotation files the block's splits need (``None``: none to check
            before a run). The reader must open the same files.
        generate: Writes the benchmark and says where (``None``: the user downloads it;
            the block's ``annotation_root`` / ``image_root`` then say where it lies, and
            the ``conf/local`` overlay applies to the environment of the same name).
        preflight: What the pre-flight check looks at.
        build: The block from its parameters (default: ``source_type``'s fields only,
            an unknown key refused by name).
        missing_file_hint: What to change when a layout file is missing (e.g. CIRR: the
            setting that makes a split's captions unnecessary); ``None``: the generic text.
    """

    name: str
    source_type: type[S]
    read: Callable[[str, str, S, ReadSettings], IngestResult]
    protocol: BenchmarkProtocol
    layout: Callable[[S], AnnotationLayout] | None = None
    generate: Callable[[S], Folders] | None = None
    preflight: PreflightRule = CHECK_FILES
    build: Callable[[Mapping[str, Any], str], S] | None = None
    missing_file_hint: Callable[[AnnotationFile], str] | None = None

    def __post_init__(self) -> None:
        if self.preflight.check_files and self.layout is None:
            raise ValueError(f"benchmark {self.name!r}: checking its files needs a layout")

    @property
    def downloaded(self) -> bool:
        """The user provides the files (the run does not generate them)."""
        return self.generate is None

    def source(self, values: Mapping[str, Any] | S) -> S:
        """The ``data.<name>`` block from its parameters (or as given, when already built)."""
        if isinstance(values, self.source_type):
            return values
        if not isinstance(values, Mapping):
            raise TypeError(f"data.{self.name} must be a mapping, got {type(values).__name__}")
        where = f"data.{self.name}"
        if self.build is not None:
            return self.build(values, where)
        return build_strict(self.source_type, values, where)

    def folders(self, block: S) -> Folders:
        """Generate the benchmark, or check that a downloaded one's folders and every
        annotation file of its layout exist (before any image is read).

        Raises:
            FileNotFoundError: A downloaded benchmark's folder or annotation file is
                missing (the message names each file and the parameter to set).
        """
        if self.generate is not None:
            return self.generate(block)
        roots = {key: str(getattr(block, key)) for key in ("annotation_root", "image_root")}
        for key, path in roots.items():
            if not Path(path).is_dir():
                raise FileNotFoundError(
                    f"{self.name}: data.{self.name}.{key} = {path} is not a folder. Download "
                    f"the benchmark (see README, 'Running on real data') and set "
                    f"data.{self.name}.{key} in conf/local/parameters.yml."
                )
        self._check_annotation_files(block, roots["annotation_root"])
        return Folders(roots["annotation_root"], roots["image_root"])

    def _check_annotation_files(self, block: S, annotation_root: str) -> None:
        """Fail at once, naming every missing file of the layout, rather than after the
        reader has listed and checked the images."""
        if self.layout is None:
            return
        missing = [f for f in self.layout(block).files() if not f.path.is_file()]
        if not missing:
            return
        lines = []
        for f in missing:
            part = f"split {f.split!r}" + ("" if f.category in ("", "all") else f", {f.category}")
            hint = self.missing_file_hint(f) if self.missing_file_hint else ""
            lines.append(f"  {f.path} ({f.kind} file of {part})" + (f": {hint}" if hint else ""))
        raise FileNotFoundError(
            f"{self.name}: {len(missing)} annotation file(s) the configured splits need "
            f"are missing (data.{self.name}.annotation_root = {annotation_root}):\n"
            + "\n".join(lines)
            + "\n"
            f"Put them there, or read only the splits you have (data.{self.name}.splits)."
        )


@functools.cache
def _registry() -> dict[str, Benchmark[Any]]:
    """Discover every benchmark once (see the module docstring), sorted by name.

    Raises:
        TypeError: A module's ``BENCHMARK`` or an entry point is not a :class:`Benchmark`.
        ValueError: Two entries share a name.
    """
    found: list[tuple[object, str]] = []
    package = importlib.import_module(BUILT_IN)
    for info in pkgutil.iter_modules(package.__path__, f"{BUILT_IN}."):
        module = importlib.import_module(info.name)
        if hasattr(module, "BENCHMARK"):
            found.append((module.BENCHMARK, info.name))
    for point in entry_points(group=ENTRY_POINT_GROUP):
        found.append((point.load(), f"entry point {point.name} = {point.value}"))
    registry: dict[str, Benchmark[Any]] = {}
    origins: dict[str, str] = {}
    for entry, origin in found:
        if not isinstance(entry, Benchmark):
            raise TypeError(f"{origin}: expected a Benchmark, got {type(entry).__name__}")
        if entry.name in registry:
            raise ValueError(
                f"two benchmarks are named {entry.name!r}: {origins[entry.name]} and {origin}"
            )
        registry[entry.name] = entry
        origins[entry.name] = origin
        register_protocol(entry.name, entry.protocol)
    return dict(sorted(registry.items()))


def benchmark_names() -> tuple[str, ...]:
    """Every registered benchmark's name, sorted."""
    return tuple(_registry())


def benchmarks() -> tuple[Benchmark[Any], ...]:
    """Every registered benchmark, sorted by name."""
    return tuple(_registry().values())


def benchmark(name: str) -> Benchmark[Any]:
    """The entry named ``name``.

    Raises:
        ValueError: No benchmark is registered under that name (the message lists them).
    """
    try:
        return _registry()[name]
    except KeyError:
        raise ValueError(
            f"unknown benchmark {name!r}: registered benchmarks are {benchmark_names()}"
        ) from None


def downloaded_benchmarks() -> tuple[str, ...]:
    """Names of the benchmarks whose files the user downloads (``conf/local`` holds their
    folders, so it also applies to the environment named after them)."""
    return tuple(b.name for b in benchmarks() if b.downloaded)
