"""The paper-scale estimate: stage counts against a hand count, counts that follow the profile's keys,
the cache shared between notebooks, and a small end-to-end run of the benchmark."""

from __future__ import annotations

import json

import pytest

from flexrel_core.data import load_dataset
from flexrel_core.paper import bench_paper
from flexrel_core.paper.reproduce_estimate import SPLITS, STAGES, estimate, stage_counts

TINY = {
    "common": {"epochs": 0, "inference_samples": 100, "seed": 0},
    "fig2": {
        "seeds": [0, 1],
        "methods": ["magnitude", "flexrel"],
        "pruning_factors": [0.0, 0.5],
        "delta": 0.5,
        "fine_tune_epochs": 1,
        "shift_classes": [0],
    },
}


def test_fig2_counts_by_hand():
    """1,000 images in 10 classes: train 600, val 100, inference 150, test 150; the shift keeps one
    class (15 inference and 15 test images). Per seed: setup = 100 val + (100 val + 150 test) +
    (100 val + 15 test) evaluated, 100 + 15 relevance samples; magnitude: 2 points at p = 0 and at
    p = 0.5 one-shot in both conditions plus one shared fine-tune (5 scorings); FlexRel: the same
    with one fine-tune per condition (6 scorings); each evaluation is val + test of its condition."""
    counts = stage_counts(TINY, images=1000, classes=10)["fig2"]
    per_seed_eval = 100 + 250 + 115 + 2 * (365 + 730)
    assert dict(counts) == {
        "train_image": 2 * 3 * 600,
        "evaluate_image": 2 * per_seed_eval,
        "load_image": 2 * 115,
        "relevance_sample": 2 * 115,
        "scoring": 2 * 11,
        "prune": 2 * 11,
    }


def test_counts_follow_the_profile_keys():
    base = stage_counts(TINY, images=1000, classes=10)["fig2"]
    more = {**TINY, "fig2": {**TINY["fig2"], "seeds": [0, 1, 2, 3]}}
    assert stage_counts(more, images=1000, classes=10)["fig2"] == base + base
    fig3 = {"nodes": 4, "rounds": 3, "local_steps": 2, "local_batch_size": 10, "techniques": ["magnitude"]}
    fig3["amounts"] = [0.9]
    one = stage_counts({"common": TINY["common"], "fig3": fig3}, images=1000, classes=10)["fig3"]
    assert one["message"] == 2 * (2 * 4 * 3)  # two runs (magnitude 0.9, dense) x down and up x nodes x rounds
    assert one["encode"] == 2 * 2 and one["decode"] == 2  # the half-precision check, first seed
    assert one["train_image"] == 2 * 3 * 4 * 20  # runs x rounds x nodes x local steps x batch
    # setup, runs (val + test after pruning and after each round), half check
    assert one["evaluate_image"] == 100 + 250 + 2 * (1 + 3) * 250 + 2 * 2 * 150
    seeds = {**TINY["common"], "seeds": [0, 1]}
    two = stage_counts({"common": seeds, "fig3": fig3}, images=1000, classes=10)["fig3"]
    assert two["message"] == 2 * one["message"] and two["train_image"] == 2 * one["train_image"]
    assert two["encode"] == one["encode"]  # the half-precision check runs on the first seed only
    # refinement at its most: grid 0.5, 0.9 (gap 0.4) to 0.05 = 3 halvings per target, 2 targets: 6 more runs;
    # scenario learning: a 1-epoch model on 300 images (2 val + 1 test evaluations) and 2 runs of at most 2 rounds,
    # each with a validation evaluation per round and a test evaluation after pruning and per target
    more = {**fig3, "amounts": [0.5, 0.9], "targets": [0.8, 0.9], "resolution": 0.05}
    refined = stage_counts({"common": TINY["common"], "fig3": more}, images=1000, classes=10)["fig3"]
    assert refined["message"] == (2 + 1 + 6) * (2 * 4 * 3)
    learning = {**fig3, "learning_epochs": 1, "learning_train_samples": 300, "learning_rounds": 2}
    learning |= {"learning_amounts": [0.9], "learning_targets": [0.8]}
    both = stage_counts({"common": TINY["common"], "fig3": learning}, images=1000, classes=10)["fig3"]
    assert both["message"] == one["message"] + 2 * (2 * 4 * 2)
    assert both["train_image"] == one["train_image"] + 300 + 2 * 2 * 4 * 20
    assert both["evaluate_image"] == one["evaluate_image"] + 350 + 2 * ((1 + 2) * 100 + (1 + 1) * 150)
    first = {**learning, "learning_seeds": 1}  # on the first of two seeds only
    two_seeds = stage_counts({"common": seeds, "fig3": first}, images=1000, classes=10)["fig3"]
    assert two_seeds["message"] == 2 * one["message"] + 2 * (2 * 4 * 2)


def test_ablations_reuse_figure_2_points_and_count_their_variants():
    common = {**TINY["common"], "seeds": [0], "delta": 0.5, "fine_tune_epochs": 1}
    fig2 = {k: v for k, v in TINY["fig2"].items() if k not in ("seeds", "delta", "fine_tune_epochs")}
    fig2 |= {"methods": ["magnitude", "flexrel"], "pruning_factors": [0.5], "shift_classes": None}
    ablations = {"pruning_factors": [0.5], "steps": 2}
    alone = stage_counts({"common": common, "ablations": ablations}, 1000, 10)
    after = stage_counts({"common": common, "fig2": fig2, "ablations": ablations}, 1000, 10)
    # magnitude and FlexRel at p = 0.5 are Figure 2's points: two one-shot and two fine-tuned scorings fewer
    assert after["ablations"]["scoring"] == alone["ablations"]["scoring"] - 4
    # two relevance variants (positive, signed) and the true-label one recompute relevance; iterative FlexRel twice
    assert alone["ablations"]["relevance_sample"] == 100 + 3 * 100 + 2 * 100


def test_cached_stages_count_once_across_notebooks():
    """fig1 trains and scores seed 0; fig2 then reuses that model, relevance and dense accuracy."""
    alone = stage_counts(TINY, images=1000, classes=10)["fig2"]
    both = stage_counts({**TINY, "fig1": {"seed": 0}}, images=1000, classes=10)
    assert both["fig1"]["relevance_sample"] == 100
    assert both["fig2"]["relevance_sample"] == alone["relevance_sample"] - 100
    assert both["fig2"]["evaluate_image"] == alone["evaluate_image"] - 100 - 250


def test_paper_profile_counts_every_notebook_and_estimate_adds_up():
    counts = stage_counts("paper")
    assert set(counts) == {"fig1", "fig2", "fig3", "fig4", "ablations", "table1", "explore"}
    assert all(stage in STAGES and n >= 0 for c in counts.values() for stage, n in c.items())
    est = estimate(counts, dict.fromkeys(STAGES, 1.0))
    assert est["total_s"] == pytest.approx(sum(sum(c.values()) for c in counts.values()))


def test_synthetic_folder_splits_as_the_estimate_assumes(tmp_path):
    root = bench_paper.make_folder(tmp_path / "imagenet", 100, classes=4, size=(40, 30))
    data = load_dataset("imagefolder", root, image_size=32)
    assert data.input_shape == (3, 32, 32) and data.num_classes == 4
    for split, fraction in SPLITS.items():
        assert len(getattr(data, split)) == pytest.approx(100 * fraction, abs=2)


@pytest.mark.slow
def test_benchmark_runs_end_to_end_on_a_small_model(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["--model", "vgg_small", "--image-size", "32", "--samples", "4", "--eval-images", "4"]
    args += ["--train-images", "4", "--source-size", "64", "48", "--nodes", "2", "--device", "cpu", "--out", str(out)]
    assert bench_paper.main(args) == 0
    result = json.loads(out.read_text())
    assert all(result["seconds_at_profile_size"][s] > 0 for s in STAGES)
    assert result["estimate"]["total_s"] > 0
    printed = capsys.readouterr().out
    assert "prune at p = 0.9" in printed and "estimated make reproduce PROFILE=paper" in printed
    gpus = result["estimate_by_gpus"]  # JSON keys: strings
    assert set(gpus) == {"1", "2", "4", "8"} and gpus["1"]["total_s"] == pytest.approx(result["estimate"]["total_s"])
    assert gpus["8"]["total_s"] < gpus["1"]["total_s"] and "speedup" in printed


def test_several_gpus_estimate_on_a_fixed_input():
    """Figure 2's training, evaluation and relevance shard over the ranks; its scoring and pruning are
    replicated; Figure 3 stays in one process; DDP steps and relevance calls add ring all-reduces."""
    from flexrel_core.paper.reproduce_scaling import scaled_estimate

    counts = {
        "fig2": {"train_image": 6400, "evaluate_image": 1000, "relevance_sample": 200, "load_image": 200}
        | {"scoring": 10, "prune": 10},
        "fig3": {"train_image": 100, "message": 4},
    }
    seconds = {"train_image": 0.01, "evaluate_image": 0.002, "relevance_sample": 0.02, "load_image": 0.001}
    seconds |= {"scoring": 1.0, "prune": 0.5, "message": 0.25}
    got = scaled_estimate(
        counts, seconds, weights=10**6, batch_size=64, samples_per_call=100, bus_bytes_per_s=1e9, latency_s=0.0
    )
    assert got[1]["total_s"] == pytest.approx(estimate(counts, seconds)["total_s"])
    assert got[1]["total_s"] == pytest.approx(87.2)
    # sharded 70.2 s / n; replicated 15 s; serial 2 s; all-reduces at 1 GB/s:
    # 100 steps x 2 (n-1)/n x 4 MB and 2 relevance calls x 2 (n-1)/n x 8 MB
    for n, total in {2: 35.1 + 17 + 0.416, 4: 17.55 + 17 + 0.624, 8: 8.775 + 17 + 0.728}.items():
        assert got[n]["total_s"] == pytest.approx(total)
        assert got[n]["speedup"] == pytest.approx(87.2 / total)
    assert got[1]["all_reduce_s"] == 0.0 and got[8]["serial_s"] == pytest.approx(2.0)
