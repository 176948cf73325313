"""Two runs of the workbook compared claim by claim: ``make compare REF=<git ref or folder>``.

A reviewer reruns ``make reproduce`` on their machine and asks whether its verdicts are the committed
ones. ``compare`` reads every claim of both runs (``claims.claims``: recomputed from each run's CSVs,
so an older run reads the same way) and says, per claim present in both: the same verdict or not,
whether the two 95 % intervals overlap, and whether the numbers are identical to the last bit (same
machine, same code). ``COMPARISON.md`` (beside the current run's REPORT.md) gives the agreement
overall, among the verdicts robust in the reference, and among marginal ones, per paper item, and
lists every verdict that turned; ``comparison.csv`` holds every row.

REF is a folder holding a run (``results/<profile>/`` of another checkout, or a copy) or a git
ref; a ref's ``results/<profile>/`` is read from the repository without touching the working tree.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

import numpy as np
import pandas as pd

from ..workbook.cache import write_text
from ..workbook.outputs import save_table
from ..workbook.paths import REPO_ROOT, results_dir, shown
from ..workbook.provenance import describe_machine
from ..workbook.stats import UNDETERMINED
from .claims import claims

SIDES = ("current", "reference")


def compare(current: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """One row per claim of either run (``claims.claims`` tables): ``in`` (``both``/``current
    only``/``reference only``), each side's verdict, robustness, mean and interval, and for claims in
    both: ``same_verdict``, ``overlap`` (the intervals share a point; choices: the same value) and
    ``identical`` (mean and interval equal to the last bit, or NaN on both sides)."""
    value = ["verdict", "robust", "mean", "ci_low", "ci_high", "n"]
    merged = pd.merge(
        current[["item", "claim", "kind", *value]],
        reference[["claim", *value]],
        on="claim",
        how="outer",
        suffixes=("_current", "_reference"),
        indicator="in",
    )
    merged["in"] = merged["in"].map({"both": "both", "left_only": "current only", "right_only": "reference only"})
    merged["item"] = merged["item"].fillna(merged["claim"].str.split(" · ").str[0])
    both = merged["in"] == "both"
    merged["same_verdict"] = np.where(both, merged["verdict_current"] == merged["verdict_reference"], np.nan)
    lo = np.maximum(merged["ci_low_current"], merged["ci_low_reference"])
    hi = np.minimum(merged["ci_high_current"], merged["ci_high_reference"])
    choice = merged["kind"] == "choice"
    overlap = np.where(choice, merged["verdict_current"] == merged["verdict_reference"], lo <= hi)
    merged["overlap"] = np.where(both & (merged["ci_low_current"].notna() | choice), overlap, np.nan)
    same = [
        (merged[f"{c}_current"] == merged[f"{c}_reference"])
        | (merged[f"{c}_current"].isna() & merged[f"{c}_reference"].isna())
        for c in ("mean", "ci_low", "ci_high")
    ]
    merged["identical"] = np.where(both, same[0] & same[1] & same[2], np.nan)
    return merged


def _share(flags: pd.Series) -> str:
    flags = flags.dropna().astype(bool)
    return f"{int(flags.sum())} of {len(flags)} ({100 * flags.mean():.1f} %)" if len(flags) else "—"


def summary(table: pd.DataFrame) -> dict:
    """Agreement counts: overall, among claims robust (or marginal) in the reference, robust in both,
    and the share of identical numbers and overlapping intervals."""
    both = table[table["in"] == "both"]
    robust_ref = both["robust_reference"] == "robust"
    robust_both = robust_ref & (both["robust_current"] == "robust")
    return {
        "claims": len(both),
        "same_verdict": _share(both["same_verdict"]),
        "same_verdict_robust_in_reference": _share(both.loc[robust_ref, "same_verdict"]),
        "same_verdict_robust_in_current": _share(both.loc[both["robust_current"] == "robust", "same_verdict"]),
        "same_verdict_robust_in_both": _share(both.loc[robust_both, "same_verdict"]),
        "same_verdict_marginal_in_reference": _share(both.loc[both["robust_reference"] == "marginal", "same_verdict"]),
        "overlap": _share(both["overlap"]),
        "identical": _share(both["identical"]),
        "current_only": int((table["in"] == "current only").sum()),
        "reference_only": int((table["in"] == "reference only").sum()),
    }


def _interval(r: pd.Series, side: str) -> str:
    if pd.isna(r[f"ci_low_{side}"]):
        return "—" if pd.isna(r[f"mean_{side}"]) else f"{r[f'mean_{side}']:+.4g}"
    return f"{r[f'mean_{side}']:+.4g} [{r[f'ci_low_{side}']:+.4g}, {r[f'ci_high_{side}']:+.4g}]"


def markdown(table: pd.DataFrame, current: str, reference: str) -> str:
    """COMPARISON.md: the two runs, the agreement, per item, and every verdict that turned."""
    s = summary(table)
    both = table[table["in"] == "both"]
    lines = [
        "# Comparison of two runs, claim by claim",
        "",
        f"- **Current**: {current}",
        f"- **Reference**: {reference}",
        "",
        f"{s['claims']} claims in both runs ({s['current_only']} only in the current run, {s['reference_only']} only "
        "in the reference). A claim is a verdict of the report (`claims.csv`); *robust* verdicts clear 0 by at "
        "least their interval's half-width on at least 5 paired seeds, *marginal* ones do not (REPORT.md, "
        '"All verdicts, and when a verdict is robust"). ' + UNDETERMINED,
        "",
        "| | agreement |",
        "|---|---|",
        f"| same verdict | {s['same_verdict']} |",
        f"| same verdict, claims robust in the reference | {s['same_verdict_robust_in_reference']} |",
        f"| same verdict, claims robust in the current run | {s['same_verdict_robust_in_current']} |",
        f"| same verdict, claims robust in both | {s['same_verdict_robust_in_both']} |",
        f"| same verdict, claims marginal in the reference | {s['same_verdict_marginal_in_reference']} |",
        f"| the two 95 % intervals overlap | {s['overlap']} |",
        f"| identical numbers (to the last bit) | {s['identical']} |",
        "",
        "| item | claims | same verdict | robust in the reference: same verdict | intervals overlap | identical |",
        "|---|---|---|---|---|---|",
    ]
    for item, g in both.groupby("item", sort=False):
        robust = g[g["robust_reference"] == "robust"]
        lines.append(
            f"| {item} | {len(g)} | {_share(g['same_verdict'])} | {_share(robust['same_verdict'])} | "
            f"{_share(g['overlap'])} | {_share(g['identical'])} |"
        )
    turned = both[both["same_verdict"] == False]  # noqa: E712 (a float column holding booleans and NaN)
    lines += ["", f"## Verdicts that turned ({len(turned)})", ""]
    if len(turned):
        lines += ["| claim | reference | current |", "|---|---|---|"]
        for _, r in turned.iterrows():
            lines.append(
                f"| {r['claim']} | {r['verdict_reference']} ({r['robust_reference']}): {_interval(r, 'reference')} | "
                f"{r['verdict_current']} ({r['robust_current']}): {_interval(r, 'current')} |"
            )
    else:
        lines.append("None.")
    return "\n".join(lines) + "\n"


def describe_run(folder: Path) -> str:
    """The commit and machine a run's REPORT.md and executed notebooks name."""
    report = folder / "REPORT.md"
    commit = "an unknown commit"
    if report.exists():
        for line in report.read_text().splitlines():
            if line.startswith("Produced by"):
                commit = line.split(" at ", 1)[-1].rstrip(".")
                break
    machines = set()
    for nb in sorted((folder / "notebooks").glob("[!.]*.ipynb")):
        meta = json.loads(nb.read_text()).get("metadata", {}).get("flexrel") or {}
        machines.add(describe_machine(meta.get("machine")))
    return f"{commit}; computed on {'; '.join(sorted(machines)) or 'an unrecorded machine'}"


def resolve(ref: str, profile: str, workdir: Path, repo: str | Path = REPO_ROOT) -> tuple[Path, str]:
    """The folder of the reference run and its name: ``ref`` itself when it is a folder, else the
    ``results/<profile>/`` of git ref ``ref`` of ``repo`` extracted under ``workdir`` (``git archive``)."""
    path = Path(ref)
    if path.is_dir():
        return path, f"folder `{shown(path, committed=True)}`"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", f"{ref}^{{commit}}"], cwd=repo, capture_output=True, text=True,
            check=True,
        ).stdout.strip()  # fmt: skip
    except subprocess.CalledProcessError as err:
        raise ValueError(
            f"REF={ref!r} is neither a folder nor a git ref (git: {err.stderr.strip()}); give a commit, a branch, "
            "a tag or the folder of another run"
        ) from err
    listed = subprocess.run(
        ["git", "ls-tree", "--name-only", commit, f"results/{profile}/"], cwd=repo, capture_output=True, text=True
    ).stdout
    if not listed.strip():
        kept = subprocess.run(
            ["git", "ls-tree", "--name-only", commit, "results/"], cwd=repo, capture_output=True, text=True
        ).stdout.split()
        profiles = sorted(Path(k).name for k in kept if "." not in Path(k).name)
        raise ValueError(
            f"commit {commit} ({ref}) holds no results/{profile}/: only "
            + (", ".join(f"results/{k}/" for k in profiles) or "no profile's results")
            + (" are" if len(profiles) > 1 else " is")
            + f" committed. To compare a run of the {profile!r} profile, give the folder of another run of it "
            f"(e.g. a copy of results/{profile}/ taken before rerunning: REF=/path/to/{profile}), "
            f"or rerun with PROFILE={profiles[0] if profiles else 'default'} against REF={ref}"
        )
    try:
        blob = subprocess.run(
            ["git", "archive", "--format=tar", commit, f"results/{profile}"], cwd=repo, capture_output=True,
            check=True,
        ).stdout  # fmt: skip
    except subprocess.CalledProcessError as err:
        said = err.stderr.decode(errors="replace") if isinstance(err.stderr, bytes) else str(err.stderr or "")
        raise ValueError(f"git could not read results/{profile}/ of {ref!r} (git: {said.strip()})") from err
    with tarfile.open(fileobj=BytesIO(blob)) as tar:
        tar.extractall(workdir, filter="data")
    return workdir / "results" / profile, f"git ref `{ref}` ({commit})"


def run(profile: str, ref: str, results_root: str | Path = REPO_ROOT / "results") -> tuple[Path, pd.DataFrame]:
    """Compare ``results/<profile>/`` with the run ``ref`` names; writes COMPARISON.md and
    comparison.csv beside the current run and returns the first's path and the table."""
    folder = results_dir(profile, results_root)
    if not (folder / "REPORT.md").exists():
        raise ValueError(f"{folder} holds no run (no REPORT.md): run `make reproduce PROFILE={profile}` first")
    with tempfile.TemporaryDirectory() as tmp:
        other, name = resolve(ref, profile, Path(tmp))
        if not other.is_dir() or not any(other.glob("*.csv")):
            raise ValueError(f"{name} holds no results for profile {profile!r} (no CSV in {other})")
        table = compare(claims(folder), claims(other))
        text = markdown(table, f"`{folder.relative_to(folder.parents[1])}`: {describe_run(folder)}",
                        f"{name}: {describe_run(other)}")  # fmt: skip
    save_table(table, folder, "comparison")
    return write_text(folder / "COMPARISON.md", text), table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="default")
    parser.add_argument("--ref", required=True, help="a git ref (commit, branch, tag) or the folder of another run")
    parser.add_argument("--results-root", default=str(REPO_ROOT / "results"))
    args = parser.parse_args(argv)
    try:
        path, table = run(args.profile, args.ref, args.results_root)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(path)
    print("\n".join(f"{k.replace('_', ' ')}: {v}" for k, v in summary(table).items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
