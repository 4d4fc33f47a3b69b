"""bench from Python (bench/api.py): run, results, leaderboard, report, load_run, compare.

The numbers are checked against the tidy table the runner wrote, against the
report's own Markdown, and (for compare) against a paired t-test recomputed
with scipy and a Holm correction written out here.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ttest_rel

import bench
from bench import api
from bench.cli import main
from bench.errors import ConfigError
from bench.report.tables import fmt

REPO = Path(__file__).resolve().parents[1]

SUITE = """
name = "apitest"
seeds = [0]
[evaluation]
k = [5, 10]
bootstrap = 50
[evaluation.systems]
enabled = false
[execution]
isolation = "none"
[[datasets]]
name = "synthetic"
params = {{ n_users = 150, n_items = 100, n_interactions = 3000, seed = 0 }}
[[splits]]
kind = "random"
[[splits]]
kind = "user_coldstart"
params = {{ user_fraction = 0.2, shots = [0, 5] }}
[[models]]
name = "pop"
[[models]]
name = "als"
params = {{ factors = {factors}, iterations = 3 }}
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[bench.Run, bench.Run]:
    """Two runs of the same suite on the same splits; only ALS's factors differ."""
    root = tmp_path_factory.mktemp("api")
    out = []
    for factors in (4, 16):
        path = root / f"suite{factors}.toml"
        path.write_text(SUITE.format(factors=factors), encoding="utf-8")
        out.append(bench.run(path, out=root / f"runs{factors}", progress=False))
    return out[0], out[1]


def test_run_returns_the_tidy_table_and_writes_the_report(runs):
    old, _new = runs
    assert (old.cells, old.failed) == (4, 0)
    assert old.report_error is None and (old.run_dir / "report.html").is_file()
    table = pd.read_csv(old.run_dir / "results.csv")  # what the runner wrote
    assert len(old.results) == len(table)
    assert set(old.results["model"]) == {"pop", "als"}
    assert bench.load_run(old.run_dir).results.equals(old.results)


def test_leaderboard_holds_the_rows_and_the_report_numbers(runs):
    run, _ = runs
    board = run.leaderboard("ndcg@10", segment="shots=5")
    assert list(board["model"]) == ["pop", "als"]
    frame = run.results
    for row in board.itertuples():
        source = frame[(frame["segment"] == "shots=5") & (frame["metric"] == "ndcg") & (frame["k"] == 10)
                       & (frame["model"] == row.model)].iloc[0]
        assert (row.value, row.ci_low, row.ci_high, row.n) == (source["value"], source["ci_low"],
                                                                source["ci_high"], source["n"])
    assert board["best"].sum() == 1
    # the Markdown leaderboard written by the report shows the same numbers
    markdown = (run.run_dir / "report.md").read_text(encoding="utf-8")
    section = markdown.split("segment shots=5")[1].split("###")[0]
    header = next(line for line in section.splitlines() if line.startswith("| model"))
    column = [c.strip() for c in header.strip("|").split("|")].index(r"ndcg@10")
    for row in board.itertuples():
        line = next(line for line in section.splitlines() if line.startswith(f"| {row.model} |"))
        cell = [c.strip() for c in line.strip("|").split("|")][column]
        assert re.sub(r"[*†\s]", "", cell) == fmt(row.value)
    # a zero-shot segment ALS cannot serve is "not served", never a number
    zero = run.leaderboard("ndcg@10", segment="shots=0").set_index("model")
    assert zero.loc["als", "status"] == "unsupported" and math.isnan(zero.loc["als", "value"])


def test_leaderboard_mistakes_name_what_exists(runs):
    run, _ = runs
    with pytest.raises(ConfigError, match=r"segment='shots=3' \(present: all, shots=0, shots=5\)"):
        run.leaderboard("ndcg@10", segment="shots=3")
    with pytest.raises(ConfigError, match="metric 'ndcg@50' is not in these leaderboards; choose one of"):
        run.leaderboard("ndcg@50")
    with pytest.raises(ConfigError, match=r"dataset='ml-100k' \(present: synthetic\)"):
        run.leaderboard("ndcg@10", dataset="ml-100k")
    assert set(run.leaderboard("ndcg@10", dataset="synthetic", split="random")["segment"]) == {"all"}


def test_load_run_of_a_wrong_folder_says_what_a_run_folder_is(tmp_path):
    from bench.report import ReportError

    with pytest.raises(ReportError, match="does not exist; pass a folder under reports/runs/"):
        bench.load_run(tmp_path / "nope")
    with pytest.raises(ReportError, match="has no results.json"):
        bench.load_run(tmp_path)


def test_report_writes_html_and_markdown_only_when_asked(runs, tmp_path):
    run, _ = runs
    html = run.report(tmp_path / "a.html")
    assert html.is_file() and not (tmp_path / "a.md").exists()
    run.report(tmp_path / "b.html", markdown=True)
    assert (tmp_path / "b.md").read_text(encoding="utf-8").startswith("## bench report: suite `apitest`")


def _holm(p: np.ndarray) -> np.ndarray:
    """Holm-Bonferroni written out: the i-th smallest of m finite p-values times (m - i), running max, cap 1."""
    out = np.full(len(p), np.nan)
    idx = [i for i in np.argsort(p, kind="stable") if np.isfinite(p[i])]
    running = 0.0
    for rank, i in enumerate(idx):
        running = max(running, p[i] * (len(idx) - rank))
        out[i] = min(running, 1.0)
    return out


def test_compare_gives_the_deltas_and_paired_tests_of_report_compare(runs, tmp_path):
    old, new = runs
    deltas = bench.compare(old, new)
    board = deltas[(deltas["split"] == "random") & (deltas["segment"] == "all")]
    assert set(board["model"]) == {"pop", "als"}
    # deltas from the two tidy tables
    for row in board.itertuples():
        metric, k = row.metric.split("@")
        pick = lambda f: f[(f["split"] == "random") & (f["segment"] == "all") & (f["model"] == row.model)  # noqa: E731
                           & (f["metric"] == metric) & (f["k"] == int(k))]["value"].iloc[0]
        assert row.old == pick(old.results) and row.new == pick(new.results)
        assert row.delta == pytest.approx(row.new - row.old, abs=1e-15)
    # p-values: scipy's paired t-test over per-user values (read by the report's reader), Holm over the board
    raw = []
    for row in board.itertuples():
        values = []
        for run in (new, old):
            f = run.results
            cid = f[(f["split"] == "random") & (f["model"] == row.model)]["cell_id"].iloc[0]
            per_user = run.data.per_user(str(cid), "all")
            values.append(per_user.column(row.metric))
        a, b = values
        if a is None or not np.isfinite(a).all():
            raw.append(np.nan)  # aggregate-only metric (coverage): no test
        elif np.allclose(a - b, (a - b)[0]):
            raw.append(1.0)  # identical per-user values: nothing to test (bench's convention)
        else:
            raw.append(ttest_rel(a, b).pvalue)
    expected = _holm(np.array(raw))
    np.testing.assert_allclose(board["p_adj"].to_numpy(), expected, rtol=1e-12, equal_nan=True)
    assert (board["significant"] == (expected < 0.05)).all()
    assert board[board["model"] == "pop"]["delta"].eq(0).all()  # pop did not change
    # and `bench report NEW --compare OLD` prints the same deltas
    assert main(["report", str(new.run_dir), "--compare", str(old.run_dir), "--out", str(tmp_path / "c.html")]) == 0
    markdown = (tmp_path / "c.md").read_text(encoding="utf-8")
    section = markdown.split("random split · segment all")[1].split("###")[0]
    line = next(line for line in section.splitlines() if line.startswith("| als |"))
    ndcg = board[(board["model"] == "als") & (board["metric"] == "ndcg@10")].iloc[0]
    mark = "" if not ndcg.significant else (" ▲" if ndcg.better else " ▼")
    assert f"({ndcg.delta:+.3g}{mark})" in line


def test_run_arguments_are_checked_before_any_cell(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(SUITE.format(factors=4), encoding="utf-8")
    with pytest.raises(ConfigError, match="models= names unknown model 'alss'; did you mean 'als'"):
        bench.run(path, models=["alss"], out=tmp_path / "o")
    with pytest.raises(ConfigError, match="datasets= names unknown dataset 'ml-1m'"):
        bench.run(path, datasets=["ml-1m"], out=tmp_path / "o")
    with pytest.raises(ConfigError, match="device = 'tpu' is not valid"):
        bench.run(path, device="tpu", out=tmp_path / "o")
    with pytest.raises(ConfigError, match="give a suite"):
        bench.run(out=tmp_path / "o")
    assert not (tmp_path / "o").exists()  # nothing ran


def test_run_with_a_dataframe_dataset_equals_the_same_data_by_name(tmp_path):
    """bench.run(suite, datasets=[bench.dataset_from_frame(...)]): the notebook path of the own-data issue.

    The frame is the built-in synthetic generator's interactions, so the same suite run on the synthetic
    dataset by name must give exactly the same accuracy rows (same split seed, same conversion).
    """
    import numpy as np
    import pandas as pd

    from bench.data import DataOptions, load_dataset

    params = {"n_users": 150, "n_items": 100, "n_interactions": 3000, "seed": 0}
    synthetic = load_dataset("synthetic", DataOptions(cache_dir=tmp_path / "cache"), None, **params)
    frame = pd.DataFrame({"u": synthetic.user, "i": synthetic.item, "t": synthetic.timestamp})
    mine = bench.dataset_from_frame("mine", frame, columns={"user": "u", "item": "i", "timestamp": "t"})
    assert (mine.n_users, mine.n_items, len(mine.user)) == (synthetic.n_users, synthetic.n_items,
                                                            len(synthetic.user))
    path = tmp_path / "suite.toml"
    path.write_text(SUITE.format(factors=4), encoding="utf-8")
    by_frame = bench.run(path, datasets=[mine], out=tmp_path / "frame", progress=False)
    by_name = bench.run(path, out=tmp_path / "name", progress=False)
    key = ["split", "segment", "model", "metric", "k"]
    acc = lambda run: run.results[run.results["k"] > 0].sort_values(key).reset_index(drop=True)  # noqa: E731
    a, b = acc(by_frame), acc(by_name)
    assert set(a["dataset"]) == {"mine"}
    # the frame carries no item categories, so it has no ild rows; every other row must match exactly
    both = a.merge(b, on=key, suffixes=("_frame", "_name"), validate="one_to_one")
    assert len(both) == len(a) > 0 and {"ndcg", "recall", "map"} <= set(both["metric"])
    assert set(b.merge(a, on=key, how="left", indicator=True)
               .query("_merge == 'left_only'")["metric"]) <= {"ild"}
    assert np.array_equal(both["value_frame"].to_numpy(), both["value_name"].to_numpy(), equal_nan=True)
    assert (both["status_frame"] == both["status_name"]).all()


def readme_python_example() -> str:
    """The first ```python block of the README's "From Python" section."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## From Python\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_the_readme_example_runs(tmp_path, monkeypatch):
    code = readme_python_example()
    assert "bench.run(" in code and "bench.compare(" in code
    monkeypatch.chdir(tmp_path)  # it writes reports/runs/ under the current folder
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(code, "README.md (From Python)", "exec"), namespace)
    run = namespace["run"]
    assert run.failed == 0 and set(run.results["model"]) == {"pop", "als"}
    board = namespace["board"]
    assert set(board["model"]) == {"pop", "als"} and board["value"].notna().all()
    assert (tmp_path / "smoke-report.html").is_file() and (tmp_path / "smoke-report.md").is_file()
    deltas = namespace["deltas"]
    assert len(deltas) and (deltas["delta"] == 0).all() and not deltas["significant"].any()
