"""The ablations' per-query files, paired comparison and equal-budget grid tuning
(``benchmarks/_ablation_compare.py``, ``benchmarks/_ablation_grid.py``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from dqe_cir_pipeline.model.evaluate import EvalSet, evaluate_embeddings
from dqe_cir_pipeline.model.protocol import CIRR_SUBSET_KS, BenchmarkProtocol
from tests.helpers.bench import on_benchmarks_path

PROTOCOL = BenchmarkProtocol(subset_ks=CIRR_SUBSET_KS, edit_type_breakdown=True)


@pytest.fixture(scope="module")
def modules() -> Iterator[tuple[ModuleType, ModuleType]]:
    with on_benchmarks_path():
        import _ablation_compare
        import _ablation_grid

        yield _ablation_compare, _ablation_grid


def _evaluated(seed: int, n: int = 40, m: int = 50) -> tuple[dict[str, float], pd.DataFrame]:
    """An evaluation of random embeddings on a split with several valid targets."""
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(0)  # the same split for every seed
    names = [f"g{i}" for i in range(m)]
    refs, valid, members = [], [], []
    for _ in range(n):
        pick = rng.choice(m, size=8, replace=False)
        refs.append(names[pick[0]])
        valid.append([names[j] for j in pick[1 : 1 + rng.integers(1, 4)]])
        members.append([names[j] for j in pick[:6]])
    data = EvalSet(
        dataset="synthetic",
        split="test",
        query_ids=[f"q{i}" for i in range(n)],
        reference_ids=refs,
        target_ids=[v[0] for v in valid],
        texts=["t"] * n,
        edit_types=["color"] * n,
        categories=["all"] * n,
        subset_members=members,
        gallery_ids=names,
        gallery_categories=["all"] * m,
        valid_targets=valid,
    )
    q = F.normalize(torch.randn(n, 8, generator=g, dtype=torch.float64), dim=-1)
    gallery = F.normalize(torch.randn(m, 2, 8, generator=g, dtype=torch.float64), dim=-1)
    out = evaluate_embeddings(q, None, gallery, data, protocol=PROTOCOL)
    return out.metrics, out.per_query


def _two_variants(cmp: ModuleType, folder: Path) -> pd.DataFrame:
    """Per-query files of ``dqe_cir`` and ``other`` at seeds 0 and 1, read back."""
    for variant, offset in (("dqe_cir", 0), ("other", 10)):
        for seed in (0, 1):
            cmp.write_queries(folder, _evaluated(offset + seed)[1], variant, seed)
    return cmp.read_queries(folder)


def test_per_query_files_reproduce_the_reported_metrics(
    modules: tuple[ModuleType, ModuleType], tmp_path: Path
) -> None:
    cmp, _ = modules
    metrics, per_query = _evaluated(0)
    cmp.write_queries(tmp_path, per_query, "dqe_cir", 0)
    frame = cmp.read_queries(tmp_path)
    assert set(frame.columns) >= {"variant", "grid", "seed", "query_id", "rank", "rank_any"}
    for metric in cmp.HEADLINE + cmp.MULTI_HEADLINE:
        assert 100 * cmp.query_scores(frame, metric).mean() == pytest.approx(metrics[metric])


def test_paired_comparison_and_its_refusals(
    modules: tuple[ModuleType, ModuleType], tmp_path: Path
) -> None:
    cmp, _ = modules
    frame = _two_variants(cmp, tmp_path)
    results = cmp.compare(frame, n_boot=500)
    assert {r["variant"] for r in results} == {"other"}
    for r in results:
        a = cmp.query_scores(frame[frame["variant"] == "dqe_cir"], r["metric"]).mean()
        b = cmp.query_scores(frame[frame["variant"] == "other"], r["metric"]).mean()
        assert r["diff"] == pytest.approx(100 * (b - a))
        assert r["low"] <= r["diff"] <= r["high"] and (r["seeds"], r["queries"]) == (2, 40)
    assert "| other |" in cmp.compare_table(results, "dqe_cir")

    missing_seed = frame[~((frame["variant"] == "other") & (frame["seed"] == 1))]
    with pytest.raises(ValueError, match=r"other ran seeds \[0\], dqe_cir \[0, 1\]"):
        cmp.compare(missing_seed, n_boot=10)
    fewer = frame[~((frame["variant"] == "other") & (frame["query_id"] == "q3"))]
    with pytest.raises(ValueError, match="different queries at seed 0"):
        cmp.compare(fewer, n_boot=10)
    with pytest.raises(ValueError, match="baseline 'nope'"):
        cmp.compare(frame, baseline="nope")


def test_grid_tunes_every_variant_alike_and_selects_on_val(
    modules: tuple[ModuleType, ModuleType], tmp_path: Path
) -> None:
    cmp, grid = modules
    known = {
        "dqe_cir": ({}, {}),
        "no_margins": ({"loss": {"use_margins": False}}, {}),
    }
    jobs = grid.plan_jobs(known, ["dqe_cir", "no_margins"], ["optim.lr=1e-3,3e-3"])
    assert [(j.variant, j.grid) for j in jobs] == [
        ("dqe_cir", "lr=1e-3"),
        ("dqe_cir", "lr=3e-3"),
        ("no_margins", "lr=1e-3"),
        ("no_margins", "lr=3e-3"),
    ]
    assert jobs[3].overrides == ({"loss": {"use_margins": False}, "optim": {"lr": "3e-3"}}, {})
    # alone, the combinations of the default recipe are the rows
    alone = grid.plan_jobs(known, None, ["optim.lr=1e-3,3e-3"])
    assert [(j.variant, j.grid) for j in alone] == [("lr=1e-3", ""), ("lr=3e-3", "")]
    with pytest.raises(ValueError, match="define the variant 'no_margins'"):
        grid.plan_jobs(known, ["no_margins"], ["loss.use_margins=true"])

    rows = []
    val = {("dqe_cir", "lr=1e-3"): [50, 52], ("dqe_cir", "lr=3e-3"): [55, 49]}
    val |= {("no_margins", "lr=1e-3"): [40, 40], ("no_margins", "lr=3e-3"): [41, 41]}
    _, per_query = _evaluated(0)
    for (variant, combo), scores in val.items():
        for seed, score in enumerate(scores):
            rows.append({"variant": variant, "grid": combo, "seed": seed, "val/avg": score})
            cmp.write_queries(tmp_path, per_query, variant, seed, combo)
    chosen = grid.choose_on_val(rows)
    grid.publish_chosen(rows, chosen, tmp_path)
    # dqe_cir: mean 51 vs 52 -> 3e-3; no_margins: 40 vs 41 -> 3e-3
    assert chosen == {"dqe_cir": "lr=3e-3", "no_margins": "lr=3e-3"}
    frame = cmp.read_queries(tmp_path)  # the chosen runs only, under the variants' names
    assert set(frame["grid"]) == {"lr=3e-3"} and set(frame["seed"]) == {0, 1}


def test_tuning_seeds_then_the_chosen_combination_at_the_other_seeds(
    modules: tuple[ModuleType, ModuleType], tmp_path: Path
) -> None:
    cmp, grid = modules
    known = {"dqe_cir": ({}, {}), "pairwise_kl": ({"loss": {"objective": "pairwise_kl"}}, {})}
    jobs = grid.plan_jobs(known, list(known), ["optim.lr=1e-3,3e-3"])
    _, per_query = _evaluated(0)
    # seed 0 tunes: dqe_cir prefers 1e-3, pairwise_kl 3e-3 (val only; test is not read)
    val = {("dqe_cir", "lr=1e-3"): 60, ("dqe_cir", "lr=3e-3"): 55}
    val |= {("pairwise_kl", "lr=1e-3"): 40, ("pairwise_kl", "lr=3e-3"): 48}
    rows = [
        {"variant": v, "grid": c, "seed": 0, "val/avg": score, "avg": 100 - score}
        for (v, c), score in val.items()
    ]
    for v, c in val:
        cmp.write_queries(tmp_path, per_query, v, 0, c)
    chosen = grid.choose_on_val(rows)
    assert chosen == {"dqe_cir": "lr=1e-3", "pairwise_kl": "lr=3e-3"}
    rest = grid.chosen_jobs(jobs, chosen)
    assert [(j.variant, j.grid) for j in rest] == [
        ("dqe_cir", "lr=1e-3"),
        ("pairwise_kl", "lr=3e-3"),
    ]
    assert rest[1].overrides == (
        {"loss": {"objective": "pairwise_kl"}, "optim": {"lr": "3e-3"}},
        {},
    )
    # the chosen combinations then run at seeds 1 and 2 only
    for job in rest:
        for seed in (1, 2):
            rows.append({"variant": job.variant, "grid": job.grid, "seed": seed, "val/avg": 0})
            cmp.write_queries(tmp_path, per_query, job.variant, seed, job.grid)
    grid.publish_chosen(rows, chosen, tmp_path)
    frame = cmp.read_queries(tmp_path)
    for variant, combo in chosen.items():
        mine = frame[frame["variant"] == variant]
        assert set(mine["grid"]) == {combo} and set(mine["seed"]) == {0, 1, 2}
    assert cmp.compare(frame, n_boot=50)[0]["seeds"] == 3


def test_comparison_resamples_whole_scene_families(
    modules: tuple[ModuleType, ModuleType], tmp_path: Path
) -> None:
    cmp, _ = modules
    frame = _two_variants(cmp, tmp_path)
    families = {f"q{i}": f"ref{i // 4}" for i in range(40)}  # 10 families of 4 queries
    by_query = {r["metric"]: r for r in cmp.compare(frame, n_boot=400)}
    by_family = {r["metric"]: r for r in cmp.compare(frame, n_boot=400, families=families)}
    for metric, r in by_family.items():
        assert r["diff"] == pytest.approx(by_query[metric]["diff"])  # the same estimate
        assert (r["families"], r["queries"], by_query[metric]["families"]) == (10, 40, 0)
        assert r["low"] <= r["diff"] <= r["high"]
    with pytest.raises(ValueError, match="1 queries have no scene family"):
        cmp.compare(frame, n_boot=10, families={k: v for k, v in families.items() if k != "q7"})


def test_sampling_errors_of_each_run(
    modules: tuple[ModuleType, ModuleType], tmp_path: Path
) -> None:
    cmp, _ = modules
    frame = _two_variants(cmp, tmp_path)
    errors = cmp.sampling_errors(frame)
    metrics = cmp.HEADLINE + cmp.MULTI_HEADLINE
    assert len(errors) == 2 * 2 * len(metrics)
    one = next(
        e for e in errors if (e["variant"], e["seed"], e["metric"]) == ("other", 1, "recall@10")
    )
    x = cmp.query_scores(frame[(frame["variant"] == "other") & (frame["seed"] == 1)], "recall@10")
    assert one["value"] == pytest.approx(100 * x.mean())
    assert one["se"] == pytest.approx(100 * x.std(ddof=1) / np.sqrt(40))  # independent queries
    # families of 4: the cluster-robust form, per run, from the same per-query values
    families = {f"q{i}": f"ref{i // 4}" for i in range(40)}
    clustered = cmp.sampling_errors(frame, families)
    labels = np.array([f"ref{i // 4}" for i in range(40)])
    sums = pd.Series(x - x.mean()).groupby(labels).sum().to_numpy()
    want = 100 * np.sqrt(10 / 9 * (sums**2).sum()) / 40
    got = next(
        e for e in clustered if (e["variant"], e["seed"], e["metric"]) == ("other", 1, "recall@10")
    )
    assert got["se"] == pytest.approx(want)


def test_scene_families_come_from_the_generated_test_captions(tmp_path: Path) -> None:
    with on_benchmarks_path():
        import _ablation_setup as setup_mod
    setup = setup_mod.Setup(tier="ambiguous", workdir=tmp_path)
    with pytest.raises(FileNotFoundError, match="cap.test.json is missing"):
        setup_mod.test_families(setup)
    captions = tmp_path / "ambiguous" / "benchmark" / "captions"
    captions.mkdir(parents=True)
    records = [{"pairid": 4000 + i, "reference": f"syn_test_{i // 4}_00"} for i in range(8)]
    (captions / "cap.test.json").write_text(json.dumps(records))
    families = setup_mod.test_families(setup)
    assert families["4005"] == "syn_test_1_00" and len(set(families.values())) == 2
