"""The fast relevance engine's plan: a chain or residual model turned into the LRP rule each operation takes.

Mirrors zennit 0.5.1's composites ``EpsilonPlusFlat`` (the default) and ``EpsilonPlus``
(``zennit/composites.py``) for chains and residual networks of the layers below, and refuses anything
else with a message:

- ``Conv2d``: ``ZPlus`` (Bach et al. 2015; Montavon et al. 2017: alpha = 1, beta = 0, the bias'
  positive part in the denominator), ``Flat`` for the first layer of ``EpsilonPlusFlat``
  (Lapuschkin et al. 2019: weights and inputs replaced by ones, bias dropped).
- ``Linear``: ``Epsilon`` (Bach et al. 2015, epsilon = 1e-6, the bias in the denominator), ``Flat``
  when it is the first layer of ``EpsilonPlusFlat``.
- ``BatchNorm1d/2d`` registered right after a ``Conv2d``/``Linear``: merged into it as zennit's
  ``SequentialMergeBatchNorm`` does (``w * s``, ``(b - mean) * s + beta`` with ``s = gamma /
  sqrt(var + eps)``); the merged BatchNorm still divides by ``sqrt(1 + eps)`` in the forward and
  passes relevance unchanged (zennit's ``Pass``), and so does the plan.
- any other BatchNorm (reading an activation, a sum or a concatenation: DenseNet's pre-activation
  BatchNorm): relevance unchanged, which is what zennit 0.5.1's composites give it (measured in float64:
  ``tests/test_graph_ops.py``), its forward in eval mode.
- activation modules (``ReLU`` ...): ``Pass``. Function calls with a module twin (``F.relu``, ``F.gelu``,
  ``F.avg_pool2d``... ``graph_ops.TWINS``) are that module.
- ``AvgPool2d``/``AdaptiveAvgPool2d``: zennit's ``Norm`` rule; ``MaxPool2d``/``AdaptiveMaxPool2d``: the gradient.
- ``Flatten``, ``Dropout`` (eval), ``Identity``: unchanged relevance.
- routes (``view``, ``reshape``, ``transpose``, slicing, ``cat``, ``chunk``... ``graph_ops``; sizes may be
  read from any tensor, ``x.view(x.size(0), -1)``): relevance goes back with each element (the gradient).
- a sum of two tensors (skip connection): zennit's ``Sum`` layer with the ``Norm`` rule (what its
  ``ResNetCanonizer`` puts in torchvision's ResNet blocks), ``rel(x_k) = x_k * rel(y) / stab(y)``.
- a squeeze-and-excitation gate ``x * g`` (``graph_ops.gate_operands``): the gate held constant,
  ``rel(x) = rel(x * g)`` and no relevance to ``g`` (Arras et al. 2017, signal-take-all).

Each op reads the value slots ``inputs`` (slot 0: the model's input; slot ``k + 1``: the output of op
``k``); a merged BatchNorm's output is its layer's slot, and Dropout and Identity, which in eval return
the very tensor they read, are no op: a layer after them reads that tensor (and its relevance). The first
prunable layer to run takes the flat rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from zennit.types import Activation

from .graph import Step, graph_merges, graph_steps
from .layers import conv_padding

FAST_COMPOSITES = ("epsilon_plus_flat", "epsilon_plus")
EPSILON = 1e-6  # zennit 0.5.1: Epsilon(epsilon=1e-6) and every other rule's stabilizer=1e-6

HANDLED = (
    "the fast engine handles chains and residual networks (sums of two tensors) of Conv2d, Linear, BatchNorm "
    "right after them (any other BatchNorm passes its gradient), activations, max and average pooling, Flatten, "
    "Dropout, Identity, function calls with a module twin and calls that only move elements (view, cat, chunk, "
    "slicing), with composites "
    f"{', '.join(map(repr, FAST_COMPOSITES))}; use engine='zennit' for anything else"
)

_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


@dataclass
class Op:
    """One operation and its rule.

    ``kind``: ``"conv"``, ``"linear"`` (prunable; ``name`` is the weight's key ``"<module>.weight"``),
    ``"pass"`` (relevance unchanged; ``fn`` is the forward, None for the identity), ``"reshape"``
    (``fn`` the forward), ``"maxpool"``, ``"avgpool"``, ``"bn"`` (an unmerged BatchNorm: relevance unchanged),
    ``"sum"`` (of the two slots in ``inputs``), ``"route"`` (``fn`` the ``graph_ops.Call``, reading every
    slot in ``inputs``; every other kind reads one).
    ``rule`` of a prunable layer: ``"flat"``, ``"epsilon"``, ``"zplus"`` (inputs known to be >= 0)
    or ``"zplus_signed"``. ``weight``/``bias`` are the layer's (BatchNorm merged); ``scale`` the
    merged BatchNorm's 1 / sqrt(1 + eps), or None; ``positive`` (W+, b+) for the z+ rules.
    """

    kind: str
    name: str
    module: nn.Module | None = None
    fn: object = None
    rule: str = ""
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    scale: float | None = None
    positive: tuple[torch.Tensor, torch.Tensor | None] | None = None  # (W+, b+) for the z+ rules
    inputs: tuple[int, ...] = ()  # the value slots it reads


def refuse(model: nn.Module, why: str) -> ValueError:
    return ValueError(f"the fast relevance engine cannot handle {type(model).__name__}: {why}; {HANDLED}")


def make_plan(model: nn.Module, composite: object = "epsilon_plus_flat", steps: list[Step] | None = None) -> list[Op]:
    """The operations of ``model`` with their rules under ``composite``, or ``ValueError`` saying why not.

    Graphs FlexRel cannot explain are refused by ``graph.graph_steps`` first (message: what is supported);
    ``steps`` are its result when the caller has them already.
    """
    if not isinstance(composite, str) or composite not in FAST_COMPOSITES:
        raise refuse(model, f"composite {composite!r} is not one it implements")
    steps = graph_steps(model) if steps is None else steps
    merges = graph_merges(steps)
    ops: list[Op] = []
    slot_of = {0: 0}  # a step's output slot -> the plan's
    nonnegative = {0: False}  # per plan slot: known >= 0 (the model's inputs may be negative)
    first = True
    for i, step in enumerate(steps, 1):
        inputs = tuple(slot_of[s] for s in step.inputs)
        if isinstance(step.module, (nn.BatchNorm1d, nn.BatchNorm2d)) and step.name in merges:
            _merge(model, ops, step, merges, inputs[0])
            slot_of[i] = inputs[0]
            continue
        if isinstance(step.module, _DROPOUT + (nn.Identity,)):  # in eval they return the tensor they read
            slot_of[i] = inputs[0]
            continue
        if step.is_sum or step.gate:
            op = Op("gate" if step.gate else "sum", step.name)
        elif step.route:
            op = Op("route", step.name, fn=_on_plan_slots(step.function, slot_of))
        else:
            op = _op(model, step)
        op.inputs = inputs
        if op.kind in ("conv", "linear"):
            flat = first and composite == "epsilon_plus_flat"
            zplus = "zplus" if nonnegative[inputs[0]] else "zplus_signed"
            op.rule = "flat" if flat else (zplus if op.kind == "conv" else "epsilon")
            op.weight = op.module.weight.detach()
            op.bias = None if op.module.bias is None else op.module.bias.detach()
            first = False
        is_relu = isinstance(step.module, (nn.ReLU, nn.ReLU6))
        keeps_sign = op.kind in ("reshape", "maxpool", "avgpool", "sum", "route")
        keeps_sign = keeps_sign or (op.kind == "pass" and op.fn is None)
        ops.append(op)
        slot_of[i] = len(ops)
        nonnegative[len(ops)] = is_relu or (keeps_sign and all(nonnegative[s] for s in inputs))
        if op.kind == "gate":  # a sigmoid gate is >= 0: the product has the sign of the signal
            nonnegative[len(ops)] = nonnegative[inputs[0]]
    for op in ops:  # once BatchNorm is merged: the parts the z+ rule uses (zennit's ClampMod(min=0))
        if op.rule.startswith("zplus"):
            op.positive = (op.weight.clamp(min=0), None if op.bias is None else op.bias.clamp(min=0))
    return ops


def _op(model: nn.Module, step: Step) -> Op:
    m = step.module
    if isinstance(m, nn.Conv2d):
        if m.padding_mode != "zeros":
            raise refuse(model, f"{step.name} pads with {m.padding_mode!r}")
        return Op("conv", f"{step.name}.weight", m)
    if isinstance(m, nn.Linear):
        return Op("linear", f"{step.name}.weight", m)
    if isinstance(m, _DROPOUT) or isinstance(m, nn.Identity):
        return Op("pass", step.name, m)
    if isinstance(m, Activation) and not list(m.parameters()) and not isinstance(m, nn.MultiheadAttention):
        return Op("pass", step.name, m, fn=m.forward)  # forward, not __call__: the user's hooks stay silent
    if isinstance(m, nn.Flatten):
        return Op("reshape", step.name, m, fn=m.forward)
    if isinstance(m, (nn.MaxPool2d, nn.AdaptiveMaxPool2d)) and not m.return_indices:
        return Op("maxpool", step.name, m)
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return _unmerged(model, step)
    if isinstance(m, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
        return Op("avgpool", step.name, m)
    what = type(m).__name__ if m is not None else f"the call {step.name}"
    raise refuse(model, f"it has no rule for {what} ({step.name})")


def _on_plan_slots(call, slot_of: dict[int, int]):
    """A route's ``graph_ops.Call`` on the graph's slots, evaluated on the plan's (a merged BatchNorm,
    Dropout or Identity is no op in the plan, so its graph slot is the plan slot of what it reads)."""

    def run(value):
        return call(lambda slot: value(slot_of[slot]))

    return run


def _unmerged(model: nn.Module, step: Step) -> Op:
    """A BatchNorm merged into no layer: computed in eval mode, relevance passed on unchanged (as zennit's
    composites do)."""
    if step.module.running_mean is None:
        raise refuse(model, f"BatchNorm {step.name} has no running statistics")
    return Op("bn", step.name, step.module)


def _merge(model: nn.Module, ops: list[Op], step: Step, merges: dict[str, str], slot: int) -> None:
    """Merge BatchNorm ``step``, which reads plan slot ``slot``, into the layer that writes it (zennit
    ``MergeBatchNorm.merge_batch_norm``)."""
    bn = step.module
    layer = ops[slot - 1] if slot > 0 else None
    if (
        merges.get(step.name) is None
        or layer is None
        or layer.module is not dict(model.named_modules()).get(merges[step.name])
    ):
        raise refuse(model, f"BatchNorm {step.name} does not directly follow a Conv2d or Linear")
    if bn.running_mean is None or bn.weight is None:
        raise refuse(model, f"BatchNorm {step.name} has no running statistics or no affine parameters")
    scale = bn.weight.detach() / (bn.running_var + bn.eps) ** 0.5
    index = (slice(None),) + (None,) * (layer.weight.ndim - 1)
    bias = layer.bias if layer.bias is not None else torch.zeros(1, dtype=layer.weight.dtype, device=scale.device)
    layer.weight = layer.weight * scale[index]
    layer.bias = (bias - bn.running_mean) * scale + bn.bias.detach()
    layer.scale = 1.0 / math.sqrt(1.0 + bn.eps)


def conv_geometry(conv: nn.Conv2d) -> tuple[tuple[int, int], tuple[int, int, int, int] | None]:
    """(symmetric padding for ``F.conv2d``, extra ``F.pad`` for an asymmetric ``"same"`` or None)."""
    left, right, top, bottom = conv_padding(conv)
    if left == right and top == bottom:
        return (top, left), None
    return (0, 0), (left, right, top, bottom)
