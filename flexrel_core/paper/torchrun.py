"""``torchrun ... -m flexrel_core.paper.torchrun --profile P``: Figure 2's cached stages on every rank.

``make reproduce PROFILE=P NPROC=n`` runs this module under torchrun before the notebooks. Every rank
runs Figure 2's sweep exactly as the notebook would (``fig2.compute`` with the notebook's parameters
under the profile): the dense models, their relevance, their dense accuracies and every pruned point,
one-shot and fine-tuned. The stages shard over the ranks (``distributed``): relevance over the
inference sample, evaluation over the split, fine-tuning under DDP; rank 0 writes each result into the
cache under the key one process would use. The notebooks then run in one process, as without torchrun,
and find Figure 2's work cached; what they compute beyond it (Figure 3's rounds, the ablations' and
robustness' own points, Table 1's timings) runs in that one process.

Why this shape: a notebook kernel cannot be a rank (papermill starts it, not torchrun), and the cache
already makes every stage skip itself when its key exists, so precomputing the heaviest sweep is the
one change that keeps the notebooks, their outputs and the one-process path as they are.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import nbformat

from .. import distributed
from ..models import build_model
from ..workbook.config import PruneConfig, TrainConfig
from ..workbook.paths import PROFILES_ROOT, REPO_ROOT
from ..workbook.pipeline import shift_spec
from ..workbook.profiles import parameters_for
from . import fig2

NOTEBOOK = REPO_ROOT / "notebooks" / "fig2.ipynb"


def notebook_defaults(notebook: str | Path) -> dict:
    """The values a notebook's ``parameters`` cell assigns (typed literals, as the notebook would see them)."""
    nb = nbformat.read(str(notebook), as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", []))
    values: dict = {}
    exec(compile(cell.source, str(notebook), "exec"), {}, values)  # the repository's own literals
    return values


def fig2_parameters(profile: str, profiles_root: str | Path = PROFILES_ROOT, notebook: str | Path = NOTEBOOK) -> dict:
    """Figure 2's parameters under ``profile``: its notebook's defaults overridden by the profile's
    values (what papermill gives the notebook)."""
    return {**notebook_defaults(notebook), **parameters_for(profile, notebook, profiles_root)}


def precompute(profile: str, profiles_root: str | Path = PROFILES_ROOT, notebook: str | Path = NOTEBOOK) -> None:
    """Figure 2's sweep under ``profile`` (``fig2.compute``, its results cached; nothing else written).
    ImageNet weights, when the profile starts from them, are fetched first by one process per node
    while the others wait (torchvision's download cache is per machine)."""
    p = fig2_parameters(profile, profiles_root, notebook)
    if p.get("pretrained") and p.get("model") == "vgg16" and distributed.active():
        if int(os.environ.get("LOCAL_RANK", "0")) == 0:  # one download of the ImageNet weights per node
            build_model("vgg16", num_classes=1000, in_channels=3, batch_norm=bool(p.get("batch_norm")), pretrained=True)
        distributed.barrier()
    fig2.compute(
        TrainConfig.from_mapping(p),
        PruneConfig.from_mapping(p),
        methods=p["methods"],
        pruning_factors=p["pruning_factors"],
        seeds=p["seeds"],
        delta=p["delta"],
        shift=shift_spec(p["shift_classes"], p["shift_weights"]),
        cache_root=p["cache_root"],
        device=p["device"],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="default")
    parser.add_argument("--profiles-root", default=str(PROFILES_ROOT))
    args = parser.parse_args(argv)
    os.chdir(REPO_ROOT)  # the notebooks' folder: relative data_root and cache_root name the same files
    quiet = os.environ.get("RANK", "0") != "0"  # one log, from rank 0
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s", stream=sys.stdout)
    if quiet:
        os.environ["FLEXREL_PROGRESS"] = "off"
    return distributed.launch(lambda: precompute(args.profile, args.profiles_root))


if __name__ == "__main__":
    sys.exit(main())
