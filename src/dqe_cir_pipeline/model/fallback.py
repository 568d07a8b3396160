"""How much of a mining pass fell back: the share of queries whose negative came from a
fallback rule rather than the strategy's own zone, and the warning when too many did.

Plain Python over a mining summary's ``fallback/<outcome>`` counts
(``MiningResult.summary``), so that the end-of-run summary reads it without torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

#: Outcomes whose negative comes from the strategy's own rule: its zone at the first try
#: or after widening (``model.mining_result.FALLBACK_NAMES`` lists every outcome).
OWN_RULE = ("none", "widened")
#: Above this share of queries mined by a fallback, mining logs a warning and the
#: end-of-run summary shows one: the run is not training with its strategy's negatives.
FALLBACK_WARNING_SHARE = 0.5
#: The negatives each strategy's own rule mines, as the warning names them.
STRATEGY_NEGATIVES = {"midzone": "mid-zone", "qure": "QuRe", "random": "random"}
#: The mining summary's keys of the per-outcome counts.
COUNT_PREFIX = "fallback/"


def fallback_counts(summary: Mapping[str, float]) -> dict[str, float]:
    """The number of queries per mining outcome (``none``, ``widened``, ``hardest_below``...)."""
    return {
        key.removeprefix(COUNT_PREFIX): float(value)
        for key, value in summary.items()
        if key.startswith(COUNT_PREFIX)
    }


def fallback_share(summary: Mapping[str, float]) -> float:
    """Share of queries whose negative came from a fallback (any outcome but the zone's),
    from the summary's ``fallback/*`` counts; NaN when no query was mined."""
    counts = fallback_counts(summary)
    total = sum(counts.values())
    if total <= 0:
        return math.nan
    return sum(n for name, n in counts.items() if name not in OWN_RULE) / total


def fallback_warning(
    summary: Mapping[str, float], strategy: str, threshold: float = FALLBACK_WARNING_SHARE
) -> str | None:
    """What it means when more than ``threshold`` of the queries fell back (``None``
    otherwise): the share, the fallback most of them took, and the consequence."""
    share = fallback_share(summary)
    if not share > threshold:  # NaN (nothing mined) never warns
        return None
    fell_back = {k: n for k, n in fallback_counts(summary).items() if k not in OWN_RULE}
    rule = max(fell_back, key=lambda k: fell_back[k])
    negatives = STRATEGY_NEGATIVES.get(strategy, strategy)
    return (
        f"{share:.0%} of queries fell back ({fell_back[rule]:.0f} to {rule}): "
        f"this run is not training with {negatives} negatives"
    )
