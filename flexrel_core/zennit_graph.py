"""zennit on a residual network: the model's traced graph, with zennit's ``Sum`` layer at every sum.

zennit's composites assign a rule per module, so a skip connection written ``out = out + identity`` is
invisible to them: its relevance would flow back as a gradient, not split among the operands. zennit's
``ResNetCanonizer`` fixes this for torchvision's ResNet blocks by rewriting their ``forward`` to stack
the two operands and add them with a ``zennit.layer.Sum`` module, which the composites give the ``Norm``
rule: ``rel(x_k) = x_k * rel(y) / stab(y)`` (Anders et al., "Software for Dataset-wide XAI", 2021). This
module does the same for any graph ``graph.graph_steps`` accepts (torchvision's blocks, hand-written
blocks, downsample branches): it rebuilds the torch.fx graph with every sum of two tensors replaced by
``Sum(stack([a, b], -1))``, around the model's own modules (shared, not copied), registered under flat
names in the order they run, so that the first-layer rule goes to the first layer that runs. BatchNorm is
merged by the graph (``graph.graph_merges``, zennit's ``NamedMergeBatchNorm``), not by registration order.
A function or method call with a module twin (``graph_ops.TWINS``: ``F.gelu``, ``F.adaptive_avg_pool2d``,
``x.mean([2, 3])``...) is replaced by that module, so the composite gives it the module's rule; calls that
only move elements (``cat``, ``view``, ``chunk``, slicing) stay as they are: their gradient is exact routing.
A squeeze-and-excitation gate ``x * g`` becomes ``graph_ops.gated``, whose backward hands all relevance
to ``x`` and none to ``g`` (the gate held constant, Arras et al. 2017).
"""

from __future__ import annotations

import torch
from torch import fx, nn
from zennit.canonizers import NamedMergeBatchNorm
from zennit.composites import COMPOSITES, Composite
from zennit.layer import Sum

from .graph import Step, graph_merges, shape_queries, sum_operands, trace
from .graph_ops import gate_operands, gated, twin_modules


def stack_operands(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``stack([a, b], -1)``, the input of zennit's ``Sum``; operands of different shapes are refused."""
    if a.shape != b.shape:
        raise ValueError(
            f"a sum adds tensors of shapes {tuple(a.shape)} and {tuple(b.shape)}: LRP splits a sum among "
            "operands of one shape; broadcasting one of them has no rule here"
        )
    return torch.stack([a, b], dim=-1)


def zennit_model(model: nn.Module, composite: str | Composite, steps: list[Step]) -> tuple[fx.GraphModule, Composite]:
    """The model as a ``GraphModule`` with one zennit ``Sum`` per sum of two tensors, and the composite to run
    on it: a named one with BatchNorm merged by the graph (``NamedMergeBatchNorm`` on the flat names), or
    the given ``Composite`` as it is (its canonizers then see the modules in the order they run). The
    modules are the model's own (same objects), so hooks and merged BatchNorm act on the model; the
    ``GraphModule`` computes what the model computes. ``steps``: ``graph.graph_steps(model)``."""
    if not isinstance(composite, Composite) and composite not in COMPOSITES:
        raise ValueError(f"unknown composite {composite!r}; expected one of zennit's {sorted(COMPOSITES)}")
    graph = trace(model)
    meta = shape_queries(graph)
    modules = dict(model.named_modules())
    root: dict[str, nn.Module] = {}
    flat: dict[str, str] = {}  # qualified name -> flat name
    sums = 0
    # each gate's signal operand, by position: the nodes themselves may be replaced (by twins) before it
    gates = {n: n.args.index(pair[0]) for n in graph.nodes if (pair := gate_operands(n, modules, meta)) is not None}
    for node in list(graph.nodes):
        if node.op == "call_module":
            name = flat.setdefault(node.target, f"m{len(flat)}_{node.target.replace('.', '_')}")
            root[name] = modules[node.target]
            node.target = name
        elif (operands := sum_operands(model, node, meta)) is not None:
            name, sums = f"sum{sums}", sums + 1
            root[name] = Sum()
            with graph.inserting_before(node):
                replacement = graph.call_module(name, (graph.call_function(stack_operands, operands),))
            node.replace_all_uses_with(replacement)
            graph.erase_node(node)
        elif node in gates:
            with graph.inserting_before(node):
                signal = gates[node]
                replacement = graph.call_function(gated, (node.args[signal], node.args[1 - signal]))
            node.replace_all_uses_with(replacement)
            graph.erase_node(node)
        elif node not in meta and isinstance(twins := twin_modules(node), list):
            replacement = node.args[0]
            with graph.inserting_before(node):
                for twin in twins:
                    name = f"f{len(root)}_{node.name}"
                    root[name] = twin
                    replacement = graph.call_module(name, (replacement,))
            node.replace_all_uses_with(replacement)
            graph.erase_node(node)
    module = fx.GraphModule(root, graph, class_name=type(model).__name__)
    if isinstance(composite, Composite):
        return module, composite
    pairs = [((flat[layer],), flat[bn]) for bn, layer in graph_merges(steps).items()]
    return module, COMPOSITES[composite](canonizers=[NamedMergeBatchNorm(pairs)])
