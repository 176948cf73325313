"""The allow-list of function and method calls FlexRel's relevance reads in a traced graph.

zennit's composites assign LRP rules to modules (Anders et al., "Software for Dataset-wide XAI", 2021), so
a call such as ``F.gelu(x)`` or ``F.adaptive_avg_pool2d(x, 1)`` inside ``forward`` gets no rule: relevance
would flow back through it as a plain gradient, silently different from the same model written with
``nn.GELU`` or ``nn.AdaptiveAvgPool2d``. Every call in the graph is therefore one of

- a **twin**: a call with a module twin (``F.gelu`` -> ``nn.GELU``, ``F.avg_pool2d`` ->
  ``nn.AvgPool2d``, ``x.mean([2, 3])`` -> ``nn.AdaptiveAvgPool2d(1)`` and ``nn.Flatten``, Dropout and
  stochastic depth in eval -> ``nn.Identity``), built from the call's arguments; both relevance engines
  then treat it as that module (zennit's composite assigns the module's rule);
- a **route**: a call that only moves or copies elements (``view``, ``reshape``, ``flatten``,
  ``transpose``, ``permute``, ``contiguous``, ``squeeze``, ``unsqueeze``, slicing, ``cat``, ``chunk``,
  ``split``, ``unbind``): relevance moves back with its element, which is the call's gradient, exact and
  with no rule to choose (a concatenation hands each operand the relevance of its own slice);
- a **sum** of two tensors (``graph.sum_operands``), or a shape query (``x.size(0)``);

or it is refused, naming the call and where it is. Nothing outside this table is assumed harmless.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import fx, nn
from zennit.types import Activation, AvgPool, MaxPool


def _bind(names: tuple[str, ...], defaults: dict, args: tuple, kwargs: dict) -> dict:
    """The call's arguments after the tensor, by name (``names`` in positional order)."""
    bound = dict(defaults) | dict(zip(names, args, strict=False)) | dict(kwargs)
    if len(args) > len(names) or set(bound) - set(names):
        raise TypeError(f"unexpected arguments {args} {kwargs}")
    return bound


def _activation(module: type[nn.Module], names: tuple[str, ...] = (), defaults: dict | None = None):
    """A twin built from the named options (``inplace`` dropped: it does not change the value)."""

    def build(args: tuple, kwargs: dict) -> list[nn.Module]:
        options = _bind(names + ("inplace",), defaults or {}, args, kwargs)
        options.pop("inplace", None)
        return [module(**options)]

    return build


def _pool(module: type[nn.Module], names: tuple[str, ...], defaults: dict):
    def build(args: tuple, kwargs: dict) -> list[nn.Module] | str:
        options = _bind(names, defaults, args, kwargs)
        if options.pop("return_indices", False):
            return "it returns the indices of the maxima too"
        return [module(**options)]

    return build


_MAX_POOL = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
_AVG_POOL = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")


def _mean(args: tuple, kwargs: dict) -> list[nn.Module] | str:
    options = _bind(("dim", "keepdim"), {"keepdim": False}, args, kwargs)
    dim = options.get("dim")
    if not isinstance(dim, (list, tuple)) or sorted(dim) != [2, 3] or options.get("dtype") is not None:
        return "only the spatial mean x.mean([2, 3]) of an (n, C, H, W) map has a twin (AdaptiveAvgPool2d(1))"
    return [nn.AdaptiveAvgPool2d(1)] + ([] if options["keepdim"] else [nn.Flatten(1)])


def _eval_only(names: tuple[str, ...], defaults: dict):
    """Dropout-like calls: the identity when not training (the graph is traced in eval mode)."""

    def build(args: tuple, kwargs: dict) -> list[nn.Module] | str:
        options = _bind(names, defaults, args, kwargs)
        if options.get("training", True) and options.get("p", 1.0) != 0:
            return "it is called with training=True, so it is random in eval mode too"
        return [nn.Identity()]

    return build


_DROPOUT = _eval_only(("p", "training", "inplace"), {"p": 0.5, "training": True})
_RELU = _activation(nn.ReLU)

# call target (function, or method name) -> twin builder(args after the tensor, kwargs): modules, or why not
TWINS: dict[Any, Callable[[tuple, dict], list[nn.Module] | str]] = {
    F.relu: _RELU, torch.relu: _RELU, torch.relu_: _RELU, "relu": _RELU, "relu_": _RELU,
    F.relu6: _activation(nn.ReLU6),
    F.hardtanh: _activation(nn.Hardtanh, ("min_val", "max_val")),
    F.gelu: _activation(nn.GELU, ("approximate",)),
    F.silu: _activation(nn.SiLU),
    F.mish: _activation(nn.Mish),
    F.hardswish: _activation(nn.Hardswish),
    F.hardsigmoid: _activation(nn.Hardsigmoid),
    F.sigmoid: _activation(nn.Sigmoid), torch.sigmoid: _activation(nn.Sigmoid), "sigmoid": _activation(nn.Sigmoid),
    F.tanh: _activation(nn.Tanh), torch.tanh: _activation(nn.Tanh), "tanh": _activation(nn.Tanh),
    F.leaky_relu: _activation(nn.LeakyReLU, ("negative_slope",)),
    F.elu: _activation(nn.ELU, ("alpha",)),
    F.celu: _activation(nn.CELU, ("alpha",)),
    F.selu: _activation(nn.SELU),
    F.softplus: _activation(nn.Softplus, ("beta", "threshold")),
    F.max_pool2d: _pool(nn.MaxPool2d, _MAX_POOL, {}),
    torch.max_pool2d: _pool(nn.MaxPool2d, _MAX_POOL, {}),
    F.avg_pool2d: _pool(nn.AvgPool2d, _AVG_POOL, {}),
    F.adaptive_avg_pool2d: _pool(nn.AdaptiveAvgPool2d, ("output_size",), {}),
    F.adaptive_max_pool2d: _pool(nn.AdaptiveMaxPool2d, ("output_size", "return_indices"), {}),
    "mean": _mean, torch.mean: _mean,
    F.dropout: _DROPOUT, F.dropout2d: _DROPOUT, F.dropout1d: _DROPOUT, F.alpha_dropout: _DROPOUT,
    torchvision.ops.stochastic_depth: _eval_only(("p", "mode", "training"), {"training": True}),
}  # fmt: skip

# calls that only move or copy elements: relevance goes back with each element (the call's gradient)
ROUTE_FUNCTIONS = {
    torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.transpose, torch.permute, torch.movedim,
    torch.narrow, torch.cat, torch.concat, torch.concatenate, torch.chunk, torch.split, torch.unbind,
    torch.tensor_split, operator.getitem,
}  # fmt: skip
ROUTE_METHODS = {
    "flatten", "view", "reshape", "squeeze", "unsqueeze", "transpose", "permute", "movedim", "narrow",
    "contiguous", "chunk", "split", "unbind", "tensor_split",
}  # fmt: skip
# routes that return a tuple of tensors: their ``getitem`` users are the steps
MULTI_OUTPUT = {torch.chunk, torch.split, torch.unbind, torch.tensor_split, "chunk", "split", "unbind", "tensor_split"}


_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
# modules with an LRP rule in zennit's composites (layers, activations: Pass, average pooling: Norm) or whose
# gradient moves relevance exactly (max pooling, reshapes, Dropout and Identity in eval, nearest upsampling)
MODULES = (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, AvgPool, MaxPool, nn.Flatten, nn.Unflatten)
MODULES += (nn.Identity,)


def module_problem(module: nn.Module) -> str | None:
    """Why a module call has no rule (a string), or None if it is on the allow-list (``MODULES``, zennit's
    parameter-free activations, Dropout, nearest upsampling)."""
    if isinstance(module, MODULES + _DROPOUTS):
        return None
    if isinstance(module, Activation) and not isinstance(module, nn.MultiheadAttention):
        return None
    if isinstance(module, nn.Upsample) and module.mode == "nearest":
        return None
    return "has no LRP rule in FlexRel and is not known to pass relevance on unchanged"


def label(node: fx.Node) -> str:
    """A module's qualified name, a function's or method's name."""
    return node.target if isinstance(node.target, str) else getattr(node.target, "__name__", node.name)


def place(node: fx.Node) -> str:
    """Where a node is: its fx name and the module whose ``forward`` makes the call."""
    stack = node.meta.get("nn_module_stack") or {}
    path = next(reversed(stack.values()))[0] if stack else ""
    return f"node {node.name}, in the forward of {path}" if path else f"node {node.name}, in the model's forward"


def twin_modules(node: fx.Node) -> list[nn.Module] | str | None:
    """The modules that compute what a function/method call computes, the reason it has none although its
    function is in ``TWINS`` (a string), or None if the call is not in ``TWINS``."""
    if node.op not in ("call_function", "call_method"):
        return None
    build = TWINS.get(node.target) if _hashable(node.target) else None
    if build is None:
        return None
    args = node.args[1:]
    if _reads((args, node.kwargs)):
        return "its options are computed in forward; pass them as constants"
    try:
        return build(tuple(args), dict(node.kwargs))
    except TypeError as err:
        return f"it is called with options FlexRel does not map ({err})"


def is_route(node: fx.Node) -> bool:
    """True if the call only moves or copies elements (``ROUTE_FUNCTIONS``, ``ROUTE_METHODS``)."""
    if node.op == "call_function":
        return _hashable(node.target) and node.target in ROUTE_FUNCTIONS
    return node.op == "call_method" and node.target in ROUTE_METHODS


def is_multi_output(node: fx.Node) -> bool:
    return is_route(node) and node.target in MULTI_OUTPUT


def _hashable(target: Any) -> bool:
    try:
        hash(target)
    except TypeError:
        return False
    return True


def _reads(value: Any) -> bool:
    found = []
    fx.node.map_arg(value, lambda n: found.append(n) or n)
    return bool(found)


@dataclass(frozen=True)
class Slot:
    """A value the call reads: slot 0 is the model's input, slot ``k + 1`` the output of step ``k``."""

    index: int


@dataclass(frozen=True, eq=False)
class Call:
    """A function or method call recorded by torch.fx, rebuilt on slots: ``call(value)`` evaluates it with
    each ``Slot`` replaced by ``value(slot index)`` (nested ``Call`` arguments first). Routes and shape
    queries (``x.size(0)``, read from any tensor of the model) are held this way."""

    target: Any
    method: bool
    args: tuple
    kwargs: dict = field(default_factory=dict)

    def __call__(self, value: Callable[[int], torch.Tensor]) -> Any:
        def resolve(a):
            if isinstance(a, Slot):
                return value(a.index)
            return a(value) if isinstance(a, Call) else a

        args, kwargs = fx.node.map_aggregate((self.args, self.kwargs), resolve)
        if self.method:
            return getattr(args[0], self.target)(*args[1:], **kwargs)
        return self.target(*args, **kwargs)


def as_call(node: fx.Node, slots: dict[fx.Node, int], meta: set[fx.Node], multi: set[fx.Node]):
    """``(call, reads)``: ``node`` as a ``Call`` on slots (``slots``: node -> slot), with a tuple-valued call
    it reads (``multi``, e.g. ``chunk``) and shape queries (``meta``) nested in it; ``reads`` are the slots
    whose elements it moves, in order (not those it only asks sizes of)."""
    reads: list[int] = []

    def rebuild(n: fx.Node, query: bool):
        def arg(m: fx.Node):
            if m in meta or m in multi:
                return rebuild(m, query or m in meta)
            if not query and slots[m] not in reads:
                reads.append(slots[m])
            return Slot(slots[m])

        args, kwargs = fx.node.map_arg((tuple(n.args), dict(n.kwargs)), arg)
        return Call(n.target, n.op == "call_method", tuple(args), dict(kwargs))

    return rebuild(node, False), tuple(reads)


def reads_tensor(value: Any, meta: set[fx.Node]) -> bool:
    """True if ``value`` (arguments) holds a tensor computed by the model, not only sizes."""
    found = []
    fx.node.map_arg(value, lambda n: found.append(n) if n not in meta else None)
    return bool(found)


_PRODUCT_FUNCTIONS = (operator.mul, torch.mul)
_GATE_MODULES = (nn.Sigmoid, nn.Hardsigmoid)
_GATE_FUNCTIONS = (torch.sigmoid, F.sigmoid, F.hardsigmoid)
_GATE_DEPTH = 16  # operations between the pooling and the sigmoid that a gate branch may hold


def gate_operands(node: fx.Node, modules: dict[str, nn.Module], meta: set[fx.Node]) -> tuple[fx.Node, fx.Node] | None:
    """``(x, g)`` if ``node`` multiplies a tensor ``x`` by a gate ``g`` computed from ``x`` alone: ``g`` is
    a sigmoid or hard sigmoid of a branch that reads only the global average pooling of ``x``
    (``AdaptiveAvgPool2d(1)``, ``F.adaptive_avg_pool2d(x, 1)``, ``x.mean([2, 3], keepdim=True)``), so it
    has one value per sample and channel and broadcasts over the spatial dimensions -- the
    squeeze-and-excitation gate of MobileNetV3, EfficientNet and RegNet-Y (Hu et al. 2018). None otherwise.
    """
    product = (node.op == "call_function" and node.target in _PRODUCT_FUNCTIONS) or (
        node.op == "call_method" and node.target == "mul"
    )
    operands = [a for a in node.args if isinstance(a, fx.Node) and a not in meta]
    if not product or node.kwargs or len(node.args) != 2 or len(operands) != 2 or operands[0] is operands[1]:
        return None
    for x, g in (operands, operands[::-1]):
        if _is_gate_activation(g, modules) and _pools(g.args[0], x, modules, meta):
            return x, g
    return None


def _is_gate_activation(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(node.target), _GATE_MODULES)
    if node.op == "call_method":
        return node.target == "sigmoid"
    return node.op == "call_function" and node.target in _GATE_FUNCTIONS


def _pools(node: Any, x: fx.Node, modules: dict[str, nn.Module], meta: set[fx.Node]) -> bool:
    """True if ``node`` is computed, one tensor at a time, from the global average pooling of ``x``."""
    for _ in range(_GATE_DEPTH):
        if not isinstance(node, fx.Node):
            return False
        tensors = [n for n in node.all_input_nodes if n not in meta]
        if len(tensors) != 1:
            return False
        if tensors[0] is x:
            return _is_global_pool(node, modules)
        node = tensors[0]
    return False


def _is_global_pool(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        m = modules.get(node.target)
        return isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1))
    if node.op == "call_function" and node.target is F.adaptive_avg_pool2d:
        return tuple(node.args[1:]) in ((1,), ((1, 1),)) and not node.kwargs
    if node.target in ("mean", torch.mean) and node.op in ("call_method", "call_function"):
        twins = twin_modules(node)
        return isinstance(twins, list) and len(twins) == 1  # keepdim=True: AdaptiveAvgPool2d(1) alone
    return False


def check_gate(x: torch.Tensor, g: torch.Tensor, name: str) -> None:
    """A gate has one value per sample and channel: shape (n, C, 1, 1) against x's (n, C, H, W)."""
    if x.ndim != 4 or tuple(g.shape) != (x.shape[0], x.shape[1], 1, 1):
        raise ValueError(
            f"{name} multiplies a map of shape {tuple(x.shape)} by a gate of shape {tuple(g.shape)}: a gate "
            "has one value per sample and channel, (n, C, 1, 1)"
        )


class _Gate(torch.autograd.Function):
    """``x * g`` with the gate held constant for LRP: ``rel(x) = rel(x * g)``, ``rel(g) = 0`` (the
    signal-take-all rule for multiplicative gates, Arras et al. 2017, "Explaining recurrent neural network
    predictions in sentiment analysis")."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        ctx.gate_shape = g.shape
        return x * g

    @staticmethod
    def backward(ctx, rel: torch.Tensor):
        return rel, rel.new_zeros(ctx.gate_shape)


def gated(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The gate product as zennit's route runs it: relevance passes to ``x`` unchanged, none to ``g``."""
    check_gate(x, g, "a gate")
    return _Gate.apply(x, g)


def unknown(node: fx.Node) -> str:
    """Why a call outside the allow-list is refused, naming it and its place."""
    return (
        f"{label(node)} ({place(node)}) has no LRP rule in FlexRel and is not known to pass relevance on "
        "unchanged, so it is refused rather than explained by its gradient"
    )
