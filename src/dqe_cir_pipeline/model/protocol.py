"""How a benchmark's tables are evaluated and pooled: a plain description, no torch.

Each benchmark's registry entry (``data_sources/benchmarks/``) holds one
:class:`BenchmarkProtocol`; evaluation (``model.evaluate``) and the training data
(``model.data``) receive it as a parameter. A caller that has only the tables may leave
it out: the tables' ``dataset`` name then selects the protocol the benchmark registry
registered under that name (:func:`protocol_for`), so this library never imports the
data sources.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

#: Recall_subset cut-offs of the CIRR protocol (``img_set.members``, reference removed).
CIRR_SUBSET_KS = (1, 2, 3)
#: The end-of-run summary's columns unless a protocol names its own.
SUMMARY_METRICS = ("recall@1", "recall@5", "recall@10", "recall@50", "avg")


@dataclass(frozen=True)
class SummaryBreakdown:
    """Per-group tables of the end-of-run summary: one table per metric, one column per
    group (the evaluation's ``<group>/<metric>`` entries).

    Attributes:
        by: What the groups are, the tables' title (``R@10 by edit``).
        metrics: The metrics shown per group, one table each.
        overall: The group that pools the others (FashionIQ's ``mean``), shown last;
            ``None``: every group in name order.
    """

    by: str
    metrics: tuple[str, ...]
    overall: str | None = None


@dataclass(frozen=True)
class BenchmarkProtocol:
    """The rules a benchmark is scored by, as its paper evaluates it.

    Attributes:
        per_category: Each category's queries are ranked in that category's own gallery,
            and training negatives come from the query's category (FashionIQ).
        remove_reference: The reference image is never a candidate.
        ks: The protocol's own Recall@K cut-offs (FashionIQ: 10 and 50); ``None``:
            the configured ``evaluation.ks``.
        subset_ks: Recall_subset@K cut-offs over ``img_set.members``; empty: no
            subset recall. Only with one whole gallery.
        edit_type_breakdown: Recall@K per edit type as well (exact edit labels).
        scene_labels: ``edit_labels`` record every image's scene, so attribute
            contrasts (the same image but the edited object's colour / shape) are exact.
        headline: The metrics whose mean is ``avg``, the number training selects the
            best epoch by; ``None``: the paper's own ``avg`` (FashionIQ: mean R@10 and
            R@50; CIRR: R@5 and Rs@1, ``model.retrieval``), which a protocol without
            subset recall lacks.
        summary_metrics: The columns of the end-of-run summary (and of the MLflow run's
            description): each model's overall metrics in the evaluation summary.
        breakdown: The summary's per-group tables (``None``: none). The learned attribute
            weights are shown for the groups that have them (the edit types).
    """

    per_category: bool = False
    remove_reference: bool = True
    ks: tuple[int, ...] | None = None
    subset_ks: tuple[int, ...] = ()
    edit_type_breakdown: bool = False
    scene_labels: bool = False
    headline: tuple[str, ...] | None = None
    summary_metrics: tuple[str, ...] = SUMMARY_METRICS
    breakdown: SummaryBreakdown | None = None

    def __post_init__(self) -> None:
        if self.per_category and self.subset_ks:
            raise ValueError("subset recall needs one whole gallery, not per-category ones")

    def cutoffs(self, configured: Sequence[int]) -> tuple[int, ...]:
        """The Recall@K cut-offs: the protocol's own, else the configured ones."""
        return tuple(self.ks if self.ks is not None else configured)


_REGISTERED: dict[str, BenchmarkProtocol] = {}


def register_protocol(dataset: str, protocol: BenchmarkProtocol) -> None:
    """Name ``protocol`` as the one of the tables whose ``dataset`` column is ``dataset``.

    Raises:
        ValueError: Another protocol is registered under that name.
    """
    known = _REGISTERED.get(dataset)
    if known is not None and known != protocol:
        raise ValueError(f"dataset {dataset!r} already has another protocol: {known}")
    _REGISTERED[dataset] = protocol


def protocol_for(dataset: str) -> BenchmarkProtocol:
    """The protocol registered for ``dataset`` (the benchmark registry registers each one).

    Raises:
        KeyError: Nothing is registered under that name.
    """
    try:
        return _REGISTERED[dataset]
    except KeyError:
        raise KeyError(
            f"no protocol is registered for dataset {dataset!r} (registered: "
            f"{sorted(_REGISTERED)}): pass protocol=, or look the benchmark up in "
            "dqe_cir_pipeline.data_sources.registry first (its discovery registers them)"
        ) from None
