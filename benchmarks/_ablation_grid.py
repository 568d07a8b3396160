"""The ablations' recipes: variants, ``--grid`` combinations and the choice on val.

A grid combination overrides training blocks or mining. With variants, every variant is
trained at every combination (the same tuning budget for each) and keeps the one with
the best mean val ``avg`` over the tuning seeds; the chosen combination then runs at the
remaining seeds. Alone, each combination of the default recipe is a variant of its own.
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from _ablation_compare import query_path

logger = logging.getLogger(__name__)

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


def inherited_jobs(
    known: dict[str, Overrides], variants: list[str], grid: list[str], label: str
) -> list[Job]:
    """``variants`` at the grid combination ``label`` (the baseline's choice), not tuned."""
    combo = grid_variants(grid)[label]
    return [Job(n, label, merge_overrides(known[n], combo, n, label)) for n in variants]


def run_key(row: dict[str, Any]) -> tuple[str, str, int]:
    """A run's identity: (variant, grid combination, seed)."""
    return str(row["variant"]), str(row.get("grid") or ""), int(row["seed"])


@dataclass(frozen=True)
class Plan:
    """What to run: ``tuned`` jobs at the ``tune`` seeds, each tuned variant's chosen
    combination at the other ``seeds``, and the ``inherit`` variants at the ``baseline``'s
    chosen combination at every seed (ablations of the baseline that are not tuned)."""

    known: dict[str, Overrides]
    tuned: list[Job]
    grid: list[str]
    tune: list[int]
    seeds: list[int]
    inherit: list[str]
    baseline: str = "dqe_cir"

    def choices(self, rows: list[dict[str, Any]]) -> dict[str, str]:
        """The chosen combination of every tuned variant whose tuning runs are all in
        ``rows`` (val of the tuning seeds only), and of the inheriting variants once the
        baseline's is known."""
        done = {run_key(r) for r in rows}
        finished = {
            j.variant
            for j in self.tuned
            if j.grid
            and all(
                (k.variant, k.grid, s) in done
                for k in self.tuned
                if k.variant == j.variant
                for s in self.tune
            )
        }
        chosen = choose_on_val(
            [
                r
                for r in rows
                if r["variant"] in finished and r.get("grid") and r["seed"] in self.tune
            ]
        )
        if self.baseline in chosen:
            chosen.update({v: chosen[self.baseline] for v in self.inherit})
        return chosen

    def pending(self, rows: list[dict[str, Any]]) -> list[tuple[Job, int]]:
        """Every (job, seed) that can run now and is not in ``rows``: the tuning runs,
        then those whose combination is already chosen, seed by seed."""
        chosen = self.choices(rows)
        rest = [s for s in self.seeds if s not in self.tune]
        runs = [(j, s) for j in self.tuned for s in (self.tune if j.grid else self.seeds)]
        runs += [(j, s) for j in chosen_jobs(self.tuned, chosen) for s in rest]
        if self.baseline in chosen and self.inherit:
            label = chosen[self.baseline]
            runs += [
                (j, s)
                for j in inherited_jobs(self.known, self.inherit, self.grid, label)
                for s in self.seeds
            ]
        done = {run_key(r) for r in rows}
        tuning = {(j.variant, j.grid, s) for j in self.tuned if j.grid for s in self.tune}
        order = {name: i for i, name in enumerate(self.known)}
        todo = [(j, s) for j, s in runs if (j.variant, j.grid, s) not in done]
        # tuning runs first (their choices release the rest), then seed by seed
        return sorted(
            todo,
            key=lambda t: (
                (t[0].variant, t[0].grid, t[1]) not in tuning,
                t[1],
                order.get(t[0].variant, len(order)),
                t[0].grid,
            ),
        )


def resumed_rows(out: Path, queries: Path | None, record: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs an earlier invocation wrote to ``out`` (``--resume``), each kept only if
    its per-query file is there too (floors, seed -1, have none).

    Raises:
        ValueError: ``out`` records another setup (tier, data, epochs) than ``record``.
    """
    if not out.exists():
        return []
    document = json.loads(out.read_text())
    recorded = document.get("setup")
    # keys an older file did not record are not compared (a warning names them)
    differ = {
        k for k in record if recorded is not None and k in recorded and recorded[k] != record[k]
    }
    if differ:
        raise ValueError(f"{out} holds runs of {recorded}, not of {record}: another --out")
    unrecorded = sorted(k for k in record if recorded is not None and k not in recorded)
    if unrecorded:
        logger.warning("%s records no %s: resuming it as %s", out, unrecorded, record)
    if recorded is None:
        logger.warning("%s records no setup: resuming it as %s", out, record)
    rows: dict[tuple[str, str, int], dict[str, Any]] = {}
    for row in document.get("rows", []) + document.get("grid_rows", []):
        variant, grid, seed = run_key(row)
        if (
            seed >= 0
            and queries is not None
            and not query_path(queries, variant, seed, grid).exists()
        ):
            continue
        rows[(variant, grid, seed)] = row
    logger.info("resuming %d runs from %s", len(rows), out)
    return list(rows.values())
