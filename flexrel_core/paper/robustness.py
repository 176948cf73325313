"""Where the claim holds: FlexRel against magnitude pruning across architectures, data, retraining
budgets and inference conditions, in one map.

A *setting* is a dense model trained from scratch (one per seed): an architecture on a dataset,
given in the profile as the ``TrainConfig`` fields it changes from ``common.yaml`` plus its own grid
of pruning factors (``pruning_factors``), optional lower factors evaluated one-shot only
(``one_shot_factors``: pruning without retraining costs one evaluation, fine-tuning an epoch per
point), the factors across its knee (``knee``) and optionally its own fine-tuning ``budgets``. Each
setting runs Figure 2's sweep (``fig2.compute``: magnitude and FlexRel, in-distribution and shifted,
every point cached and shared with the other notebooks) once per budget; its one-shot points are
the same masks before fine-tuning. Per setting × budget × condition, the claim in numbers comes
from Figure 2's own functions: the pruning factor reached within ``threshold`` points of dense
accuracy (``fig2.summarize``) and the accuracy at the knee (``fig2.differences``), FlexRel −
magnitude paired over seeds with 95 % t-intervals (``workbook.stats``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from torch import nn

from ..layers import prunable_layers
from ..parallel import run_tasks
from ..training import torch_threads
from ..workbook.config import PruneConfig, TrainConfig
from ..workbook.paths import REPO_ROOT
from ..workbook.pipeline import data_for, new_model
from ..workbook.samples import describe
from ..workbook.stats import direction, format_interval, labelled, robust_aggregate, robustness
from . import fig2
from .style import PALETTE

METHODS = ("magnitude", "flexrel")
SETTING_KEYS = ("name", "pruning_factors", "one_shot_factors", "knee", "budgets")  # besides TrainConfig's fields
GAIN_COLUMNS = {"gain": "", "ci_low": "_ci_low", "ci_high": "_ci_high"}
CONDITION_COLOURS = {"in-distribution": PALETTE["flexrel"], "shifted": PALETTE["relevance"]}


def schedule_name(budget: int) -> str:
    """``"one-shot"`` for 0 epochs of fine-tuning, else ``"fine-tuned N epoch(s)"``."""
    return "one-shot" if budget == 0 else f"fine-tuned {budget} epoch{'s' if budget > 1 else ''}"


def setting_config(base: TrainConfig, setting: Mapping) -> TrainConfig:
    """The dense model's configuration of ``setting``: ``base`` with the fields the setting names.
    Keys other than ``TrainConfig``'s fields and ``SETTING_KEYS`` are refused."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(setting) - fields - set(SETTING_KEYS))
    if unknown:
        raise ValueError(
            f"setting {setting.get('name')!r} has unknown keys {unknown}; expected {sorted(SETTING_KEYS)} "
            f"or TrainConfig fields {sorted(fields)}"
        )
    return dataclasses.replace(base, **{k: v for k, v in setting.items() if k in fields})


def compute(
    base: TrainConfig,
    pcfg: PruneConfig,
    *,
    settings: Sequence[Mapping],
    budgets: Sequence[int],
    seeds: Sequence[int],
    delta: float,
    shift: dict | None = None,
    cache_root: str | Path = REPO_ROOT / "cache",
    device: str = "auto",
    threads: int | None = None,
    workers: int | None = None,
    methods: Sequence[str] = METHODS,
) -> pd.DataFrame:
    """Figure 2's table (``fig2.compute`` of ``methods``, magnitude and FlexRel) for every setting and fine-tuning
    budget (epochs >= 1; a setting's own ``budgets`` replace these), on the setting's
    ``pruning_factors``; and, budget 0, its ``one_shot_factors`` (if any) pruned without fine-tuning.
    Columns ``setting`` and ``budget`` come first. ``threads``: torch's intra-op threads meanwhile
    (``training.torch_threads``; small models on a CPU run as fast on one and stay fast on a busy machine)
    when the sweeps run in this process; each (setting, seed) is a task for ``parallel.run_tasks``
    (``workers``: its worker processes, of one thread each; ``None``: one per CPU core)."""
    for own in [budgets, *(s["budgets"] for s in settings if "budgets" in s)]:
        if not own or min(own) < 1:
            raise ValueError(f"budgets must be fine-tuning epochs >= 1 (one-shot comes with each), got {list(own)}")
    if not settings:
        raise ValueError("settings is empty: give at least one setting (a name, pruning_factors and knee)")
    with torch_threads(threads):
        return _sweeps(base, pcfg, settings, budgets, seeds, delta, shift, cache_root, device, workers, methods)


def _sweeps(base, pcfg, settings, budgets, seeds, delta, shift, cache_root, device, workers, methods) -> pd.DataFrame:
    tasks = []  # one per (setting, seed): its sweeps share one trained model and its relevance
    for setting in settings:
        cfg = setting_config(base, setting)
        own = setting.get("budgets", budgets)
        # the longest budget first: its fine-tuning runs give the shorter budgets' states on the way
        own = sorted((int(b) for b in own), reverse=True)
        grids = [(b, setting["pruning_factors"]) for b in own] + [(0, setting.get("one_shot_factors") or [])]
        for seed in seeds:
            sweeps = []
            for budget, grid in grids:
                if grid:
                    pb = dataclasses.replace(pcfg, fine_tune_epochs=budget)
                    kw = {"delta": delta, "shift": shift, "cache_root": cache_root, "device": device}
                    sweeps += [
                        (budget, *fig2.seed_sweeps(cfg, pb, methods=methods, pruning_factors=grid, seeds=[seed], **kw))
                    ]
            tasks.append((setting["name"], sweeps))
    parts = run_tasks(
        _setting_rows, tasks, workers=workers, device=device, desc="robustness points",
        units=lambda task: sum(sweep.points for _, sweep in task[1]),
    )  # fmt: skip
    order = {s["name"]: i for i, s in enumerate(settings)}
    df = pd.DataFrame([r for part in parts for r in part])
    df = df.sort_values(
        ["setting", "budget", "condition", "method", "p", "seed"],
        key=lambda c: c.map(order) if c.name == "setting" else c,
        kind="stable",
        ignore_index=True,
    )
    return df[["setting", "budget", *[c for c in df.columns if c not in ("setting", "budget")]]]


def _setting_rows(task: tuple[str, list]) -> list[dict]:
    """Figure 2's rows of one setting and seed, every budget (``fig2.sweep_rows``, sharing fine-tuned
    states: a point's longest budget is fine-tuned once, the shorter ones are read on the way)."""
    name, sweeps = task
    memo: dict = {}
    return [r | {"setting": name, "budget": budget} for budget, sweep in sweeps for r in fig2.sweep_rows(sweep, memo)]


def by_schedule(df: pd.DataFrame) -> list[tuple[str, int, str, pd.DataFrame]]:
    """(setting, budget, schedule, Figure 2 table with that schedule only) for every setting's
    one-shot points -- its one-shot-only factors and the one-shot accuracy of its smallest budget's
    points (the same masks) -- and each fine-tuning budget."""
    out = []
    for setting, g in df.groupby("setting", sort=False):
        tuned = g[g["budget"] > 0]
        first = tuned[tuned["budget"] == tuned["budget"].min()]
        one_shot = pd.concat([g[g["budget"] == 0], first]).drop(columns=["setting", "budget"])
        one_shot = one_shot.sort_values(["condition", "method", "p", "seed"], kind="stable", ignore_index=True)
        out.append((setting, 0, "one-shot", one_shot.assign(fine_tuned_accuracy=np.nan)))
        for budget, b in tuned.groupby("budget", sort=True):
            table = b.drop(columns=["setting", "budget"]).assign(one_shot_accuracy=np.nan)
            out.append((setting, int(budget), schedule_name(int(budget)), table))
    return out


def reach_effects(df: pd.DataFrame, threshold: float = 2.0) -> pd.DataFrame:
    """Per setting, budget (0: one-shot) and condition: the pruning factor each method reaches within
    ``threshold`` points of dense accuracy and FlexRel − magnitude with its 95 % interval
    (``fig2.summarize``). Columns: setting, budget, schedule, condition, n_seeds, max_p_magnitude,
    max_p_flexrel, gain, ci_low, ci_high, supports, robust (NaN reach: the band is left at the grid's
    first factor on every seed)."""
    rows = []
    for setting, budget, schedule, table in by_schedule(df):
        # no pair of seeds where both reach the band (every seed leaves it at the grid's first p): no gain
        s = fig2.summarize(table, thresholds=(threshold,), others=("flexrel",))
        for r in s.itertuples():
            rows.append(
                {"setting": setting, "budget": budget, "schedule": schedule, "condition": r.condition}
                | {"n_seeds": r.n_seeds, "pairs": getattr(r, "pairs_flexrel", r.n_seeds)}
                | {"max_p_magnitude": r.max_p_magnitude, "max_p_flexrel": r.max_p_flexrel}
                | {k: getattr(r, f"gain_flexrel{suffix}", np.nan) for k, suffix in GAIN_COLUMNS.items()}
                | {"supports": getattr(r, "verdict_flexrel", "undetermined")}
                | {"robust": getattr(r, "robust_flexrel", "undetermined")}
            )
    return pd.DataFrame(rows)


def accuracy_effects(df: pd.DataFrame, knees: Mapping[str, Sequence[float]]) -> pd.DataFrame:
    """Per setting, budget (0: one-shot), condition and pruning factor of the setting's ``knees``:
    FlexRel − magnitude in test accuracy (fractions), paired over seeds, with its 95 % interval
    (``fig2.differences``), and both methods' mean accuracy and the dense one."""
    rows = []
    for setting, budget, schedule, table in by_schedule(df):
        diff = fig2.differences(table, others=("flexrel",))
        long = fig2.long_form(table)
        means = long.groupby(["condition", "method", "p"])["accuracy"].mean()
        dense = long.groupby("condition")["dense_accuracy"].mean()
        for r in diff[diff["p"].isin([float(p) for p in knees[setting]])].itertuples():
            rows.append(
                {"setting": setting, "budget": budget, "schedule": schedule, "condition": r.condition, "p": r.p}
                | {"n_seeds": r.n, "mean": r.mean, "ci_low": r.ci_low, "ci_high": r.ci_high}
                | {"supports": direction(r.ci_low, r.ci_high), "robust": robustness(r.ci_low, r.ci_high, n=r.n)}
                | {"dense": dense[r.condition]}
                | {f"accuracy_{m}": means[(r.condition, m, r.p)] for m in METHODS}
            )
    return pd.DataFrame(rows)


def architectures(base: TrainConfig, settings: Sequence[Mapping]) -> pd.DataFrame:
    """Per setting: model, dataset, input side, convolutions (``nn.Conv2d`` modules, downsample branches
    included), fully connected layers (``nn.Linear``), prunable weights and the classifier's share (the
    weights of the fully connected layers), whatever the model's layout."""
    rows = []
    for setting in settings:
        cfg = setting_config(base, setting)
        data = data_for(cfg)
        layers = prunable_layers(new_model(cfg, data))
        convs = sum(isinstance(m, nn.Conv2d) for m in layers.values())
        row = (
            {"setting": setting["name"], "model": cfg.model, "dataset": cfg.dataset, "input_px": data.input_shape[-1]}
            | {"convolutions": convs, "fully_connected": len(layers) - convs}
            | {"weights": sum(m.weight.numel() for m in layers.values())}
            | {"classifier": sum(m.weight.numel() for m in layers.values() if isinstance(m, nn.Linear))}
        )
        rows.append(row | {"classifier_share": row["classifier"] / row["weights"]})
    return pd.DataFrame(rows)


def samples(
    base: TrainConfig, pcfg: PruneConfig, settings: Sequence[Mapping], seeds: Sequence[int], shift: dict | None
) -> pd.DataFrame:
    """``samples.describe`` of every setting, its conditions named ``"<setting>, <condition>"``."""
    return pd.concat(
        [
            describe(
                setting_config(base, s),
                pcfg,
                seeds,
                shift,
                names=(f"{s['name']}, in-distribution", f"{s['name']}, shifted"),
            )
            for s in settings
        ],
        ignore_index=True,
    ).fillna(0)


def closest_to_paper(arch: pd.DataFrame, convolutions: int = 13, share: float = 0.89) -> str:
    """The setting nearest VGG16's shape: its number of convolutions first, then its classifier share."""
    key = (arch["convolutions"] - convolutions).abs() * 10 + (arch["classifier_share"] - share).abs()
    return str(arch.loc[key.idxmin(), "setting"])


def verdict(reach: str, accuracy: Sequence[str]) -> str:
    """One map cell from what the intervals support (``stats.direction``): the pruning factor reached
    within the band first, then the accuracy at the knee factors."""
    if reach == "higher":
        return "holds"
    if reach == "lower":
        return "reversed"
    ahead, behind = "higher" in accuracy, "lower" in accuracy
    if ahead and behind:
        return "mixed"
    if ahead:
        return "more accurate at the knee"
    if behind:
        return "less accurate at the knee"
    if reach == "undetermined" and all(a == "undetermined" for a in accuracy):
        return "undetermined"
    return "no detectable difference"


def cell_robustness(reach: tuple[float, ...], knee: Sequence[tuple[float, ...]]) -> str:
    """Whether a map cell's ``verdict`` can turn on a rerun (``stats.robust_aggregate`` over the
    reach gain's interval and the knee factors' accuracy intervals, each ``(ci_low, ci_high[, n])``)."""
    return robust_aggregate(lambda d: verdict(d[0], d[1:]), [reach, *knee])


def map_table(reach: pd.DataFrame, acc: pd.DataFrame) -> pd.DataFrame:
    """The map: per setting, schedule and condition, the reach gain with its interval, the accuracy
    differences at the knee factors, the ``verdict`` and ``verdict_robust`` (``cell_robustness``)."""
    keys = ["setting", "budget", "schedule", "condition"]
    supports = acc.groupby(keys, sort=False)["supports"].agg(list)
    knees = acc.groupby(keys, sort=False)[["ci_low", "ci_high", "n_seeds"]].apply(
        lambda g: list(g.itertuples(index=False))
    )
    out = reach.copy()
    cells = [tuple(getattr(r, k) for k in keys) for r in out.itertuples()]
    out["verdict"] = [verdict(r.supports, supports.get(c, [])) for r, c in zip(out.itertuples(), cells, strict=True)]
    out["verdict_robust"] = [
        cell_robustness((r.ci_low, r.ci_high, r.pairs), [tuple(k) for k in knees.get(c, [])])
        for r, c in zip(out.itertuples(), cells, strict=True)
    ]
    return out


def _reach(p: float) -> str:
    return "below the grid" if np.isnan(p) else f"{p:.3f}"


def _points(mean: float, low: float, high: float) -> str:
    return format_interval(mean, low, high, scale=100, digits=1)


def predictors(acc: pd.DataFrame, arch: pd.DataFrame) -> str:
    """What goes with the gain: FlexRel − magnitude in accuracy (points), averaged over the knee
    factors and seeds, by budget, by setting (with its classifier share) and by condition."""

    def mean(by: str) -> pd.Series:
        return 100 * acc.groupby(by, sort=False)["mean"].mean()

    share = arch.set_index("setting")["classifier_share"]
    budgets = "; ".join(f"{s} {v:+.1f}" for s, v in mean("schedule").items())
    settings = "; ".join(f"{s} ({100 * share[s]:.0f} % in the classifier) {v:+.1f}" for s, v in mean("setting").items())
    conditions = "; ".join(f"{c} {v:+.1f}" for c, v in mean("condition").items())
    return (
        "Mean FlexRel − magnitude in accuracy at the knee factors (points, averaged over factors, seeds and the "
        f"other factors of the design): by budget — {budgets}; by setting — {settings}; by condition — {conditions}."
    )


def report(
    mapped: pd.DataFrame, acc: pd.DataFrame, arch: pd.DataFrame, *, delta: float, threshold: float, seeds: int
) -> str:
    """The robustness section of REPORT.md: the settings and their sizes, the map (reach gain and
    verdict per setting, schedule and condition), the accuracy differences at the knee factors,
    what goes with the gain, and which cell is closest to the paper's regime."""
    closest = closest_to_paper(arch)
    lines = [
        "## Where the claim holds — the map",
        "",
        f"FlexRel (δ = {delta:g}) against global magnitude pruning in every setting below, each trained from scratch "
        f"on {seeds} seeds; one-shot and after each fine-tuning budget (masks fixed), in-distribution and under the "
        f"inference shift. Reach: the pruning factor reached within {threshold:g} points of dense accuracy (Figure "
        "2's definition, on each setting's grid); both it and the accuracy differences are FlexRel − magnitude, "
        "paired over seeds, mean [95 % t-interval] (`robustness_map.csv`, `robustness_accuracy.csv`, "
        "`robustness.png`).",
        "",
        "| setting | model | data | px | convolutions | FC layers | prunable weights | in the classifier |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in arch.itertuples():
        lines.append(
            f"| {r.setting} | `{r.model}` | {r.dataset} | {r.input_px} | {r.convolutions} | {r.fully_connected} | "
            f"{r.weights:,} | {100 * r.classifier_share:.1f} % |"
        )
    lines += [
        "",
        "| setting | schedule | condition | reach, magnitude | reach, FlexRel | FlexRel − magnitude [95 % CI] "
        "| verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in mapped.itertuples():
        gain = format_interval(r.gain, r.ci_low, r.ci_high, digits=3)
        lines.append(
            f"| {r.setting} | {r.schedule} | {r.condition} | {_reach(r.max_p_magnitude)} | {_reach(r.max_p_flexrel)} | "
            f"{labelled(gain, r.robust)} | **{labelled(r.verdict, r.verdict_robust)}** |"
        )
    lines += ["", "Accuracy, FlexRel − magnitude in points at the knee factors:", ""]
    lines += ["| setting | schedule | condition | at each knee factor |", "|---|---|---|---|"]
    for (setting, schedule, condition), g in acc.groupby(["setting", "schedule", "condition"], sort=False):
        cells = "; ".join(
            labelled(f"p = {r.p:g}: {_points(r.mean, r.ci_low, r.ci_high)}", r.robust) for r in g.itertuples()
        )
        lines.append(f"| {setting} | {schedule} | {condition} | {cells} |")
    holds = mapped[mapped["verdict"] == "holds"]
    where = (
        "; ".join(labelled(f"{r.setting}, {r.schedule}, {r.condition}", r.verdict_robust) for r in holds.itertuples())
        or "nowhere"
    )
    robust = mapped[mapped["verdict_robust"] == "robust"]
    near = mapped[mapped["setting"] == closest].sort_values("budget")
    near_text = "; ".join(
        f"{r.schedule}, {r.condition}: {format_interval(r.gain, r.ci_low, r.ci_high, digits=3)} "
        f"({labelled(r.verdict, r.verdict_robust)})"
        for r in near.itertuples()
    )
    lines += [
        "",
        f"- **Where the claim holds** (FlexRel reaches a higher pruning factor within {threshold:g} points, interval "
        f"above 0): {where}; verdicts per cell in the table above ({len(holds)} of {len(mapped)} cells; "
        f"{int((holds['verdict_robust'] == 'robust').sum())} of them robust). Robust cells: "
        + ("; ".join(f"{r.setting}, {r.schedule}, {r.condition}: {r.verdict}" for r in robust.itertuples()) or "none")
        + ".",
        f"- **Closest to the paper's regime** (VGG16's 13 convolutions and ~89 % of its weights in the classifier, "
        f"little retraining): {closest} — reach gain {near_text}.",
        f"- **What goes with the gain.** {predictors(acc, arch)}",
    ]
    return "\n".join(lines)


def plot(mapped: pd.DataFrame, acc: pd.DataFrame) -> Figure:
    """Forest plot, a row per setting × schedule: FlexRel − magnitude in the pruning factor reached
    within the band (left) and in accuracy at each knee factor (right), mean and 95 % interval,
    coloured by condition; knee factors of a row are spread vertically in increasing p."""
    rows = list(dict.fromkeys(zip(mapped["setting"], mapped["schedule"], strict=True)))
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.45 * len(rows) + 1.8), sharey=True, squeeze=False)
    conditions = list(dict.fromkeys(mapped["condition"]))
    offsets = {c: 0.18 * (i - (len(conditions) - 1) / 2) for i, c in enumerate(conditions)}
    for i, (setting, schedule) in enumerate(rows):
        y = len(rows) - 1 - i
        for c in conditions:
            colour = CONDITION_COLOURS.get(c, "0.3")
            r = mapped[(mapped["setting"] == setting) & (mapped["schedule"] == schedule) & (mapped["condition"] == c)]
            for row in r.itertuples():
                err = (
                    [[100 * (row.gain - row.ci_low)], [100 * (row.ci_high - row.gain)]]
                    if np.isfinite(row.ci_low)
                    else None
                )
                axes[0, 0].errorbar(100 * row.gain, y + offsets[c], xerr=err, fmt="o", color=colour, ms=4, capsize=2)
            a = acc[(acc["setting"] == setting) & (acc["schedule"] == schedule) & (acc["condition"] == c)]
            spread = np.linspace(-0.06, 0.06, len(a)) if len(a) > 1 else [0.0]
            for dy, row in zip(spread, a.sort_values("p").itertuples(), strict=True):
                err = (
                    [[100 * (row.mean - row.ci_low)], [100 * (row.ci_high - row.mean)]]
                    if np.isfinite(row.ci_low)
                    else None
                )
                axes[0, 1].errorbar(
                    100 * row.mean, y + offsets[c] + dy, xerr=err, fmt="s", color=colour, ms=3, capsize=2
                )
    for ax, title in zip(
        axes[0],
        ("reach within the band: FlexRel − magnitude (p × 100)", "accuracy at the knee factors (points)"),
        strict=True,
    ):
        ax.axvline(0, color="0.5", lw=0.8)
        ax.set_xlabel(title)
        ax.grid(axis="x", alpha=0.3)
    lo, hi = axes[0, 1].get_xlim()
    axes[0, 1].set_xlim(max(lo, -100.0), min(hi, 100.0))  # an accuracy difference lies within ±100 points
    axes[0, 0].set_yticks(range(len(rows)), [f"{s} — {t}" for s, t in reversed(rows)])
    handles = [
        plt.Line2D([], [], color=CONDITION_COLOURS.get(c, "0.3"), marker="o", ls="", label=c) for c in conditions
    ]
    axes[0, 1].legend(handles=handles, loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig
