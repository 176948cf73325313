"""The README's library examples, run as written: the first code block under "## The library", with the
``model`` and ``x_inference`` it names defined here (a small trained-shape CNN and a random batch), and the
second, self-contained, on torchvision's ResNet-18."""

from __future__ import annotations

import re

import torch

from flexrel_core import build_model, get_masks, prunable_count
from flexrel_core.workbook.paths import REPO_ROOT


def library_example(index: int = 0) -> str:
    text = (REPO_ROOT / "README.md").read_text()
    section = text[text.index("## The library") :]
    return re.findall(r"```python\n(.*?)```", section, re.S)[index]


def test_readme_library_example_runs_top_to_bottom():
    code = library_example()
    lines = [line.split("#")[0].strip() for line in code.splitlines()]
    assert lines[-2:] == ["fr.to_torch_prune(model)", "fr.sparsity(model)"]  # sparsity after the export
    torch.manual_seed(0)
    model = build_model("digits_cnn").eval()
    namespace = {"model": model, "x_inference": torch.randn(6, 1, 8, 8)}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the repository's own README
    n = prunable_count(model)
    assert namespace["masks"].keys() == namespace["rel"].keys()
    removed = sum(int((~m).sum()) for m in namespace["masks"].values())
    assert removed == round(0.9 * n)
    # after the export: torch.nn.utils.prune holds the masks, and sparsity reads them
    assert all(hasattr(m, "weight_orig") for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    exported = get_masks(model)
    assert all(torch.equal(exported[k], namespace["masks"][k]) for k in exported)
    sparsity = namespace["fr"].sparsity(model)
    assert sparsity["overall"] == removed / n
    for name, mask in namespace["masks"].items():
        assert sparsity["layers"][name] == float((~mask).sum()) / mask.numel()


def test_readme_resnet18_example_runs_top_to_bottom():
    """Relevance through ResNet-18's skip connections for all 21 prunable layers, and 70 % pruned."""
    code = library_example(1)
    assert "resnet18(weights=None)" in code and "fr.prune(model, scores, 0.7)" in code
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the repository's own README
    model, rel = namespace["model"], namespace["rel"]
    assert len(rel) == 21 and {"conv1.weight", "layer4.1.conv2.weight", "fc.weight"} <= rel.keys()
    assert prunable_count(model) == 11_678_912
    removed = sum(int((~m).sum()) for m in get_masks(model).values())
    assert removed == round(0.7 * 11_678_912) and namespace["fr"].sparsity(model)["overall"] == removed / 11_678_912
