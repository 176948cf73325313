"""The report: ``results/<profile>/REPORT.md`` assembled from the sections the notebooks wrote, and
the small formatting helpers those sections share.

Each notebook writes ``results/<profile>/report/<notebook>.md`` (``outputs.write_report_section``)
with its numbers and its plain-words verdict on the paper's claim; this module puts them in paper
order under a short header naming the profile, the commit (and, when the working tree had uncommitted
changes, which files differed from it) and the machine the notebooks recorded, with links to the
executed notebooks. The paper's four claims, checked (``paper.checked``) come first; every verdict with
the robustness rule, what another machine's numerics can change, and the profile's parameters close it.
Each section shows its figures inline (``figure_links``: every
``<notebook>*.png`` beside REPORT.md, as relative links that render on a code-hosting site). A
report of a smoke-test profile (``quick``) says at its top that its numbers and verdicts mean nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from .cache import write_text
from .paths import REPO_ROOT, profile_dir, results_dir
from .provenance import describe_commit, describe_machine, git_state

# "checked" (the paper's claims) and "claims" (every verdict), written after the notebooks by ``paper.claims``,
# open and close the report.
ORDER = (
    "checked", "method", "fig1", "fig2", "baselines", "fig3", "fig4", "ablations", "robustness", "table1", "explore",
    "claims",
)  # fmt: skip
# Profiles that only check that the code runs end to end: their reports say so first.
SMOKE_TESTS = {
    "quick": (
        "> **Smoke test — these numbers mean nothing.** The `quick` profile runs the whole workbook in "
        "minutes on scikit-learn's 8×8 digits with a 25 k-weight model, 2 seeds and 3-point grids, to check "
        "that every notebook runs. With 2 seeds an interval is degenerate or very wide, and a verdict below "
        "says nothing about the paper's claims. The results are in `results/default/REPORT.md` "
        "(`make reproduce`)."
    )
}


def markdown_table(df: pd.DataFrame, floatfmt: str = ".3g") -> str:
    """A GitHub-markdown table of ``df`` (no index)."""
    cells = [[format(v, floatfmt) if isinstance(v, float) else str(v) for v in row] for row in df.itertuples(False)]
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells])


def pct(x: float | None) -> str:
    """A fraction as a percentage with one decimal (``0.975`` -> ``97.5 %``); ``—`` for None or NaN."""
    return "—" if x is None or np.isnan(x) else f"{100 * x:.1f} %"


def run_records(folder: str | Path) -> dict[str, dict | None]:
    """For each executed notebook under ``<folder>/notebooks/``, the provenance its run recorded
    (``metadata["flexrel"]``: commit, dirty paths, libraries, machine), or None."""
    import json

    return {
        path.stem: json.loads(path.read_text()).get("metadata", {}).get("flexrel")
        for path in sorted(Path(folder, "notebooks").glob("[!.]*.ipynb"))  # not a run's temporary copy
    }


def notebook_runs(folder: str | Path) -> dict[str, str]:
    """For each executed notebook under ``<folder>/notebooks/``, the commit sentence its run recorded."""
    return {nb: describe_commit(meta) if meta else "an unrecorded commit" for nb, meta in run_records(folder).items()}


def machine_lines(folder: str | Path) -> list[str]:
    """The report's line(s) on what machine computed the notebooks."""
    machines = {nb: describe_machine((meta or {}).get("machine")) for nb, meta in run_records(folder).items()}
    if not machines:
        return []
    kinds = sorted(set(machines.values()))
    if len(kinds) == 1:
        return [f"Computed on {kinds[0]}."]
    return ["The notebooks ran on different machines:", "", *(f"- `{nb}`: {m}" for nb, m in machines.items()), ""]


def numerics_section() -> str:
    """The report's section on what another machine's numerics can change."""
    return "\n".join([
        "## Numerics: what another machine can change",
        "",
        "Another CPU (another instruction set, another torch build) rounds sums in another order, and training",
        "amplifies the difference: in float32 within a few epochs into another model. The dense models are",
        "therefore trained in float64 and rounded to float32 once: under torch's AVX-512 and AVX2 kernels the",
        "default model then ends with the same float32 weights but for a few (`make bench-precision`); under",
        "no-vector kernels it still ends elsewhere, and some of the map's longer trainings on digits drift",
        "apart even between AVX-512 and AVX2. Pruning, fine-tuning and evaluation run in float32,",
        "where a rerun can still move a fine-tuned accuracy a little: verdicts marked *(marginal)* can turn,",
        "robust ones should not (“All verdicts, and when a verdict is robust”; `make compare REF=<ref>` checks a",
        "rerun; the README gives a measured comparison).",
    ]) + "\n"  # fmt: skip


def figure_links(folder: str | Path, name: str) -> list[str]:
    """Markdown image links to the figures notebook ``name`` wrote beside REPORT.md
    (``<name>.png`` and ``<name>_*.png``), relative so that they render wherever the folder is."""
    pngs = sorted(Path(folder).glob(f"{name}*.png"))
    return [f"![{p.stem}]({p.name})" for p in pngs if p.stem == name or p.stem.startswith(f"{name}_")]


def with_figures(section: str, links: list[str]) -> str:
    """``section`` with ``links`` right under its heading (its first line)."""
    if not links:
        return section
    heading, _, rest = section.partition("\n")
    return "\n\n".join([heading, *links]) + "\n" + rest


def notebook_links(folder: str | Path) -> list[str]:
    """Links to the executed notebooks under ``<folder>/notebooks/``, in ``ORDER``."""
    found = {p.stem for p in Path(folder, "notebooks").glob("[!.]*.ipynb")}
    names = [n for n in ORDER if n in found] + sorted(found - set(ORDER))
    return [f"[{n}](notebooks/{n}.ipynb)" for n in names]


def assemble(profile: str, results_root: str | Path = REPO_ROOT / "results") -> Path:
    """Write REPORT.md from the available sections; returns its path."""
    folder = results_dir(profile, results_root)
    sections = sorted(
        (folder / "report").glob("*.md"), key=lambda p: (ORDER.index(p.stem) if p.stem in ORDER else len(ORDER), p.stem)
    )
    now = describe_commit(git_state())
    header = [
        f"# FlexRel workbook report — profile `{profile}`",
        "",
        f"Produced by `make reproduce PROFILE={profile}` at {now}.",
        "Every number below was computed by that run; figures and CSVs sit beside this file.",
        *machine_lines(folder),
        *(["Executed notebooks: " + ", ".join(notebook_links(folder)) + "."] if notebook_links(folder) else []),
        "Paper: Chiasserini, Malandrino, Molner, Zhao, *Combining Relevance and Magnitude for",
        "Resource-Aware DNN Pruning* (arXiv 2405.13088).",
        "",
    ]
    if profile in SMOKE_TESTS:
        header[1:1] = ["", SMOKE_TESTS[profile]]
    runs = notebook_runs(folder)
    if any(commit != now for commit in runs.values()):
        header += ["Not every notebook ran at that commit; each ran at:", ""]
        header += [f"- `{nb}`: {commit}" for nb, commit in runs.items()] + [""]
    body = [with_figures(p.read_text().strip(), figure_links(folder, p.stem)) + "\n" for p in sections]
    body = (body or ["_No notebook has written a section yet._\n"]) + [numerics_section()]
    config = ["## Configuration", ""]
    for path in sorted(profile_dir(profile).glob("*.yaml")):
        config += [f"`{path.relative_to(REPO_ROOT)}`:", "", "```yaml", path.read_text().strip(), "```", ""]
    return write_text(folder / "REPORT.md", "\n".join(header) + "\n" + "\n".join(body) + "\n" + "\n".join(config))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="default")
    args = parser.parse_args(argv)
    print(assemble(args.profile))
    return 0


if __name__ == "__main__":
    sys.exit(main())
