"""Checking notebook parameters before any work starts: declared types and documented ranges.

A notebook's ``parameters`` cell declares each parameter with a type annotation and a default
(``epochs: int = 12``, ``data_root: str | None = None``). ``check`` compares a value with both:

- the **type** the annotation names (``int``, ``float``, ``str``, ``bool``, ``list``, ``dict``,
  unions with ``| None``; an int is a valid float, a bool is neither; a default of ``None`` also
  admits ``None``; an unannotated parameter takes the type of its default, if not ``None``);
- the **range** that ``RANGES`` documents for the parameter's name, when it has one.

``RANGES`` is the one table of constraints, shared by every notebook that uses a name: to document
a new parameter's range, add one entry. A parameter without an entry is type-checked only.
Choices that the library defines (datasets, models, LRP rule sets, ...) are read from the library
when checked, so the table never repeats them.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import math
from collections.abc import Callable, Sequence
from typing import Any


@dataclasses.dataclass(frozen=True)
class Rule:
    """A constraint on a value: ``test(value)`` says whether it holds, ``describe()`` says it in words
    (a function, so that choices read from the library are only looked up when a value is refused)."""

    describe: Callable[[], str]
    test: Callable[[Any], bool]

    @property
    def expected(self) -> str:
        return self.describe()

    def __call__(self, value: Any) -> bool:
        try:
            return bool(self.test(value))
        except (TypeError, ValueError, RuntimeError):
            return False


def _is_number(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


def number(
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    integer: bool = False,
) -> Rule:
    """A finite number (an int if ``integer``) within the bounds given: ``number(0, 1, hi_open=True)`` is [0, 1)."""
    kind = "an integer" if integer else "a number"
    if lo is not None and hi is not None:
        text = f"{kind} in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    elif lo is not None:
        text = f"{kind} {'>' if lo_open else '>='} {lo:g}"
    elif hi is not None:
        text = f"{kind} {'<' if hi_open else '<='} {hi:g}"
    else:
        text = kind

    def test(v: Any) -> bool:
        if not _is_number(v) or (integer and type(v) is not int):
            return False
        above = lo is None or (v > lo if lo_open else v >= lo)
        below = hi is None or (v < hi if hi_open else v <= hi)
        return above and below

    return Rule(lambda: text, test)


def one_of(choices: Sequence[str]) -> Rule:
    """One of the strings ``choices``."""
    return Rule(lambda: f"one of {list(choices)}", lambda v: isinstance(v, str) and v in choices)


def one_of_library(module: str, attribute: str) -> Rule:
    """One of the names in ``module.attribute`` (a tuple or dict of the library), read when checked."""

    def options() -> list[str]:
        return sorted(getattr(importlib.import_module(module), attribute))

    return Rule(lambda: f"one of {options()}", lambda v: isinstance(v, str) and v in options())


def list_of(item: Rule, *, nonempty: bool = True, distinct: bool = False) -> Rule:
    """A list whose items each satisfy ``item``; non-empty and without repeats as asked."""
    words = ("a non-empty list" if nonempty else "a list") + (" of distinct items" if distinct else "")

    def test(v: Any) -> bool:
        if not isinstance(v, list) or (nonempty and not v) or not all(item(x) for x in v):
            return False
        return not distinct or len({repr(x) for x in v}) == len(v)

    return Rule(lambda: f"{words}, each {item.expected}", test)


def pair(first: Rule, second: Rule) -> Rule:
    """A two-item list ``[x, y]`` with ``first(x)`` and ``second(y)``."""
    return Rule(
        lambda: f"a pair [x, y] with x {first.expected} and y {second.expected}",
        lambda v: isinstance(v, list) and len(v) == 2 and first(v[0]) and second(v[1]),
    )


def _setting(v: Any) -> bool:
    """A robustness setting: a ``name``, its ``pruning_factors`` and ``knee`` factors (among them),
    optionally ``one_shot_factors`` and its own ``budgets``, and ``TrainConfig`` fields it changes,
    each valid by its own rule where it has one."""
    if not isinstance(v, dict) or not isinstance(v.get("name"), str) or not v["name"]:
        return False
    grid, knee = v.get("pruning_factors"), v.get("knee")
    if not RANGES["pruning_factors"](grid) or not RANGES["pruning_factors"](knee) or not set(knee) <= set(grid):
        return False
    if "one_shot_factors" in v and not RANGES["pruning_factors"](v["one_shot_factors"]):
        return False
    return all(RANGES[k](x) for k, x in v.items() if k in RANGES and k != "pruning_factors")


def _device(v: Any) -> bool:
    import torch

    return isinstance(v, str) and (v == "auto" or torch.device(v).type in ("cpu", "cuda", "mps", "xpu"))


COUNT = number(0, integer=True)  # 0, 1, 2, ...
POSITIVE_COUNT = number(1, integer=True)  # 1, 2, ...
RATE = number(0, lo_open=True)  # > 0
FRACTION = number(0, 1)  # [0, 1]
PRUNING_FACTOR = number(0, 1, hi_open=True)  # [0, 1): the fraction of prunable weights removed
METHOD = one_of_library("flexrel_core.scores", "METHODS")

# name -> constraint, for every notebook that declares the name. None passes wherever the notebook
# declares the parameter optional (``int | None``); the rule applies to every other value.
RANGES: dict[str, Rule] = {
    # data and the dense model
    "dataset": one_of_library("flexrel_core.data", "DATASETS"),
    "limit": POSITIVE_COUNT,
    "image_size": POSITIVE_COUNT,
    "model": one_of_library("flexrel_core.models", "MODELS"),
    "epochs": COUNT,
    "lr": RATE,
    "batch_size": POSITIVE_COUNT,
    "seed": COUNT,
    "seeds": list_of(COUNT, distinct=True),
    "device": Rule(lambda: "'auto' or a torch device name ('cpu', 'cuda', 'cuda:1', ...)", _device),
    # relevance, scores, pruning, fine-tuning
    "inference_samples": POSITIVE_COUNT,
    "lrp_batch_size": POSITIVE_COUNT,
    "composite": one_of_library("zennit.composites", "COMPOSITES"),
    "aggregate": one_of_library("flexrel_core.relevance", "AGGREGATES"),
    "normalize": one_of_library("flexrel_core.scores", "NORMALIZATIONS"),
    "scope": one_of_library("flexrel_core.masks", "SCOPES"),
    "method": METHOD,
    "methods": list_of(METHOD, distinct=True),
    "delta": FRACTION,
    "deltas": list_of(FRACTION, distinct=True),
    "p": PRUNING_FACTOR,
    "pruning_factor": PRUNING_FACTOR,
    "pruning_factors": list_of(PRUNING_FACTOR, distinct=True),
    "fine_tune_epochs": COUNT,
    "fine_tune_lr": RATE,
    "shift_classes": list_of(COUNT, nonempty=False, distinct=True),
    "shift_weights": list_of(number(0)),
    # Figure 1, Figure 4, the ablations, Table 1
    "max_rows": POSITIVE_COUNT,
    "max_cols": POSITIVE_COUNT,
    "useful_within": number(0),
    "steps": POSITIVE_COUNT,
    "repeats": POSITIVE_COUNT,
    # the method notebook
    "tiny_p": PRUNING_FACTOR,
    "tiny_deltas": list_of(FRACTION, distinct=True),
    "heatmap_classes": list_of(COUNT, distinct=True),
    # where the claim holds (robustness)
    "resize": POSITIVE_COUNT,
    "settings": list_of(
        Rule(lambda: "a mapping with a name, pruning_factors, knee (among them) and TrainConfig fields", _setting),
        distinct=True,
    ),
    "budgets": list_of(POSITIVE_COUNT, distinct=True),
    "threads": POSITIVE_COUNT,
    "threshold": number(0, lo_open=True),
    # against other data-aware scores: methods compared with FlexRel (any of pruning_scores's)
    "baselines": list_of(one_of_library("flexrel_core.scores", "ALL_METHODS"), distinct=True),
    "one_shot_only": list_of(one_of_library("flexrel_core.scores", "ALL_METHODS"), nonempty=False, distinct=True),
    # Figure 3: cooperative learning
    "nodes": POSITIVE_COUNT,
    "partition": one_of_library("flexrel_core.workbook.config", "PARTITIONS"),
    "dirichlet_alpha": RATE,
    "rounds": POSITIVE_COUNT,
    "local_epochs": POSITIVE_COUNT,
    "local_steps": POSITIVE_COUNT,
    "local_lr": RATE,
    "local_batch_size": POSITIVE_COUNT,
    "node_flops": RATE,
    "bandwidth_bps": RATE,
    "latency_s": number(0),
    "techniques": list_of(METHOD, distinct=True),
    "amounts": list_of(PRUNING_FACTOR, distinct=True),
    "targets": list_of(FRACTION, distinct=True),
    "resolution": number(0, 0.5, lo_open=True),
    "refine": list_of(METHOD, nonempty=False, distinct=True),
    "learning_train_samples": POSITIVE_COUNT,
    "learning_epochs": POSITIVE_COUNT,
    "learning_rounds": POSITIVE_COUNT,
    "learning_amounts": list_of(PRUNING_FACTOR, distinct=True),
    "learning_targets": list_of(FRACTION, distinct=True),
    "learning_resolution": number(0, 0.5, lo_open=True),
    "learning_seeds": POSITIVE_COUNT,
    # the explorer
    "eval_samples": COUNT,
    "explorer_threads": COUNT,
    "timing_moves": COUNT,
    "static_points": list_of(pair(FRACTION, PRUNING_FACTOR)),
}

_TYPES: dict[str, Callable[[Any], bool]] = {
    "int": lambda v: type(v) is int,
    "float": lambda v: type(v) in (int, float),
    "bool": lambda v: type(v) is bool,
    "str": lambda v: isinstance(v, str),
    "list": lambda v: isinstance(v, list),
    "tuple": lambda v: isinstance(v, list),
    "dict": lambda v: isinstance(v, dict),
    "None": lambda v: v is None,
}


@dataclasses.dataclass(frozen=True)
class Declaration:
    """One assignment of a parameters cell: its name, annotation text and allowed types (``None``: not checkable)."""

    name: str
    annotation: str
    types: frozenset[str] | None


def _types_of(node: ast.expr | None) -> set[str] | None:
    """Type names an annotation allows, or ``None`` when it names something this module cannot check."""
    if isinstance(node, ast.Constant) and node.value is None:
        return {"None"}
    if isinstance(node, ast.Name):
        return {node.id} if node.id in _TYPES else None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        left, right = _types_of(node.left), _types_of(node.right)
        return None if left is None or right is None else left | right
    if isinstance(node, ast.Subscript):
        base = node.value.attr if isinstance(node.value, ast.Attribute) else getattr(node.value, "id", None)
        if base == "Optional":
            inner = _types_of(node.slice)
            return None if inner is None else inner | {"None"}
        return {base.lower()} if base and base.lower() in _TYPES else None
    return None


def declarations(source: str) -> dict[str, Declaration]:
    """The parameters a parameters cell's ``source`` declares, with the types each admits."""
    out = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            types = _types_of(node.annotation)
            if types is not None and isinstance(node.value, ast.Constant) and node.value.value is None:
                types.add("None")
            out[node.target.id] = Declaration(
                node.target.id, ast.unparse(node.annotation), None if types is None else frozenset(types)
            )
        elif isinstance(node, ast.Assign):
            try:
                default = ast.literal_eval(node.value)
            except (ValueError, TypeError, SyntaxError):
                default = None
            name = type(default).__name__  # a None default says nothing about the type: not checked
            known = frozenset({name}) if default is not None and name in _TYPES else None
            for target in node.targets:
                if isinstance(target, ast.Name):
                    out[target.id] = Declaration(target.id, name, known)
    return out


def check(name: str, value: Any, declared: Declaration | None) -> str | None:
    """Why ``value`` is not valid for the parameter ``name`` (``None`` when it is)."""
    if declared is not None and declared.types is not None:
        if not any(_TYPES[t](value) for t in declared.types):
            hint = ""
            if isinstance(value, str) and declared.types & {"int", "float"} and _looks_numeric(value):
                hint = " (YAML reads a number like 2e-3 as text: write it with a decimal point, 2.0e-3)"
            return f"{name} = {value!r} ({type(value).__name__}): expected {declared.annotation}{hint}"
    rule = RANGES.get(name)
    if rule is None or (value is None and declared is not None and declared.types and "None" in declared.types):
        return None
    if not rule(value):
        return f"{name} = {value!r}: expected {rule.expected}"
    return None


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
