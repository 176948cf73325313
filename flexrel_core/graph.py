"""Which models FlexRel's relevance can explain: chains, residual and concatenating networks, read with torch.fx.

FlexRel's parameter relevance takes, for every prunable layer, the relevance of its input ``a`` and
of its output ``b`` from one LRP pass. The rule composites used for that pass (zennit's
``EpsilonPlusFlat`` and its relatives) assign one rule per module, which is LRP as defined for a chain
``x -> f_1 -> f_2 -> ... -> logits`` (Bach et al. 2015; Montavon et al. 2019, "Layer-Wise Relevance
Propagation: An Overview"). A skip connection adds two activations: LRP splits the relevance of the sum
among its operands in proportion to their contributions, ``rel(x_k) = x_k * rel(y) / stab(y)`` for
``y = sum_k x_k`` (zennit's ``Sum`` layer with the ``Norm`` rule, as its ``ResNetCanonizer`` uses for
torchvision's ResNets), and an activation feeding several operations (a layer and the skip) gathers the
relevance of all of them, as a gradient does. A concatenation, a slice or a channel shuffle only moves
elements, so each element's relevance goes back to where it came from, exactly (``graph_ops``, routes).
A product of two activations (attention) or a difference has no rule here, and the relevance would be
wrong without a word. So the graph is read with ``torch.fx.symbolic_trace`` (in eval mode) and accepted
only when every operation is a module call on one tensor, a sum of two tensors, or a function or method
call on the allow-list of ``graph_ops`` (calls with a module twin, and routes); no module with weights
runs twice; and every result is used. A
parameter-free module called at several places (one ``self.relu`` or ``self.pool`` used after every
layer) is one layer per call, as in the same model written with one module per call.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from zennit.core import collect_leaves
from zennit.types import BatchNorm as ZennitBatchNorm
from zennit.types import Linear as ZennitLinear

from . import graph_ops
from .graph_ops import label, place
from .layers import DENSE_TYPES, PRUNABLE_TYPES

SUPPORTED = (
    "supported are networks of Conv2d, Linear, BatchNorm, activations, pooling, Flatten and Dropout (modules, or "
    "the function and method calls of flexrel_core.graph_ops: F.relu, F.gelu, F.adaptive_avg_pool2d, x.view...), "
    "as a chain (nn.Sequential, VGG), with skip connections that add two tensors (ResNet: out = out + identity, "
    "torch.add), and with concatenations, slices and channel shuffles (DenseNet, Inception, ShuffleNet); products "
    "of activations (attention), differences and calls outside that list have no LRP rule in FlexRel's relevance"
)
_SUM_FUNCTIONS = (operator.add, torch.add)
_PRODUCTS = {"mul", "matmul", "bmm", "einsum", "mm", "baddbmm", "scaled_dot_product_attention", "div", "truediv"}


@dataclass(frozen=True)
class Step:
    """One operation: a module call (``module`` set), a function/method call, or a sum of two tensors.

    ``inputs``: the value slots it reads, slot 0 being the model's input and slot ``i + 1`` the output of
    step ``i`` (a sum reads two, every other step one: its first argument)."""

    name: str  # the module's qualified name, or the function/method name
    module: nn.Module | None = None
    function: Any = None  # callable for call_function, method name for call_method
    args: tuple = ()  # the arguments after the tensor
    kwargs: dict = field(default_factory=dict)
    inputs: tuple[int, ...] = ()
    is_sum: bool = False
    twin: bool = False  # the module twin of a function or method call (``graph_ops.TWINS``)
    route: bool = False  # a call that only moves elements; ``function``: its ``graph_ops.Call`` on the slots
    gate: bool = False  # x * g with g a squeeze-and-excitation gate of x (``graph_ops.gate_operands``): (x, g)


class _Tracer(fx.Tracer):
    """torch.fx tracer that keeps every layer FlexRel knows as one leaf, subclasses included."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, PRUNABLE_TYPES + DENSE_TYPES) or super().is_leaf_module(m, module_qualified_name)


def _refuse(model: nn.Module, why: str) -> ValueError:
    return ValueError(f"FlexRel's relevance cannot explain {type(model).__name__}: {why}; {SUPPORTED}")


def _refuse_chain(model: nn.Module, why: str) -> ValueError:
    return ValueError(f"{type(model).__name__} is not a plain chain of layers: {why}; {SUPPORTED}")


def trace(model: nn.Module) -> fx.Graph:
    """The model's torch.fx graph, prunable layers and BatchNorm as leaves; ``ValueError`` if it cannot be traced."""
    was_training = model.training
    try:
        model.eval()  # branches on self.training and Dropout calls are read as they run in eval mode
        return _Tracer().trace(model)
    except Exception as err:  # fx raises TraceError, TypeError, NotImplementedError... on dynamic code
        raise ValueError(
            f"cannot read the graph of {type(model).__name__}: torch.fx could not trace it "
            f"({type(err).__name__}: {err}); {SUPPORTED}"
        ) from err
    finally:
        model.train(was_training)


def graph_steps(model: nn.Module) -> list[Step]:
    """The model's operations in execution order with the slots each reads; ``ValueError`` for a graph
    FlexRel's relevance cannot explain.

    Accepted: one input; module calls on one tensor; sums of two tensors (``a + b``, ``torch.add(a, b)``,
    ``a.add(b)``, ``out += identity``); function and method calls of the allow-list in ``graph_ops``: a
    call with a module twin becomes a step of that module (``F.gelu`` -> ``nn.GELU``), a call that only
    moves elements (``view``, ``cat``, ``chunk``, slicing...) a route step reading every tensor it moves.
    Every result is used, the last one is the model's output; no module with parameters or buffers is
    called twice (a parameter-free one called twice is two steps). Shape queries such as
    ``x.view(x.size(0), -1)`` are not tensors. Anything else is refused, naming the call and its place.
    """
    modules = dict(model.named_modules())
    graph = trace(model)
    meta = shape_queries(graph)
    inputs = [n for n in graph.nodes if n.op == "placeholder" and n.users]
    if len(inputs) != 1:
        raise _refuse(model, f"its forward uses {len(inputs)} inputs, expected one tensor")
    slots, steps, output, multi = {inputs[0]: 0}, [], None, set()
    for node in graph.nodes:
        if node.op == "placeholder" or node in meta:
            continue
        if node.op == "output":
            output = node.args[0]
            if not isinstance(output, fx.Node) or output not in slots:
                raise _refuse(model, "its output is not a single tensor computed by its layers")
            break
        if node.op == "get_attr":
            raise _refuse(model, f"it reads the tensor {node.target} directly in its forward ({place(node)})")
        operands = sum_operands(model, node, meta)
        gate = graph_ops.gate_operands(node, modules, meta) if operands is None else None
        if operands is not None or gate is not None:
            reads, is_gate = tuple(slots[n] for n in operands or gate), gate is not None
            steps.append(Step(label(node), function=node.target, inputs=reads, is_sum=not is_gate, gate=is_gate))
        elif graph_ops.is_multi_output(node):
            multi.add(node)  # a tuple of tensors: the calls reading it are the steps
            continue
        else:
            steps.extend(_node_steps(model, modules, node, meta, slots, multi, len(steps)))
        slots[node] = len(steps)
    unused = [n for n in slots if n is not output and not any(u not in meta for u in n.users)]
    unused += [n for n in multi if not n.users]
    if unused:
        raise _refuse(model, f"the output of {_names(unused)} feeds nothing (a result computed and never used)")
    if slots.get(output) != len(steps):
        raise _refuse(model, "its output is not the tensor of its last operation")
    _check_shared(model, steps)
    return steps


def _node_steps(model, modules, node, meta, slots, multi, done: int) -> list[Step]:
    """The steps of one module, function or method call (``done`` steps before it)."""
    tensors = [n for n in node.all_input_nodes if n not in meta]
    if graph_ops.is_route(node):
        if node.target is operator.getitem and graph_ops.reads_tensor(node.args[1:], meta):
            raise _refuse(model, f"{label(node)} ({place(node)}) indexes with a tensor computed by the model")
        call, reads = graph_ops.as_call(node, slots, meta, multi)
        if not reads:
            raise _refuse(model, f"{label(node)} ({place(node)}) does not take a tensor computed by the model")
        return [Step(label(node), function=call, inputs=reads, route=True)]
    if len(tensors) != 1 or any(n in multi for n in tensors):
        raise _refuse(model, _why_combined(node, tensors))
    if node.op == "call_module":
        if len(node.args) != 1 or node.kwargs:
            raise _refuse(model, f"module {node.target} is called with more than one argument")
        if problem := graph_ops.module_problem(modules[node.target]):
            raise _refuse(model, f"{type(modules[node.target]).__name__} module {node.target} {problem}")
        return [Step(node.target, module=modules[node.target], inputs=(slots[tensors[0]],))]
    if node.args[:1] != (tensors[0],):
        raise _refuse(model, f"{label(node)} does not take the tensor it transforms as its first argument")
    twins = graph_ops.twin_modules(node)
    if twins is None:
        raise _refuse(model, graph_ops.unknown(node))
    if isinstance(twins, str):
        raise _refuse(model, f"{label(node)} ({place(node)}) has a module twin but not here: {twins}")
    reads = [slots[tensors[0]]] + [done + k for k in range(1, len(twins))]  # each twin reads the one before
    return [Step(label(node), module=m, inputs=(r,), twin=True) for m, r in zip(twins, reads, strict=True)]


def is_chain_steps(steps: list[Step]) -> bool:
    """True if every step takes the previous step's output and nothing else (each result feeds one step)."""
    return all(s.inputs == (i,) for i, s in enumerate(steps))


def chain_steps(model: nn.Module) -> list[Step]:
    """``graph_steps(model)`` if the graph is a plain chain of layers; else ``ValueError`` saying where not.

    A chain: every operation takes the previous operation's output as its only tensor, and that output
    feeds nothing else; modules are registered in the order they run where zennit depends on it (a
    BatchNorm is merged into the layer registered just before it, and a special first-layer rule goes to
    the first layer registered), which ``relevance`` relies on to run zennit on a chain as it is.
    """
    steps = graph_steps(model)
    if not is_chain_steps(steps):
        raise _refuse_chain(model, _why_not_chain(steps))
    _check_registration(model, steps)
    return steps


def model_steps(model: nn.Module) -> list[Step]:
    """``graph_steps(model)``, with a chain also checked as ``chain_steps`` checks it: the relevance engines'
    analysis (a chain runs through zennit as it is, a residual network through its graph)."""
    steps = graph_steps(model)
    if is_chain_steps(steps):
        _check_registration(model, steps)
    return steps


def _why_not_chain(steps: list[Step]) -> str:
    names = ["the input"] + [s.name for s in steps]
    for slot, who in _readers(steps).items():
        if len(who) > 1:
            return f"the output of {names[slot]} feeds {len(who)} operations ({', '.join(who)})"
    first = next(s for i, s in enumerate(steps) if s.inputs != (i,))
    return f"{first.name} combines the outputs of {', '.join(names[i] for i in first.inputs)}"


def sum_operands(model: nn.Module, node: fx.Node, meta: set[fx.Node]) -> tuple[fx.Node, fx.Node] | None:
    """The two tensors a sum node adds, or None if the node is not a sum of two tensors."""
    function = node.op == "call_function" and node.target in _SUM_FUNCTIONS
    if not (function or (node.op == "call_method" and node.target in ("add", "add_"))):
        return None
    operands = [a for a in node.args[:2] if isinstance(a, fx.Node) and a not in meta]
    if len(operands) != 2 or len(node.args) != 2:
        return None
    if node.target == "add_":
        why = "adds in place, which torch.fx does not record; write x = x + y"
        raise _refuse(model, f"{operands[0].name}.add_(...) {why}")
    if set(node.kwargs) - {"alpha"} or node.kwargs.get("alpha", 1) != 1:
        raise _refuse(model, f"{label(node)} is called with {node.kwargs}: only a plain sum of two tensors has a rule")
    return operands[0], operands[1]


def _why_combined(node: fx.Node, tensors: list[fx.Node]) -> str:
    name = label(node)
    if not tensors:
        return f"{name} does not take a tensor computed by the model"
    what = "an operation that combines several tensors"
    if name.strip("_") in _PRODUCTS:
        what = "a product of activations (as in attention)"
    elif name in ("sub", "subtract", "rsub"):
        what = "a difference"
    if len(tensors) == 1:
        return graph_ops.unknown(node)
    return f"{name} combines the outputs of {_names(tensors)}: {what}, which has no LRP rule here ({place(node)})"


_QUERY_METHODS = {"size", "dim", "numel"}
_QUERY_ATTRIBUTES = {"shape", "ndim", "dtype", "device"}


def shape_queries(graph: fx.Graph) -> set[fx.Node]:
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


def _names(nodes) -> str:
    return ", ".join(label(n) for n in nodes)


def reused_modules(steps: list[Step]) -> dict[str, str]:
    """``{name: what it shares}`` of every module the model calls more than once: ``"shared weights"``
    (it has parameters), ``"shared buffers"`` (buffers only, e.g. BatchNorm without affine
    parameters), or ``""`` for a parameter-free module (activation, pooling, Dropout, Flatten), which
    the graph simply treats as one layer per call."""
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


def graph_merges(steps: list[Step]) -> dict[str, str]:
    """``{BatchNorm name: layer name}`` for every BatchNorm that normalises the output of a Conv2d or Linear
    and is the only operation reading it: merged into that layer for LRP (on a chain the same pairs as
    ``batchnorm_merges``, which ``chain_steps`` checks). Any other BatchNorm (one reading an activation or
    a sum, as in pre-activation ResNets, or a layer's output that a skip connection reads too) is not
    merged: zennit's composites pass relevance through it unchanged, and so does the fast engine."""
    readers = _readers(steps)
    merges = {}
    for s in steps:
        if isinstance(s.module, ZennitBatchNorm) and s.inputs[0] > 0:
            layer = steps[s.inputs[0] - 1]
            if isinstance(layer.module, PRUNABLE_TYPES) and len(readers[s.inputs[0]]) == 1:
                merges[s.name] = layer.name
    return merges


def _readers(steps: list[Step]) -> dict[int, list[str]]:
    """``{slot: names of the steps reading it}``."""
    readers: dict[int, list[str]] = {}
    for s in steps:
        for slot in dict.fromkeys(s.inputs):
            readers.setdefault(slot, []).append(s.name)
    return readers


def _check_shared(model: nn.Module, steps: list[Step]) -> None:
    """No module with weights or buffers runs twice."""
    shared = {name: what for name, what in reused_modules(steps).items() if what}
    if shared:
        kinds = " and ".join(sorted(set(shared.values())))
        raise _refuse(
            model,
            f"modules {sorted(shared)} are called more than once ({kinds}): each weight must stand for one "
            "connection of one layer for its relevance to mean anything, so give each call its own module",
        )


def _check_registration(model: nn.Module, steps: list[Step]) -> None:
    """On a chain, BatchNorm and the first prunable layer sit where zennit looks for them (the modules'
    registration order), since ``relevance`` runs zennit on a chain as it is."""
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
