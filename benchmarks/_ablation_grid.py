"""The ablations' recipes: variants, ``--grid`` combinations and the choice on val.

A grid combination overrides training blocks or mining. With variants, every variant is
trained at every combination (the same tuning budget for each) and keeps the one with
the best mean val ``avg`` over the tuning seeds; the chosen combination then runs at the
remaining seeds. Alone, each combination of the default recipe is a variant of its own.
"""

from __future__ import annotations

import itertools
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from _ablation_compare import query_path

#: (overrides of the training blocks, overrides of mining)
Overrides = tuple[dict[str, dict[str, Any]], dict[str, Any]]


def grid_variants(specs: list[str]) -> dict[str, Overrides]:
    """``["optim.lr=1e-4,3e-4", "loop.epochs=12,20"]`` -> one variant per combination,
    named ``lr=1e-4 epochs=12``; values are parsed as YAML scalars (numbers, null, true)."""
    axes = []
    for spec in specs:
        path, _, values = spec.partition("=")
        block, _, key = path.partition(".")
        if not values or block not in ("model", "loss", "optim", "loop", "mining") or not key:
            raise ValueError(
                f"--grid takes <block>.<key>=v1,v2 with a training block or mining, got {spec!r}"
            )
        axes.append([(block, key, text) for text in values.split(",")])
    out: dict[str, Overrides] = {}
    for combo in itertools.product(*axes):
        over: dict[str, dict[str, Any]] = {}
        mining: dict[str, Any] = {}
        for block, key, text in combo:
            target = mining if block == "mining" else over.setdefault(block, {})
            target[key] = yaml.safe_load(text)
        out[" ".join(f"{key}={text}" for _, key, text in combo)] = (over, mining)
    return out


def merge_overrides(variant: Overrides, combo: Overrides, name: str, label: str) -> Overrides:
    """A variant's overrides with a grid combination's added; a combination may not set
    a key the variant is defined by (it would undo the ablation)."""
    (v_train, v_mining), (g_train, g_mining) = variant, combo
    clash = [f"mining.{k}" for k in g_mining if k in v_mining] + [
        f"{block}.{k}"
        for block, keys in g_train.items()
        for k in keys
        if k in v_train.get(block, {})
    ]
    if clash:
        raise ValueError(f"--grid {label!r} sets {clash}, which define the variant {name!r}")
    blocks = {b: {**v_train.get(b, {}), **g_train.get(b, {})} for b in {*v_train, *g_train}}
    return blocks, {**v_mining, **g_mining}


@dataclass(frozen=True)
class Job:
    """One recipe to train at every seed: its row name, grid combination, overrides."""

    variant: str
    grid: str
    overrides: Overrides


def plan_jobs(
    known: dict[str, Overrides], variants: list[str] | None, grid: list[str] | None
) -> list[Job]:
    """The recipes to run: the ``variants`` (of ``known``; ``None``: all); with ``grid``,
    each variant at every combination (``variants`` ``None``: the combinations of the
    default recipe, each its own row)."""
    if not grid:
        return [Job(n, "", known[n]) for n in variants or known]
    combos = grid_variants(grid)
    if variants is None:
        return [Job(label, "", over) for label, over in combos.items()]
    return [
        Job(n, label, merge_overrides(known[n], over, n, label))
        for n in variants
        for label, over in combos.items()
    ]


def choose_on_val(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Each tuned variant's grid combination with the best mean val ``avg`` over the seeds
    of ``rows`` (the tuning seeds). Returns variant -> combination."""
    tuned = pd.DataFrame([r for r in rows if r.get("grid")])
    if tuned.empty:
        return {}
    return {
        str(variant): str(g.groupby("grid", sort=False)["val/avg"].mean().idxmax())
        for variant, g in tuned.groupby("variant", sort=False)
    }


def publish_chosen(rows: list[dict[str, Any]], chosen: dict[str, str], queries: Path) -> None:
    """Copy the chosen combination's per-query files (every seed it ran) to the variant's
    own folder, where ``--compare`` reads them."""
    for row in rows:
        variant, combo = row["variant"], row.get("grid")
        if combo and chosen.get(variant) == combo:
            dst = query_path(queries, variant, int(row["seed"]))
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(query_path(queries, variant, int(row["seed"]), combo), dst)


def chosen_jobs(jobs: list[Job], chosen: dict[str, str]) -> list[Job]:
    """The jobs of the chosen combinations (to run them at the seeds not tuned on)."""
    return [j for j in jobs if j.grid and chosen.get(j.variant) == j.grid]


def select_on_val(rows: list[dict[str, Any]], queries: Path | None) -> dict[str, str]:
    """:func:`choose_on_val`, then :func:`publish_chosen` (when ``queries`` is given)."""
    chosen = choose_on_val(rows)
    if queries is not None:
        publish_chosen(rows, chosen, queries)
    return chosen
