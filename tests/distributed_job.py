"""What tests/test_distributed.py runs in one process and under torchrun: the same work, written by rank 0.

``python tests/distributed_job.py ROOT PROFILE OUT`` (or under torchrun): Figure 2's cached stages under
``ROOT/profiles/PROFILE`` (``paper.torchrun.precompute``), then, on a seeded model that no run trains,
its relevance (``pipeline.relevance_for``, cached under ``OUT/cache``), its correct/total counts on every
split (and a seeded linear probe's), and the weights of a fine-tuning with fixed magnitude masks, saved to
``OUT/result.pt``.
A rank named by ``FLEXREL_TEST_FAIL_RANK`` raises instead (printing when), while the others wait at a barrier.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

from flexrel_core import distributed


def work(root: Path, profile: str, out: Path) -> None:
    failing = os.environ.get("FLEXREL_TEST_FAIL_RANK")
    if failing is not None:
        if distributed.rank() == int(failing):
            print(f"raised at {time.time()}", file=sys.stderr, flush=True)
            raise RuntimeError(f"rank {failing} broke on purpose")
        distributed.barrier()
        return
    from flexrel_core.data import load_dataset
    from flexrel_core.masks import prune
    from flexrel_core.models import build_model
    from flexrel_core.paper import torchrun
    from flexrel_core.scores import pruning_scores
    from flexrel_core.training import correct_count, predict, train
    from flexrel_core.workbook.pipeline import relevance_for

    torchrun.precompute(profile, root / "profiles")
    data = load_dataset("imagefolder", root / "images", image_size=32, seed=0)
    torch.manual_seed(0)
    model = build_model("digits_cnn", num_classes=data.num_classes, in_channels=3, image_size=32)
    rel = relevance_for(
        model, data, "seeded", samples=None, seed=0, batch_size=4, cache_root=out / "cache", device="cpu"
    )
    counts = {s: correct_count(model, getattr(data, s), device="cpu") for s in ("train", "val", "inference", "test")}
    prune(model, pruning_scores(model, method="magnitude"), 0.5)
    losses = train(model, data.train, epochs=2, batch_size=8, seed=0, device="cpu", show_progress=False)
    # the seeded CNN predicts one class everywhere: a seeded linear map of the pixels predicts several
    torch.manual_seed(1)
    probe = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, data.num_classes))
    counts |= {f"probe {s}": correct_count(probe, getattr(data, s), device="cpu") for s in ("train", "test")}
    if distributed.rank() == 0:
        state = {k: v.clone() for k, v in model.state_dict().items()}
        classes = len(set(predict(probe, data.train, device="cpu")[0].tolist()))
        result = {"relevance": rel, "counts": counts, "state": state, "losses": losses, "classes": classes}
        torch.save(result, out / "result.pt")


if __name__ == "__main__":
    root, profile, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    torch.set_num_threads(1)
    sys.exit(distributed.launch(lambda: work(root, profile, out)))
