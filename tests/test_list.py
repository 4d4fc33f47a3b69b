"""`bench list` and bench.list_*(): what each registered thing declares, shown to a newcomer."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import bench
from bench import registry
from bench.cli import main
from bench.protocol import FAMILIES

REPO = Path(__file__).resolve().parents[1]


def test_every_registered_model_declares_family_and_summary():
    """The contract for plug-ins (baselines, llm_models, new neural models): `bench list` has something to say."""
    for name in registry.models.names():
        if not registry.models.origin(name).startswith("entry point"):
            continue  # a class a test registered in-process, not a plug-in
        cls = registry.models.get(name)
        assert cls.family in FAMILIES, f"{name}: family {cls.family!r} not one of {list(FAMILIES)}"
        assert cls.summary and "\n" not in cls.summary, f"{name}: needs a one-line summary"


def test_list_models_frame_comes_from_each_models_declarations():
    frame = bench.list_models().set_index("name")
    assert set(frame.index) == set(registry.models.names())
    for name, row in frame.iterrows():
        caps = registry.models.get(name).capabilities
        assert ("cold users (k-shot)" in row["serves"]) == caps.cold_users
        assert ("zero-shot users" in row["serves"]) == caps.cold_users_zero_shot
        assert ("cold items" in row["serves"]) == caps.cold_items
        assert ("incremental update" in row["serves"]) == caps.update
        assert row["devices"] == ", ".join(caps.devices)
        assert row["deterministic"] == caps.deterministic
    assert frame.loc["als", "family"] == "CF/MF" and frame.loc["pop", "family"] == "floor"
    assert frame.loc["llm-rerank", "family"] == "language model"
    assert not frame.loc["bpr", "deterministic"]  # Hogwild SGD by default


def test_bench_list_models_prints_family_summary_and_serving(capsys):
    assert main(["list", "models"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    als = lines.index(next(line for line in lines if line.startswith("als ")))
    assert "[CF/MF]" in lines[als] and "alternating least squares" in lines[als]
    assert lines[als + 1].split() [:7] == ["serves", "warm", "users,", "cold", "users", "(k-shot),", "incremental"]
    assert "deterministic: yes" in lines[als + 1]
    bpr = lines.index(next(line for line in lines if line.startswith("bpr ")))
    assert "serves warm users only" in lines[bpr + 1] and "deterministic: no" in lines[bpr + 1]
    assert "devices: cpu, cuda" in out  # the language models
    assert "bench list models NAME" in out


def test_bench_list_models_name_prints_parameters_defaults_and_their_source(capsys):
    from baselines.lightfm_models import LightFMHybrid

    assert main(["list", "models", "lightfm-hybrid"]) == 0
    out = capsys.readouterr().out
    params = {line.split("=")[0].strip(): line for line in out.splitlines() if line.startswith("    ")
              and " = " in line}
    assert set(LightFMHybrid.default_params) | {"seed", "device"} == set(params)
    for name, value in LightFMHybrid.default_params.items():
        assert f"= {value!r}" in params[name]
    assert "LightFMPure.default_params" in params["loss"]  # inherited from the pure model
    assert "LightFMHybrid.default_params" in params["item_side_features"]  # its own
    assert "Recommender.__init__ signature" in params["seed"]
    assert "cold items" in out and "deterministic: yes" in out


def test_model_params_frame_and_unknown_name():
    frame = bench.model_params("als").set_index("parameter")
    assert frame.loc["factors", "default"] == 64 and frame.loc["factors", "type"] == "int"
    assert main(["list", "models", "alss"]) == 2


def test_a_missing_extra_is_named(tmp_path):
    """A real (tiny) plug-in distribution on sys.path whose model needs an extra that is not installed."""
    pkg = tmp_path / "gpuplug"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "from bench.protocol import Capabilities, Recommender\n"
        "class Gpu(Recommender):\n"
        "    name = 'gpu-model'\n"
        "    family = 'neural'\n"
        "    summary = 'needs a package that is not installed'\n"
        "    extra = 'gpu'\n"
        "    capabilities = Capabilities(devices=('cuda',))\n"
        "    default_params = {'width': 8}\n")
    info = tmp_path / "gpuplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gpuplug\nVersion: 0.1\n"
                                   "Provides-Extra: gpu\n"
                                   "Requires-Dist: surely-not-installed-pkg>=1; extra == \"gpu\"\n")
    (info / "top_level.txt").write_text("gpuplug\n")
    (info / "entry_points.txt").write_text("[bench.models]\ngpu-model = gpuplug:Gpu\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    run = lambda *argv: subprocess.run([sys.executable, "-m", "bench.cli", *argv], capture_output=True,  # noqa: E731
                                       text=True, env=env, timeout=120, cwd=tmp_path)
    listing = run("list", "models")
    assert listing.returncode == 0, listing.stderr
    line = next(i for i, text in enumerate(listing.stdout.splitlines()) if text.startswith("gpu-model "))
    detail = listing.stdout.splitlines()[line + 1]
    assert "needs: pip install 'gpuplug[gpu]' (missing: surely-not-installed-pkg)" in detail
    assert "[neural]" in listing.stdout.splitlines()[line]
    one = run("list", "models", "gpu-model")
    assert one.returncode == 0, one.stderr
    assert "needs extra:   pip install 'gpuplug[gpu]'" in one.stdout and "width" in one.stdout


def test_list_datasets_reads_the_cards(capsys):
    frame = bench.list_datasets().set_index("name")
    for path in sorted((REPO / "datasets").glob("*.toml")):
        card = tomllib.loads(path.read_text(encoding="utf-8"))
        row = frame.loc[card["name"]]
        assert row["license"] == card["license"] and row["source"] == card["homepage"]
        assert f"{row['title']} ({row['size']})" == card["title"]
    assert frame.loc["ml-100k", "size"].startswith("943 users, 1,682 movies, 100,000 ratings")
    assert main(["list", "datasets"]) == 0
    out = capsys.readouterr().out
    assert "license: GroupLens research-only terms" in out and "https://grouplens.org/datasets/movielens/100k/" in out
    assert main(["list", "datasets", "lastfm-hetrec"]) == 0
    assert "92,834 user-artist play counts" in capsys.readouterr().out


def test_list_metrics_shows_formula_and_direction(capsys):
    from bench.metrics import get_metric

    frame = bench.list_metrics().set_index("name")
    assert set(frame.index) == set(registry.metrics.names())
    for name, row in frame.iterrows():
        m = get_metric(name)
        assert row["formula"] == m.description
        assert row["direction"] == {True: "higher is better", False: "lower is better",
                                    None: "descriptive"}[m.higher_is_better]  # None: explanation_length
    assert frame.loc["arp", "direction"] == "lower is better"
    assert main(["list", "metrics", "ndcg[discount=lenskit]"]) == 0
    out = capsys.readouterr().out
    assert "1/log2(max(rank, 2))" in out and "higher is better" in out and "variant of: ndcg" in out


def test_list_suites_frame_and_one_suite(capsys):
    frame = bench.list_suites().set_index("name")
    assert {"smoke", "coldstart"} <= set(frame.index)
    assert main(["list", "suites", "smoke"]) == 0
    assert 'name = "smoke"' in capsys.readouterr().out
    assert main(["list", "suites", "smok"]) == 2
    assert "did you mean 'smoke'" in capsys.readouterr().err


@pytest.mark.parametrize("what", ["datasets", "metrics"])
def test_unknown_names_are_exit_2(capsys, what):
    assert main(["list", what, "nope-xyz"]) == 2
    assert "Traceback" not in capsys.readouterr().err
