"""Every verdict of a run, read back from its CSVs (``paper.claims``), and two runs compared claim by
claim (``paper.compare``): verdicts and robustness on hand-made tables, the same verdicts as the
notebooks' own tables (a second route to each), and the comparison of a run with itself, with a
perturbed copy, and with a git ref."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from flexrel_core.paper import claims, compare


def _fig2_summary(gains: list[tuple[float, float, float]]) -> pd.DataFrame:
    rows = []
    for t, (gain, low, high) in zip((1.0, 2.0, 5.0), gains, strict=True):
        rows.append(
            {"condition": "shifted", "schedule": "one-shot", "threshold_points": t, "n_seeds": 10}
            | {"max_p_magnitude": 0.9, "max_p_flexrel": 0.9 + gain}
            | {"gain_flexrel": gain, "gain_flexrel_ci_low": low, "gain_flexrel_ci_high": high}
        )
    return pd.DataFrame(rows)


def _fig2_folder(tmp_path, gains) -> None:
    _fig2_summary(gains).to_csv(tmp_path / "fig2_summary.csv", index=False)
    diff = {"condition": "shifted", "schedule": "one-shot", "comparison": "flexrel - magnitude", "n": 10, "sd": 0.1}
    rows = [diff | {"p": 0.0, "mean": 0.0, "ci_low": 0.0, "ci_high": 0.0}]
    rows += [diff | {"p": 0.95, "mean": 0.05, "ci_low": 0.01, "ci_high": 0.09}]  # half-width 0.04: clears 0 by 0.01
    pd.DataFrame(rows).to_csv(tmp_path / "fig2_differences.csv", index=False)


def test_claims_on_a_hand_made_figure_2(tmp_path):
    # half-widths 0.02: the first clears 0 by 0.02 (robust), the second by 0.005 (marginal), the third robust
    _fig2_folder(tmp_path, [(0.04, 0.02, 0.06), (0.025, 0.005, 0.045), (0.05, 0.03, 0.07)])
    t = claims.claims(tmp_path).set_index("claim")
    reach = t.loc["fig2 · reach within 2 points · shifted · one-shot · flexrel − magnitude"]
    assert (reach["verdict"], reach["robust"], reach["kind"]) == ("higher", "marginal", "interval")
    assert t.loc["fig2 · reach within 1 points · shifted · one-shot · flexrel − magnitude", "robust"] == "robust"
    claim = t.loc["fig2 · the claim · shifted · one-shot"]
    assert (claim["verdict"], claim["robust"]) == ("holds", "marginal")  # the marginal threshold can turn "holds"
    acc = t.loc["fig2 · accuracy at p = 0.95 · shifted · one-shot · flexrel − magnitude"]
    assert (acc["verdict"], acc["robust"]) == ("higher", "marginal")
    assert not any("p = 0 " in c for c in t.index)  # nothing pruned: no claim
    # a folder without any item's CSV states no claim
    assert claims.claims(tmp_path / "nothing").empty


def test_the_claims_are_the_verdicts_the_notebooks_computed(run_quick):
    """Second route: each claim recomputed from the CSVs equals the verdict and robustness columns the
    notebooks wrote with their own functions."""
    out = run_quick("fig2")
    for name in ("baselines", "fig4", "ablations", "robustness"):
        run_quick(name)
    t = claims.claims(out).set_index("claim")
    # fig3 too where an earlier test of the session ran its notebook in the shared quick results
    assert (
        {"fig2", "baselines", "fig4", "ablations", "map", "paper"}
        <= set(t["item"])
        <= {"fig2", "baselines", "fig3", "fig4", "ablations", "map", "paper"}
    )
    paper = t[t["item"] == "paper"]  # the paper's claims, each read back from the item's own claim
    assert paper.loc["paper · higher pruning factors at the same accuracy", "mean"] == pytest.approx(
        t.loc["fig2 · reach within 2 points · in-distribution · one-shot · flexrel − magnitude", "mean"]
    )
    assert set(t["robust"]) <= {"robust", "marginal", "undetermined"}
    summary = pd.read_csv(out / "fig2_summary.csv")
    for r in summary.itertuples():
        if np.isnan(r.gain_flexrel_ci_low):
            continue
        c = t.loc[
            f"fig2 · reach within {r.threshold_points:g} points · {r.condition} · {r.schedule} · flexrel − magnitude"
        ]
        assert (c["verdict"], c["robust"]) == (r.verdict_flexrel, r.robust_flexrel)
    cells = pd.read_csv(out / "robustness_map.csv")
    for r in cells.itertuples():
        c = t.loc[f"map · {r.setting} · {r.schedule} · {r.condition}"]
        assert (c["verdict"], c["robust"]) == (r.verdict, r.verdict_robust)
    for r in pd.read_csv(out / "baselines_verdicts.csv").itertuples():
        c = t.loc[f"baselines · {r.setting} · {r.schedule} · {r.condition} · flexrel − {r.baseline}"]
        assert (c["verdict"], c["robust"]) == (r.verdict, r.robust)
    section = (out / "report" / "fig4.md").read_text()
    for r in t[t["kind"] == "choice"].itertuples():
        assert r.verdict.replace("δ = ", "recommended δ = ") in section


def test_a_run_compared_with_itself_agrees_everywhere_and_a_perturbed_copy_shows_what_turned(tmp_path):
    _fig2_folder(tmp_path, [(0.04, 0.02, 0.06), (0.025, 0.005, 0.045), (0.05, 0.03, 0.07)])
    same = compare.compare(claims.claims(tmp_path), claims.claims(tmp_path))
    s = compare.summary(same)
    assert s["same_verdict"] == s["identical"] == f"{len(same)} of {len(same)} (100.0 %)"
    other = tmp_path / "other"
    other.mkdir()
    _fig2_folder(other, [(0.04, 0.02, 0.06), (0.015, -0.005, 0.035), (0.05, 0.03, 0.07)])  # 2 points: now straddles 0
    table = compare.compare(claims.claims(other), claims.claims(tmp_path))
    turned = table[table["same_verdict"] == False]["claim"].tolist()  # noqa: E712
    assert turned == [
        "fig2 · reach within 2 points · shifted · one-shot · flexrel − magnitude",
        "fig2 · the claim · shifted · one-shot",
        "paper · higher pruning factors at the same accuracy",  # the paper's claim, read from Figure 2's
    ]
    text = compare.markdown(table, "current", "reference")
    assert "## Verdicts that turned (3)" in text and "holds partly" in text
    assert compare.summary(table)["same_verdict_robust_in_reference"].startswith("2 of 2")  # only marginal ones turned


def test_compare_reads_a_git_ref_and_refuses_what_is_neither_ref_nor_folder(tmp_path):
    repo = tmp_path / "repo"
    (repo / "results" / "default").mkdir(parents=True)
    _fig2_folder(repo / "results" / "default", [(0.04, 0.02, 0.06), (0.03, 0.01, 0.05), (0.05, 0.03, 0.07)])
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "a run"], check=True)
    shutil.rmtree(repo / "results")  # the working tree no longer holds it: the ref does
    folder, name = compare.resolve("HEAD", "default", tmp_path / "work", repo=repo)
    assert name.startswith("git ref `HEAD`") and len(claims.claims(folder)) == 6  # 5 and the paper's
    with pytest.raises(ValueError, match="neither a folder nor a git ref"):
        compare.resolve("no-such-ref", "default", tmp_path / "work2", repo=repo)
