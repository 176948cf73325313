"""The fast relevance engine: zennit's rule composites computed directly, for chains and residual networks.

zennit (Anders et al., "Software for Dataset-wide XAI", 2021) applies each LRP rule in a backward
hook that re-runs the layer on modified copies of its input and parameters; ``ZPlus`` runs two
(positive and negative parts). On a model whose plan ``fast_plan.make_plan`` can build, the same
rules need far less: one forward that keeps each layer's input, then one walk backwards with

- ``Conv2d``, z+ rule on inputs >= 0 (after a ReLU): ``z = conv(a, W+) + b+``,
  ``rel(a) = a * conv_transpose(rel(b) / stab(z), W+)`` -- one extra convolution (the negative
  part ``conv(a-, W-)`` vanishes); where the input may be negative both parts are computed, as zennit does;
- ``Linear``, epsilon rule: ``rel(a) = a * ((rel(b) / stab(z)) @ W)`` with the forward's ``z``;
- flat rule (first layer): ``rel(a) = conv_transpose(rel(b) / stab(conv(1, 1)), 1)``;
- average pooling, zennit's ``Norm``: ``rel(x) = x * pool^T(rel(y) / stab(y))``; max pooling:
  its gradient; activations, Dropout, Flatten, merged BatchNorm: relevance unchanged (``Pass``);
  a BatchNorm merged into no layer (DenseNet's pre-activation BatchNorm): relevance unchanged, as zennit's
  composites pass it (checked in float64 against zennit, ``tests/test_graph_ops.py``);
- a squeeze-and-excitation gate ``x * g``: the gate held constant, ``rel(x) = rel(x * g)``, none to ``g``
  (Arras et al. 2017, "Explaining recurrent neural network predictions in sentiment analysis");
- a route (``view``, ``transpose``, slicing, ``cat``, ``chunk``...): relevance goes back with each element,
  by autograd's transpose of the call (a concatenation hands each operand its slice);
- a sum ``y = a + b`` (skip connection), zennit's ``Norm`` on its ``Sum`` layer:
  ``rel(a) = a * rel(y) / stab(y)``, ``rel(b) = b * rel(y) / stab(y)``;

with zennit's stabiliser ``stab(z) = z + 1e-6 * sign(z)``, sign(0) = +1 (``zennit.core.stabilize``).
An activation read by several operations (a layer and a skip connection) receives the sum of what
each sends back, as its gradient would; the walk goes backwards through the operations in the order
they ran, so every reader has sent its share before the activation's relevance is passed on. Each
stored input is freed as soon as the walk has passed its layer. Relevance starts from the
predicted class's logit (or ``targets``), as in ``relevance.lrp_backward``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .fast_plan import EPSILON, Op, conv_geometry, make_plan
from .graph_ops import check_gate
from .lrp_inputs import check_inputs, is_out_of_memory, memory_error, start_relevance

# visit(name, side, rel, key): for every prunable layer, side "b" (the relevance of its output, before its
# rule runs) and side "a" (of its input, once every operation reading that input has sent its share back),
# walking backwards from the last layer. ``key``: for side "a", the slot of the input; for side "b", the
# slot whose rel(a) holds the same values (reshaped at most), or None. The walk drops rel(b) as soon as
# the rule has used it.
Visitor = Callable[[str, str, torch.Tensor, int | None], None]


def stabilize_(z: torch.Tensor, nonnegative: bool = False) -> torch.Tensor:
    """In place: z + eps * sign(z) with sign(0) = +1, eps = 1e-6 (zennit.core.stabilize).

    ``nonnegative``: z is a sum of non-negative terms (z+ and flat rules), so the sign is +1
    everywhere (-0.0 included, as in zennit) and one addition does.
    """
    if nonnegative:
        return z.add_(EPSILON)
    eps = z.new_tensor(EPSILON)
    return z.add_(torch.where(z >= 0, eps, -eps))


def lrp_fast(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor | None = None,
    *,
    composite: str = "epsilon_plus_flat",
    layer_hooks: Callable[[str, torch.Tensor, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """One LRP pass by the fast engine; returns the relevance of ``inputs`` (equal to zennit's).

    ``layer_hooks(name, rel_a, rel_b)`` receives every prunable layer's per-sample input and output
    relevance (``name`` = ``"<module>.weight"``), last layer first (on a chain; in a residual network once
    the input's relevance is complete: ``rel_a`` is then the relevance of the input activation, gathered
    from every operation reading it). Raises ``ValueError`` for a model or composite the engine does not
    handle. The model is only read.
    """

    rel_b: dict[str, torch.Tensor] = {}

    def visit(name: str, side: str, rel: torch.Tensor, _: int | None) -> None:
        if layer_hooks is None:
            return
        if side == "b":
            rel_b[name] = rel
        else:
            layer_hooks(name, rel, rel_b.pop(name))

    return walk(make_plan(model, composite), model, inputs, targets, visit)


def plan_logits(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The logits the fast engine's LRP pass starts from: the model's forward with BatchNorm merged as zennit's
    canonizers merge it (the merged BatchNorm still divides by sqrt(1 + eps), so these differ from
    ``model(inputs)`` by that factor per merged BatchNorm)."""
    plan = make_plan(model)
    with torch.no_grad():
        return _forward(plan, check_inputs(model, inputs).detach(), _reads(plan))[1]


def walk(plan: list[Op], model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor | None, visit: Visitor):
    """Forward keeping what each rule needs, then the backward walk; returns the input relevance."""
    inputs = check_inputs(model, inputs)
    readers = _reads(plan)
    layers: dict[int, list[str]] = {}  # slot -> the prunable layers reading it
    for op in plan:
        if op.kind in ("conv", "linear"):
            layers.setdefault(op.inputs[0], []).append(op.name)
    try:
        with torch.no_grad():
            saved, logits = _forward(plan, inputs.detach(), readers)
            rel, same = {len(plan): start_relevance(logits, targets)}, {len(plan): None}
            del logits
            pending = dict(readers)
            for i in range(len(plan) - 1, -1, -1):
                op, keep = plan[i], saved[i]
                saved[i] = None  # the stored input is freed as soon as the walk has used it
                r, key = rel.pop(i + 1), same.pop(i + 1)
                if op.kind in ("conv", "linear"):
                    visit(op.name, "b", r, key)
                    held = [r]  # the rule pops rel(b), which is then freed as soon as it has been used
                    del r
                    sent, keep = [(_RULES[op.rule](op, keep, held), None)], None
                elif op.kind == "reshape":
                    sent = [(r.reshape(keep), key)]
                elif op.kind in ("pass", "bn"):
                    sent = [(r, key)]
                elif op.kind == "sum":
                    sent, keep = [(part, None) for part in _sum_backward(keep, r)], None
                elif op.kind == "gate":  # the gate held constant: all relevance to the signal, none to the gate
                    sent, keep = [(r, key), (r.new_zeros(keep), None)], None
                elif op.kind == "route":
                    sent, keep = [(part, None) for part in _route_backward(op, keep, r)], None
                else:
                    sent, keep = [(_BACKWARD[op.kind](op, keep, r), None)], None
                r = None
                for slot, (part, part_key) in zip(op.inputs, sent, strict=True):
                    if slot in rel:  # a second reader of this slot: relevance from every reader adds up
                        rel[slot], same[slot] = rel[slot] + part, None
                    else:
                        rel[slot], same[slot] = part, part_key
                    pending[slot] -= 1
                    if pending[slot] == 0 and slot in layers:
                        for name in layers[slot]:
                            visit(name, "a", rel[slot], slot)
                        same[slot] = slot
                del sent, part
            return rel[0]
    except RuntimeError as err:
        if is_out_of_memory(err):
            raise memory_error(err, inputs) from err
        raise


def _reads(plan: list[Op]) -> dict[int, int]:
    """``{slot: how many times operations read it}`` (a sum of a tensor with itself reads it twice)."""
    reads: dict[int, int] = {}
    for op in plan:
        for slot in op.inputs:
            reads[slot] = reads.get(slot, 0) + 1
    return reads


def _forward(plan: list[Op], x: torch.Tensor, readers: dict[int, int]) -> tuple[list, torch.Tensor]:
    """Run the model once (eval semantics: Dropout off, BatchNorm merged), keeping what each rule needs.

    A value is freed once its last reader has run. ``shared``: the value is the caller's tensor, a stored
    one, or read by several operations, so an operation must not modify it in place."""
    saved: list = [None] * len(plan)
    values, shared, left = {0: x}, {0: True}, dict(readers)
    metas = {0: x.to("meta")}  # every value's shape, for the sizes a route reads (x.view(x.size(0), -1))
    shape = tuple(x.shape)
    for i, op in enumerate(plan):
        try:
            if op.kind == "sum":
                out, saved[i], out_shared = _forward_sum(op, [values[s] for s in op.inputs])
            elif op.kind == "route":
                out, saved[i], out_shared = _forward_route(op, values, metas)
            elif op.kind == "gate":
                x, g = (values[s] for s in op.inputs)
                check_gate(x, g, op.name)
                out, saved[i], out_shared = x * g, g.shape, False
            else:
                s = op.inputs[0]
                out, saved[i], out_shared = _FORWARD[op.kind](op, values[s], shared[s] or readers[s] > 1)
        except RuntimeError as err:
            if is_out_of_memory(err):
                raise
            where = op.name.removesuffix(".weight")
            raise ValueError(f"inputs of shape {shape} do not fit the model (at {where}: {err})") from err
        for s in op.inputs:
            left[s] -= 1
            if left[s] == 0:
                del values[s], shared[s]
        values[i + 1], shared[i + 1], metas[i + 1] = out, out_shared, out.to("meta")
    return saved, values[len(plan)]


def _conv(op: Op, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    conv = op.module
    padding, extra = conv_geometry(conv)
    if extra is not None:
        x = F.pad(x, extra)
    return F.conv2d(x, weight, bias, conv.stride, padding, conv.dilation, conv.groups)


def _conv_transpose(op: Op, x: torch.Tensor | torch.Size, weight: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Gradient of ``_conv`` w.r.t. its input ``x`` (or an input of that shape): the transposed
    convolution of ``g``, by the kernel autograd uses (``aten.convolution_backward``)."""
    conv = op.module
    padding, extra = conv_geometry(conv)
    shape = x if isinstance(x, torch.Size | tuple) else x.shape
    if extra is not None:
        left, right, top, bottom = extra
        x = (*shape[:2], shape[2] + top + bottom, shape[3] + left + right)
    if isinstance(x, torch.Tensor):
        args = (conv.stride, padding, conv.dilation, False, [0, 0], conv.groups, (True, False, False))
        return torch.ops.aten.convolution_backward(g, x, weight, None, *args)[0]
    grad = torch.nn.grad.conv2d_input(x, weight, g, conv.stride, padding, conv.dilation, conv.groups)
    if extra is None:
        return grad
    return grad[:, :, top : top + shape[2], left : left + shape[3]].contiguous()


def _forward_layer(op: Op, x: torch.Tensor, shared: bool):
    if op.kind == "conv":
        z = _conv(op, x, op.weight, op.bias)
        keep = x.shape if op.rule == "flat" else x
    else:
        if x.ndim != 2:
            raise ValueError(f"the fast engine takes Linear inputs of shape (n, features), got {tuple(x.shape)}")
        z = F.linear(x, op.weight, op.bias)
        keep = x.shape if op.rule == "flat" else (x, z)
    if op.scale is not None:  # the merged BatchNorm's remaining 1 / sqrt(1 + eps)
        return z * op.scale, keep, False
    return z, keep, op.kind == "linear" and op.rule != "flat"


def _forward_pass(op: Op, x: torch.Tensor, shared: bool):
    if op.fn is None:  # Dropout in eval, Identity
        return x, None, shared
    if isinstance(op.module, nn.ReLU) and not shared:
        return x.relu_(), None, False
    if shared and getattr(op.module, "inplace", False):
        x = x.clone()
    return op.fn(x), None, False


def _forward_reshape(op: Op, x: torch.Tensor, shared: bool):
    out = op.fn(x)
    if out.shape[0] != x.shape[0]:
        raise ValueError(f"{op.name} changes the batch dimension: {tuple(x.shape)} -> {tuple(out.shape)}")
    return out, x.shape, shared


def _forward_maxpool(op: Op, x: torch.Tensor, shared: bool):
    m = op.module
    if isinstance(m, nn.AdaptiveMaxPool2d):
        out, indices = F.adaptive_max_pool2d(x, m.output_size, return_indices=True)
    else:
        out, indices = F.max_pool2d(x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, return_indices=True)
    return out, (indices, x.shape), False


def _forward_bn(op: Op, x: torch.Tensor, shared: bool):
    m = op.module
    return F.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps), None, False


def _forward_route(op: Op, values: dict, metas: dict):
    """Run a route on its slots' values (sizes from any slot's shape); keep the shapes its transpose needs."""
    out = op.fn(lambda s: values[s] if s in op.inputs else metas[s])
    return out, (metas, {s: metas[s] for s in op.inputs}), True  # shared: it may be a view of its inputs


def _forward_avgpool(op: Op, x: torch.Tensor, shared: bool):
    return _pool(op, x), x, False


def _pool(op: Op, x: torch.Tensor) -> torch.Tensor:
    m = op.module
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return F.adaptive_avg_pool2d(x, m.output_size)
    return F.avg_pool2d(x, m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad, m.divisor_override)


def _forward_sum(op: Op, xs: list[torch.Tensor]):
    a, b = xs
    if a.shape != b.shape:
        raise ValueError(
            f"{op.name} adds tensors of shapes {tuple(a.shape)} and {tuple(b.shape)}: LRP splits a sum among "
            "operands of one shape; broadcasting one of them has no rule here"
        )
    return a + b, (a, b), False


def _sum_backward(keep: tuple[torch.Tensor, torch.Tensor], rel: torch.Tensor) -> list[torch.Tensor]:
    """zennit's Norm rule on its Sum layer: each operand x gets x * rel / stab(a + b), its share of the sum."""
    a, b = keep
    g = torch.div(rel, stabilize_(a + b))
    return [a * g, b * g]


_FORWARD = {
    "conv": _forward_layer,
    "linear": _forward_layer,
    "pass": _forward_pass,
    "reshape": _forward_reshape,
    "maxpool": _forward_maxpool,
    "bn": _forward_bn,
    "avgpool": _forward_avgpool,
}


def _zplus(op: Op, x: torch.Tensor, held: list[torch.Tensor]) -> torch.Tensor:
    """ZPlus on inputs >= 0: x * conv^T(rel / stab(conv(x, W+) + b+), W+) (zennit.rules.ZPlus)."""
    w, b = op.positive
    g = stabilize_(_conv(op, x, w, b), nonnegative=True)
    torch.div(held.pop(), g, out=g)
    return _conv_transpose(op, x, w, g).mul_(x)


def _zplus_signed(op: Op, x: torch.Tensor, held: list[torch.Tensor]) -> torch.Tensor:
    """ZPlus on inputs of any sign: x+ * conv^T(g, W+) + x- * conv^T(g, W-),
    g = rel / stab(conv(x+, W+) + b+ + conv(x-, W-)) (zennit.rules.ZPlus, both parts)."""
    (wp, bp), wn = op.positive, op.weight.clamp(max=0)
    xp, xn = x.clamp(min=0), x.clamp(max=0)
    z = _conv(op, xp, wp, bp) + _conv(op, xn, wn, None)
    g = torch.div(held.pop(), stabilize_(z), out=z)
    return _conv_transpose(op, x, wp, g).mul_(xp).add_(_conv_transpose(op, x, wn, g).mul_(xn))


def _flat_conv(op: Op, shape: torch.Size, held: list[torch.Tensor]) -> torch.Tensor:
    """Flat: conv^T(rel / stab(conv(1, 1)), 1), bias dropped (zennit.rules.Flat). The all-ones
    kernel lets the sum over a group's output channels come first, so one small transposed conv remains."""
    conv = op.module
    n, groups, (kh, kw) = shape[0], conv.groups, conv.kernel_size
    per_group_in, per_group_out = conv.in_channels // groups, conv.out_channels // groups
    out_shape = held[0].shape[2:]
    ones = held[0].new_ones(groups, 1, kh, kw)
    taps = _conv(op, ones.new_ones(1, groups, *shape[2:]), ones, None)  # valid taps per position and group
    z = stabilize_((taps * per_group_in).repeat_interleave(per_group_out, dim=1), nonnegative=True)
    g = (held.pop() / z).view(n, groups, per_group_out, *out_shape).sum(2)
    r = _conv_transpose(op, (n, groups, *shape[2:]), ones, g)
    return r.repeat_interleave(per_group_in, dim=1)


def _epsilon(op: Op, keep: tuple[torch.Tensor, torch.Tensor], held: list[torch.Tensor]) -> torch.Tensor:
    """Epsilon: a * ((rel / stab(z)) @ W), z = a W^T + b (zennit.rules.Epsilon)."""
    x, z = keep
    g = torch.div(held.pop(), stabilize_(z), out=z)
    return (g @ op.weight).mul_(x)


def _flat_linear(op: Op, shape: torch.Size, held: list[torch.Tensor]) -> torch.Tensor:
    """Flat on a Linear layer: z = K (inputs and weights ones, bias dropped); rel(a_k) = sum_j rel_j / stab(K)."""
    rel = held.pop()
    z = stabilize_(rel.new_tensor(float(shape[1])), nonnegative=True)
    return (rel / z).sum(1, keepdim=True).expand(shape).contiguous()


def _rule_flat(op: Op, keep, held: list[torch.Tensor]) -> torch.Tensor:
    return _flat_conv(op, keep, held) if op.kind == "conv" else _flat_linear(op, keep, held)


_RULES = {"zplus": _zplus, "zplus_signed": _zplus_signed, "epsilon": _epsilon, "flat": _rule_flat}


def _maxpool_backward(op: Op, keep, rel: torch.Tensor) -> torch.Tensor:
    """Gradient of max pooling: each output's relevance goes to its argmax (summed where windows overlap)."""
    indices, shape = keep
    n, c = shape[:2]
    out = rel.new_zeros(n, c, shape[2] * shape[3])
    return out.scatter_add_(2, indices.flatten(2), rel.flatten(2)).view(shape)


def _avgpool_backward(op: Op, x: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
    """zennit's Norm rule: x * pool^T(rel / stab(pool(x))), the transpose by autograd of the pooling."""
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        y = _pool(op, leaf)
        (grad,) = torch.autograd.grad(y, leaf, rel / stabilize_(y.detach().clone()))
    return grad.mul_(x)


def _route_backward(op: Op, keep, rel: torch.Tensor) -> list[torch.Tensor]:
    """Each element's relevance back to where it came from: the transpose of the route by autograd (a call
    that only moves or copies elements), one tensor per slot in ``op.inputs``, zeros where nothing came from."""
    metas, shapes = keep
    with torch.enable_grad():
        leaves = {s: rel.new_zeros(m.shape).requires_grad_(True) for s, m in shapes.items()}
        out = op.fn(lambda s: leaves[s] if s in leaves else metas[s])
        grads = torch.autograd.grad(out, list(leaves.values()), rel, allow_unused=True)
    return [torch.zeros_like(leaf) if g is None else g for leaf, g in zip(leaves.values(), grads, strict=True)]


_BACKWARD = {"maxpool": _maxpool_backward, "avgpool": _avgpool_backward}
