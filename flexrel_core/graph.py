"""Is a model a plain chain of layers? The structural check both relevance engines rely on.

FlexRel's parameter relevance takes, for every prunable layer, the relevance of its input ``a`` and
of its output ``b`` from one LRP pass. The rule composites used for that pass (zennit's
``EpsilonPlusFlat`` and its relatives) assign one rule per module and merge BatchNorm into the
layer registered just before it (zennit's ``SequentialMergeBatchNorm``), which is LRP as defined
for a chain ``x -> f_1 -> f_2 -> ... -> logits`` (Bach et al. 2015; Montavon et al. 2019,
"Layer-Wise Relevance Propagation: An Overview"). A skip connection (ResNet) or a product of two
activations (attention) needs rules for the sum or the product that these composites do not have,
and the relevance they would give is wrong without a word. So the graph is read with
``torch.fx.symbolic_trace`` and accepted only when every operation consumes exactly the previous
operation's output, nothing else, and no module with weights runs twice. A parameter-free module
called at several places (one ``self.relu`` or ``self.pool`` used after every layer) is one layer
per call, as in the same model written with one module per call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import fx, nn
from zennit.core import collect_leaves
from zennit.types import BatchNorm as ZennitBatchNorm
from zennit.types import Linear as ZennitLinear

from .layers import DENSE_TYPES, PRUNABLE_TYPES

SUPPORTED = (
    "supported are plain chains of layers, where each layer takes only the previous layer's output "
    "(nn.Sequential, VGG-style CNNs): Conv2d, Linear, BatchNorm, activations, pooling, Flatten, Dropout. "
    "Skip connections (ResNet), branches and attention need LRP rules for sums and products that "
    "FlexRel's relevance does not implement"
)


@dataclass(frozen=True)
class Step:
    """One operation of a chain: a module call (``module`` set) or a function/method call."""

    name: str  # the module's qualified name, or the function/method name
    module: nn.Module | None = None
    function: Any = None  # callable for call_function, method name for call_method
    args: tuple = ()  # the arguments after the tensor
    kwargs: dict = field(default_factory=dict)


class _Tracer(fx.Tracer):
    """torch.fx tracer that keeps every layer FlexRel knows as one leaf, subclasses included."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, PRUNABLE_TYPES + DENSE_TYPES) or super().is_leaf_module(m, module_qualified_name)


def _refuse(model: nn.Module, why: str) -> ValueError:
    return ValueError(f"{type(model).__name__} is not a plain chain of layers: {why}; {SUPPORTED}")


def _trace(model: nn.Module) -> fx.Graph:
    try:
        return _Tracer().trace(model)
    except Exception as err:  # fx raises TraceError, TypeError, NotImplementedError... on dynamic code
        raise ValueError(
            f"cannot check that {type(model).__name__} is a plain chain of layers: torch.fx could not trace it "
            f"({type(err).__name__}: {err}); {SUPPORTED}"
        ) from err


def chain_steps(model: nn.Module) -> list[Step]:
    """The model's operations in execution order, if its graph is a plain chain; else ``ValueError``.

    A chain: one input; every operation takes the previous operation's output as its only tensor
    (a module call takes it as its only argument); that output feeds nothing else; the last
    operation's output is the model's output; no module with parameters or buffers is called twice
    (a parameter-free one called twice is two steps); and modules are registered
    in the order they run where zennit depends on it (a BatchNorm is merged into the layer registered
    just before it, and a special first-layer rule goes to the first layer registered). Shape
    queries such as ``x.view(x.size(0), -1)`` are not tensors and do not break a chain.
    """
    modules = dict(model.named_modules())
    graph = _trace(model)
    meta = _shape_queries(graph)
    inputs = [n for n in graph.nodes if n.op == "placeholder" and n.users]
    if len(inputs) != 1:
        raise _refuse(model, f"its forward uses {len(inputs)} inputs, expected one tensor")
    steps: list[Step] = []
    prev = inputs[0]
    for node in graph.nodes:
        if node.op == "placeholder" or node in meta:
            continue
        if [n for n in node.all_input_nodes if n not in meta] != [prev]:
            raise _refuse(model, _why_not_next(node, prev, meta))
        if node.op == "output":
            if node.args != (prev,):
                raise _refuse(model, "its output is not the single tensor of its last layer")
            break
        users = [u for u in prev.users if u not in meta]
        if len(users) != 1:
            raise _refuse(model, f"the output of {_label(prev)} feeds {len(users)} operations ({_names(users)})")
        steps.append(_step(model, modules, node, meta))
        prev = node
    _check_modules(model, steps)
    return steps


_QUERY_METHODS = {"size", "dim", "numel"}
_QUERY_ATTRIBUTES = {"shape", "ndim", "dtype", "device"}


def _shape_queries(graph: fx.Graph) -> set[fx.Node]:
    """Nodes that compute sizes, not tensors: ``x.size()``, ``x.shape``, and arithmetic on those."""
    meta: set[fx.Node] = set()
    for node in graph.nodes:
        query = (node.op == "call_method" and node.target in _QUERY_METHODS) or (
            node.op == "call_function" and node.target is getattr and node.args[1] in _QUERY_ATTRIBUTES
        )
        derived = node.op == "call_function" and node.all_input_nodes and set(node.all_input_nodes) <= meta
        if query or derived:
            meta.add(node)
    return meta


def _label(node: fx.Node) -> str:
    """A module's qualified name, a function's or method's name."""
    return node.target if isinstance(node.target, str) else getattr(node.target, "__name__", node.name)


def _names(nodes) -> str:
    return ", ".join(_label(n) for n in nodes)


def _why_not_next(node: fx.Node, prev: fx.Node, meta: set[fx.Node]) -> str:
    if node.op == "get_attr":
        return f"it reads the tensor {node.target} directly in its forward"
    others = [n for n in node.all_input_nodes if n is not prev and n not in meta]
    if others:
        return f"{_label(node)} combines the output of {_label(prev)} with that of {_names(others)}"
    return f"{_label(node)} does not take the output of {_label(prev)}"


def _step(model: nn.Module, modules: dict[str, nn.Module], node: fx.Node, meta: set[fx.Node]) -> Step:
    if node.op == "call_module":
        if len(node.args) != 1 or node.kwargs:
            raise _refuse(model, f"module {node.target} is called with more than one argument")
        return Step(node.target, module=modules[node.target])
    if not node.args or not isinstance(node.args[0], fx.Node):
        raise _refuse(model, f"{_label(node)} does not take the previous output as its first argument")
    source = node.args[0]

    def query(n: fx.Node):
        return ShapeQuery(n, source) if n in meta and _reads_only(n, source, meta) else n

    args, kwargs = fx.node.map_arg((node.args[1:], dict(node.kwargs)), query)
    return Step(_label(node), function=node.target, args=tuple(args), kwargs=kwargs)


@dataclass(frozen=True)
class ShapeQuery:
    """A size computed from the tensor an operation takes (``x.size(0)`` in ``x.view(x.size(0), -1)``,
    ``x.shape[1] * 2``): ``query(x)`` evaluates it on that tensor."""

    node: fx.Node
    source: fx.Node

    def __call__(self, x):
        def value(n: fx.Node):
            if n is self.source:
                return x
            args, kwargs = fx.node.map_arg((n.args, n.kwargs), value)
            return (
                getattr(args[0], n.target)(*args[1:], **kwargs) if n.op == "call_method" else n.target(*args, **kwargs)
            )

        return value(self.node)


def _reads_only(node: fx.Node, source: fx.Node, meta: set[fx.Node]) -> bool:
    """True if the shape query ``node`` reads no tensor but ``source``."""
    return all(n is source or (n in meta and _reads_only(n, source, meta)) for n in node.all_input_nodes)


def reused_modules(steps: list[Step]) -> dict[str, str]:
    """``{name: what it shares}`` of every module the chain calls more than once: ``"shared weights"``
    (it has parameters), ``"shared buffers"`` (buffers only, e.g. BatchNorm without affine
    parameters), or ``""`` for a parameter-free module (activation, pooling, Dropout, Flatten), which
    the chain simply treats as one layer per call."""
    counts: dict[int, int] = {}
    for s in steps:
        if s.module is not None:
            counts[id(s.module)] = counts.get(id(s.module), 0) + 1
    reused = {}
    for s in steps:
        if s.module is not None and counts[id(s.module)] > 1:
            if any(True for _ in s.module.parameters()):
                reused[s.name] = "shared weights"
            elif any(True for _ in s.module.buffers()):
                reused[s.name] = "shared buffers"
            else:
                reused[s.name] = ""
    return reused


def batchnorm_merges(model: nn.Module) -> dict[str, str]:
    """``{BatchNorm name: layer name}`` for every BatchNorm that zennit's ``SequentialMergeBatchNorm``
    merges: one whose leaf module registered just before it is a Linear or convolution
    (``zennit.canonizers.SequentialMergeBatchNorm.apply``, same leaf traversal)."""
    names = {id(m): n for n, m in model.named_modules()}
    merges, last = {}, None
    for leaf in collect_leaves(model):
        if isinstance(last, ZennitLinear) and isinstance(leaf, ZennitBatchNorm):
            merges[names[id(leaf)]] = names[id(last)]
        last = leaf
    return merges


def _check_modules(model: nn.Module, steps: list[Step]) -> None:
    """No module with weights or buffers runs twice; BatchNorm and the first prunable layer sit where zennit
    looks for them."""
    shared = {name: what for name, what in reused_modules(steps).items() if what}
    if shared:
        kinds = " and ".join(sorted(set(shared.values())))
        raise _refuse(
            model,
            f"modules {sorted(shared)} are called more than once ({kinds}): each weight must stand for one "
            "connection of one layer for its relevance to mean anything, so give each call its own module",
        )
    merges = batchnorm_merges(model)
    fix = "define each BatchNorm in __init__ right after the layer whose output it normalises"
    for i, s in enumerate(steps[1:], 1):
        before = steps[i - 1]
        if s.name in merges and before.name != merges[s.name]:
            raise _refuse(
                model,
                f"BatchNorm {s.name} runs after {before.name} but is registered right after {merges[s.name]}, "
                f"so zennit would merge it into the wrong layer; {fix}",
            )
        if isinstance(s.module, ZennitBatchNorm) and s.name not in merges and isinstance(before.module, ZennitLinear):
            raise _refuse(
                model,
                f"BatchNorm {s.name} runs right after {before.name} but is not registered right after it, so "
                f"zennit would not merge it into {before.name} and would pass relevance through it unchanged; {fix}",
            )
    first_run = next((s.name for s in steps if isinstance(s.module, PRUNABLE_TYPES)), None)
    first_registered = next((n for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)), None)
    if first_run != first_registered:
        raise _refuse(
            model,
            f"its first layer when run is {first_run} but {first_registered} is registered first, and zennit gives "
            f"its first-layer rule to the first registered; define {first_run} first in __init__",
        )


def is_chain(model: nn.Module) -> bool:
    """True if ``chain_steps(model)`` accepts the model."""
    try:
        chain_steps(model)
    except ValueError:
        return False
    return True
