"""The method taught on numbers a student can check by hand (``notebooks/method.ipynb``).

A tiny network (3 inputs, 2 hidden ReLU units, 2 outputs, one input vector) whose forward pass,
LRP backward pass (the ε rule on the first layer, z⁺ on the layer after the ReLU) and parameter
relevance rel(w_kj) = |rel(a_k)| + |rel(b_j)| are computed here step by step in float64 with
numpy, independently of zennit, beside what ``flexrel_core.parameter_relevance`` returns for the
same network and rules; and a 1-channel 4×4 convolution written as its unfolded fully connected
matrix, where the relevance of one shared kernel weight is the sum over the connections it stands
for (Bach et al. 2015 for the rules; FlexRel's equation for the parameter relevance). The pieces
that need the trained model (masks, heatmaps, inference data, the composite's rules) are in
``method_views``.

The notebook writes the tiny network's LRP out itself, in a few lines a student can change;
``hand_lrp`` is the same computation kept here as the tests' independent reference, and
``tiny_network(W1, b1, W2, b2)`` builds the library's check from whatever numbers the student wrote.
``model_settings`` reads the trained model's settings from the profile, so that the notebook's
parameters cell holds only what the lesson varies.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import torch
from torch import nn
from zennit.composites import NameMapComposite
from zennit.rules import Epsilon, Pass, ZPlus

from ..layers import prunable_layers
from ..masks import prune
from ..relevance import parameter_relevance
from ..scores import METHODS, magnitude, method_delta, normalize_scores, pruning_scores
from ..workbook.report import markdown_table

EPSILON = 1e-6  # zennit's default stabiliser: z + ε·sign(z), sign(0) = +1
# The tiny network: every weight has a distinct magnitude, so no ranking below has ties.
TINY_W1 = [[1.0, 0.5, -1.5], [0.125, 0.75, -0.25]]  # hidden unit j (rows) x input k (columns)
TINY_B1 = [0.0, 0.0]
TINY_W2 = [[2.0, -1.25], [0.2, 1.6]]  # output j x hidden unit k
TINY_B2 = [0.0, 0.1]
TINY_X = [2.0, 1.0, 1.0]
# The convolution example: a 4×4 single-channel image, one 2×2 kernel (no padding, stride 1), and
# a linear read-out of its 3×3 ReLU map into 2 classes.
CONV_X = [[1.0, 2.0, 0.0, 1.0], [0.0, 1.0, 3.0, 1.0], [2.0, 0.0, 1.0, 0.0], [1.0, 1.0, 0.0, 2.0]]
CONV_KERNEL = [[1.0, -0.5], [0.5, 1.0]]
CONV_READOUT = [[0.5, -0.25, 1.0, 0.25, 0.5, -0.5, 1.0, 0.0, 0.25], [-0.5, 0.5, 0.25, 1.0, -0.25, 0.5, 0.0, 1.0, 0.5]]


def _t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def tiny_network(w1=TINY_W1, b1=TINY_B1, w2=TINY_W2, b2=TINY_B2) -> nn.Sequential:
    """Linear(K, J) → ReLU → Linear(J, C) in float64 with weights ``w1`` (J × K), ``w2`` (C × J) and
    biases ``b1``, ``b2`` (default: the tiny network above; any numbers a student writes instead)."""
    w1, b1, w2, b2 = (_t(np.asarray(v, dtype=np.float64)) for v in (w1, b1, w2, b2))
    model = nn.Sequential(nn.Linear(w1.shape[1], w1.shape[0]), nn.ReLU(), nn.Linear(w2.shape[1], w2.shape[0]))
    model = model.double()
    with torch.no_grad():
        for layer, w, b in ((model[0], w1, b1), (model[2], w2, b2)):
            layer.weight.copy_(w)
            layer.bias.copy_(b)
    return model.eval()


# The settings of the trained model and of its relevance, read from the profile's common.yaml, so
# that the method notebook explains the same model the figures prune (its parameters cell holds only
# what the lesson itself varies).
MODEL_SETTINGS = (
    "dataset", "data_root", "limit", "image_size", "model", "batch_norm", "pretrained", "epochs", "lr",
    "batch_size", "seed", "inference_samples", "lrp_batch_size", "composite", "aggregate", "normalize", "scope",
)  # fmt: skip


def model_settings(profile: str, **given) -> dict:
    """``MODEL_SETTINGS`` from ``profiles/<profile>/common.yaml``, with ``given`` (the notebook's own
    parameters: cache folder, device, δ, ...) on top: a mapping for ``TrainConfig``/``PruneConfig.from_mapping``."""
    from ..workbook.profiles import read_profile

    common = read_profile(profile).get("common") or {}
    missing = [k for k in MODEL_SETTINGS if k not in common]
    if missing:
        raise ValueError(f"profiles/{profile}/common.yaml does not set {missing}, which the method notebook reads")
    return {**{k: common[k] for k in MODEL_SETTINGS}, **given}


def tiny_input(x=TINY_X) -> torch.Tensor:
    """One input vector of the tiny network as a batch of one, shape (1, K) (default: the one above)."""
    return _t(np.asarray(x, dtype=np.float64)[None])


def tiny_composite() -> NameMapComposite:
    """The rules the tiny network is explained with: ε on the first layer (its inputs may be
    negative), z⁺ on the layer after the ReLU (its inputs are ≥ 0), relevance passed through the ReLU."""
    return NameMapComposite([(("0",), Epsilon(EPSILON)), (("1",), Pass()), (("2",), ZPlus(EPSILON))])


def stabilize(z: np.ndarray, eps: float = EPSILON) -> np.ndarray:
    """z + ε·sign(z) with sign(0) = +1 (zennit's stabiliser)."""
    return z + eps * np.where(z >= 0, 1.0, -1.0)


def _terms(weights, inputs) -> str:
    return " + ".join(f"({w:g})·({a:g})" for w, a in zip(weights, inputs, strict=True))


def hand_lrp(model: nn.Sequential | None = None, x: torch.Tensor | None = None) -> dict:
    """The tiny network's forward pass, LRP backward pass and parameter relevance, by hand (numpy).

    Returns ``{"forward", "backward": tables (step, unit, formula, value) a student can redo;
    "rel": {"0.weight": (2, 3), "2.weight": (2, 2)} arrays of rel(w_jk) = |R(a_k)| + |R(b_j)|;
    "input_relevance", "hidden_relevance", "output_relevance": the relevance vectors}``.
    Rules: z⁺ on layer 2, R(a_k) = Σ_j a_k w⁺_jk / (Σ_k' a_k' w⁺_jk' + b⁺_j) · R(b_j); ε on layer 0,
    R(x_k) = Σ_j x_k w_jk / (z_j + ε·sign z_j) · R(z_j); the ReLU passes relevance unchanged.
    """
    model = model if model is not None else tiny_network()
    x = (x if x is not None else tiny_input())[0].detach().numpy().astype(np.float64)
    w1, b1 = (t.detach().numpy().astype(np.float64) for t in (model[0].weight, model[0].bias))
    w2, b2 = (t.detach().numpy().astype(np.float64) for t in (model[2].weight, model[2].bias))
    z1 = w1 @ x + b1
    a1 = np.maximum(z1, 0.0)
    logits = w2 @ a1 + b2
    c = int(np.argmax(logits))
    r_out = np.zeros_like(logits)
    r_out[c] = logits[c]  # LRP starts from the predicted class's logit
    w2p, b2p = np.clip(w2, 0, None), np.clip(b2, 0, None)
    zp = w2p @ a1 + b2p
    r_hidden = a1 * (w2p.T @ (r_out / stabilize(zp)))
    r_x = x * (w1.T @ (r_hidden / stabilize(z1)))
    forward = [("input x", f"x{k}", "given", x[k]) for k in range(3)]
    forward += [("hidden z = W1 x + b1", f"z{j}", f"{_terms(w1[j], x)} + ({b1[j]:g})", z1[j]) for j in range(2)]
    forward += [("hidden a = max(z, 0)", f"a{j}", f"max({z1[j]:g}, 0)", a1[j]) for j in range(2)]
    forward += [("logit o = W2 a + b2", f"o{j}", f"{_terms(w2[j], a1)} + ({b2[j]:g})", logits[j]) for j in range(2)]
    backward = [
        ("start: R(o) = logit of the predicted class", f"o{j}", f"{'o' if j == c else '0 (not predicted)'}", r_out[j])
        for j in range(2)
    ]
    zplus = "z⁺ of layer 2: Σ_k a_k w⁺_jk + b⁺_j"
    backward += [(zplus, f"o{j}", f"{_terms(w2p[j], a1)} + ({b2p[j]:g})", zp[j]) for j in range(2)]
    backward += [
        ("R(a_k) = Σ_j a_k w⁺_jk R(o_j) / z⁺_j", f"a{k}", _share(a1[k], w2p[:, k], r_out, zp), r_hidden[k])
        for k in range(2)
    ]
    backward += [
        ("R(x_k) = Σ_j x_k w_jk R(a_j) / (z_j + ε)", f"x{k}", _share(x[k], w1[:, k], r_hidden, z1), r_x[k])
        for k in range(3)
    ]
    rel = {
        "0.weight": np.abs(r_hidden)[:, None] + np.abs(r_x)[None, :],
        "2.weight": np.abs(r_out)[:, None] + np.abs(r_hidden)[None, :],
    }
    columns = ["step", "unit", "formula", "value"]
    return {
        "forward": pd.DataFrame(forward, columns=columns),
        "backward": pd.DataFrame(backward, columns=columns),
        "rel": rel,
        "input_relevance": r_x,
        "hidden_relevance": r_hidden,
        "output_relevance": r_out,
    }


def _share(a: float, w: np.ndarray, r: np.ndarray, z: np.ndarray) -> str:
    """The formula of one input's share of the relevance of each output it feeds."""
    return " + ".join(f"({a:g})·({wj:g})·({rj:.3g})/({zj:.3g})" for wj, rj, zj in zip(w, r, z, strict=True))


def library_relevance(model: nn.Module, x: torch.Tensor, composite=None) -> dict[str, torch.Tensor]:
    """``flexrel_core.parameter_relevance`` of ``model`` on ``x`` (zennit's pass, sum of |rel|)."""
    return parameter_relevance(model, x, composite=composite or tiny_composite(), aggregate="abs", engine="zennit")


def relevance_table(hand: dict[str, np.ndarray], library: dict[str, torch.Tensor]) -> pd.DataFrame:
    """One row per weight: rel(w) by hand, from the library, and their difference."""
    rows = []
    for name, values in hand.items():
        lib = library[name].detach().double().reshape(values.shape[0], -1).numpy()
        for (j, k), v in np.ndenumerate(values.reshape(values.shape[0], -1)):
            rows.append({"layer": name, "out j": j, "in k": k, "by hand": v, "library": lib[j, k]})
    table = pd.DataFrame(rows)
    table["difference"] = table["library"] - table["by hand"]
    return table


def additivity_gap(rel: np.ndarray | torch.Tensor) -> float:
    """max |R_jk − R_j0 − R_0k + R_00| over a linear layer's relevance matrix: 0 exactly when
    R_jk = B_j + A_k, an output term plus an input term (the equation's structure)."""
    r = torch.as_tensor(rel, dtype=torch.float64).reshape(rel.shape[0], -1)
    return float((r - r[:, :1] - r[:1, :] + r[0, 0]).abs().max())


def additivity_gaps(relevance: dict[str, torch.Tensor]) -> pd.Series:
    """``additivity_gap`` of each layer of ``relevance`` (linear layers: 0 up to rounding)."""
    gaps = {name: additivity_gap(values) for name, values in relevance.items()}
    return pd.Series(gaps, name="largest |R_jk − R_j0 − R_0k + R_00|")


def delta_sweep(
    model: nn.Module, relevance: dict[str, torch.Tensor], deltas: list[float], p: float, normalize: str = "global"
) -> pd.DataFrame:
    """Every weight of ``model`` with |w|, M_norm, R_norm and, for each δ, its score
    s = (1 − δ)·M_norm + δ·R_norm and whether it survives pruning to factor ``p``."""
    m_norm = normalize_scores(magnitude(model), normalize)
    r_norm = normalize_scores(relevance, normalize)
    table = _flat_frame(model, {"|w|": magnitude(model), "M_norm": m_norm, "R_norm": r_norm})
    for delta in deltas:
        copy_ = copy.deepcopy(model)
        scores = pruning_scores(copy_, delta=delta, normalize=normalize, relevance=relevance)
        masks = prune(copy_, scores, p)
        table = table.join(_flat_frame(model, {f"s(δ={delta:g})": scores, f"kept(δ={delta:g})": masks}).iloc[:, 3:])
    return table


def three_decisions(
    model: nn.Module, relevance: dict[str, torch.Tensor], p: float, delta: float, normalize: str = "global"
) -> pd.DataFrame:
    """Figure 1's three decisions (magnitude, relevance only, FlexRel at ``delta``) on every weight
    of ``model`` at pruning factor ``p``: which weights each keeps."""
    kept = {}
    for method in METHODS:
        copy_ = copy.deepcopy(model)
        scores = pruning_scores(copy_, method=method, delta=delta, normalize=normalize, relevance=relevance)
        kept[f"{method} (δ={method_delta(method, delta):g})"] = prune(copy_, scores, p)
    return _flat_frame(model, kept)


def _flat_frame(model: nn.Module, values: dict[str, dict[str, torch.Tensor]]) -> pd.DataFrame:
    rows = []
    for name, layer in prunable_layers(model).items():
        shape = layer.weight.reshape(layer.weight.shape[0], -1).shape
        for j, k in np.ndindex(shape):
            row = {"layer": name, "out j": j, "in k": k}
            row.update({col: _scalar(v[name].reshape(shape)[j, k]) for col, v in values.items()})
            rows.append(row)
    return pd.DataFrame(rows)


def _scalar(t: torch.Tensor):
    return bool(t) if t.dtype == torch.bool else round(float(t), 6)


def conv_network() -> nn.Sequential:
    """Conv2d(1, 1, 2×2, no bias) → ReLU → Flatten → Linear(9, 2), float64, with the weights above."""
    model = nn.Sequential(nn.Conv2d(1, 1, 2, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(9, 2, bias=False))
    model = model.double()
    with torch.no_grad():
        model[0].weight.copy_(_t(CONV_KERNEL)[None, None])
        model[3].weight.copy_(_t(CONV_READOUT))
    return model.eval()


def conv_input() -> torch.Tensor:
    """The 4×4 image of the convolution example, shape (1, 1, 4, 4)."""
    return _t(CONV_X)[None, None]


def conv_composite() -> NameMapComposite:
    """The ε rule on the convolution and on the read-out; the ReLU passes relevance unchanged."""
    return NameMapComposite([(("0",), Epsilon(EPSILON)), (("1",), Pass()), (("3",), Epsilon(EPSILON))])


def unfold_matrix(kernel: np.ndarray, height: int, width: int, padding: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A single-channel stride-1 convolution as its fully connected matrix T (P × H·W), with
    T @ x.ravel() = conv(x).ravel(), and for each entry the kernel position (u·kw + v) it stands
    for (−1 where no connection). Taps that fall in the zero padding connect to no input."""
    kh, kw = kernel.shape
    oh, ow = height + 2 * padding - kh + 1, width + 2 * padding - kw + 1
    t = np.zeros((oh * ow, height * width))
    index = np.full(t.shape, -1)
    for y, x, u, v in np.ndindex(oh, ow, kh, kw):
        h, w = y + u - padding, x + v - padding
        if 0 <= h < height and 0 <= w < width:
            t[y * ow + x, h * width + w] = kernel[u, v]
            index[y * ow + x, h * width + w] = u * kw + v
    return t, index


def hand_conv_relevance(model: nn.Sequential | None = None, x: torch.Tensor | None = None) -> dict:
    """The convolution example by hand, through its unfolded matrix T (numpy, float64).

    The ε rule on the read-out gives R(b) at the conv output (the ReLU passes it); the ε rule on T,
    R(x_q) = Σ_p x_q T_pq R(b_p) / (z_p + ε), gives the input relevance; a kernel weight w[u, v]
    stands for every connection (p, q) of T with index u·kw + v, and its relevance is the sum of
    |R(x_q)| + |R(b_p)| over them. Returns ``{"T", "index", "input_relevance" (4×4),
    "output_relevance" (3×3), "kernel": table per kernel weight}``."""
    model = model if model is not None else conv_network()
    image = (x if x is not None else conv_input())[0, 0].detach().numpy().astype(np.float64)
    kernel = model[0].weight[0, 0].detach().numpy().astype(np.float64)
    readout = model[3].weight.detach().numpy().astype(np.float64)
    t, index = unfold_matrix(kernel, *image.shape)
    xs = image.ravel()
    z = t @ xs
    a = np.maximum(z, 0.0)
    logits = readout @ a
    c = int(np.argmax(logits))
    r_out = np.where(np.arange(len(logits)) == c, logits, 0.0)
    r_b = a * (readout.T @ (r_out / stabilize(readout @ a)))
    r_x = xs * (t.T @ (r_b / stabilize(z)))
    rows = []
    for pos in range(kernel.size):
        p_idx, q_idx = np.nonzero(index == pos)
        a_term, b_term = np.abs(r_x[q_idx]).sum(), np.abs(r_b[p_idx]).sum()
        u, v = divmod(pos, kernel.shape[1])
        rows.append({"u": u, "v": v, "w": kernel[u, v], "connections": len(p_idx), "input term": a_term,
                     "output term": b_term, "rel(w) by hand": a_term + b_term})  # fmt: skip
    oh = image.shape[0] - kernel.shape[0] + 1
    return {
        "T": t,
        "index": index,
        "input_relevance": r_x.reshape(image.shape),
        "output_relevance": r_b.reshape(oh, -1),
        "kernel": pd.DataFrame(rows),
    }


def kernel_table(conv: dict, library: dict[str, torch.Tensor], layer: str = "0.weight") -> pd.DataFrame:
    """``hand_conv_relevance``'s table per kernel weight with the library's value beside it."""
    lib = library[layer].detach().double().flatten().numpy()
    return conv["kernel"].assign(library=lib, difference=lib - conv["kernel"]["rel(w) by hand"].to_numpy())


def report(
    relevance: pd.DataFrame, kernel: pd.DataFrame, structure: pd.DataFrame, terms: pd.DataFrame, layer: str, p: float
) -> str:
    """The method section of REPORT.md: the hand-checked numbers and what the additive structure does."""
    tiny = relevance.assign(**{c: relevance[c].round(4) for c in ("by hand", "library")}).drop(columns="difference")
    s = structure.set_index("delta")
    hi, lo = s.index.max(), s.index.min()
    shares = terms.drop(columns="class")
    return "\n".join(
        [
            "## The method, checked by hand",
            "",
            "A tiny network (3 inputs, 2 hidden ReLU units, 2 outputs; ε rule on the first layer, z⁺ after the "
            "ReLU) explained by hand in float64 and by the library: every parameter relevance "
            f"agrees to {float(relevance['difference'].abs().max()):.1e}.",
            "",
            _markdown(tiny),
            "",
            "A 2×2 kernel on a 4×4 image, unfolded into its 9×16 fully connected matrix: each kernel weight's "
            "relevance summed over the connections it stands for, by hand and from the library "
            f"(largest difference {float(kernel['difference'].abs().max()):.1e}).",
            "",
            _markdown(kernel.drop(columns="difference").round(4)),
            "",
            f"Relevance is an input term plus an output term, so in layer `{layer}` (whole model pruned to "
            f"p = {p:g}) relevance-only pruning (δ = {hi:g}) keeps weights in "
            f"{s.loc[hi, 'rows with a kept weight']:.0%} of the output units and "
            f"{s.loc[hi, 'columns with a kept weight']:.0%} of the inputs, against "
            f"{s.loc[lo, 'rows with a kept weight']:.0%} and {s.loc[lo, 'columns with a kept weight']:.0%} "
            f"for magnitude (δ = {lo:g}).",
            "",
            _markdown(structure.round(3)),
            "",
            "Share of the last layer's relevance per output unit (class) under each inference dataset:",
            "",
            _markdown(pd.concat([terms[["class"]], shares.round(3)], axis=1)),
        ]
    )


def _markdown(df: pd.DataFrame) -> str:
    return markdown_table(df, ".4g")
