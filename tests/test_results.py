"""The evidence under results/: the committed tables and README blocks are what the committed runs give.

The first test rebuilds, from the files git tracks under results/ (what a fresh clone has), every result's report
with the plain `tfdistill report` command and the README blocks with `tfdistill results`, and compares them byte for
byte with the committed ones: no table can drift from its evidence. The others test the machinery on made-up runs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, run_cli
from test_report import make_sweep

from tfdistill.errors import ConfigError
from tfdistill.report.results import BEGIN, END, REPORT_FILES, build_results, find_results


def _committed_copy(dest: Path) -> Path:
    """The files git tracks under results/ plus README.md and docs/results.md, copied into ``dest`` (a fresh clone's
    view)."""
    try:
        files = subprocess.run(["git", "ls-files", "results", "README.md", "docs/results.md"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the committed files are unknown")
    for f in files:
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, dest / f)
    return dest


def test_committed_reports_and_readme_blocks_are_what_the_committed_runs_give(tmp_path):
    repo = _committed_copy(tmp_path / "clone")
    results = find_results(repo / "results")
    assert results, "results/ holds no result (results/<name>/result.yaml)"
    for res in results:
        if not res.sections:
            continue
        runs = res.runs_dir.relative_to(repo).as_posix()
        out = tmp_path / "report" / res.name
        baselines = [a for _, shown in res.baselines for a in ("--baseline", shown)]
        r = run_cli(["report", runs, "--out-dir", str(out), "--no-plots", *baselines], cwd=repo)
        assert r.returncode == 0, r.stderr
        for name in REPORT_FILES:
            committed = (res.path / "report" / name).read_text()
            assert (out / name).read_text() == committed, f"results/{res.name}/report/{name} is stale: run " \
                                                          "`tfdistill results` and commit"
    assert build_results(repo / "results", repo / "README.md", check=True) == []


def _result(tmp_path: Path, **info) -> Path:
    """A results/ folder with one made-up result (the golden sweep of test_report) and a README with a block."""
    results = tmp_path / "results"
    res = results / "golden_result"
    make_sweep(res)  # writes res/golden: a sweep folder
    (res / "result.yaml").write_text(json.dumps({"title": "A made-up result", "runs": "golden",
                                                 "commands": ["tfdistill sweep spec.yaml"], **info}))
    (res / "README.md").write_text(f"# Golden\n\nhand-written\n\n{BEGIN}\n{END}\n\nafter\n")
    (tmp_path / "README.md").write_text(f"# Project\n\n## Results\n\n{BEGIN}\nSTALE TEXT\n{END}\n\n## More\n")
    return results


def test_build_writes_reports_and_blocks_and_check_finds_drift(tmp_path):
    results = _result(tmp_path, shows="It shows X.", does_not_show="It does not show Y.")
    readme = tmp_path / "README.md"
    docs = tmp_path / "docs" / "results.md"
    assert not docs.exists()
    written = build_results(results, readme, plots=False)
    res = results / "golden_result"
    assert {p.name for p in written} == {*REPORT_FILES, "README.md", "results.md"} and readme in written
    # the README: a compact summary (a line per result: Welch's and the paired intervals), linking to the docs page
    text = readme.read_text()
    assert text.startswith("# Project\n\n## Results\n\n" + BEGIN) and text.endswith(END + "\n\n## More\n")
    assert "STALE TEXT" not in text
    assert "- **[A made-up result](results/golden_result/)** (incomplete: 9 of 12 runs finished). Gain over CE, " \
        "last-epoch top-1 (%), with 95 % intervals (Welch | paired by seed): resnet8: tfd +1.20 [-0.90, +3.30] | " \
        "+1.20 [+0.54, +1.86], n=3; resnet14: tfd +1.50 | +2.00, n=1." in text
    assert "[results.md](docs/results.md)" in text and "|---|" not in text
    # docs/results.md (created with a title and the markers): the full blocks
    text = docs.read_text()
    assert text.startswith("# Results\n\n" + BEGIN) and text.endswith(END + "\n")
    # the headline: n, last and best epoch, the gain with its Welch interval, the paired gain; flags for n < 3;
    # links; pairing; commands (skipped by the docs example runner)
    assert "| resnet8 | tfd | 3/3 | 72.20 ± 0.82 (n=3) | 72.63 ± 0.65 (n=3) | +1.20 | [-0.90, +3.30] | no | +1.13 | " \
        "+1.20 [+0.54, +1.86] (3) | yes | +1.13 [+0.26, +2.01] |" in text
    assert "| resnet14 | ce | 2/3 ⚠ |" in text
    assert "- tfd: paired with ce on seeds 0, 1, 2 (n=3): runs made before fingerprints;" in text
    assert "](../results/golden_result/report/report.md)" in text
    assert "**Incomplete** ⚠: 9 of 12 planned runs finished (1 diverged, 1 failed, 1 not finished" in text
    assert "Continue with `tfdistill sweep spec.yaml`" in text
    assert '<!-- docs-test: skip "the commands that produced this result: they train it in full" -->\n```bash\n' \
        "tfdistill sweep spec.yaml\n```" in text
    assert "*What it shows:* It shows X. *What it does not show:* It does not show Y." in text
    assert (res / "README.md").read_text().startswith("# Golden\n\nhand-written\n\n" + BEGIN)
    assert "](./report/report.md)" in (res / "README.md").read_text()
    assert (res / "report" / "report.md").read_text().startswith("# tfdistill report\n\nRuns under "
                                                                 "`results/golden_result/golden`")
    assert build_results(results, readme, check=True) == []
    assert build_results(results, readme, plots=False) == []  # nothing to rewrite

    # a run whose summary changes: its report and both blocks are stale; --check names them and exits 1
    summary = res / "golden" / "resnet8_tfd_s0" / "summary.json"
    s = json.loads(summary.read_text())
    s["last_top1"] = 90.0
    summary.write_text(json.dumps(s))
    stale = build_results(results, readme, check=True)
    assert {p.name for p in stale} == {*REPORT_FILES, "README.md", "results.md"} and readme in stale
    assert build_results(results, readme, check=True, docs=None, plots=False) != []
    r = run_cli(["results", str(results), "--readme", str(readme), "--check"], cwd=tmp_path)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "stale:" in r.stderr and "report.md" in r.stderr
    r = run_cli(["results", str(results), "--readme", str(readme), "--no-plots"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert build_results(results, readme, check=True) == []


def test_a_run_still_training_counts_as_not_finished(tmp_path):
    """A sweep adds runs while results are committed: a run directory without summary.json or FAILED is read as
    a planned run (as in a clone that holds only the ended runs), so the block does not depend on it."""
    results = _result(tmp_path)
    readme = tmp_path / "README.md"
    build_results(results, readme, plots=False)
    before = readme.read_text()
    unfinished = results / "golden_result" / "golden" / "resnet14_tfd_s1"
    assert (unfinished / "metrics.jsonl").is_file() and not (unfinished / "summary.json").exists()
    with open(unfinished / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 2, "lr": 0.05, "loss": 1.0}) + "\n")
    assert build_results(results, readme, check=True) == []
    shutil.rmtree(unfinished)
    assert build_results(results, readme, check=True) == []
    assert readme.read_text() == before


def test_a_readme_without_the_markers_is_one_clear_error(tmp_path):
    results = _result(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text("# Project\n")
    with pytest.raises(ConfigError, match="no generated results block.*results:begin"):
        build_results(results, readme, plots=False)
    (results / "golden_result" / "result.yaml").write_text("title: [unclosed\n")
    with pytest.raises(ConfigError, match="result.yaml"):
        find_results(results)


def _newer_result(results: Path, baselines: list[str]) -> Path:
    """A second made-up result: label smoothing on resnet8 (seeds 0-2, last 72/73/74), no CE runs of its own; its
    result.yaml names ``baselines``."""
    from test_report import write_run

    from tfdistill.sweep import spec_from_raw
    from tfdistill.sweep.spec import expand

    res = results / "newer"
    spec = spec_from_raw({"name": "newer", "recipe": "cifar100/paper", "out_dir": str(res), "seeds": [0, 1, 2],
                          "models": ["resnet8"], "overrides": ["epochs=3"], "grid": {"methods": ["ls"]}})
    plan = expand(spec)
    plan.sweep_dir.mkdir(parents=True)
    (plan.sweep_dir / "sweep.yaml").write_text(json.dumps(plan.resolved()))
    for r in plan.runs:
        write_run(r.run_dir, r.cfg, (72.0 + r.seed, 72.5 + r.seed))
    (res / "result.yaml").write_text(json.dumps({"title": "Newer methods", "runs": "newer", "order": 200,
                                                 "baselines": baselines, "commands": ["tfdistill sweep n.yaml"]}))
    (res / "README.md").write_text(f"# Newer\n\n{BEGIN}\n{END}\n")
    return res


def test_baselines_of_another_result_join_its_report_and_are_named(tmp_path):
    """A result compared with another result's committed CE runs instead of training them again: the gains and
    intervals use them, the report and the block say where they came from, and they are neither counted among the
    result's own runs nor in its training time; `tfdistill report --baseline` gives the same tables."""
    results = _result(tmp_path)
    res = _newer_result(results, ["../golden_result/golden/resnet8_ce_s*"])
    readme = tmp_path / "README.md"
    build_results(results, readme, plots=False)
    block = (res / "README.md").read_text()
    assert "**Complete**: all 3 planned runs finished." in block
    assert "Baselines not trained here: ce x3 from `results/golden_result/golden`" in block
    assert "| resnet8 | ce | 3/3 | 71.00 ± 1.00 (n=3) |" in block  # the borrowed CE runs (70, 71, 72)
    assert "| resnet8 | ls | 3/3 | 73.00 ± 1.00 (n=3) | 73.50 ± 1.00 (n=3) | +2.00 | [-0.27, +4.27] |" in block
    assert "training time: 0.5 min in all (sum over finished runs, baselines not included)" in block
    assert "Newer methods](results/newer/)** (complete, 3 runs). Gain over CE" in readme.read_text()
    data = json.loads((res / "report" / "report.json").read_text())
    assert data["sections"][0]["baselines_from"] == [f"results/golden_result/golden/resnet8_ce_s{s}"
                                                     for s in range(3)]
    # the plain command, from the repository folder, with the same runs named
    out = tmp_path / "cli"
    r = run_cli(["report", "results/newer/newer", "--out-dir", str(out), "--no-plots",
                 "--baseline", "results/golden_result/golden/resnet8_ce_s*"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for name in REPORT_FILES:
        assert (out / name).read_text() == (res / "report" / name).read_text(), name
    r = run_cli(["report", "results/newer/newer", "--baseline", "results/nothing_*"], cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == \
        "tfdistill: error: --baseline results/nothing_*: no run directory (a folder with config.yaml) matches"


def test_baselines_must_exist_and_have_finished(tmp_path):
    from tfdistill.errors import RunDirError

    results = _result(tmp_path)
    _newer_result(results, ["../golden_result/golden/resnet8_kd_s*"])
    with pytest.raises(ConfigError, match=r"baselines pattern '\.\./golden_result/golden/resnet8_kd_s\*' matches "
                                          "no run directory"):
        find_results(results)
    (results / "newer" / "result.yaml").write_text(json.dumps({"runs": "newer", "baselines": [
        "../golden_result/golden/resnet14_tfd_s1"]}))  # the made-up sweep's unfinished run
    with pytest.raises(RunDirError, match="baseline run .*resnet14_tfd_s1 is unfinished: only finished runs"):
        find_results(results)
