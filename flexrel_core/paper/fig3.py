"""Figure 3: learning time and transmitted data to reach an accuracy target, measured over seeds.

``compute`` runs ``federated.simulate`` for every seed, technique and pruning factor of a grid (plus
the unpruned reference), each starting from a dense model of its seed: the model trained to
convergence (scenario ``trained``) or, beside it, one trained for fewer epochs (``partial``: a
scenario where learning still takes rounds). Every run records validation and test accuracy after
each round. For each target, seed and technique the factor is **chosen on validation data** -- the
one reaching the target with the least data (``select_for_targets``) -- and reported on test data;
the grid is then refined by bisection where the choice lies (``next_factor``), so the data needed
moves with the method rather than with the grid. ``savings`` compares FlexRel with magnitude,
relevance-only and no pruning, paired over seeds; ``fig3_report.report`` states the verdicts.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..encoding import decode_sparse, encode_sparse
from ..masks import load_state
from ..parallel import run_tasks
from ..training import evaluate
from ..workbook.config import FedConfig, PruneConfig, TrainConfig
from ..workbook.paths import REPO_ROOT
from ..workbook.pipeline import prepare
from ..workbook.stats import t_interval
from .federated import simulate
from .fig3_report import BASELINES
from .style import LABELS, PALETTE

PANELS = ("magnitude", "flexrel", "relevance")  # (a) magnitude and (b) FlexRel as in the paper, (c) relevance
SCENARIOS = ("trained", "partial")  # the order of rows in the figures; other names follow, sorted


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
        device=task.device, traffic=traffic, states=states if task.keep_states else None,
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
         rounds=None):  # fmt: skip
    """One cached run's rounds, marked ``grid``; its traffic appended to ``traffic``, its final state
    kept in ``states`` (grid runs, when given). ``rounds``: stop after that many rounds (the first
    rounds of a run do not depend on how many follow: each round's local training is seeded by its index)."""
    cfg = dataclasses.replace(cfg, rounds=min(rounds, cfg.rounds)) if rounds else cfg
    try:
        res = simulate(
            setup, pcfg, cfg, technique, amount, delta=delta, cache_root=cache_root, threads=threads, device=device
        )
    except Exception as err:
        raise RuntimeError(f"Figure 3 run failed at seed {setup.cfg.seed}, {technique}, p = {amount:g}: {err}") from err
    traffic.extend(t | {"grid": grid} for t in res["traffic"])
    if grid and states is not None:
        states[(technique, amount)] = res["state"]
    return [r | {"grid": grid} for r in res["rounds"]]


def curves(rounds: pd.DataFrame) -> pd.DataFrame:
    """Accuracy against transmitted data and time: per (scenario, technique, amount, round) of the grid
    runs, the mean over seeds of test accuracy (with its 95 % t-interval, clipped to [0, 1]),
    cumulative megabytes and elapsed seconds."""
    df = rounds[rounds["grid"]] if "grid" in rounds else rounds
    keys = _scenario(df) + ["technique", "amount", "round"]
    rows = []
    for key, g in df.groupby(keys, sort=False):
        acc = t_interval(g["accuracy"].tolist())
        rows.append(
            dict(zip(keys, key, strict=True)) | {"n": acc["n"], "accuracy": acc["mean"]}
            | {"accuracy_ci_low": max(acc["ci_low"], 0.0), "accuracy_ci_high": min(acc["ci_high"], 1.0)}
            | {"mb": float(g["mb"].mean()), "elapsed_s": float(g["elapsed_s"].mean())}
        )  # fmt: skip
    return pd.DataFrame(rows)


def _scenario(df: pd.DataFrame) -> list[str]:
    return ["scenario"] if "scenario" in df else []


def _scenarios(df: pd.DataFrame) -> list:
    """The scenarios of ``df`` in ``SCENARIOS`` order (others after, sorted); ``[None]`` without the column."""
    if "scenario" not in df:
        return [None]
    names = set(df["scenario"])
    return [s for s in SCENARIOS if s in names] + sorted(names - set(SCENARIOS))


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


def plot(selection: pd.DataFrame, panels: Sequence[str] = PANELS) -> Figure:
    """The paper's Figure 3, one row per scenario: elapsed learning time against accuracy target, one
    panel per technique ((a) magnitude, (b) FlexRel, (c) relevance only), mean and 95 % interval over
    the seeds that reach the target, each point annotated with the mean megabytes sent, the mean round
    reached and the seeds reaching it; the unpruned runs, where present, as a grey reference line."""
    scenarios = _scenarios(selection)
    fig, axes = plt.subplots(
        len(scenarios), len(panels), figsize=(4.4 * len(panels), 3.8 * len(scenarios)), sharey="row", squeeze=False
    )
    for row, scenario in zip(axes, scenarios, strict=True):
        summary = _by_target(selection if scenario is None else selection[selection["scenario"] == scenario])
        dense = summary[summary["technique"] == "dense"]
        for ax, technique, letter in zip(row, panels, "abcdefgh", strict=False):
            if not dense.empty:
                ax.plot(dense["target"], dense["elapsed_s"], ls="--", color=PALETTE["dense"], lw=1,
                        label=LABELS["dense"])  # fmt: skip
            part = summary[summary["technique"] == technique]
            ax.errorbar(
                part["target"], part["elapsed_s"],
                yerr=[part["elapsed_s"] - part["low"], part["high"] - part["elapsed_s"]],
                fmt="o-", capsize=3, color=PALETTE[technique], label=LABELS[technique],
            )  # fmt: skip
            for r in part.itertuples():
                ax.annotate(f"{r.mb:.2f} MB, r{r.round:.1f}\n{r.n}/{r.seeds}", (r.target, r.elapsed_s), fontsize=6,
                            textcoords="offset points", xytext=(0, 7), ha="center")  # fmt: skip
            ax.set_title(f"({letter}) {LABELS[technique]}" + (f" — {scenario}" if scenario else ""))
            ax.set_xlabel("accuracy target (validation)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="upper left")
        row[0].set_ylabel("elapsed learning time (s)")
    fig.tight_layout()
    return fig


def _by_target(selection: pd.DataFrame) -> pd.DataFrame:
    """Per (technique, target): mean time, data and round over the seeds that reach it, interval, counts."""
    rows = []
    for (technique, target), g in selection.groupby(["technique", "target"], sort=False):
        hit = g[g["reached"].astype(bool)]
        t = t_interval(hit["elapsed_s"].tolist())
        if not len(hit):
            continue
        low, high = (t["ci_low"], t["ci_high"]) if t["n"] > 1 else (t["mean"], t["mean"])
        rows.append(
            {"technique": technique, "target": target, "elapsed_s": t["mean"], "low": low, "high": high}
            | {"mb": float(hit["mb"].mean()), "round": float(hit["round"].mean()), "n": len(hit)}
            | {"seeds": g["seed"].nunique()}
        )
    return pd.DataFrame(rows, columns=["technique", "target", "elapsed_s", "low", "high", "mb", "round", "n", "seeds"])


def plot_data_needed(rounds: pd.DataFrame, selection: pd.DataFrame, panels: Sequence[str] = PANELS) -> Figure:
    """How the data needed varies with the pruning factor, one row per scenario, at the middle target of
    ``selection``: per technique and seed, the megabytes sent until the validation accuracy first
    meets the target, against p, over every factor run (grid and refinement); the factor chosen for
    each seed is circled. Factors that never reach the target within the rounds are left out."""
    targets = sorted(selection["target"].unique())
    target = targets[(len(targets) - 1) // 2]
    need = data_needed(rounds, [target])
    chosen = selection[selection["target"] == target]
    scenarios = _scenarios(need)
    fig, axes = plt.subplots(len(scenarios), 1, figsize=(7.5, 3.6 * len(scenarios)), squeeze=False)
    for ax, scenario in zip(axes[:, 0], scenarios, strict=True):
        here = need if scenario is None else need[need["scenario"] == scenario]
        picked = chosen if scenario is None else chosen[chosen["scenario"] == scenario]
        for technique in panels:
            for i, (_, g) in enumerate(here[(here["technique"] == technique) & here["reached"]].groupby("seed")):
                g = g.sort_values("amount")
                ax.plot(g["amount"], g["mb"], "o-", ms=2.5, lw=0.8, alpha=0.6, color=PALETTE[technique],
                        label=LABELS[technique] if i == 0 else None)  # fmt: skip
            p = picked[(picked["technique"] == technique) & picked["reached"]]
            ax.scatter(p["amount"], p["mb"], s=60, facecolors="none", edgecolors=PALETTE[technique], lw=1.5)
        if (here["reached"] & here["technique"].isin(panels)).any():
            ax.set_yscale("log")
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no run reaches the target", transform=ax.transAxes, ha="center")
        ax.set_xlabel("pruning factor p")
        ax.set_ylabel(f"MB to {target:.0%} (validation)")
        ax.set_title(f"data needed against p, target {target:g}" + (f" — {scenario}" if scenario else ""))
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def plot_curves(curve: pd.DataFrame, amounts: Sequence[float] | None = None) -> Figure:
    """The primary view, one row per scenario: test accuracy against cumulative transmitted megabytes
    (left) and against elapsed time (right), per technique at the pruning factors ``amounts`` (default:
    a few across the grid), mean and 95 % interval over seeds."""
    scenarios = _scenarios(curve)
    fig, axes = plt.subplots(len(scenarios), 2, figsize=(12, 4.2 * len(scenarios)), sharey="row", squeeze=False)
    styles = ["-", "--", ":", "-."]
    for row, scenario in zip(axes, scenarios, strict=True):
        here = curve if scenario is None else curve[curve["scenario"] == scenario]
        grid = sorted(here.loc[here["technique"] != "dense", "amount"].unique())
        shown = amounts if amounts is not None else sorted({grid[0], grid[len(grid) // 2], grid[-1]})
        for (technique, amount), g in here.groupby(["technique", "amount"], sort=False):
            if technique != "dense" and amount not in shown:
                continue
            ls = "-" if technique == "dense" else styles[list(shown).index(amount) % len(styles)]
            label = LABELS[technique] + ("" if technique == "dense" else f", p = {amount:g}")
            for ax, x in zip(row, ("mb", "elapsed_s"), strict=True):
                ax.plot(g[x], 100 * g["accuracy"], ls, marker="o", ms=2.5, color=PALETTE[technique], label=label)
                ax.fill_between(g[x], 100 * g["accuracy_ci_low"], 100 * g["accuracy_ci_high"],
                                color=PALETTE[technique], alpha=0.12, lw=0)  # fmt: skip
        row[0].set_xlabel("transmitted data, cumulative (MB)")
        row[1].set_xlabel("elapsed learning time (s)")
        row[0].set_ylabel("test accuracy (%)" + (f" — {scenario}" if scenario else ""))
        for ax in row:
            ax.grid(alpha=0.3)
        row[1].legend(fontsize=7, loc="lower right", ncol=2)
    fig.tight_layout()
    return fig
