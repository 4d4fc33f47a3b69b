"""`bench gate` end to end on real runs: a degraded model fails, a re-seeded one passes, every
usage problem exits 2, and the project's own smoke suite passes its committed baseline.

The runs use a small synthetic suite with in-process cells (models registered by this test
module must be visible to the cells), no serving measurements and no HTML report, so each run
takes a second or two.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from baselines.implicit_models import ALS
from baselines.simple import Pop
from bench import registry
from bench.cli import main
from bench.gate import load_baseline
from bench.protocol import Capabilities, mask_and_rank

REPO = Path(__file__).resolve().parents[1]
SMOKE_BASELINE = REPO / "reports" / "baselines" / "smoke.json"


class GateTestALS(ALS):
    """implicit's ALS with its initialisation seed as a parameter (the split stays the same) and an
    optional perturbation: Gaussian noise of ``noise`` x the user's score spread added to every score."""

    default_params = ALS.default_params | {"init_seed": 0, "noise": 0.0, "fit_repeats": 1}
    # No optional capability beyond what the suite needs: suites that select models by capability
    # (e.g. `capability = "update"`) in other tests of the same session must not pick test models up.
    capabilities = Capabilities(cold_users=True)

    def fit(self, train):
        run_seed, self.seed = self.seed, self.params["init_seed"]
        try:
            for _ in range(self.params["fit_repeats"]):  # real work, n times: the same model, n times slower
                super().fit(train)
        finally:
            self.seed = run_seed

    def recommend(self, user_ids, k, *, history=None, candidates=None, exclude=None):
        if not self.params["noise"]:
            return super().recommend(user_ids, k, history=history, candidates=candidates, exclude=exclude)
        scores = np.asarray(self.score(np.asarray(user_ids), history), dtype=np.float64)
        rng = np.random.default_rng(1234)
        scores = scores + self.params["noise"] * scores.std(1, keepdims=True) * rng.standard_normal(scores.shape)
        return mask_and_rank(scores, k, candidates=candidates, exclude=exclude)


class SleepyPop(Pop):
    """Pop whose fit also sleeps: a timing whose size the test controls exactly."""

    default_params = {"fit_sleep": 0.0}
    capabilities = Capabilities(cold_users=True, cold_users_zero_shot=True)

    def fit(self, train):
        time.sleep(self.params["fit_sleep"])
        super().fit(train)


for _name, _cls in (("gate_test_als", GateTestALS), ("gate_test_sleepy_pop", SleepyPop)):
    if _name not in registry.models:
        registry.models.register(_name, _cls)


def suite_text(*, name: str = "gatetest", n_interactions: int = 12000, k: str = "[10]", models: str,
               isolation: str = "none") -> str:
    return f"""
name = "{name}"
seeds = [0]
[execution]
isolation = "{isolation}"
[evaluation]
k = {k}
bootstrap = 0
[evaluation.systems]
enabled = false
[[datasets]]
name = "synthetic"
params = {{ n_users = 400, n_items = 300, n_interactions = {n_interactions}, seed = 0 }}
[[splits]]
kind = "random"
[[splits]]
kind = "user_coldstart"
params = {{ user_fraction = 0.2, shots = [1, 5] }}
{models}
"""


def als_models(init_seed: int = 0, noise: float = 0.0, fit_repeats: int = 1,
               size: str = "factors = 16, iterations = 10") -> str:
    return f"""
[[models]]
name = "pop"
[[models]]
name = "gate_test_als"
label = "als"
params = {{ {size}, init_seed = {init_seed}, noise = {noise}, fit_repeats = {fit_repeats} }}
"""


POP_ONLY = """
[[models]]
name = "pop"
"""


def run(tmp: Path, tag: str, text: str, *extra: str) -> Path:
    suite = tmp / f"{tag}.toml"
    suite.write_text(text)
    out = tmp / f"runs-{tag}"
    assert main(["run", "--suite", str(suite), "--out", str(out), "--no-report", *extra]) == 0
    (run_dir,) = list(out.iterdir())
    return run_dir


def gate(*args: str | Path) -> int:
    return main(["gate", *map(str, args)])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The baseline run (ALS with init seed 0) and its baseline file, made once for the module."""
    tmp = tmp_path_factory.mktemp("gate")
    base_run = run(tmp, "base", suite_text(models=als_models()))
    baseline = tmp / "baseline.json"
    assert gate("--current", base_run, "--update-baseline", "--baseline", baseline) == 0
    return {"tmp": tmp, "base_run": base_run, "baseline": baseline}


def verdict(run_dir: Path) -> dict:
    return json.loads((run_dir / "gate" / "verdict.json").read_text())


def test_baseline_keeps_per_user_values_and_fingerprints(workspace):
    snap = load_baseline(workspace["baseline"])
    payload = json.loads(workspace["baseline"].read_text())
    assert payload["suite"] == "gatetest" and payload["metrics"] == ["ndcg@10", "recall@10"]
    assert len(payload["splits"]) == 2 and all(s["split_fingerprint"] for s in payload["splits"])
    assert payload["provenance"]["git"] is not None
    # The per-user values are exactly those the run wrote (no rounding on the way).
    cell = json.loads(next((workspace["base_run"] / "cells").glob("*/cell.json")).read_text())
    npz = np.load(next((workspace["base_run"] / "cells" / cell["cell_id"]).glob("per_user-*.npz")))
    segment = next((workspace["base_run"] / "cells" / cell["cell_id"]).glob("per_user-*.npz")).stem[len("per_user-"):]
    key = next(k for k in snap.cells if k[1] == cell["split"] and k[4] == cell["model"])
    stored = snap.cells[key].segments[segment]
    column = list(npz["columns"]).index("ndcg@10")
    np.testing.assert_array_equal(stored.per_user["ndcg@10"], npz["values"][:, column])
    np.testing.assert_array_equal(stored.users, npz["users"])


def test_identical_run_passes_with_zero_deltas(workspace, capsys):
    assert gate("--current", workspace["base_run"], "--baseline", workspace["baseline"]) == 0
    result = verdict(workspace["base_run"])
    accuracy = [c for c in result["checks"] if c["kind"] == "accuracy"]
    assert result["verdict"] == "pass" and len(accuracy) == 2 * (1 + 2) * 2  # 2 metrics x 3 segments x 2 models
    assert all(c["delta"] == 0 for c in accuracy)
    summary = (workspace["base_run"] / "gate" / "summary.md").read_text()
    assert "PASS" in summary and "| verdict |" in summary
    assert "bench gate: PASS" in capsys.readouterr().out


def test_degraded_model_fails(workspace, capsys):
    # The same ALS with noise of 1x the score spread added: NDCG@10 of the 393 warm users falls by ~20%.
    current = run(workspace["tmp"], "noisy", suite_text(models=als_models(noise=1.0)))
    assert gate("--current", current, "--baseline", workspace["baseline"]) == 1
    result = verdict(current)
    failed = {(c["model"], c["metric"], c["segment"]) for c in result["checks"] if c["verdict"] == "fail"}
    assert ("als", "ndcg@10", "all") in failed
    assert all(model == "als" for model, _, _ in failed)  # pop did not change
    worst = next(c for c in result["checks"] if (c["model"], c["metric"], c["segment"]) == ("als", "ndcg@10", "all"))
    assert worst["delta"] < -0.05 and worst["p_adjusted"] < 0.001
    out = capsys.readouterr().out
    assert "FAIL" in out and "regressed" in out
    assert "Regressions" in (current / "gate" / "summary.md").read_text()


def test_reseeded_model_passes(workspace):
    # Another initialisation seed of ALS on the same split is a different but equally good model. Its
    # NDCG@10/Recall@10 move by a few % per segment (up to ~11% with raw p ~0.01 on the 80-user
    # cold-start segments for some seeds): the 5% tolerance and the Holm-corrected paired test keep that
    # noise from failing CI, while the degraded model above fails with adjusted p < 0.001.
    current = run(workspace["tmp"], "reseeded", suite_text(models=als_models(init_seed=1)))
    # accuracy rules only: this test is about accuracy noise; these in-process, multi-threaded ALS fits are not
    # what a tight timing rule is for (see test_timing_gate_fails_a_3x_slower_als_fit_but_passes_a_rerun)
    rules = workspace["tmp"] / "accuracy-only.toml"
    rules.write_text('[[accuracy]]\nmetric = "ndcg@10"\n\n[[accuracy]]\nmetric = "recall@10"\n')
    assert gate("--current", current, "--baseline", workspace["baseline"], "--rules", rules) == 0
    result = verdict(current)
    moved = [c for c in result["checks"] if c["kind"] == "accuracy" and c["model"] == "als" and c["delta"] != 0]
    assert moved, "the new seed should change ALS's numbers; otherwise this test proves nothing"
    assert any("init_seed 0 -> 1" in note for note in result["notes"])


def test_timing_gate_fails_a_slower_model_but_not_a_slower_machine(tmp_path):
    rules = tmp_path / "timing.toml"
    rules.write_text('[[timing]]\nmetric = "fit_seconds"\nreference = "ref"\nmax_increase = "100%"\n'
                     'floor_seconds = 0.02\n')

    def sleepers(ref: float, model: float) -> str:
        return "".join(f'\n[[models]]\nname = "gate_test_sleepy_pop"\nlabel = "{label}"\n'
                       f'params = {{ fit_sleep = {s} }}\n' for label, s in (("ref", ref), ("model", model)))

    base_run = run(tmp_path, "t-base", suite_text(name="timing", models=sleepers(0.05, 0.05)))
    baseline = tmp_path / "timing.json"
    assert gate("--current", base_run, "--update-baseline", "--baseline", baseline, "--rules", rules) == 0
    # Everything twice as slow (a slower machine): the ratio model/ref stays ~1 -> pass.
    slow_machine = run(tmp_path, "t-machine", suite_text(name="timing", models=sleepers(0.1, 0.1)))
    assert gate("--current", slow_machine, "--baseline", baseline, "--rules", rules) == 0
    # Only the model got 8x slower: the ratio grows ~8x > +100% -> regression.
    slow_model = run(tmp_path, "t-model", suite_text(name="timing", models=sleepers(0.05, 0.4)))
    assert gate("--current", slow_model, "--baseline", baseline, "--rules", rules) == 1
    failed = [c for c in verdict(slow_model)["checks"] if c["verdict"] == "fail"]
    assert {c["model"] for c in failed} == {"model"} and all(c["kind"] == "timing" for c in failed)


TIGHT_TIMING_RULES = """
[[accuracy]]
metric = "ndcg@10"
[[timing]]
metric = "fit_seconds"
max_increase = "100%"
floor_seconds = 0.25
"""


@pytest.mark.slow
def test_timing_gate_fails_a_3x_slower_als_fit_but_passes_a_rerun(tmp_path):
    """Timings as ratios to the calibration workload timed around each cell's fit (+100%: a dedicated
    runner's or a single-threaded model's tolerance; the shipped rules allow +300% for loaded machines).

    A re-run of the same code passes; ALS fitting three times (the same model, three times the work, timed
    for real) fails on fit_seconds. Before, the reference was `pop`, whose 0.1 ms fit is under the floor,
    so every timing check was skipped and no slowdown could fail. ALS is sized (128 factors, 60 iterations)
    so that one fit stands above the 0.25 s floor; ALS runs on one
    thread and each cell in its own process, as by default. (64 factors x 30 iterations fell under the floor
    on an idle machine, so the 3x run compared equal: 128 x 60 keeps one fit above it there too.)
    """
    rules = tmp_path / "tight.toml"
    rules.write_text(TIGHT_TIMING_RULES)
    size = "factors = 128, iterations = 60, num_threads = 1"
    text = lambda repeats: suite_text(name="als3x", isolation="process",  # noqa: E731
                                      models=als_models(fit_repeats=repeats, size=size))
    base_run = run(tmp_path, "base", text(1))
    baseline = tmp_path / "als3x.json"
    assert gate("--current", base_run, "--update-baseline", "--baseline", baseline, "--rules", rules) == 0
    assert load_baseline(baseline).provenance["calibration"]["seconds"] > 0.01
    # A re-run of the same code passes. A burst of load from another process can still push one fit past
    # +100% on a shared 2-core machine, so a disturbed re-run gets up to two more tries, as a person would
    # give it; the 3x run below gets none.
    for attempt in range(3):
        rerun = run(tmp_path, f"rerun{attempt}", text(1))
        if gate("--current", rerun, "--baseline", baseline, "--rules", rules) == 0:
            break
    assert gate("--current", rerun, "--baseline", baseline, "--rules", rules) == 0, verdict(rerun)["checks"]
    timing = [c for c in verdict(rerun)["checks"] if c["kind"] == "timing" and c["model"] == "als"]
    assert timing and all(c["verdict"] == "pass" for c in timing)  # measured, not skipped
    slower = run(tmp_path, "slower", text(3))
    assert gate("--current", slower, "--baseline", baseline, "--rules", rules) == 1
    failed = [c for c in verdict(slower)["checks"] if c["verdict"] == "fail"]
    assert failed and {(c["model"], c["metric"]) for c in failed} == {("als", "fit_seconds / calibration")}


# -- usage problems: exit 2, a clear message, never a pass ----------------------------------------

@pytest.fixture(scope="module")
def pop_baseline(workspace) -> dict[str, Path]:
    tmp = workspace["tmp"]
    pop_run = run(tmp, "pop", suite_text(models=POP_ONLY))
    baseline = tmp / "pop-baseline.json"
    assert gate("--current", pop_run, "--update-baseline", "--baseline", baseline) == 0
    return {"run": pop_run, "baseline": baseline}


def expect_usage_error(capsys, args: list, *fragments: str) -> None:
    assert gate(*args) == 2
    err = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in err, err


def test_missing_baseline_file(workspace, capsys):
    expect_usage_error(capsys, ["--current", workspace["base_run"], "--baseline", workspace["tmp"] / "nope.json"],
                       "does not exist", "never a pass", "--update-baseline")
    assert verdict(workspace["base_run"])["verdict"] == "error"  # no stale "pass" left behind


def test_current_is_not_a_run(workspace, capsys):
    expect_usage_error(capsys, ["--current", workspace["tmp"], "--baseline", workspace["baseline"]],
                       "no results.json")
    two = workspace["tmp"] / "two-runs"
    for name in ("a", "b"):
        (two / name).mkdir(parents=True)
        (two / name / "results.json").write_text("{}")
    expect_usage_error(capsys, ["--current", two, "--baseline", workspace["baseline"]], "holds 2 runs")


def test_current_may_be_the_folder_holding_one_run(workspace):
    # What CI does: `bench run --out DIR` into a fresh DIR, then `bench gate --current DIR`.
    assert gate("--current", workspace["base_run"].parent, "--baseline", workspace["baseline"]) == 0


def test_model_missing_in_current(workspace, pop_baseline, capsys):
    expect_usage_error(capsys, ["--current", pop_baseline["run"], "--baseline", workspace["baseline"]],
                       "model 'als'", "not in the current run")


def test_metric_missing_in_current(workspace, pop_baseline, capsys):
    current = run(workspace["tmp"], "k5", suite_text(k="[5]", models=POP_ONLY))
    expect_usage_error(capsys, ["--current", current, "--baseline", pop_baseline["baseline"]],
                       "ndcg@10 is missing in the current run")


def test_metric_missing_in_baseline(workspace, pop_baseline, capsys):
    rules = workspace["tmp"] / "map.toml"
    rules.write_text('[[accuracy]]\nmetric = "map@10"\n')
    expect_usage_error(capsys, ["--current", pop_baseline["run"], "--baseline", pop_baseline["baseline"],
                                "--rules", rules], "map@10 is missing in the baseline", "--update-baseline")


def test_suite_mismatch(workspace, pop_baseline, capsys):
    current = run(workspace["tmp"], "other", suite_text(name="other", models=POP_ONLY))
    expect_usage_error(capsys, ["--current", current, "--baseline", pop_baseline["baseline"]],
                       "suite mismatch", "'gatetest'", "'other'")


def test_split_fingerprint_mismatch(workspace, pop_baseline, capsys):
    current = run(workspace["tmp"], "moredata", suite_text(n_interactions=11000, models=POP_ONLY))
    expect_usage_error(capsys, ["--current", current, "--baseline", pop_baseline["baseline"]],
                       "split fingerprint mismatch", "synthetic/random/seed=0")


def test_other_seed_is_not_comparable(workspace, pop_baseline, capsys):
    current = run(workspace["tmp"], "seed1", suite_text(models=POP_ONLY), "--seed", "1")
    expect_usage_error(capsys, ["--current", current, "--baseline", pop_baseline["baseline"]],
                       "seed=0 is in the baseline but not in the current run")


def test_bad_rules_file(workspace, capsys):
    rules = workspace["tmp"] / "bad.toml"
    rules.write_text('[[accuracy]]\nmetric = "ndcg@10"\nmax_dorp = "5%"\n')
    expect_usage_error(capsys, ["--current", workspace["base_run"], "--baseline", workspace["baseline"],
                                "--rules", rules], "unknown key 'max_dorp'", "did you mean 'max_drop'")
    expect_usage_error(capsys, ["--current", workspace["base_run"], "--rules", workspace["tmp"] / "none.toml"],
                       "rules file", "does not exist")


# -- the project's own CI: the smoke suite against the committed baseline ---------------------------

@pytest.mark.slow
def test_smoke_suite_passes_its_committed_baseline(tmp_path):
    """What CI demonstrates: `bench run --suite smoke` then `bench gate` against reports/baselines/smoke.json.

    If the smoke suite changes on purpose (new data, splits or models), refresh the baseline:
    bench run --suite smoke && bench gate --update-baseline --current reports/runs/<run-id>
    """
    assert SMOKE_BASELINE.is_file(), "reports/baselines/smoke.json is missing; see this test's docstring"
    # A fresh interpreter, as in CI: the suite forks a child per cell, and forking this pytest process
    # after the in-process ALS fits above (OpenMP threads) can deadlock the child.
    bench = [sys.executable, "-m", "bench.cli"]
    ran = subprocess.run([*bench, "run", "--suite", "smoke", "--out", str(tmp_path), "--no-report"],
                         capture_output=True, text=True, timeout=900, cwd=REPO)
    assert ran.returncode == 0, ran.stderr[-3000:]
    gated = subprocess.run([*bench, "gate", "--current", str(tmp_path), "--baseline", str(SMOKE_BASELINE)],
                           capture_output=True, text=True, timeout=300, cwd=REPO)
    assert gated.returncode == 0, f"smoke gate exit {gated.returncode}\n{gated.stdout[-4000:]}\n{gated.stderr}"
    (run_dir,) = list(tmp_path.iterdir())
    result = verdict(run_dir)
    assert result["verdict"] == "pass"
    assert sum(c["kind"] == "accuracy" for c in result["checks"]) > 0
