"""How often ``make reproduce PROFILE=<profile>`` runs each timed stage, read off the profile's YAML files.

``stage_counts`` is the formula: it follows the code path of every notebook, in the Makefile's
order, on an ImageNet-format folder of ``images`` images in ``classes`` equally sized classes,
and counts the stages ``bench_paper`` times (``STAGES``), skipping what an earlier notebook left
in the cache (trained model, relevance and dense accuracies per seed and inference data, pruned
points per configuration). ``estimate`` multiplies the counts by measured stage times. Stages
that are not counted (plots, CSVs, kernel start-up, the federated cost model) take seconds, not
minutes. The counts follow the profiles when they change; the keys they read are listed in
``KEYS_READ``.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Mapping, Sequence

from ..scores import METHODS, method_delta
from ..workbook.profiles import read_profile
from .explore_session import DELTA_GRID

STAGES = {
    "load_image": "decode + transform one image of the folder (single-process loading, as the library does)",
    "evaluate_image": "one image through training.evaluate from the folder (loading included)",
    "forward_image": "one in-memory image through the model (the explorer's accuracy)",
    "train_image": "one image through training.train from the folder (loading, forward, backward, step)",
    "relevance_sample": "one inference sample through parameter_relevance (batched)",
    "scoring": "one pruning_scores call from cached relevance",
    "prune": "one prune of the whole model at p = 0.9",
    "encode": "one encode_sparse of the model pruned at p = 0.9",
    "decode": "one decode_sparse of that blob",
    "message": "one message's bytes in Figure 3 (encoded_size, mask codes cached)",
    "average": "one federated average of every node's state (Figure 3)",
}
NOTEBOOKS = ("fig1", "fig2", "fig3", "fig4", "ablations", "table1", "explore")
KEYS_READ = {
    "common": ("seed", "seeds", "epochs", "limit", "inference_samples", "delta", "fine_tune_epochs", "fine_tune_lr"),
    "fig1": ("seed",),
    "fig2": ("methods", "pruning_factors", "shift_classes", "shift_weights"),
    "fig3": (
        "nodes",
        "rounds",
        "local_epochs",
        "local_steps",
        "local_batch_size",
        "half",
        "techniques",
        "amounts",
        "targets",
        "resolution",
        "learning_train_samples",
        "learning_epochs",
        "learning_rounds",
        "learning_amounts",
        "learning_targets",
        "learning_seeds",
    ),  # fmt: skip
    "fig4": ("deltas", "pruning_factors", "pruning_factor"),
    "ablations": ("pruning_factors", "steps"),
    "table1": ("seed", "methods", "repeats", "inference_samples"),
    "explore": ("seed", "pruning_factor", "shift_classes", "eval_samples", "timing_moves", "static_points")
    + ("inference_samples",),
}
SPLITS = {"train": 0.6, "val": 0.1, "inference": 0.15, "test": 0.15}  # data.load_dataset on an image folder


@dataclasses.dataclass
class _Tally:
    """Stage counts per notebook, and the keys of what earlier stages cached."""

    sizes: dict[str, float]
    classes: int
    common: dict
    counts: dict[str, Counter] = dataclasses.field(default_factory=dict)
    cached: set = dataclasses.field(default_factory=set)

    def add(self, notebook: str, stage: str, n: float) -> None:
        self.counts.setdefault(notebook, Counter())[stage] += n

    def first(self, key: tuple) -> bool:
        """True the first time ``key`` is seen (the stage runs), False afterwards (it is loaded)."""
        new = key not in self.cached
        self.cached.add(key)
        return new

    def shifted(self, split: str, shift: Mapping | None) -> float:
        """Images of ``split`` left by an inference shift (classes kept, or per-class weights)."""
        if not shift:
            return self.sizes[split]
        frac = 1.0
        if shift.get("shift_classes") is not None:
            frac = len(shift["shift_classes"]) / self.classes
        if shift.get("shift_weights") is not None:
            w = list(shift["shift_weights"]) + [0.0] * (self.classes - len(shift["shift_weights"]))
            frac *= sum(x / max(w) for x in w) / self.classes
        return self.sizes[split] * frac

    def samples(self, wanted: int | None, shift: Mapping | None = None) -> float:
        available = self.shifted("inference", shift)
        return available if wanted is None else min(wanted, available)


def stage_counts(
    profile: str | Mapping, images: int = 50_000, classes: int = 1000, splits: Mapping[str, float] = SPLITS
) -> dict[str, Counter]:
    """``{notebook: Counter({stage: count})}`` for ``make reproduce`` under ``profile`` on ``images`` images.

    ``profile`` is a profile name (its ``profiles/<name>/*.yaml`` are read) or the mapping
    ``workbook.profiles.read_profile`` returns; ``splits`` the fraction of the folder in each split
    (``SPLITS``, as ``data.load_dataset`` splits an image folder). Per notebook (keys in
    ``KEYS_READ``; "eval" = one evaluation on the val split and one on the test split):

    - setup, once per seed (and inference shift): dense training ``epochs`` x train images and one
      val evaluation; relevance of ``min(inference_samples, inference split)`` loaded samples;
      dense eval.
    - fig1: setup + one scoring and prune per method.
    - fig2: per seed, condition (in-distribution, shifted), method, pruning factor: scoring +
      prune + eval; with ``fine_tune_epochs`` and p > 0, fine-tuning (scoring + prune + epochs x
      train images, shared by the conditions for magnitude, whose masks ignore relevance) + eval.
    - fig3: per seed, the setup Figure 2 cached, then per run (techniques x amounts, plus one
      unpruned) scoring + prune, a val and a test evaluation after pruning and after each of
      ``rounds`` rounds; a round: 2 x nodes messages (their bytes, ``message``; with ``half`` an
      encode and a decode each), ``nodes`` x ``min(local_steps x local_batch_size, shard x
      local_epochs)`` images trained, one average; the first seed's runs add the half-precision
      check (2 encodes, 1 decode, 2 test evals). With ``resolution``, the refinement is counted at
      its most: per technique and target, ceil(log2(widest grid gap / resolution)) more runs of
      ``rounds`` rounds (a real run needs fewer where targets share midpoints, and stops at the
      round of its choice). With ``learning_epochs``, scenario ``learning`` adds, on the first
      ``learning_seeds`` seeds, a model trained that many epochs on ``learning_train_samples`` images
      (its relevance and dense evaluation), and the same runs with ``learning_amounts``,
      ``learning_targets`` and at most ``learning_rounds`` rounds (a validation evaluation each round,
      counted at its most: no early stop, and a test evaluation per target).
    - ablations: see ``_ablations``.
    - fig4: per seed, delta, pruning factor: as a fig2 point, in-distribution only; then the
      compact explorer (as in explore, without timing or static views).
    - table1: per method, ``repeats`` + 3 scoring calls (timed runs, warm-up, memory, pruning), each
      with its own relevance pass unless magnitude; one prune and one encode per method, one more
      encode of the dense model.
    - explore: per inference choice, relevance and ``eval_samples`` loaded test images; every
      update scores, prunes and evaluates in memory, and a pruning factor it has not seen adds the
      Figure 4 curve (``len(DELTA_GRID)`` more updates): the first view, ``timing_moves`` delta
      and pruning-factor moves, and the ``static_points`` per choice.
    """
    data = read_profile(profile) if isinstance(profile, str) else profile
    common = dict(data.get("common") or {})
    t = _Tally({k: f * _limited(images, common) for k, f in splits.items()}, classes, common)
    for notebook in NOTEBOOKS:
        if notebook in data:
            section = {**common, **(data.get(notebook) or {})}
            COUNTERS[notebook](t, notebook, section)
            t.counts.setdefault(notebook, Counter())
    return t.counts


def _limited(images: int, common: Mapping) -> int:
    return images if common.get("limit") is None else min(images, int(common["limit"]))


def _shift_key(shift: Mapping | None) -> str:
    return repr(sorted((shift or {}).items()))


def _eval(t: _Tally, nb: str, shift: Mapping | None = None) -> None:
    t.add(nb, "evaluate_image", t.sizes["val"] + t.shifted("test", shift))


def _trained(t: _Tally, nb: str, seed: int) -> None:
    """``pipeline.trained_model`` (cached): ``epochs`` over the train split, one val evaluation."""
    if t.first(("model", seed)):
        t.add(nb, "train_image", int(t.common.get("epochs") or 0) * t.sizes["train"])
        t.add(nb, "evaluate_image", t.sizes["val"])


def _setup(t: _Tally, nb: str, seed: int, shift: Mapping | None = None) -> None:
    """``pipeline.prepare``: trained model, relevance and dense accuracies (each cached)."""
    _trained(t, nb, seed)
    key = _shift_key(shift)
    samples = t.samples(t.common.get("inference_samples"), shift)
    if t.first(("relevance", seed, key, samples)):
        t.add(nb, "load_image", samples)
        t.add(nb, "relevance_sample", samples)
    if t.first(("dense_eval", seed, key)):
        _eval(t, nb, shift)


def _point(
    t: _Tally, nb: str, s: Mapping, seed: int, delta: float, p: float, shift=None, memo=None, variant: tuple = ()
) -> None:
    """``points.evaluate_point``: one-shot (and fine-tuned) accuracies of one pruned model (cached;
    ``variant``: the ablation's changes to how it is scored, part of its key)."""
    epochs = int(s.get("fine_tune_epochs") or 0)
    tune = (epochs, s.get("fine_tune_lr")) if epochs else None
    if not t.first(("point", seed, _shift_key(shift), delta, p, tune, variant)):
        return
    t.add(nb, "scoring", 1)
    t.add(nb, "prune", 1)
    _eval(t, nb, shift)
    if tune and p > 0:
        if memo is None or t.first(memo):
            t.add(nb, "scoring", 1)
            t.add(nb, "prune", 1)
            t.add(nb, "train_image", epochs * t.sizes["train"])
        _eval(t, nb, shift)


def _fig1(t: _Tally, nb: str, s: Mapping) -> None:
    _setup(t, nb, int(s.get("seed", 0)))
    t.add(nb, "scoring", len(METHODS))
    t.add(nb, "prune", len(METHODS))


def _fig2(t: _Tally, nb: str, s: Mapping) -> None:
    shift = {k: s[k] for k in ("shift_classes", "shift_weights") if s.get(k) is not None}
    conditions = [None] + ([shift] if shift else [])
    for seed in s.get("seeds", [s.get("seed", 0)]):
        for c in conditions:
            _setup(t, nb, int(seed), c)
        for method in s.get("methods", METHODS):
            delta = method_delta(method, s.get("delta", 0.5))
            for p in s.get("pruning_factors", []):
                for c in conditions:
                    memo = ("tuned", seed, delta, p) + (() if delta == 0 else (_shift_key(c),))
                    _point(t, nb, s, int(seed), delta, float(p), c, memo)


def _fig4(t: _Tally, nb: str, s: Mapping) -> None:
    for seed in s.get("seeds", [s.get("seed", 0)]):
        _setup(t, nb, int(seed))
        for delta in s.get("deltas", []):
            for p in s.get("pruning_factors", []):
                _point(t, nb, s, int(seed), float(delta), float(p))
    _explorer(t, nb, {k: v for k, v in s.items() if k not in ("timing_moves", "static_points")}, shifted=False)


def _table1(t: _Tally, nb: str, s: Mapping) -> None:
    _setup(t, nb, int(s.get("seed", 0)))
    samples = t.samples(s.get("inference_samples"))
    t.add(nb, "load_image", samples)
    calls = int(s.get("repeats", 3)) + 3
    for method in s.get("methods", METHODS):
        t.add(nb, "scoring", calls)
        t.add(nb, "relevance_sample", 0 if method == "magnitude" else calls * samples)
        t.add(nb, "prune", 1)
        t.add(nb, "encode", 1)
    t.add(nb, "encode", 1)


def _fig3(t: _Tally, nb: str, s: Mapping) -> None:
    nodes = int(s.get("nodes", 5))
    shard = t.sizes["train"] / nodes
    per_node = shard * int(s.get("local_epochs", 1))
    if s.get("local_steps"):
        per_node = min(per_node, int(s["local_steps"]) * int(s.get("local_batch_size", 32)))
    message = ("encode", "decode") if s.get("half") else ("message",)
    techniques = list(s.get("techniques", METHODS))
    scenarios = [("trained", int(s.get("rounds", 5)), list(s.get("amounts", [])), s)]
    seeds = s.get("seeds", [s.get("seed", 0)])
    if s.get("learning_epochs"):
        learn = dict(s) | {"targets": s.get("learning_targets", []), "resolution": s.get("learning_resolution")}
        scenarios.insert(0, ("learning", int(s.get("learning_rounds", 5)), list(s.get("learning_amounts", [])), learn))
    learning_seeds = set(seeds[: int(s.get("learning_seeds", len(seeds)))])
    for seed in seeds:
        _setup(t, nb, int(seed))  # the trained model and relevance Figure 2 computed
        for scenario, rounds, amounts, spec in scenarios:
            if scenario == "learning" and seed not in learning_seeds:
                continue
            if scenario == "learning" and t.first(("learning", int(seed))):  # its own model, relevance, dense eval
                share = min(int(s.get("learning_train_samples") or t.sizes["train"]), t.sizes["train"])
                t.add(nb, "train_image", int(s["learning_epochs"]) * share)
                t.add(nb, "evaluate_image", 2 * t.sizes["val"] + t.sizes["test"])
                t.add(nb, "load_image", t.samples(t.common.get("inference_samples")))
                t.add(nb, "relevance_sample", t.samples(t.common.get("inference_samples")))
            runs = [tech for tech in techniques for _ in amounts] + ["dense"]
            runs += [tech for tech in techniques for _ in range(_refinements(spec, amounts))]
            for technique in runs:
                if technique != "dense":
                    t.add(nb, "scoring", 1)
                    t.add(nb, "prune", 1)
                if scenario == "learning":  # validation each round, test at round 0 and per target
                    tests = 1 + len(spec.get("targets", []))
                    t.add(nb, "evaluate_image", (1 + rounds) * t.sizes["val"] + tests * t.sizes["test"])
                else:
                    t.add(nb, "evaluate_image", (1 + rounds) * (t.sizes["val"] + t.sizes["test"]))  # each round
                for stage in message:
                    t.add(nb, stage, 2 * nodes * rounds)  # down and up, every node, every round
                t.add(nb, "train_image", rounds * nodes * per_node)
                t.add(nb, "average", rounds)
        if seed == seeds[0]:  # the half-precision check on the first seed's final models of the grid
            grid = len(techniques) * len(scenarios[-1][2]) + 1  # scenario `trained`'s grid
            t.add(nb, "encode", 2 * grid)
            t.add(nb, "decode", grid)
            t.add(nb, "evaluate_image", 2 * t.sizes["test"] * grid)


def _refinements(s: Mapping, amounts: Sequence[float]) -> int:
    """Most refinement runs per technique: per target, ceil(log2(widest grid gap / resolution))."""
    if not s.get("resolution") or len(amounts) < 2:
        return 0
    gap = max(b - a for a, b in zip(sorted(amounts), sorted(amounts)[1:], strict=False))
    return len(s.get("targets", [])) * max(0, math.ceil(math.log2(gap / float(s["resolution"]))))


def _ablations(t: _Tally, nb: str, s: Mapping) -> None:
    """Every variant of ``ablations.variants`` at every pruning factor and seed: points keyed by the
    variant's changes (the baselines are Figure 2's points), relevance recomputed where a variant
    changes it, and the iterative schedule's steps (relevance, scoring, prune, fine-tuning each)."""
    from .ablations import variants

    epochs = int(s.get("fine_tune_epochs") or 1)
    steps = int(s.get("steps", 2))
    for seed in s.get("seeds", [s.get("seed", 0)]):
        _setup(t, nb, int(seed))
        samples = t.samples(s.get("inference_samples"))
        for v in variants(steps, epochs):
            changes = dict(v.changes)
            delta = method_delta(v.method, s.get("delta", 0.5))
            relevance = {k: changes[k] for k in ("aggregate", "lrp_target") if k in changes}
            if delta > 0 and relevance and t.first(("relevance", seed, repr(sorted(relevance.items())))):
                t.add(nb, "load_image", samples)
                t.add(nb, "relevance_sample", samples)
            for p in s.get("pruning_factors", []):
                if v.steps > 1:
                    t.add(nb, "relevance_sample", v.steps * samples if delta > 0 else 0)
                    t.add(nb, "scoring", v.steps)
                    t.add(nb, "prune", v.steps)
                    t.add(nb, "train_image", v.steps * epochs * t.sizes["train"])
                    _eval(t, nb)
                else:
                    section = {**s, "fine_tune_epochs": changes.get("fine_tune_epochs", epochs)}
                    variant = tuple(sorted((k, str(x)) for k, x in changes.items() if k != "fine_tune_epochs"))
                    _point(t, nb, section, int(seed), delta, float(p), variant=variant)


def _explorer(t: _Tally, nb: str, s: Mapping, shifted: bool = True) -> None:
    """``explore.Explorer``: relevance and test images per inference choice, then every update."""
    seed = int(s.get("seed", 0))
    _trained(t, nb, seed)
    shift = {"shift_classes": s["shift_classes"]} if shifted and s.get("shift_classes") else None
    choices = {"as trained": None, **({"shifted": shift} if shift else {})}
    size = {}
    for name, c in choices.items():
        samples = t.samples(s.get("inference_samples"), c)
        if t.first(("explorer-relevance", seed, name, samples)):
            t.add(nb, "load_image", samples)
            t.add(nb, "relevance_sample", samples)
        size[name] = min(s.get("eval_samples") or t.shifted("test", c), t.shifted("test", c))
        t.add(nb, "load_image", size[name])
        t.add(nb, "forward_image", size[name])
    curves: set = set()

    def update(choice: str, p: float) -> None:
        n = 1 + (len(DELTA_GRID) if (choice, p) not in curves else 0)
        curves.add((choice, p))
        t.add(nb, "scoring", n)
        t.add(nb, "prune", n)
        t.add(nb, "forward_image", n * size[choice])

    p0 = float(s.get("pruning_factor", 0.8))
    update("as trained", p0)
    moves = int(s.get("timing_moves") or 0)
    if moves:
        for _ in range(1 + moves):  # delta moves at p0 (the first sets delta = 0)
            update("as trained", p0)
        for p in [0.5] + [round(0.51 + 0.02 * (i % 25), 2) for i in range(moves)]:
            update("as trained", p)
        update("as trained", p0)
    if s.get("static_points"):
        for name in choices:
            for _delta, p in s["static_points"]:
                update(name, float(p))
        update("as trained", p0)


COUNTERS = {
    "fig1": _fig1, "fig2": _fig2, "fig3": _fig3, "fig4": _fig4, "ablations": _ablations, "table1": _table1,
    "explore": _explorer,
}  # fmt: skip


def estimate(counts: Mapping[str, Mapping[str, float]], seconds: Mapping[str, float]) -> dict:
    """Wall seconds per notebook and stage: ``{"total_s", "notebooks": {nb: {"total_s", "stages": {stage: s}}}}``."""
    out: dict = {"notebooks": {}}
    for nb, stages in counts.items():
        per = {stage: n * seconds[stage] for stage, n in stages.items() if n}
        out["notebooks"][nb] = {"total_s": sum(per.values()), "stages": per}
    out["total_s"] = sum(v["total_s"] for v in out["notebooks"].values())
    return out


def format_estimate(counts: Mapping[str, Mapping[str, float]], est: Mapping, stages: Sequence[str] = tuple(STAGES)):
    """A plain-text breakdown: per notebook, each stage's count x unit time, and the totals."""
    lines = [f"{'notebook':>8} | {'stage':>16} | {'count':>12} | {'hours':>8}"]
    for nb, row in est["notebooks"].items():
        for stage in stages:
            if stage in row["stages"]:
                lines.append(f"{nb:>8} | {stage:>16} | {counts[nb][stage]:12,.0f} | {row['stages'][stage] / 3600:8.3f}")
        lines.append(f"{nb:>8} | {'= notebook':>16} | {'':>12} | {row['total_s'] / 3600:8.3f}")
    lines.append(f"{'total':>8} | {'':>16} | {'':>12} | {est['total_s'] / 3600:8.3f}")
    return "\n".join(lines)
