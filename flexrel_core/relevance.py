"""Parameter relevance: FlexRel's one equation, on top of zennit's Layer-wise Relevance Propagation.

For a fully connected layer with input activations ``a`` (n x K) and outputs ``b`` (n x J),

    rel(w_kj) = sum_{i=1..n} [ rel(a_ik) + rel(b_ij) ]           (FlexRel, Sec. "Relevance")

and a Conv2d is treated as the FC layer of its unfolded (Toeplitz) form, where ``w[j,c,u,v]``
stands for one connection per output position p whose tap falls inside the input:

    rel(w[j,c,u,v]) = sum_i sum_p [ rel(a_i[c, p*s + (u,v)*d - pad]) + rel(b_i[j, p]) ].

LRP relevances can be negative; ``aggregate`` says how per-sample values are made non-negative
before the sum over samples (default ``"abs"``: sum of absolute values). Because the aggregation
is applied per activation, each layer only needs ``A = sum_i phi(rel(a_i))`` and
``B = sum_i phi(rel(b_i))``: we reduce over samples inside the backward pass (tensor hooks) and
unfold the reduced maps once, so the cost stays that of one LRP pass and memory does not grow
with batch x positions x patch (``docs/method.md``, "Convolutions as fully connected layers").

Chains of layers and residual networks are scored (``graph.graph_steps``); in a residual network each sum
of two tensors splits its relevance among its operands (zennit's ``Sum`` layer, ``Norm`` rule), and the
``rel(a)`` of a layer whose input also feeds a skip connection is that activation's whole relevance, from
every operation reading it (``docs/method.md``, "Skip connections").
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import COMPOSITES, Composite
from zennit.core import Hook

from .fast_engine import walk
from .fast_plan import make_plan
from .graph import is_chain_steps, model_steps, reused_modules
from .layers import conv_padding, prunable_layers
from .lrp_inputs import check_inputs, is_out_of_memory, memory_error, start_relevance
from .zennit_graph import zennit_model

AGGREGATES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "abs": torch.abs,  # sum_i |rel|: magnitude of relevance, sign-agnostic (default)
    "positive": lambda t: t.clamp(min=0),  # sum_i max(rel, 0): only evidence *for* the class
    "signed": lambda t: t,  # sum_i rel: raw LRP values, may cancel and go negative
}


def make_composite(composite: str | Composite) -> Composite:
    """A zennit composite from its registered name (e.g. ``"epsilon_plus_flat"``) or as given.

    Named composites get zennit's ``SequentialMergeBatchNorm`` canonizer, so BatchNorm that
    follows a Linear/Conv2d is merged into it for the duration of the LRP pass.
    """
    if isinstance(composite, Composite):
        return composite
    if composite not in COMPOSITES:
        raise ValueError(f"unknown composite {composite!r}; expected one of zennit's {sorted(COMPOSITES)}")
    return COMPOSITES[composite](canonizers=[SequentialMergeBatchNorm()])


def lrp_backward(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor | None = None,
    *,
    composite: str | Composite = "epsilon_plus_flat",
    layer_hooks: Callable[[str, nn.Module, torch.Tensor, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """One LRP pass with zennit; returns the relevance of ``inputs``.

    LRP starts from the logit of the target class (default: the predicted class, since inference
    data comes without labels): the initial relevance is ``one_hot(target) * logits``.
    ``layer_hooks(name, module, a, b)`` is called during the forward for every prunable layer with
    its *original* input ``a`` (captured by a pre-hook that runs before zennit wraps it) and its
    output ``b``; tensor hooks registered on them then receive rel(a) and rel(b) in the backward.
    A residual network runs as its traced graph with zennit's ``Sum`` layer at every sum of two tensors
    and each functional call's module twin (``zennit_graph.zennit_model``); graphs with other ways of
    combining tensors (attention, differences) or calls outside ``graph_ops``' allow-list are refused
    (``graph.graph_steps``), and so are models that call one module at
    several places where its rule needs its stored input (``zennit_reuse_problem``). Works inside
    ``torch.no_grad()``.
    The model comes back as it came: same parameters, mode, ``.grad`` and no hooks left.
    """
    inputs = check_inputs(model, inputs)
    steps = model_steps(model)
    _check_zennit(model, composite, steps)
    return _zennit_pass(model, inputs, targets, _zennit_runner(model, composite, steps), layer_hooks)


def _zennit_runner(model: nn.Module, composite: str | Composite, steps) -> tuple[nn.Module, Composite]:
    """What zennit runs and with which composite: a chain of modules as it is; any other graph (sums,
    concatenations, function calls with module twins) as its traced graph with zennit's ``Sum`` layers and
    the twins (``zennit_graph.zennit_model``)."""
    if is_chain_steps(steps) and not any(s.twin for s in steps):
        return model, make_composite(composite)
    return zennit_model(model, composite, steps)


def _zennit_pass(model, inputs, targets, runner, layer_hooks) -> torch.Tensor:
    runs, composite = runner
    layers = prunable_layers(model)
    was_training = model.training
    handles = []
    if layer_hooks is not None:
        captured: dict[str, torch.Tensor] = {}
        for name, module in layers.items():

            def pre(mod, args, name=name):
                captured[name] = args[0]

            def post(mod, args, out, name=name):
                layer_hooks(name, mod, captured.pop(name), out)

            handles.append(module.register_forward_pre_hook(pre, prepend=True))
            handles.append(module.register_forward_hook(post))
    x = inputs.detach().clone().requires_grad_(True)
    try:
        model.eval()
        with torch.enable_grad(), composite.context(runs) as modified:
            try:
                logits = modified(x)
            except RuntimeError as err:
                if is_out_of_memory(err):
                    raise
                raise ValueError(f"inputs of shape {tuple(inputs.shape)} do not fit the model: {err}") from err
            start = start_relevance(logits, targets)
            (rel_x,) = torch.autograd.grad(logits, x, grad_outputs=start)
    except RuntimeError as err:
        if is_out_of_memory(err):
            raise memory_error(err, inputs) from err
        raise
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return rel_x


def conv_weight_relevance(conv: nn.Conv2d, a_sum: torch.Tensor, b_sum: torch.Tensor) -> torch.Tensor:
    """Parameter relevance of a Conv2d from sample-summed relevance maps (conv-as-FC).

    ``a_sum`` (C, H, W) and ``b_sum`` (J, H', W') are sum_i phi(rel(a_i)) and sum_i phi(rel(b_i)).
    Input term: for each tap, the unfolded input relevance summed over output positions (taps in
    the padding reach no input and add nothing). Output term: for each tap (u, v), b_sum summed over
    the output positions where that tap reaches a real input. Honours stride, padding, dilation, groups.
    """
    kh, kw = conv.kernel_size
    c, j, g = conv.in_channels, conv.out_channels, conv.groups
    left, right, top, bottom = conv_padding(conv)
    geometry = dict(kernel_size=(kh, kw), dilation=conv.dilation, stride=conv.stride)
    a_pad = F.pad(a_sum[None], (left, right, top, bottom))
    a_term = F.unfold(a_pad, **geometry)[0].sum(-1).view(g, 1, c // g, kh, kw)
    a_term = a_term.expand(g, j // g, c // g, kh, kw).reshape(j, c // g, kh, kw)
    ones = F.pad(
        torch.ones((1, 1) + tuple(a_sum.shape[1:]), dtype=a_sum.dtype, device=a_sum.device), (left, right, top, bottom)
    )
    valid = F.unfold(ones, **geometry)[0]  # (kh*kw, P): 1 where tap (u, v) at position p reaches an input
    if valid.shape[1] != b_sum[0].numel():
        raise RuntimeError(
            f"output map {tuple(b_sum.shape)} does not match the conv geometry ({valid.shape[1]} positions)"
        )
    b_term = b_sum.reshape(j, -1) @ valid.T  # (J, kh*kw)
    return a_term + b_term.view(j, 1, kh, kw)


def linear_weight_relevance(a_sum: torch.Tensor, b_sum: torch.Tensor) -> torch.Tensor:
    """rel(w_jk) = A_k + B_j for a Linear weight of shape (J, K) (the paper's equation, summed over samples)."""
    return b_sum[:, None] + a_sum[None, :]


ENGINES = ("auto", "fast", "zennit")


def parameter_relevance(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor | None = None,
    *,
    composite: str | Composite = "epsilon_plus_flat",
    aggregate: str = "abs",
    batch_size: int | None = None,
    engine: str = "auto",
) -> dict[str, torch.Tensor]:
    """rel(w) for every prunable weight: ``{"<module>.weight": tensor shaped like the weight}``.

    Implements rel(w_kj) = sum_i [rel(a_ik) + rel(b_ij)] (FlexRel's equation) for Linear weights
    and its unfolded conv-as-FC form for Conv2d weights, with activation relevances from one LRP
    pass per batch (``composite``, default ``EpsilonPlusFlat``) started from the predicted
    class's logit (or ``targets``). ``aggregate`` (``"abs"``, ``"positive"`` or ``"signed"``)
    is applied to each per-sample relevance before summing over samples. ``batch_size`` splits the
    inputs to bound memory; the result is the same sum. Sums accumulate in float64; values come in the
    weight's dtype.

    ``engine``: ``"zennit"`` runs zennit's rule hooks (any composite); ``"fast"`` computes the same
    rules directly (``fast_engine.lrp_fast``: zennit's values to rounding, at about 1.5x the cost of a
    plain backward pass) and refuses models or composites it does not handle; ``"auto"`` (default)
    takes the fast engine where it applies and zennit otherwise (``engine_for`` says which). Both take
    chains of layers and residual networks, whose sums of two tensors split their relevance among the
    operands (zennit's ``Sum`` layer and ``Norm`` rule); an activation read by several operations (a layer
    and a skip connection) has the relevance they all send back, and that is its rel(a) in the equation.
    Concatenations, slices and channel shuffles route each element's relevance back; function calls take
    their module twin's rule (``graph_ops``). Other graphs (attention, products, calls off the allow-list)
    are refused saying what was found and where. A module
    without weights called at several places (one ``self.relu`` after every layer) is one layer per
    call; zennit cannot run such a model when the module's rule needs its input (average pooling,
    ``zennit_reuse_problem``), so ``"auto"`` takes the fast engine there and ``"zennit"`` refuses it.
    Works inside ``torch.no_grad()``.
    """
    if aggregate not in AGGREGATES:
        raise ValueError(f"unknown aggregate {aggregate!r}; expected one of {sorted(AGGREGATES)}")
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; expected one of {ENGINES}")
    inputs = check_inputs(model, inputs)
    steps = model_steps(model)
    _check_all_run(model, steps)
    plan = _fast_plan(model, composite, engine, steps)
    runner = _zennit_runner(model, composite, steps) if plan is None else None
    phi = AGGREGATES[aggregate]
    layers = prunable_layers(model)
    sums: dict[tuple[str, str], torch.Tensor] = {}
    for chunk, target in _batches(inputs, targets, batch_size):
        if plan is None:
            _zennit_sums(model, chunk, target, runner, phi, layers, sums)
        else:
            _fast_sums(plan, model, chunk, target, phi, sums)
    relevance = {}
    for name, module in layers.items():
        a_sum, b_sum = sums[(name, "a")], sums[(name, "b")]
        a_sum, b_sum = a_sum.to(module.weight.dtype), b_sum.to(module.weight.dtype)
        if isinstance(module, nn.Conv2d):
            relevance[name] = conv_weight_relevance(module, a_sum, b_sum)
        else:
            relevance[name] = linear_weight_relevance(a_sum, b_sum)
    return relevance


def _check_all_run(model: nn.Module, steps) -> None:
    """Every prunable layer runs in the traced (eval-mode) forward; one that never runs has no relevance."""
    ran = {f"{s.name}.weight" for s in steps if s.module is not None}
    idle = [name for name in prunable_layers(model) if name not in ran]
    if idle:
        raise ValueError(
            f"the prunable layers {idle[:3]}{' ...' if len(idle) > 3 else ''} of {type(model).__name__} never run in "
            "eval mode (an auxiliary classifier?), so LRP gives them no relevance; build the model without "
            "them (torchvision: aux_logits=False)"
        )


def engine_for(model: nn.Module, composite: str | Composite = "epsilon_plus_flat") -> str:
    """The engine ``engine="auto"`` runs for ``model`` and ``composite``: ``"fast"`` or ``"zennit"``."""
    return "zennit" if _fast_plan(model, composite, "auto", model_steps(model)) is None else "fast"


def _fast_plan(model: nn.Module, composite: str | Composite, engine: str, steps) -> list | None:
    """The fast engine's plan, or None for zennit; a graph neither explains is refused by both, and a
    model whose reused modules zennit would misread runs on the fast engine or is refused saying why."""
    if engine == "zennit":
        _check_zennit(model, composite, steps)
        return None
    try:
        return make_plan(model, composite, steps)
    except ValueError as err:
        if engine == "fast":
            raise
        problem = zennit_reuse_problem(model, composite, steps)
        if problem:
            raise ValueError(
                f"neither relevance engine handles {type(model).__name__}: zennit because {problem}; and {err}"
            ) from err
        return None


def zennit_reuse_problem(model: nn.Module, composite: str | Composite, steps) -> str | None:
    """Why zennit would give wrong relevance for a chain that calls a module at several places, or None.

    zennit keeps one hook per module, and a rule that needs the layer's input (every ``BasicHook``:
    ``Norm`` on average pooling, the rules of Conv2d/Linear) stores it in that one hook at each call,
    so all but the last call would use the last call's input. Rules that store nothing (``Pass`` on
    activations) and modules without a rule (max pooling, Flatten, Dropout: their gradient) are fine.
    The hooks are those ``composite`` assigns, module by module (its canonizers are not applied).
    """
    reused = reused_modules(steps)
    if not reused:
        return None
    mapping, ctx = make_composite(composite).module_map, {}
    storing = []
    for name, module in model.named_modules():
        hook = mapping(ctx, name, module)
        if name in reused and hook is not None and type(hook).forward is not Hook.forward:
            storing.append(f"{name} ({type(module).__name__}, rule {type(hook).__name__})")
    if not storing:
        return None
    return (
        f"{', '.join(storing)} {'is' if len(storing) == 1 else 'are'} called at several places and zennit keeps "
        "one stored input per module, which its rule needs for every call (each call but the last would get "
        "the relevance of the wrong input)"
    )


def _check_zennit(model: nn.Module, composite: str | Composite, steps) -> None:
    problem = zennit_reuse_problem(model, composite, steps)
    if problem is None:
        return
    try:
        make_plan(model, composite, steps)
        fix = "use engine='fast' (or 'auto'), which computes it correctly, or give each call its own module"
    except ValueError:
        fix = "give each call its own module"
    raise ValueError(f"engine='zennit' cannot handle {type(model).__name__}: {problem}; {fix}")


def _add(sums: dict, key: tuple[str, str], reduced: torch.Tensor) -> None:
    sums[key] = sums[key] + reduced if key in sums else reduced


def _zennit_sums(model, inputs, targets, runner, phi, layers, sums) -> None:
    """Add sum_i phi(rel(a_i)) and sum_i phi(rel(b_i)) of one zennit pass, reduced in tensor hooks."""

    def accumulate(key: tuple[str, str]) -> Callable[[torch.Tensor], None]:
        linear = isinstance(layers[key[0]], nn.Linear)

        def hook(grad: torch.Tensor) -> None:
            per_sample = phi(grad.detach())
            # Linear: sum over every leading dim (samples, tokens); Conv2d: over samples only.
            _add(sums, key, (per_sample.reshape(-1, grad.shape[-1]) if linear else per_sample).sum(0).double())

        return hook

    def register(name: str, module: nn.Module, a: torch.Tensor, b: torch.Tensor) -> None:
        for tensor, side in ((a, "a"), (b, "b")):
            if tensor.requires_grad:
                tensor.register_hook(accumulate((name, side)))

    _zennit_pass(model, inputs, targets, runner, register)


def _fast_sums(plan, model, inputs, targets, phi, sums) -> None:
    """The same sums from one fast-engine walk; a relevance equal to the last rel(a) reduced (the next
    layer's, through Pass, Flatten, Dropout; or another layer's reading the same input) reuses that
    reduction instead of reducing it again."""
    previous: dict[int, torch.Tensor] = {}

    def visit(name: str, side: str, rel: torch.Tensor, key: int | None) -> None:
        reduced = previous[key].view(rel.shape[1:]) if key in previous else phi(rel).sum(0).double()
        if side == "a" and key not in previous:
            previous.clear()
            previous[key] = reduced
        _add(sums, (name, side), reduced)

    walk(plan, model, inputs, targets, visit)


def _batches(inputs: torch.Tensor, targets: torch.Tensor | None, batch_size: int | None):
    if batch_size is None:
        yield inputs, targets
        return
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    for start in range(0, inputs.shape[0], batch_size):
        stop = start + batch_size
        yield inputs[start:stop], None if targets is None else torch.as_tensor(targets)[start:stop]
