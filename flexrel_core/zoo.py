"""The torchvision zoo through FlexRel's relevance: every classification builder scored or refused by name.

Every builder's graph is read (``graph.graph_steps``) from its modules built on the meta device, without
memory, which also counts its parameters as built here (10 classes, no auxiliary classifiers); a builder
that cannot build there (RegNet computes its widths with tensors) is built for real when it has at most
``MAX_PARAMS`` parameters by the count torchvision publishes with its weights (``weights.meta["num_params"]``),
and is listed as *not built* otherwise. A builder is

- **refused** when its graph holds an operation FlexRel's relevance has no rule for: the row keeps the
  message, which names the operation and where it is;
- **not run** when its graph is accepted but it has more than ``MAX_PARAMS`` parameters (the cost the
  test suite can afford);
- **scored** otherwise: built with random weights (``weights=None``, torchvision's initialisation,
  ``num_classes=10``, BatchNorm calibrated and biases zeroed as ``build`` says), in eval mode and
  float32 (``DTYPE``), on ``BATCH`` random image of the smallest size it accepts (``weights.meta["min_size"]``, at
  least ``MIN_PIXELS``), with one LRP pass per engine that handles it. The row records the largest
  difference between the engines' rel(a) and rel(b) of every prunable layer (relative to the largest value
  of each) and the conservation ratio ``sum(rel(x)) / logit``, the logit of the pass's own forward
  (``fast_engine.plan_logits``: BatchNorm merged as zennit merges it) (LRP's rules conserve relevance up to their
  stabiliser when no bias absorbs a share: Bach et al. 2015; Montavon et al. 2019; the z+ rule loses the
  relevance of an output with no positive contribution, as in the depthwise convolutions of ShuffleNetV2,
  MobileNetV3 and EfficientNet on the small maps of 32 px inputs).

GoogLeNet and Inception v3 are built without their auxiliary classifiers (``aux_logits=False``), which run
only in training. ``python -m flexrel_core.zoo`` prints the table and writes the README's list of models.
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from .fast_engine import lrp_fast, plan_logits
from .graph import graph_steps
from .relevance import lrp_backward

MAX_PARAMS = 25_000_000  # models above this (as built here) have their graph read, not run
MIN_PIXELS = 32
BATCH = 1
DTYPE = torch.float32  # float64 convolutions have no fast CPU kernels; the engines agree in float64 in the unit tests
_NO_AUX = {"aux_logits": False, "init_weights": False}  # PyTorch's default initialisation, no warning
BUILD_OPTIONS = {"googlenet": _NO_AUX, "inception_v3": _NO_AUX}
BEGIN, END = "<!-- zoo:scored -->", "<!-- /zoo -->"


@dataclass(frozen=True)
class Row:
    name: str
    params: int  # as built here (10 classes, no auxiliary classifiers); torchvision's count if not built
    status: str  # "scored", "refused", "not run" (graph accepted, over MAX_PARAMS) or "not built"
    reason: str = ""  # the refusal, for refused models
    engine: str = ""  # what engine="auto" runs
    difference: float = math.nan  # largest |fast - zennit| / max |zennit| over the layers
    conservation: float = math.nan  # sum(rel(x)) / logit of the LRP pass


def builders() -> list[str]:
    return torchvision.models.list_models(module=torchvision.models)


def _meta(name: str) -> dict:
    return next(iter(torchvision.models.get_model_weights(name))).meta


def build(name: str) -> tuple[nn.Module, torch.Tensor]:
    """The model with random weights in ``DTYPE`` and eval mode, and its input (seeded).

    With random weights and BatchNorm's initial statistics (mean 0, variance 1) activations shrink or grow
    layer after layer, and the logits of a deep network can be so small that LRP's stabiliser (1e-6)
    absorbs their relevance. So BatchNorm is calibrated on random images (one pass in train mode) to divide
    by the root mean square of what it reads (variance plus squared mean) and subtract nothing, and every
    bias and BatchNorm shift is set to zero: activations keep their scale, and the rules conserve relevance
    up to their stabiliser, which makes conservation a check of how the graph is read."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=10, **BUILD_OPTIONS.get(name, {}))
    size = max(MIN_PIXELS, *_meta(name).get("min_size", (1, 1)))
    generator = torch.Generator().manual_seed(1)
    model = model.to(DTYPE)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.momentum = None  # a cumulative average: one pass sets the statistics of that pass
    with torch.no_grad():
        model.train()(torch.randn(4, 3, size, size, dtype=DTYPE, generator=generator))
        for m in model.modules():
            if isinstance(getattr(m, "bias", None), torch.Tensor):
                m.bias.zero_()
        for m in norms:  # divide by the root mean square, subtract nothing: scaled, no bias
            m.running_var.add_(m.running_mean**2)
            m.running_mean.zero_()
    x = torch.randn(BATCH, 3, size, size, dtype=DTYPE, generator=generator)
    return model.eval(), x


def skeleton(name: str) -> nn.Module | None:
    """The model's modules without memory (on the meta device), enough to read its graph; None for a
    builder that computes on tensors while it builds (RegNet) and cannot build there."""
    try:
        with torch.device("meta"):
            return torchvision.models.get_model(name, weights=None, num_classes=10, **BUILD_OPTIONS.get(name, {}))
    except (NotImplementedError, RuntimeError):
        return None


def score(name: str) -> Row:
    """One builder's row (see the module's docstring)."""
    model = skeleton(name)
    params = int(_meta(name)["num_params"]) if model is None else sum(p.numel() for p in model.parameters())
    if model is None and params > MAX_PARAMS:
        return Row(name, params, "not built")
    if model is not None:
        try:
            graph_steps(model)
        except ValueError as err:
            return Row(name, params, "refused", _reason(err))
    if params > MAX_PARAMS:
        return Row(name, params, "not run")
    model, x = build(name)
    passes, engine = [], "fast"
    for e in ("fast", "zennit"):
        try:
            passes.append(_layers(model, x, e))
        except ValueError as err:
            if e == "zennit" or "fast relevance engine" not in str(err):
                return Row(name, params, "refused", _reason(err))
            engine = "zennit"
    rel_x, logit, layers = passes[0]
    if not all(torch.isfinite(r).all() for pair in layers.values() for r in pair):
        return Row(name, params, "refused", "relevance is not finite")
    difference = 0.0
    for _, _, other in passes[1:]:
        for key, pair in layers.items():
            for value, second in zip(pair, other[key], strict=True):
                scale = float(value.abs().max()) or 1.0
                difference = max(difference, float((value - second).abs().max()) / scale)
    return Row(name, params, "scored", engine=engine, difference=difference, conservation=float(rel_x.sum()) / logit)


def _layers(model: nn.Module, x: torch.Tensor, engine: str):
    """One LRP pass: (rel(x), the logit it starts from, {layer: (rel(a), rel(b))})."""
    logit = float(plan_logits(model, x).max(1).values.sum())  # where LRP starts: BatchNorm merged
    layers: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    if engine == "fast":
        rel_x = lrp_fast(model, x, layer_hooks=lambda n, a, b: layers.__setitem__(n, (a, b)))
        return rel_x, logit, layers
    grads: dict[tuple[str, str], torch.Tensor] = {}

    def register(name, module, a, b):
        for tensor, side in ((a, "a"), (b, "b")):
            tensor.register_hook(lambda g, key=(name, side): grads.__setitem__(key, g.detach()))

    rel_x = lrp_backward(model, x, layer_hooks=register)
    return rel_x, logit, {name: (grads[(name, "a")], grads[(name, "b")]) for name, _ in grads}


def _reason(err: ValueError) -> str:
    """The refusal without the list of what is supported that follows it."""
    message = str(err).split("; supported are")[0].split("; the fast engine handles")[0]
    return message.split(": ", 1)[1] if message.startswith("FlexRel's relevance cannot explain") else message


def gallery(names: list[str] | None = None) -> list[Row]:
    return [score(name) for name in (builders() if names is None else names)]


def readme_block(rows: list[Row]) -> str:
    """The README's list of models, between ``BEGIN`` and ``END``."""
    scored = [r.name for r in rows if r.status == "scored"]
    refused = [r for r in rows if r.status == "refused"]
    big = [r.name for r in rows if r.status == "not run"]
    unread = [r.name for r in rows if r.status == "not built"]
    lines = [BEGIN, f"Scored ({len(scored)}): " + ", ".join(f"`{n}`" for n in scored) + ".", ""]
    lines.append(f"Refused ({len(refused)}), with the operation named and where it is:")
    lines += [f"- `{r.name}`: {_short(r.reason)}" for r in refused]
    limit = f"over {MAX_PARAMS // 1_000_000} M parameters"
    lines += ["", f"Graph accepted, not run ({limit}): " + ", ".join(f"`{n}`" for n in big) + "."]
    lines += ["", f"Not built ({limit}, no meta-device build): " + ", ".join(f"`{n}`" for n in unread) + "."]
    return "\n".join(lines + [END])


def _short(reason: str) -> str:
    """A refusal as the operation, its place and what it is."""
    combined = re.match(r"(\S+) combines the outputs of .*?: (.*?), which has no LRP rule here \((.*)\)$", reason)
    if combined:
        return f"{combined[1]} ({combined[3]}): {combined[2]}"
    return reason.split(" has no LRP rule")[0].split(" in FlexRel and is not known")[0]


def update_readme(readme: Path, rows: list[Row]) -> None:
    text = readme.read_text()
    start, stop = text.index(BEGIN), text.index(END) + len(END)
    readme.write_text(text[:start] + readme_block(rows) + text[stop:])


def format_table(rows: list[Row]) -> str:
    lines = [f"{'model':24} {'params':>8} {'status':10} {'engine':7} {'max diff':>9} {'conserv':>8}  reason"]
    for r in rows:
        diff = "" if math.isnan(r.difference) else f"{r.difference:.1e}"
        cons = "" if math.isnan(r.conservation) else f"{r.conservation:.3f}"
        line = f"{r.name:24} {r.params / 1e6:7.1f}M {r.status:10} {r.engine:7} {diff:>9} {cons:>8}  {r.reason}"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", type=Path, help="write the list of models into this README")
    parser.add_argument("names", nargs="*", help="builders (default: all)")
    args = parser.parse_args(argv)
    rows = gallery(args.names or None)
    print(format_table(rows))
    if args.readme:
        update_readme(args.readme, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
