"""The HTML/Markdown report, rendered from a small real run and from a hand-built run folder.

The real run (synthetic data, pop / random / ALS, every split kind) goes
through ``bench run`` exactly as a user's would, with a hostile model label and
a model that fails with hostile error text, so escaping is tested on the text
paths the report really takes. The hand-built folder has per-user values
designed so the significance markers are known in advance.
"""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from baselines.simple import Pop
from bench import registry
from bench import stats as bench_stats
from bench.cli import main
from bench.protocol import Capabilities
from bench.report import load_run, write_report
from bench.report import tables
from bench.report.markdown import md_escape
from bench.report.plots import pareto_front
from bench.results import atomic_write_json, atomic_write_npz, write_tables

HOSTILE_LABEL = "<script>alert('label')</script>"
HOSTILE_ERROR = "<img src=x onerror=alert(1)> & <script>alert('error')</script>"
HOSTILE_MODEL = "report-test-hostile"

TINY_SUITE = f"""
name = "report-tiny"
description = "Report tests: every split kind on small synthetic data <b>not bold</b>"
seeds = [0]

[evaluation]
k = [5, 10]
bootstrap = 100

[evaluation.systems]
warmup = 2
latency_requests = 100  # p99 needs >= 100 timed requests (bench.specs.MIN_REQUESTS)
batch_sizes = [16, 0]
max_seconds = 0.5

[[datasets]]
name = "synthetic"
params = {{ n_users = 200, n_items = 150, n_interactions = 5000, seed = 0 }}

[[splits]]
kind = "random"

[[splits]]
kind = "user_coldstart"
params = {{ user_fraction = 0.25, shots = [0, 1, 3] }}

[[splits]]
kind = "item_coldstart"
params = {{ item_fraction = 0.2 }}

[[models]]
name = "pop"
label = "{HOSTILE_LABEL}"

[[models]]
name = "random"

[[models]]
name = "als"
params = {{ factors = 8, iterations = 5 }}

[[models]]
name = "{HOSTILE_MODEL}"
"""


class HostileFailure(Pop):
    """Fails in fit with an error message full of markup.

    It declares no optional capability, so suites that select models by
    capability (in other tests of the same session) never pick it up.
    """

    name = HOSTILE_MODEL
    capabilities = Capabilities()

    def fit(self, train):  # noqa: ANN001
        raise RuntimeError(HOSTILE_ERROR)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real `bench run` of the tiny suite; the report is written at its end."""
    if HOSTILE_MODEL not in registry.models.names():
        registry.models.register(HOSTILE_MODEL, HostileFailure)
    root = tmp_path_factory.mktemp("report-run")
    suite = root / "tiny.toml"
    suite.write_text(TINY_SUITE, encoding="utf-8")
    code = main(["run", "--suite", str(suite), "--out", str(root / "runs"), "--no-download"])
    assert code == 1  # the hostile model's cells fail; the others finish
    (run_dir,) = list((root / "runs").iterdir())
    return run_dir


@pytest.fixture(scope="session")
def tiny_html(tiny_run: Path) -> str:
    return (tiny_run / "report.html").read_text(encoding="utf-8")


def test_run_writes_report_and_markdown(tiny_run: Path) -> None:
    assert (tiny_run / "report.html").stat().st_size > 10_000
    assert (tiny_run / "report.md").is_file()
    assert (tiny_run / "report.html").stat().st_mode & 0o044  # shareable, not private to the owner


def test_header_carries_provenance(tiny_run: Path, tiny_html: str) -> None:
    prov = json.loads((tiny_run / "provenance.json").read_text())
    frame = pd.read_csv(tiny_run / "results.csv")
    assert prov["git"]["commit"] in tiny_html
    for fingerprint in frame["split_fingerprint"].unique():
        assert fingerprint in tiny_html
    assert f"numpy {prov['packages']['numpy']}" in tiny_html
    assert html.escape(prov["machine"]["cpu"]) in tiny_html
    assert "report-tiny" in tiny_html and "synthetic" in tiny_html
    assert "&lt;b&gt;not bold&lt;/b&gt;" in tiny_html  # the suite description is data too


def test_no_script_no_network_and_data_escaped(tiny_html: str) -> None:
    assert "<script" not in tiny_html.lower()
    assert "onerror=" not in tiny_html.replace("onerror=alert(1)&gt;", "")  # only inside escaped text
    for hostile in (HOSTILE_LABEL, HOSTILE_ERROR):
        assert hostile not in tiny_html and hostile in html.unescape(tiny_html)
        assert "&lt;script&gt;alert(" in tiny_html
    for attribute in re.findall(r'(?:src|href)="([^"]*)"', tiny_html):
        assert attribute.startswith(("data:image/svg+xml;base64,", "#")), attribute
    assert "Content-Security-Policy" in tiny_html


def test_leaderboard_values_and_best_match_results_table(tiny_run: Path) -> None:
    frame = pd.read_csv(tiny_run / "results.csv")
    boards = {(b.split, b.segment): b for b in tables.leaderboards(load_run(tiny_run))}
    assert set(boards) == {("random", "all"), ("user_coldstart", "shots=0"), ("user_coldstart", "shots=1"),
                           ("user_coldstart", "shots=3"), ("item_coldstart", "cold-items")}
    ok = frame[(frame["status"] == "ok") & (frame["k"] > 0)]
    for (split, segment), board in boards.items():
        rows = ok[(ok["split"] == split) & (ok["segment"] == segment)]
        for metric, higher in (("ndcg", True), ("recall", True), ("arp", False)):
            values = rows[(rows["metric"] == metric) & (rows["k"] == 10)].set_index("model")["value"]
            for model, value in values.items():
                assert board.cell(model, f"{metric}@10").value == pytest.approx(value)
            best = values.idxmax() if higher else values.idxmin()
            assert board.cell(best, f"{metric}@10").best
            assert sum(board.cell(m, f"{metric}@10").best for m in board.models) == (values == values[best]).sum()


def test_unsupported_shown_as_not_served_and_failure_with_error(tiny_run: Path, tiny_html: str) -> None:
    boards = {(b.split, b.segment): b for b in tables.leaderboards(load_run(tiny_run))}
    zero_shot = boards[("user_coldstart", "shots=0")]
    assert zero_shot.cell("als", "ndcg@10").status == "unsupported"
    assert zero_shot.cell("als", "ndcg@10").text == "not served"
    assert boards[("item_coldstart", "cold-items")].cell(HOSTILE_LABEL, "ndcg@10").status == "unsupported"
    # it fails in fit where it can serve (the warm split); where it can serve nothing it is never fitted
    assert boards[("random", "all")].cell(HOSTILE_MODEL, "ndcg@10").status == "failed"
    assert zero_shot.cell(HOSTILE_MODEL, "ndcg@10").status == "unsupported"
    assert tiny_html.count("not served") >= 3
    assert "failed" in tiny_html and "RuntimeError" in tiny_html


def test_significance_markers_match_scipy_on_the_per_user_files(tiny_run: Path) -> None:
    """Re-derive the ≈ markers of one column straight from the per-user files with scipy."""
    from scipy.stats import ttest_rel

    run = load_run(tiny_run)
    board = next(b for b in tables.leaderboards(run) if b.segment == "shots=3")
    column = "ndcg@10"
    frame = run.frame
    rows = frame[(frame["segment"] == "shots=3") & (frame["metric"] == "ndcg") & (frame["k"] == 10)
                 & (frame["status"] == "ok")]

    def per_user(model: str) -> pd.Series:
        cid = rows[rows["model"] == model]["cell_id"].iloc[0]
        with np.load(tiny_run / "cells" / cid / "per_user-shots=3.npz") as npz:
            cols = list(npz["columns"])
            return pd.Series(npz["values"][:, cols.index(column)], index=npz["users"])

    best = next(m for m in board.models if board.cell(m, column).best)
    others = [m for m in rows["model"] if m != best]
    raw = [ttest_rel(per_user(best), per_user(m).reindex(per_user(best).index)).pvalue for m in others]
    order = np.argsort(raw)
    holm = np.empty(len(raw))
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, raw[i] * (len(raw) - rank)))
        holm[i] = running
    for model, p in zip(others, holm):
        assert board.cell(model, column).p_adj == pytest.approx(p)
        assert board.cell(model, column).tied == (p >= tables.ALPHA)


def test_plots_inline_for_tradeoff_and_coldstart(tiny_html: str) -> None:
    images = re.findall(r'<img src="data:image/svg\+xml;base64,([^"]+)"', tiny_html)
    assert len(images) >= 5  # trade-off per split (3), k-shot curve, warm/cold bars
    import base64

    for data in images:
        assert base64.b64decode(data).lstrip().startswith(b"<?xml")
    for section in ('id="tradeoff"', 'id="coldstart"', 'id="systems"', 'id="models"', 'id="leaderboards"'):
        assert section in tiny_html
    assert "latency p50" in tiny_html and "throughput users/s, batch 16" in tiny_html
    systems = tiny_html.split('id="systems"')[1].split('id="models"')[0]
    assert re.search(r"<td>\d[\d.]* (µs|ms)</td>", systems)  # latencies in human units, not raw floats
    assert not re.search(r"<td>[-\d.]+e[-+]\d+</td>", systems)
    assert "Skipped: no real-time replay" in tiny_html  # absent sections say so


def test_markdown_summary(tiny_run: Path) -> None:
    text = (tiny_run / "report.md").read_text(encoding="utf-8")
    assert "<script" not in text
    assert md_escape(HOSTILE_LABEL) in text
    assert "| model | precision@10 | recall@10 | ndcg@10" in text
    assert "*not served*" in text and "*failed*" in text
    assert re.search(r"\*\*0\.\d+\*\*", text)  # a best value in bold
    assert "Holm" in text


def test_markdown_escape_neutralises_markup_and_table_pipes() -> None:
    assert md_escape("a|b") == r"a\|b"
    assert md_escape("<b>x</b>") == "&lt;b&gt;x&lt;/b&gt;"
    assert md_escape("snake_case*") == r"snake\_case\*"


# -- a hand-built run: significance known in advance -------------------------------

N_USERS = 40


def _hand_run(root: Path, name: str, values: dict[str, np.ndarray | None], seeds: tuple[int, ...] = (0,),
              cpu: str = "hand CPU") -> Path:
    """A run folder with one segment, metrics ndcg@10 (per user) and coverage@10 (aggregate), per seed."""
    run_dir = root / name
    users = np.arange(N_USERS)
    rows = []
    for seed in seeds:
        for index, (model, per_seed) in enumerate(values.items()):
            per_user = per_seed.get(seed) if isinstance(per_seed, dict) else per_seed  # {seed: values} or same
            cid = f"cell{index}s{seed}"
            base = {"run_id": name, "suite": "hand", "dataset": "toy", "conversion": "", "split": "random",
                    "split_params": "{}", "split_fingerprint": f"fp{seed}", "protocol": "full", "seed": seed,
                    "model": model, "model_name": "pop", "params": "{}", "segment": "all", "cell_id": cid}
            if per_user is None:  # cannot serve this segment
                for metric in ("ndcg", "coverage"):
                    rows.append(base | {"metric": metric, "k": 10, "value": float("nan"), "ci_low": float("nan"),
                                        "ci_high": float("nan"), "n": 0, "status": "unsupported"})
                cell = {"model": model, "status": "ok", "segments": {"all": {"status": "unsupported"}}}
            else:
                atomic_write_npz(run_dir / "cells" / cid / "per_user-all.npz", users=users,
                                 values=np.column_stack([per_user, np.full(N_USERS, np.nan)]),
                                 columns=np.array(["ndcg@10", "coverage@10"]))
                rows.append(base | {"metric": "ndcg", "k": 10, "value": float(per_user.mean()), "ci_low": 0.0,
                                    "ci_high": 1.0, "n": N_USERS, "status": "ok"})
                rows.append(base | {"metric": "coverage", "k": 10, "value": 0.1 * (index + 1),
                                    "ci_low": float("nan"), "ci_high": float("nan"), "n": N_USERS, "status": "ok"})
                cell = {"model": model, "status": "ok", "segments": {"all": {"status": "ok"}}}
            atomic_write_json(run_dir / "cells" / cid / "cell.json", cell | {"dataset": "toy", "split": "random",
                                                                          "seed": seed, "rows": []})
    atomic_write_json(run_dir / "config.json", {"name": "hand", "models": [{"label": m} for m in values],
                                                "splits": [{"kind": "random"}], "seeds": list(seeds)})
    write_tables(run_dir, rows, {"created": "2026-01-01T00:00:00+00:00", "git": {"commit": "abc"},
                                 "machine": {"cpu": cpu, "cpu_count": 2}, "device": "cpu"})
    return run_dir


def _designed_values() -> dict[str, np.ndarray | None]:
    best = np.array([1.0] * 30 + [0.0] * 10)
    close = best.copy()
    close[:2] = 0.0  # two users worse: mean diff 0.05, t = 1.43 with 39 df, p = 0.16 (not significant)
    return {"best": best, "close": close, "floor": np.zeros(N_USERS), "cannot": None}


def test_significance_hand_worked(tmp_path: Path) -> None:
    run = load_run(_hand_run(tmp_path, "hand", _designed_values()))
    (board,) = tables.leaderboards(run)
    assert board.cell("best", "ndcg@10").best and board.cell("best", "ndcg@10").value == pytest.approx(0.75)
    close, floor = board.cell("close", "ndcg@10"), board.cell("floor", "ndcg@10")
    # Holm over two tests: floor's tiny p is doubled; close's (the larger) is kept, 0.159 by hand
    assert close.tied and close.p_adj == pytest.approx(0.1598, abs=2e-3)
    assert not floor.tied and floor.p_adj < 1e-6
    assert board.cell("cannot", "ndcg@10").text == "not served"
    coverage = {m: board.cell(m, "coverage@10") for m in board.models}
    assert coverage["floor"].best and not any(c.tested for c in coverage.values())  # aggregate: no test


def test_several_seeds_are_not_extra_users(tmp_path: Path) -> None:
    """Two seeds with the same values: still 40 users, so the same p = 0.16 as with one seed (not significant).

    Pooling (seed, user) pairs as 80 independent users used to turn it into p = 0.045 (t = 2.039, 79 df):
    duplicating a seed must not manufacture significance. Each user's values are averaged over seeds first.
    """
    one = load_run(_hand_run(tmp_path, "one", _designed_values()))
    run = load_run(_hand_run(tmp_path, "seeds", _designed_values(), seeds=(0, 1)))
    (board_one,) = tables.leaderboards(one)
    (board,) = tables.leaderboards(run)
    assert board.seeds == [0, 1]
    close = board.cell("close", "ndcg@10")
    assert close.value == pytest.approx(0.70)
    assert close.p_adj == pytest.approx(0.1598, abs=2e-3) and close.tied  # as with one seed (hand-worked above)
    assert close.p_adj == pytest.approx(board_one.cell("close", "ndcg@10").p_adj)
    # the CI is over 40 users: the same bootstrap as one seed's 40 values, not a narrower one over 80 pairs
    low, high = bench_stats.bootstrap_ci(_designed_values()["close"])
    assert (close.ci_low, close.ci_high) == pytest.approx((low[0], high[0]))
    assert close.seed_sd == 0.0 and close.seed_text.startswith("SD 0")  # identical seeds: no spread
    assert any(note.startswith("Seeds 0, 1:") for note in board.notes)


def test_seed_spread_is_shown_apart_from_the_user_ci(tmp_path: Path) -> None:
    """Seed 1 lowers two of best's users to 0: per-seed means 0.75 and 0.70, SD = 0.05 / sqrt(2) = 0.0354.

    Per user (mean over seeds) those two users score 0.5, so the mean over users is (28 + 2 * 0.5) / 40 = 0.725.
    """
    designed = _designed_values()
    best_1 = designed["best"].copy()
    best_1[:2] = 0.0
    values = dict(designed, best={0: designed["best"], 1: best_1})
    (board,) = tables.leaderboards(load_run(_hand_run(tmp_path, "spread", values, seeds=(0, 1))))
    best = board.cell("best", "ndcg@10")
    assert best.value == pytest.approx(0.725)
    assert best.seed_sd == pytest.approx(0.05 / math.sqrt(2)) and (best.seed_min, best.seed_max) == (0.70, 0.75)
    assert "best SD 0.035 (0.700–0.750)" in " ".join(board.notes)


def test_compare_marks_significant_deltas(tmp_path: Path) -> None:
    before = _designed_values()
    after = dict(before, floor=before["best"].copy())  # floor catches up with best: +0.75, significant
    old = _hand_run(tmp_path, "old", before)
    new = _hand_run(tmp_path, "new", after)
    files = write_report(new, compare=old, out=tmp_path / "cmp" / "report.html")
    run, other = load_run(new), load_run(old)
    (board,) = tables.leaderboards(run)
    notes = tables.add_deltas([board], run, other)
    assert notes == []
    floor, close = board.cell("floor", "ndcg@10").delta, board.cell("close", "ndcg@10").delta
    assert floor.value == pytest.approx(0.75) and floor.significant and floor.better
    assert close.value == 0 and not close.significant
    text = files.html.read_text(encoding="utf-8")
    assert "Compared with run" in text and "+0.75 ▲" in text
    assert "(+0.75 ▲)" in files.markdown.read_text(encoding="utf-8")
    assert "different machines" not in text


def test_compare_across_machines_warns(tmp_path: Path) -> None:
    old = _hand_run(tmp_path, "old", _designed_values(), seeds=(1,), cpu="<i>other</i> CPU")
    new = _hand_run(tmp_path, "new", _designed_values())
    text = write_report(new, compare=old, out=tmp_path / "cmp.html").html.read_text(encoding="utf-8")
    assert "different machines" in text and "&lt;i&gt;other&lt;/i&gt; CPU" in text
    assert "different splits" in text  # seed 1 vs seed 0: other fingerprints, unpaired test


def test_compare_with_itself_has_no_significant_delta(tiny_run: Path, tmp_path: Path) -> None:
    files = write_report(tiny_run, compare=tiny_run, out=tmp_path / "self.html")
    text = files.html.read_text(encoding="utf-8")
    after = text.split("id=\"glance\"")[1]
    assert "Compared with run" in text and "▲" not in after and "▼" not in after


def test_pareto_front_hand_worked() -> None:
    latency = np.array([1.0, 2.0, 3.0, 4.0, 2.5])
    accuracy = np.array([0.1, 0.3, 0.2, 0.5, 0.3])
    assert pareto_front(latency, accuracy, lower_cost_is_better=True).tolist() == [0, 1, 3]
    throughput = np.array([100.0, 50.0, 10.0])
    assert pareto_front(throughput, np.array([0.1, 0.2, 0.15]), lower_cost_is_better=False).tolist() == [0, 1]


@pytest.fixture(scope="session")
def realtime_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A realtime-shaped run: temporal split, prequential replay under two policies, tiny serving budgets."""
    from bench.config import parse_suite
    from bench.runner import run_suite

    raw = {
        "name": "report-realtime",
        "evaluation": {"k": [10], "bootstrap": 0,
                       "systems": {"warmup": 2, "latency_requests": 20, "batch_sizes": [0], "max_seconds": 0.5},
                       "realtime": {"enabled": True, "k": 10, "block": 100, "update_cost_users": 5,
                                    "update_cost_items": 5,
                                    "policies": [{"name": "static"}, {"name": "incremental", "every": 100}]}},
        "datasets": [{"name": "synthetic", "params": {"n_users": 150, "n_items": 90, "n_interactions": 3000}}],
        "splits": [{"kind": "temporal", "params": {"test_fraction": 0.2}}],
        "models": [{"name": "pop"}, {"name": "random"}, {"name": "als", "params": {"factors": 8, "iterations": 3}}],
    }
    summary = run_suite(parse_suite(raw, "test"), out_root=tmp_path_factory.mktemp("realtime-run"), progress=None)
    write_report(summary.run_dir)
    return summary.run_dir


def test_realtime_section_from_a_replay_run(realtime_run: Path) -> None:
    """A temporal split with prequential replay: small multiples, a cost scatter with a table beside it,
    per-policy tables, and no replay rows in leaderboards."""
    text = (realtime_run / "report.html").read_text(encoding="utf-8")
    realtime = text.split('id="realtime"')[1].split('id="systems"')[0]
    assert realtime.count("data:image/svg+xml;base64,") == 2  # small multiples + cost scatter
    assert "one panel per model" in realtime and '<table class="side">' in realtime
    assert "prequential replay" in realtime and "incremental update cost" in realtime
    frame = pd.read_csv(realtime_run / "results.csv")
    rate = frame[(frame["model"] == "pop") & (frame["segment"] == "replay:static")
                 & (frame["metric"] == "prequential_hit_rate")]["value"].iloc[0]
    assert f"<td>{tables.fmt(rate)}</td>" in realtime
    boards = tables.leaderboards(load_run(realtime_run))
    assert [b.segment for b in boards] == ["all"]
    which = text.split('id="which-model"')[1].split('id="glance"')[0]
    assert "Real time: which update policy" in which and which.count("replay blocks") == 3


# -- the command line ----------------------------------------------------------------


def test_report_command_writes_where_asked(tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)  # templates come from the package, never from the working directory
    out = tmp_path / "share" / "tiny.html"
    assert main(["report", str(tiny_run), "--out", str(out), "--metric", "recall@5"]) == 0
    assert out.is_file() and out.with_suffix(".md").is_file()
    assert "recall@5 against" in out.read_text(encoding="utf-8")
    assert str(out) in capsys.readouterr().out
    again = tmp_path / "again.html"
    assert main(["report", str(tiny_run), "--out", str(again), "--metric", "recall@5"]) == 0

    def stable(path: Path) -> str:  # all but the generation time
        return re.sub(r"report generated [^)]*\)", "", path.read_text(encoding="utf-8"))

    assert stable(again) == stable(out)  # same run, same bytes: plots included


@pytest.mark.parametrize("args, culprit", [
    (["report", "/nonexistent/run"], "/nonexistent/run"),
    (["report", "{run}", "--out", "{tmp}/r.txt"], "r.txt"),
    (["report", "{run}", "--metric", "ndgc@10"], "ndgc@10"),
    (["report", "{run}", "--compare", "{tmp}"], "results.json"),
])
def test_report_command_errors_name_the_culprit(args: list[str], culprit: str, tiny_run: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a.format(run=tiny_run, tmp=tmp_path) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert culprit in err and "Traceback" not in err


def test_no_report_flag(tmp_path: Path) -> None:
    suite = tmp_path / "tiny.toml"
    suite.write_text(TINY_SUITE.replace(f'[[models]]\nname = "{HOSTILE_MODEL}"\n', ""), encoding="utf-8")
    code = main(["run", "--suite", str(suite), "--out", str(tmp_path / "runs"), "--model", "pop",
                 "--no-report", "--no-download"])
    assert code == 0
    (run_dir,) = list((tmp_path / "runs").iterdir())
    assert (run_dir / "results.csv").is_file() and not (run_dir / "report.html").exists()


# -- a real browser ------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")


class DevTools:
    """Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: NUL-framed JSON on
    fds 3/4), so the test needs no websocket library and no network port."""

    def __init__(self, profile: Path, width: int = 1280, height: int = 900) -> None:
        import fcntl
        import os
        import subprocess

        def high(fd: int) -> int:  # keep our pipe ends clear of fds 3 and 4 before the child dup2s onto them
            new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
            os.close(fd)
            return new

        child_in, self._write = map(high, os.pipe())
        self._read, child_out = map(high, os.pipe())

        def wire() -> None:
            os.dup2(child_in, 3)
            os.dup2(child_out, 4)

        self.process = subprocess.Popen(
            [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", f"--window-size={width},{height}", "--remote-debugging-pipe",
             "about:blank"],
            close_fds=False, preexec_fn=wire, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.close(child_in)
        os.close(child_out)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    def _receive(self, wanted, timeout: float = 30.0) -> dict:
        import os
        import select
        import time

        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message = json.loads(raw)
                if wanted(message):
                    return message
                self.events.append(message)
            left = deadline - time.monotonic()
            if left <= 0 or self.process.poll() is not None:
                raise AssertionError(f"chromium did not answer (exit code {self.process.poll()})")
            ready, _, _ = select.select([self._read], [], [], min(left, 0.5))
            if ready:
                self._buffer += os.read(self._read, 1 << 20)

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        import os

        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        answer = self._receive(lambda m: m.get("id") == message["id"])
        assert "error" not in answer, f"{method}: {answer['error']}"
        return answer["result"]

    def wait_event(self, method: str) -> dict:
        return self._receive(lambda m: m.get("method") == method)

    def close(self) -> None:
        import os

        try:
            self.call("Browser.close")
            self.process.wait(10)
        except Exception:  # noqa: BLE001 - make sure no browser outlives the test
            self.process.kill()
            self.process.wait(10)
        os.close(self._read)
        os.close(self._write)


def test_report_renders_in_headless_chromium(tiny_run: Path, tmp_path: Path) -> None:
    """Open the report in Debian's chromium: no console errors, every plot decoded, a non-blank screenshot."""
    if not CHROMIUM.is_file():
        pytest.fail("chromium is not installed at /usr/bin/chromium; scripts/setup-env installs it "
                    "(apt-get install -y chromium) - the browser test needs it and is not skipped")
    from PIL import Image

    browser = DevTools(tmp_path / "profile")
    try:
        target = browser.call("Target.createTarget", {"url": "about:blank"})
        session = browser.call("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})["sessionId"]
        for domain in ("Page.enable", "Runtime.enable", "Log.enable"):
            browser.call(domain, session=session)
        browser.call("Page.navigate", {"url": (tiny_run / "report.html").resolve().as_uri()}, session=session)
        browser.wait_event("Page.loadEventFired")
        state = browser.call("Runtime.evaluate", {"returnByValue": True, "expression": """JSON.stringify({
            images: Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight]),
            tables: document.querySelectorAll('table.leaderboard').length,
            notServed: document.querySelectorAll('td.ns').length,
            height: document.documentElement.scrollHeight})"""}, session=session)
        page = json.loads(state["result"]["value"])
        shot = browser.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True},
                            session=session)
    finally:
        browser.close()
    problems = [e["params"]["entry"] for e in browser.events if e.get("method") == "Log.entryAdded"
                and e["params"]["entry"]["level"] in ("error", "warning")]
    problems += [e["params"] for e in browser.events
                 if e.get("method") in ("Runtime.exceptionThrown", "Runtime.consoleAPICalled")]
    assert problems == []
    assert len(page["images"]) >= 5
    assert all(done and width > 100 and height > 100 for done, width, height in page["images"]), page["images"]
    assert page["tables"] == 5 and page["notServed"] >= 3
    import base64
    import io

    png = tmp_path / "report.png"
    png.write_bytes(base64.b64decode(shot["data"]))
    image = Image.open(io.BytesIO(png.read_bytes())).convert("RGB")
    assert image.height >= min(page["height"], 8000) * 0.9  # the whole page, not one viewport
    pixels = np.asarray(image).reshape(-1, 3).astype(int)
    assert len(np.unique(pixels[:: 97], axis=0)) > 50  # not a blank page
    from bench.report.style import run_styles

    styles = run_styles(load_run(tiny_run))
    for style in [s for m, s in styles.items() if m != HOSTILE_MODEL]:  # the failing model draws nothing
        colour = tuple(int(style.color[i:i + 2], 16) for i in (1, 3, 5))
        assert (np.abs(pixels - colour).max(1) < 10).sum() > 200, (style, colour)


# -- "which model when" and one style per model, read back from the rendered SVG -------------------------

SVG_STYLES_JS = r"""JSON.stringify(Array.from(document.images).flatMap((img, index) => {
    const svg = new DOMParser().parseFromString(atob(img.src.split(',')[1]), 'image/svg+xml');
    return Array.from(svg.querySelectorAll('g[id^="model-"]')).flatMap(g => {
        const use = g.querySelector('use');
        if (!use) return [];
        const ref = (use.getAttribute('xlink:href') || use.getAttribute('href')).slice(1);
        const path = svg.getElementById(ref);
        const fill = /fill:\s*(#[0-9a-f]{6})/i.exec(use.getAttribute('style') || '')[1].toLowerCase();
        return [[index, g.id, fill, path.getAttribute('d')]];
    });
}))"""


def marker_shape(d: str) -> str:
    """A marker's SVG path with its size divided out, so one shape drawn at two sizes compares equal."""
    numbers = [float(n) for n in re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", d)]
    scale = max((abs(n) for n in numbers), default=1.0) or 1.0
    return re.sub(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", lambda m: f"{float(m.group()) / scale:.2f}", " ".join(d.split()))


def svg_model_styles(page: str) -> list[list]:
    """``[image index, model gid, fill colour, marker path]`` for every model artist in the page's SVG images,
    read the way the browser test reads them (Python's XML parser instead of the DOM)."""
    import base64
    import xml.etree.ElementTree as ET

    ns = {"svg": "http://www.w3.org/2000/svg"}
    out = []
    images = re.findall(r'<img src="data:image/svg\+xml;base64,([^"]+)"', page)
    for index, data in enumerate(images):
        root = ET.fromstring(base64.b64decode(data))
        paths = {p.get("id"): p.get("d") for p in root.iter("{http://www.w3.org/2000/svg}path") if p.get("id")}
        for g in root.iter("{http://www.w3.org/2000/svg}g"):
            if not (g.get("id") or "").startswith("model-"):
                continue
            use = g.find(".//svg:use", ns)
            if use is None:
                continue
            ref = (use.get("{http://www.w3.org/1999/xlink}href") or use.get("href"))[1:]
            fill = re.search(r"fill:\s*(#[0-9a-fA-F]{6})", use.get("style", "")).group(1).lower()
            out.append([index, g.get("id"), fill, paths[ref]])
    return out


def assert_one_pair_per_model(entries: list[list]) -> dict[str, tuple[str, str]]:
    """Each model (SVG id) has one colour-marker pair in every image, and no two models share one."""
    pairs: dict[str, set[tuple[str, str]]] = {}
    for _, gid, fill, d in entries:
        pairs.setdefault(gid, set()).add((fill, marker_shape(d)))
    assert all(len(p) == 1 for p in pairs.values()), {g: p for g, p in pairs.items() if len(p) > 1}
    single = {gid: next(iter(p)) for gid, p in pairs.items()}
    assert len(set(single.values())) == len(single), single
    return single


def test_plots_give_each_model_one_distinct_pair(tiny_html: str) -> None:
    entries = svg_model_styles(tiny_html)
    pairs = assert_one_pair_per_model(entries)
    # pop, random, als, and the hostile model: it fails on the warm split, but on the cold-user split it serves
    # nothing, is not fitted, and stands in the k-shot legend as "not served"
    assert len(pairs) == 4
    assert len({image for image, *_ in entries}) >= 4  # the same pair across trade-off and cold-start plots


def test_which_model_section_in_html_and_markdown(tiny_run: Path, tiny_html: str) -> None:
    assert tiny_html.index('id="which-model"') < tiny_html.index('id="glance"')
    which = tiny_html.split('id="which-model"')[1].split('id="glance"')[0]
    for tier in ("p99 ≤ 1 ms", "p99 ≤ 10 ms", "p99 ≤ 100 ms", "any latency"):
        assert tier in which
    assert which.count('<tr><td class="model">') == 5  # one row per leaderboard
    assert "new users, 0 history items" in which and "new items" in which
    assert "not served: als" in which  # ALS cannot serve 0-shot users: said, not hidden
    board = next(b for b in tables.leaderboards(load_run(tiny_run)) if b.segment == "shots=3")
    best = next(m for m in board.models if board.cell(m, "ndcg@10").best)
    row = which.split("new users, 3 history items")[1].split("</tr>")[0]
    any_latency = row.split('<td class="choice')[-1]
    assert f"<b>{html.escape(best)}</b>" in any_latency  # "any latency" agrees with the leaderboard
    text = (tiny_run / "report.md").read_text(encoding="utf-8")
    assert '<a id="which-model"></a>' in text and "### Which model when" in text
    assert text.index("Which model when") < text.index("### synthetic")


def test_report_sections_in_headless_chromium(tiny_run: Path, realtime_run: Path, tmp_path: Path) -> None:
    """A coldstart-shaped and a realtime-shaped report in chromium: the "Which model when" section is there,
    and, read from each page's SVG images, no two models share a colour-marker pair and a model shown in
    both reports has the same pair in both."""
    if not CHROMIUM.is_file():
        pytest.fail("chromium is not installed at /usr/bin/chromium; scripts/setup-env installs it")
    browser = DevTools(tmp_path / "profile")
    pages = {}
    try:
        for name, run in (("coldstart", tiny_run), ("realtime", realtime_run)):
            target = browser.call("Target.createTarget", {"url": "about:blank"})
            session = browser.call("Target.attachToTarget", {"targetId": target["targetId"],
                                                             "flatten": True})["sessionId"]
            browser.call("Page.enable", session=session)
            browser.call("Page.navigate", {"url": (run / "report.html").resolve().as_uri()}, session=session)
            browser.wait_event("Page.loadEventFired")
            section = browser.call("Runtime.evaluate", {"returnByValue": True, "expression": """JSON.stringify({
                heading: document.getElementById('which-model').textContent,
                beforeGlance: !!(document.getElementById('which-model').compareDocumentPosition(
                    document.getElementById('glance')) & Node.DOCUMENT_POSITION_FOLLOWING),
                rows: document.querySelectorAll('table.which tbody tr').length,
                chosen: Array.from(document.querySelectorAll('table.which td.choice b')).map(b => b.textContent),
                folded: document.querySelectorAll('details > summary').length})"""}, session=session)
            styles = browser.call("Runtime.evaluate", {"returnByValue": True, "expression": SVG_STYLES_JS},
                                  session=session)
            pages[name] = (json.loads(section["result"]["value"]), json.loads(styles["result"]["value"]))
    finally:
        browser.close()
    cold, cold_entries = pages["coldstart"]
    realtime, realtime_entries = pages["realtime"]
    for section in (cold, realtime):
        assert section["heading"] == "Which model when" and section["beforeGlance"]
        assert section["chosen"]
    assert cold["rows"] == 5 and realtime["rows"] == 1 + 3  # one leaderboard; three models' update policies
    cold_pairs = assert_one_pair_per_model(cold_entries)
    realtime_pairs = assert_one_pair_per_model(realtime_entries)
    assert cold_entries == svg_model_styles((tiny_run / "report.html").read_text(encoding="utf-8"))
    shared = set(cold_pairs) & set(realtime_pairs)
    assert len(shared) == 2  # random and als (pop is labelled with the hostile label in the coldstart run)
    assert all(cold_pairs[g] == realtime_pairs[g] for g in shared)
