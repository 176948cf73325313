"""Figure 3: learning time and transmitted data to reach an accuracy target, measured over seeds.

``compute`` runs ``federated.simulate`` for every seed, technique and pruning factor of a grid (plus
the unpruned reference), each starting from a dense model of its seed: one trained briefly on a small
share of the training split (scenario ``learning``: federated learning itself carries the model to
the targets, over many cheap rounds, so time and data grow with the target) or the model trained to
convergence that the other figures prune (``trained``: most targets are met after one round). Every
run records validation accuracy after each round, and test accuracy every round or only where a
target is first reached on validation (``FedConfig.test_every_round``). For each target, seed and
technique the factor is **chosen on validation data** -- the one reaching the target with the least
data (``select_for_targets``) -- and reported on test data; the grid is then refined by bisection
where the choice lies (``next_factor``), so the data needed moves with the method rather than with
the grid. ``savings`` compares FlexRel with magnitude,
relevance-only and no pruning, paired over seeds; ``fig3_report.report`` states the verdicts and
``fig3_views`` draws the figures.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..encoding import decode_sparse, encode_sparse
from ..masks import load_state
from ..parallel import run_tasks
from ..training import evaluate
from ..workbook.config import FedConfig, PruneConfig, TrainConfig
from ..workbook.paths import REPO_ROOT
from ..workbook.pipeline import prepare
from ..workbook.stats import t_interval
from .federated import simulate
from .fig3_report import BASELINES, rounds_to_target

PANELS = ("magnitude", "flexrel", "relevance")  # (a) magnitude and (b) FlexRel as in the paper, (c) relevance
SCENARIOS = ("learning", "trained")  # the order of rows in the figures and report; other names follow, sorted


@dataclasses.dataclass
class SweepResult:
    """Every run of one scenario: per-round and per-node tables (``grid``: the run is on the profile's
    grid of factors, not a refinement), the final global states of the first seed's grid runs, and
    the sizes of the validation and test splits accuracy is measured on (per seed)."""

    rounds: pd.DataFrame
    traffic: pd.DataFrame
    states: dict[tuple[str, float], dict]
    test_samples: dict[int, int]
    val_samples: dict[int, int] = dataclasses.field(default_factory=dict)

    @property
    def refined_runs(self) -> int:
        """How many runs the refinement added (over every seed and technique)."""
        runs = self.rounds[~self.rounds["grid"]] if "grid" in self.rounds else self.rounds.iloc[:0]
        return int(runs.groupby(["seed", "technique", "amount"]).ngroups)


def compute(
    base: TrainConfig,
    pcfg: PruneConfig,
    cfg: FedConfig,
    *,
    seeds: Sequence[int],
    techniques: Sequence[str],
    amounts: Sequence[float],
    delta: float,
    targets: Sequence[float] = (),
    resolution: float | None = None,
    refine: Sequence[str] | None = None,
    scenario: str = "trained",
    dense_baseline: bool = True,
    cache_root: str | Path = REPO_ROOT / "cache",
    threads: int | None = 1,
    device: str = "cpu",
    workers: int | None = None,
) -> SweepResult:
    """``federated.simulate`` for every seed, technique and factor of ``amounts`` (plus one unpruned run
    per seed if ``dense_baseline``), starting from the dense model ``base`` describes; every technique
    sees the same seeds, so comparisons are paired. With ``targets`` and ``resolution``, each (seed,
    technique of ``refine`` (default: all), target) is then refined by ``next_factor`` until the
    factor chosen on validation data is known to ``resolution``. Rows carry ``scenario``. Each seed is a
    task for ``parallel.run_tasks`` (``workers``: its worker processes; ``None``: one per CPU core)."""
    runs = [(t, float(a)) for t in techniques for a in amounts] + ([("dense", 0.0)] if dense_baseline else [])
    refined = [t for t in techniques if refine is None or t in refine] if resolution else []
    tasks = [
        SeedRuns(
            dataclasses.replace(base, seed=int(seed)),
            pcfg,
            cfg,
            runs,
            refined,
            [float(t) for t in targets],
            resolution,
            delta,
            str(cache_root),
            threads,
            device,
            keep_states=i == 0,
        )  # fmt: skip
        for i, seed in enumerate(seeds)
    ]
    done = run_tasks(
        seed_runs, tasks, workers=workers, device=device, desc=f"fig3 seeds ({scenario})", units=lambda t: len(t.runs)
    )
    rounds = [r for d in done for r in d["rounds"]]
    traffic = [t for d in done for t in d["traffic"]]
    states = done[0]["states"] if done else {}
    test_samples = {int(t.base.seed): d["test_samples"] for t, d in zip(tasks, done, strict=True)}
    val_samples = {int(t.base.seed): d["val_samples"] for t, d in zip(tasks, done, strict=True)}
    first = ["scenario", "seed", "technique", "amount", "grid", "round", "eligible", "val_accuracy", "accuracy"]
    first += ["elapsed_s", "mb"]
    df = pd.DataFrame(rounds).assign(scenario=scenario)
    return SweepResult(
        df[first + [c for c in df.columns if c not in first]],
        pd.DataFrame(traffic).assign(scenario=scenario),
        states,
        test_samples,
        val_samples,
    )


@dataclasses.dataclass
class SeedRuns:
    """One seed's share of ``compute`` (a task for ``parallel.run_tasks``): the grid ``runs``
    (technique, factor) from the dense model of ``base``, then the refinement of each technique of
    ``refine`` toward each target (``next_factor``); ``keep_states``: return the grid runs' final states."""

    base: TrainConfig
    pcfg: PruneConfig
    cfg: FedConfig
    runs: list[tuple[str, float]]
    refine: list[str]
    targets: list[float]
    resolution: float | None
    delta: float
    cache_root: str
    threads: int | None
    device: str
    keep_states: bool = False


def seed_runs(task: SeedRuns) -> dict:
    """Every run of one seed: ``{"rounds", "traffic", "states", "test_samples", "val_samples"}``."""
    setup = prepare(task.base, task.pcfg, cache_root=task.cache_root, device=task.device)
    traffic: list = []
    states: dict = {}
    run = functools.partial(
        _run, setup, task.pcfg, task.cfg, delta=task.delta, cache_root=task.cache_root, threads=task.threads,
        device=task.device, traffic=traffic, states=states if task.keep_states else None, targets=task.targets,
    )  # fmt: skip
    mine = [r for technique, amount in task.runs for r in run(technique, amount, grid=True)]
    for technique in task.refine:
        own = pd.DataFrame([r for r in mine if r["technique"] == technique])
        for target in task.targets:
            while (step := next_factor(own, target, task.resolution)) is not None:
                extra = run(technique, step[0], grid=False, rounds=step[1])
                mine += extra
                own = pd.concat([own, pd.DataFrame(extra)], ignore_index=True)
    return {
        "rounds": mine,
        "traffic": traffic,
        "states": states,
        "test_samples": len(setup.data.test),
        "val_samples": len(setup.data.val),
    }


def _run(setup, pcfg, cfg, technique, amount, *, grid, delta, cache_root, threads, device, traffic, states,
         targets=(), rounds=None):  # fmt: skip
    """One cached run's rounds, marked ``grid``; its traffic appended to ``traffic``, its final state
    kept in ``states`` (grid runs, when given). ``rounds``: stop after that many rounds (the first
    rounds of a run do not depend on how many follow: each round's local training is seeded by its index).
    ``targets``: where test accuracy is measured and a run may stop (``federated.simulate``)."""
    cfg = dataclasses.replace(cfg, rounds=min(rounds, cfg.rounds)) if rounds else cfg
    try:
        res = simulate(
            setup, pcfg, cfg, technique, amount, delta=delta, targets=targets, cache_root=cache_root,
            threads=threads, device=device,
        )  # fmt: skip
    except Exception as err:
        raise RuntimeError(f"Figure 3 run failed at seed {setup.cfg.seed}, {technique}, p = {amount:g}: {err}") from err
    traffic.extend(t | {"grid": grid} for t in res["traffic"])
    if grid and states is not None:
        states[(technique, amount)] = res["state"]
    return [r | {"grid": grid} for r in res["rounds"]]


def curves(rounds: pd.DataFrame) -> pd.DataFrame:
    """Accuracy against transmitted data and time: per (scenario, technique, amount, round) of the grid
    runs, the mean over seeds of validation and test accuracy (each with its 95 % t-interval, clipped
    to [0, 1], over the seeds where it was measured: ``n`` and ``val_n``; test accuracy may be measured
    only where a target is reached, and a run may stop early), cumulative megabytes and elapsed seconds."""
    df = rounds[rounds["grid"]] if "grid" in rounds else rounds
    keys = _scenario(df) + ["technique", "amount", "round"]
    rows = []
    for key, g in df.groupby(keys, sort=False):
        row = dict(zip(keys, key, strict=True))
        for col, prefix in (("accuracy", ""), ("val_accuracy", "val_")):
            values = g[col].dropna().tolist() if col in g else []
            acc = t_interval(values) if values else {"n": 0, "mean": np.nan, "ci_low": np.nan, "ci_high": np.nan}
            row |= {f"{prefix}n": acc["n"], col: acc["mean"]}
            row |= {f"{col}_ci_low": max(acc["ci_low"], 0.0), f"{col}_ci_high": min(acc["ci_high"], 1.0)}
        rows.append(row | {"mb": float(g["mb"].mean()), "elapsed_s": float(g["elapsed_s"].mean())})
    return pd.DataFrame(rows)


def _scenario(df: pd.DataFrame) -> list[str]:
    return ["scenario"] if "scenario" in df else []


def data_needed(rounds: pd.DataFrame, targets: Sequence[float], on: str = "val_accuracy") -> pd.DataFrame:
    """Per (scenario, target, seed, technique, amount): whether the run reaches the target on ``on``
    (the first eligible round whose ``on`` accuracy is >= target), and the round, time, data and the
    validation and test accuracy at that round (NaN when not reached). ``rounds`` needs columns
    technique, amount, round, elapsed_s, mb and ``on``; seed, eligible and scenario are optional."""
    if on not in rounds:
        raise ValueError(f"rounds has no {on!r} column: record it per round (federated.simulate does) or pass on=")
    df = rounds if "eligible" in rounds else rounds.assign(eligible=True)
    df = df if "seed" in df else df.assign(seed=0)
    keys = _scenario(df) + ["seed", "technique", "amount"]
    df = df[df["eligible"]].sort_values([*keys, "round"])
    out = []
    for target in targets:
        hit = df[df[on] >= target - 1e-9].groupby(keys, sort=False).head(1).set_index(keys)
        for key in df.groupby(keys, sort=False).groups:
            row = dict(zip(keys, key, strict=True)) | {"target": float(target), "reached": key in hit.index}
            for k in ("round", "elapsed_s", "mb", "val_accuracy", "accuracy"):
                row[k] = float(hit.loc[key, k]) if row["reached"] and k in hit else np.nan
            out.append(row)
    return pd.DataFrame(out)


def select_for_targets(rounds: pd.DataFrame, targets: Sequence[float], on: str = "val_accuracy") -> pd.DataFrame:
    """For each (scenario,) target, seed and technique, the pruning factor that reaches the target on
    ``on`` (validation accuracy by default: chosen on validation, reported on test) with the least data,
    over every factor run for that seed; ties go to less time, then to the larger factor. The row
    carries that point's round, time, data, ``val_accuracy`` and test ``accuracy``, and ``test_meets``
    (the test accuracy there also meets the target). Not reached: ``reached=False``, NaN numbers."""
    need = data_needed(rounds, targets, on)
    keys = _scenario(need) + ["target", "seed", "technique"]
    out = []
    for key, g in need.groupby(keys, sort=False):
        hits = g[g["reached"]]
        row = dict(zip(keys, key, strict=True)) | {"reached": not hits.empty}
        cols = ("amount", "round", "elapsed_s", "mb", "val_accuracy", "accuracy")
        if hits.empty:
            row |= dict.fromkeys(cols, np.nan) | {"test_meets": False}
        else:
            best = hits.assign(neg=-hits["amount"]).sort_values(["mb", "elapsed_s", "neg"]).iloc[0]
            row |= {k: float(best[k]) for k in cols if k in best}
            row["test_meets"] = bool(best["accuracy"] >= row["target"] - 1e-9)
        out.append(row)
    return pd.DataFrame(out)


def learning_check(selection: pd.DataFrame) -> pd.DataFrame:
    """Per scenario, whether learning carries the model to the targets: the median round over every
    choice that reaches its target (all techniques, targets and seeds), the same over the pruned
    techniques only, the seeds, and the fewest seeds in which the unpruned model reaches a target
    (the minimum over targets; 0 where some target is never reached)."""
    sel = selection if "scenario" in selection else selection.assign(scenario="")
    rows = []
    for scenario, g in sel.groupby("scenario", sort=False):
        hit = g[g["reached"].astype(bool)]
        pruned = hit[hit["technique"] != "dense"]
        per = rounds_to_target(g)
        dense = per.loc[per["technique"] == "dense", "reached"]
        rows.append(
            {"scenario": scenario, "seeds": int(g["seed"].nunique()), "targets": int(g["target"].nunique())}
            | {"median_round": float(hit["round"].median()) if len(hit) else np.nan}
            | {"median_round_pruned": float(pruned["round"].median()) if len(pruned) else np.nan}
            | {"dense_min_reached": int(dense.min()) if len(dense) else 0}
        )  # fmt: skip
    return pd.DataFrame(rows)


def next_factor(
    runs: pd.DataFrame, target: float, resolution: float, on: str = "val_accuracy"
) -> tuple[float, int] | None:
    """The next factor to run for one seed and technique (``runs``: every round of its runs so far) and
    the rounds it needs to be run for, or None when the choice is known to ``resolution``.

    The factor chosen (least data to the target on ``on``, ``select_for_targets``) reaches the target
    at some round r; the next factor run above it is the first not known to reach it within r rounds.
    Assuming accuracy after r rounds decreases with p, the highest factor reaching the target within r
    rounds -- the least data in r rounds -- lies between the two: bisect there, running each midpoint
    for r rounds, until they are at most ``resolution`` apart. A midpoint that would reach the target
    only after round r counts as not reaching it: in r + 1 rounds it saves data over the choice only
    if (1 - p_mid) / (1 - p_chosen) < r / (r + 1), i.e. if half the gap exceeds (1 - p_chosen) / (r + 1),
    which a gap of a few hundredths allows only after many rounds. Where accuracy is not
    monotone in p the bisection still ends (the interval halves at every step, at fixed midpoints)
    and the choice is the least data over every factor run."""
    sel = select_for_targets(runs, [target], on).iloc[0]
    if not sel["reached"]:
        return None
    above = sorted(a for a in runs["amount"].unique() if a > sel["amount"] + 1e-12)
    if not above or above[0] - sel["amount"] <= resolution + 1e-9:
        return None
    return round((sel["amount"] + above[0]) / 2, 6), int(sel["round"])


def savings(selection: pd.DataFrame, other: str = "flexrel", bases: Sequence[str] = BASELINES) -> pd.DataFrame:
    """Per (scenario,) target and baseline: the data saving of ``other``, 1 - mb_other / mb_base, paired
    per seed over the seeds where both reach the target, with its 95 % t-interval; also the time
    saving, how many seeds each side reached the target on, and in how many of the paired seeds both
    reach it in the same round (``same_round``: there the saving is the ratio of message sizes)."""
    if "scenario" in selection:
        parts = [_savings(g, other, bases).assign(scenario=s) for s, g in selection.groupby("scenario", sort=False)]
        df = pd.concat(parts, ignore_index=True)
        return df[["scenario"] + [c for c in df.columns if c != "scenario"]]
    return _savings(selection, other, bases)


def _savings(selection: pd.DataFrame, other: str, bases: Sequence[str]) -> pd.DataFrame:
    wide = selection.pivot_table(
        index=["target", "seed"], columns="technique", values=["mb", "elapsed_s", "round"], dropna=False
    )
    reached = selection.pivot_table(index="target", columns="technique", values="reached", aggfunc="sum")
    rows = []
    for target in sorted(selection["target"].unique()):
        w = wide.loc[target]
        for base in bases:
            if ("mb", base) not in w or ("mb", other) not in w:
                continue
            both = w[[("mb", base), ("mb", other)]].dropna().index
            mb = t_interval((1 - w.loc[both, ("mb", other)] / w.loc[both, ("mb", base)]).tolist())
            time = t_interval((1 - w.loc[both, ("elapsed_s", other)] / w.loc[both, ("elapsed_s", base)]).tolist())
            rows.append(
                {"target": target, "baseline": base, "n": mb["n"], "saving": mb["mean"], "ci_low": mb["ci_low"]}
                | {"ci_high": mb["ci_high"], "time_saving": time["mean"]}
                | {f"mb_{base}": float(w.loc[both, ("mb", base)].mean()) if len(both) else np.nan}
                | {f"mb_{other}": float(w.loc[both, ("mb", other)].mean()) if len(both) else np.nan}
                | {"same_round": int((w.loc[both, ("round", base)] == w.loc[both, ("round", other)]).sum())}
                | {
                    f"reached_{base}": int(reached.loc[target, base]),
                    f"reached_{other}": int(reached.loc[target, other]),
                }
            )
    return pd.DataFrame(rows)


def half_precision_effect(
    result: SweepResult,
    base: TrainConfig,
    pcfg: PruneConfig,
    *,
    seed: int,
    cache_root: str | Path = REPO_ROOT / "cache",
    device: str = "cpu",
) -> pd.DataFrame:
    """Test accuracy and bytes of the final models of seed ``seed`` (the sweep's first) sent in
    float32 vs float16 (``encode_sparse(half=True)``)."""
    setup = prepare(dataclasses.replace(base, seed=int(seed)), pcfg, cache_root=cache_root, device=device)
    rows = []
    for (technique, amount), state in result.states.items():
        model = load_state(setup.fresh_model(), state)
        blob32, blob16 = encode_sparse(model), encode_sparse(model, half=True)
        acc32 = evaluate(model, setup.data.test, device=device)
        acc16 = evaluate(decode_sparse(blob16, copy.deepcopy(model)), setup.data.test, device=device)
        rows.append(
            {"technique": technique, "amount": amount, "accuracy_fp32": acc32, "accuracy_fp16": acc16}
            | {"bytes_fp32": len(blob32), "bytes_fp16": len(blob16), "accuracy_change": acc16 - acc32}
        )
    return pd.DataFrame(rows)
