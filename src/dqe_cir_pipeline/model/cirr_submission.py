"""CIRR test1 submission: the evaluation server's two JSON payloads and their checks.

Top-50 of the whole gallery (``"metric": "recall"``) and top-3 within ``img_set.members``
(``"recall_subset"``), keyed by ``pairid``, the reference removed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

__all__ = [
    "CIRR_SUBMISSION_MAX_BYTES",
    "cirr_submission",
    "validate_cirr_submission",
]

#: Upper bound the CIRR evaluation server accepts per JSON file.
CIRR_SUBMISSION_MAX_BYTES = 5 * 1024 * 1024


def cirr_submission(
    pair_ids: Sequence[int],
    ranked_names: Sequence[Sequence[str]],
    subset_ranked_names: Sequence[Sequence[str]],
    version: str = "rc2",
) -> tuple[dict[str, object], dict[str, object]]:
    """``(recall_json, subset_json)``: ``{"version", "metric", str(pairid): names}``.

    ``ranked_names``: >= 50 names per pair, ``subset_ranked_names``: >= 3, reference removed.
    """
    if not len(pair_ids) == len(ranked_names) == len(subset_ranked_names):
        raise ValueError("pair_ids, ranked_names and subset_ranked_names differ in length")
    recall: dict[str, object] = {"version": version, "metric": "recall"}
    subset: dict[str, object] = {"version": version, "metric": "recall_subset"}
    for pid, full, sub in zip(pair_ids, ranked_names, subset_ranked_names, strict=True):
        if len(full) < 50 or len(sub) < 3:
            raise ValueError(f"pairid {pid}: need >= 50 ranked and >= 3 subset names")
        recall[str(pid)] = [str(x) for x in full[:50]]
        subset[str(pid)] = [str(x) for x in sub[:3]]
    return recall, subset


def validate_cirr_submission(
    recall_json: Mapping[str, object],
    subset_json: Mapping[str, object],
    expected_pair_ids: Sequence[int],
    references: Mapping[int | str, str],
    members: Mapping[int | str, Sequence[str]] | None = None,
    max_bytes: int = CIRR_SUBMISSION_MAX_BYTES,
) -> None:
    """Check both files before upload; ValueError listing the problems (first 20).

    Version "rc2" and metric; exactly the expected pairids (CIRR test1: 2,178); 50 / 3 unique
    string names without the pair's reference; subset names within ``members`` when given;
    each file's ``json.dumps`` size <= ``max_bytes``.
    """
    problems: list[str] = []
    refs = {str(k): v for k, v in references.items()}
    mem = {str(k): set(v) for k, v in members.items()} if members is not None else None
    expected = {str(p) for p in expected_pair_ids}
    for label, payload, metric, length in (
        ("recall", recall_json, "recall", 50),
        ("recall_subset", subset_json, "recall_subset", 3),
    ):
        if payload.get("version") != "rc2":
            problems.append(f"{label}: version is {payload.get('version')!r}, expected 'rc2'")
        if payload.get("metric") != metric:
            problems.append(f"{label}: metric is {payload.get('metric')!r}, expected {metric!r}")
        keys = {k for k in payload if k not in ("version", "metric")}
        for pid in sorted(expected - keys):
            problems.append(f"{label}: missing pairid {pid}")
        for pid in sorted(keys - expected):
            problems.append(f"{label}: unexpected pairid {pid}")
        for pid in sorted(keys & expected):
            names = payload[pid]
            if not isinstance(names, list) or not all(isinstance(x, str) for x in names):
                problems.append(f"{label}: pairid {pid} is not a list of strings")
                continue
            if len(names) != length:
                problems.append(f"{label}: pairid {pid} has {len(names)} names, expected {length}")
            if len(set(names)) != len(names):
                problems.append(f"{label}: pairid {pid} has duplicate names")
            if pid in refs and refs[pid] in names:
                problems.append(f"{label}: pairid {pid} contains its reference {refs[pid]!r}")
            if mem is not None and metric == "recall_subset" and pid in mem:
                outside = [x for x in names if x not in mem[pid]]
                if outside:
                    problems.append(f"{label}: pairid {pid} names outside its subset: {outside}")
        size = len(json.dumps(payload).encode("utf-8"))
        if size > max_bytes:
            problems.append(f"{label}: size {size} bytes exceeds {max_bytes} bytes")
    if problems:
        head = "; ".join(problems[:20])
        more = f" (+{len(problems) - 20} more)" if len(problems) > 20 else ""
        raise ValueError(f"invalid CIRR submission, {len(problems)} problem(s): {head}{more}")
