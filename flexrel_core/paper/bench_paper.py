"""``make bench-paper``: every stage of a profile timed on its model with random weights, and the wall
time of ``make reproduce PROFILE=<profile>`` on a 50,000-image folder estimated from those times.

The benchmark writes a synthetic ImageNet-format folder (one sub-folder per class, JPEGs of
``--source-size`` pixels, smooth random content) into a temporary directory, loads it with
``load_dataset("imagefolder", ...)`` at ``--image-size`` and times, on ``--device``, the stages
``reproduce_estimate.STAGES`` counts: loading, evaluation, in-memory forward passes, training,
parameter relevance (batched) and the plain LRP pass it is built on, scoring, ``prune`` at
p = 0.9, ``encode_sparse``/``decode_sparse`` (and ``encoded_size`` with cached mask codes), and
the federated average of Figure 3. Per-image stages are divided by the image count; below the
profile's image size their compute part is scaled by the pixel ratio (convolutions dominate VGG16)
and the output says so. ``reproduce_estimate.stage_counts`` then gives how often each stage runs, and
``reproduce_scaling.scaled_estimate`` the time on 1, 2, 4 and 8 GPUs (``make reproduce NPROC=n``).

Times are the best of ``--repeats`` runs after a warm-up (``workbook.measure.timings``): on a
shared machine the least disturbed run. Targets: ``prune`` of VGG16 at p = 0.9 within 5 s on a
2-core CPU and 0.5 s on a GPU; relevance within 1.2x of the plain LRP pass; the paper profile
within 3 hours on one GPU.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..data import draw, load_dataset, tensors
from ..encoding import MaskCodeCache, decode_sparse, encode_sparse, encoded_size
from ..layers import prunable_count, prunable_layers
from ..masks import MASK_BUFFER, prune
from ..models import build_model
from ..relevance import lrp_backward, parameter_relevance
from ..scores import pruning_scores
from ..training import evaluate, select_device, train
from ..workbook.cache import write_json
from ..workbook.measure import timings
from ..workbook.profiles import read_profile
from .federated import average
from .reproduce_estimate import SPLITS, STAGES, estimate, format_estimate, stage_counts
from .reproduce_scaling import format_scaling, scaled_estimate

PRUNE_TARGET_S = {"cpu": 5.0, "cuda": 0.5}
RELEVANCE_OVER_LRP = 1.2
REPRODUCE_TARGET_H = 3.0
COMPUTE_STAGES = ("forward_image", "relevance_sample", "lrp_sample")  # pure compute: scale by pixels
LOADING_STAGES = ("evaluate_image", "train_image")  # loading + compute: scale the compute part


def make_folder(root: Path, images: int, classes: int = 4, size: tuple[int, int] = (500, 375), seed: int = 0) -> Path:
    """An ImageNet-format folder of ``images`` JPEGs (``size`` = width x height) in ``classes`` folders."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(images):
        folder = root / f"n{i % classes:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        smooth = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize(size, Image.BILINEAR)
        noisy = np.asarray(smooth, dtype=np.int16) + rng.integers(-12, 13, (size[1], size[0], 3))
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(folder / f"img_{i:08d}.JPEG", quality=90)
    return root


def _best(fn, device: torch.device, repeats: int) -> float:
    return min(timings(fn, device, repeats))


def _drop_masks(model: torch.nn.Module) -> None:
    for m in prunable_layers(model).values():
        m._buffers.pop(MASK_BUFFER, None)


def time_model_stages(model, x: torch.Tensor, args, device: torch.device) -> dict:
    """Seconds per sample of relevance and of the plain LRP pass, per call of scoring, prune, encode,
    decode, ``encoded_size`` (mask codes cached) and the federated average, per image of a forward
    pass. Leaves ``model`` pruned at p = 0.9."""
    bs, rep = args.batch_size, args.repeats
    x = x.to(device)
    out = {
        "relevance_sample": _best(lambda: parameter_relevance(model, x, batch_size=bs), device, rep) / len(x),
        "lrp_sample": _best(lambda: [lrp_backward(model, c) for c in x.split(bs)], device, rep) / len(x),
    }
    out |= _time_scoring_and_prune(model, parameter_relevance(model, x, batch_size=bs), args, device)
    out |= _time_encoding(model, args, device)
    with torch.no_grad():
        out["forward_image"] = _best(lambda: model(x), device, rep) / len(x)
    return out


def _time_scoring_and_prune(model, relevance: dict, args, device: torch.device) -> dict:
    def score() -> dict:
        return pruning_scores(model, method="flexrel", delta=0.5, normalize=args.normalize, relevance=relevance)

    scores = score()
    return {
        "scoring": _best(score, device, args.repeats),
        "prune": _best(lambda: (_drop_masks(model), prune(model, scores, 0.9)), device, args.repeats),
    }


def _time_encoding(model, args, device: torch.device) -> dict:
    blob = encode_sparse(model)
    target = copy.deepcopy(model)
    cache = MaskCodeCache()
    if encoded_size(model, cache=cache) != len(blob):
        raise RuntimeError("encoded_size disagrees with encode_sparse")
    states = [copy.deepcopy(target.state_dict()) for _ in range(args.nodes)]
    return {
        "encoded_bytes": len(blob),
        "encode": _best(lambda: encode_sparse(model), device, args.repeats),
        "decode": _best(lambda: decode_sparse(blob, target), device, args.repeats),
        "message": _best(lambda: encoded_size(model, cache=cache), device, args.repeats),
        "average": _best(lambda: average(model, states, [1] * len(states)), device, args.repeats),
    }


def time_folder_stages(model, full, args, device: torch.device) -> dict:
    """Seconds per image of loading, of ``evaluate`` and of ``train`` (one epoch) from the folder."""
    out: dict = {}
    start = time.perf_counter()
    tensors(draw(full, args.eval_images, seed=0))
    out["load_image"] = (time.perf_counter() - start) / args.eval_images
    evaluate(model, draw(full, min(2, args.eval_images), seed=1), device=device)  # warm-up
    evals = draw(full, args.eval_images, seed=2)
    out["evaluate_image"] = _best(lambda: evaluate(model, evals, device=device), device, args.repeats) / len(evals)
    kwargs = dict(epochs=1, lr=1e-4, batch_size=args.train_batch_size, device=device, show_progress=False)
    train(model, draw(full, min(args.train_batch_size, args.train_images), seed=3), **kwargs)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    train(model, draw(full, args.train_images, seed=4), **kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    out["train_image"] = (time.perf_counter() - start) / args.train_images
    return out


def scaled(measured: dict, factor: float) -> dict:
    """Per-image times at the profile's image size: compute parts x ``factor`` (pixel ratio), loading as measured."""
    out = dict(measured)
    for stage in COMPUTE_STAGES:
        out[stage] = measured[stage] * factor
    for stage in LOADING_STAGES:
        out[stage] = measured["load_image"] + max(measured[stage] - measured["load_image"], 0.0) * factor
    return out


def parse_args(argv: list[str] | None, device_default: str = "auto") -> argparse.Namespace:
    """Command-line options; the ones left at None get device-dependent defaults in ``resolve``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="paper", help="profile whose stages are counted (profiles/<name>/*.yaml)")
    p.add_argument("--device", default=device_default, help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--out", default="results/bench_paper.json", help="JSON with every number printed")
    p.add_argument("--model", default=None, help="network (default: the profile's)")
    p.add_argument("--image-size", type=int, default=None, help="input side (default: the profile's; 64 on a CPU)")
    p.add_argument("--samples", type=int, default=None, help="relevance samples (default: the profile's; 8 on a CPU)")
    p.add_argument("--eval-images", type=int, default=None, help="images evaluated (default 1024; 16 on a CPU)")
    p.add_argument("--train-images", type=int, default=None, help="images trained one epoch (default 512; 8 on a CPU)")
    p.add_argument("--batch-size", type=int, default=None, help="relevance batch size (default: the profile's)")
    p.add_argument("--train-batch-size", type=int, default=32, help="training batch size (Figure 3's local batch)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs after a warm-up, best kept (3; 1 on a CPU)")
    p.add_argument("--nodes", type=int, default=None, help="states averaged per round (default: fig3's nodes)")
    p.add_argument("--source-size", type=int, nargs=2, default=(500, 375), help="JPEG width and height")
    p.add_argument("--classes", type=int, default=1000, help="classes of the model and of the estimated folder")
    p.add_argument("--estimate-images", type=int, default=50_000, help="images of the folder the estimate is for")
    return p.parse_args(argv)


def resolve(args: argparse.Namespace, profile: dict, device: torch.device) -> argparse.Namespace:
    """Fill the options left at None from the profile, with small sizes on a CPU."""
    common, gpu = profile.get("common") or {}, device.type != "cpu"
    fill = {
        "model": common.get("model", "vgg16"),
        "image_size": int(common.get("image_size", 224)) if gpu else 64,
        "samples": int(common.get("inference_samples") or 1024) if gpu else 8,
        "eval_images": 1024 if gpu else 16,
        "train_images": 512 if gpu else 8,
        "batch_size": int(common.get("lrp_batch_size") or common.get("batch_size") or 64),
        "repeats": 3 if gpu else 1,
        "nodes": int((profile.get("fig3") or {}).get("nodes", 5)),
    }
    for key, value in fill.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.normalize = common.get("normalize", "global")
    args.profile_size = int(common.get("image_size", args.image_size))
    return args


def measure(args: argparse.Namespace, device: torch.device, batch_norm: bool = False) -> dict:
    """Every stage's time at ``args.image_size`` on a synthetic folder (see the module docstring)."""
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        images = max(args.eval_images, args.train_images, args.samples, 40)
        root = make_folder(Path(tmp) / "imagenet", images, size=tuple(args.source_size))
        data = load_dataset("imagefolder", root, image_size=args.image_size, seed=0)
        full = data.train.dataset
        model = build_model(
            args.model, num_classes=args.classes, in_channels=3, image_size=args.image_size, batch_norm=batch_norm
        )
        model = model.to(device).eval()
        x, _ = tensors(draw(full, args.samples, seed=0))
        out = time_model_stages(model, x, args, device)
        out |= time_folder_stages(model, full, args, device)
        out["weights"] = prunable_count(model)
        out["splits"] = {k: len(getattr(data, k)) / images for k in SPLITS}
    return out


def targets(measured: dict, seconds: dict, est: dict, args, device: torch.device) -> list[tuple[str, str]]:
    """(description, PASS / FAIL / not applicable) of each target this run can check."""
    kind = "cuda" if device.type == "cuda" else "cpu"
    rows = []
    limit = PRUNE_TARGET_S[kind]
    verdict = ("PASS" if measured["prune"] <= limit else "FAIL") if args.model == "vgg16" else "n/a (VGG16 target)"
    rows.append((f"prune at p = 0.9: {measured['prune']:.3f} s (target <= {limit:g} s on {kind})", verdict))
    ratio = measured["relevance_sample"] / measured["lrp_sample"]
    verdict = "PASS" if ratio <= RELEVANCE_OVER_LRP else "FAIL"
    rows.append((f"relevance / plain LRP pass: {ratio:.2f}x (target <= {RELEVANCE_OVER_LRP}x on a GPU)", verdict))
    hours = est["total_s"] / 3600
    verdict = ("PASS" if hours <= REPRODUCE_TARGET_H else "FAIL") if kind == "cuda" else "n/a (GPU target)"
    rows.append((f"make reproduce PROFILE={args.profile}: {hours:.2f} h (target <= {REPRODUCE_TARGET_H:g} h)", verdict))
    return rows


def report(measured: dict, seconds: dict, counts: dict, est: dict, args, device: torch.device) -> str:
    """The printed summary: stage times, targets, the estimate and its breakdown."""
    lines = [
        f"{args.model} ({measured['weights']:,} prunable weights) on {device} ({torch.get_num_threads()} threads), "
        f"{args.image_size} px (profile: {args.profile_size} px); {args.samples} relevance samples in batches of "
        f"{args.batch_size}; {args.eval_images} evaluated and {args.train_images} trained images; best of "
        f"{args.repeats} after a warm-up",
        "",
        f"{'stage':>20} | {'measured s':>11} | {'at ' + str(args.profile_size) + ' px':>11} | unit",
    ]
    units = {**STAGES, "lrp_sample": "one inference sample through the plain zennit LRP pass"}
    for stage, unit in units.items():
        lines.append(f"{stage:>20} | {measured[stage]:11.5f} | {seconds[stage]:11.5f} | {unit}")
    lines += ["", f"encoded size at p = 0.9: {measured['encoded_bytes']:,} bytes", "", "targets:"]
    lines += [f"  {text}: {verdict}" for text, verdict in targets(measured, seconds, est, args, device)]
    lines += [
        "",
        f"estimated make reproduce PROFILE={args.profile} on {args.estimate_images:,} images ({args.classes} classes), "
        f"{device.type}: {est['total_s'] / 3600:.2f} h",
        format_estimate(counts, est),
    ]
    return "\n".join(lines)


def several_gpus(profile: dict, counts: dict, seconds: dict, measured: dict, args) -> dict:
    """``reproduce_scaling.scaled_estimate`` for 1, 2, 4 and 8 GPUs: the model's weights, the profile's
    training batch (dense and fine-tuning) and relevance samples per call."""
    common = profile.get("common") or {}
    available = args.estimate_images * SPLITS["inference"]
    per_call = min(float(common.get("inference_samples") or available), available)
    return scaled_estimate(
        counts,
        {s: seconds[s] for s in STAGES},
        weights=measured["weights"],
        batch_size=int(common.get("batch_size") or 64),
        samples_per_call=per_call,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = select_device(args.device)
    profile = read_profile(args.profile)
    args = resolve(args, profile, device)
    measured = measure(args, device, batch_norm=bool((profile.get("common") or {}).get("batch_norm")))
    seconds = scaled(measured, (args.profile_size / args.image_size) ** 2)
    counts = stage_counts(profile, images=args.estimate_images, classes=args.classes)
    est = estimate(counts, {s: seconds[s] for s in STAGES})
    print(report(measured, seconds, counts, est, args, device))
    scaling = several_gpus(profile, counts, seconds, measured, args)
    print(f"\nestimated with NPROC = 1, 2, 4, 8 (Figure 2's sweep sharded):\n{format_scaling(scaling)}")
    checks = targets(measured, seconds, est, args, device)
    result = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads()}
    result |= {
        "options": {k: v for k, v in vars(args).items()},
        "measured_s": measured,
        "seconds_at_profile_size": seconds,
    }
    result |= {"counts": {nb: dict(c) for nb, c in counts.items()}, "estimate": est, "targets": dict(checks)}
    result["estimate_by_gpus"] = scaling
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
