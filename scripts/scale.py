#!/usr/bin/env python
"""Scale run: synthetic data at ~1M and ~10M interactions through pop, als and itemknn (or ease).

Each (size, model) runs as its own ``bench run`` process on a generated suite
file, so the peak resident memory the operating system reports for that
process tree (``wait4`` rusage, largest single process) belongs to that model
alone; the cell's own ``fit_peak_rss_mb`` / ``fit_rss_increase_mb`` rows come
from bench.systems. Evaluation scores a seeded sample of ``--test-users`` test
users (full ranking over the whole catalogue) in batches, so the 10M run fits
in memory.

    .venv/bin/python scripts/scale.py                      # 1m and 10m, pop als itemknn
    .venv/bin/python scripts/scale.py --sizes 1m --models pop als ease

Output (default ``reports/runs/scale/``, git-ignored): ``scale.json`` and a Markdown table on stdout (fit and
evaluation time, peak memory, and the 10M / 1M growth factors). Not a test:
the 10M run takes minutes; it is run by hand for the note in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from bench.results import load_results
from bench.rundir import runs_under

REPO = Path(__file__).resolve().parents[1]
# ~1M / ~10M interactions after duplicate removal (alpha 0.6 keeps ~99% of draws distinct)
SIZES = {
    "1m": {"n_users": 100_000, "n_items": 30_000, "n_interactions": 1_010_000, "alpha": 0.6, "seed": 0},
    "10m": {"n_users": 1_000_000, "n_items": 30_000, "n_interactions": 10_100_000, "alpha": 0.6, "seed": 0},
}
MODEL_PARAMS = {"als": {"factors": 64, "iterations": 15}, "itemknn": {}, "ease": {}, "pop": {}}
FIGURES = ["fit_seconds", "fit_cpu_seconds", "fit_peak_rss_mb", "fit_rss_increase_mb", "model_bytes",
           "recommend_seconds", "users_per_second", "latency_p50_ms", "latency_p99_ms"]


def suite_text(size: str, model: str, test_users: int) -> str:
    params = ", ".join(f"{k} = {v}" for k, v in SIZES[size].items())
    model_params = ", ".join(f"{k} = {v}" for k, v in MODEL_PARAMS.get(model, {}).items())
    return f"""name = "scale-{size}"
description = "synthetic {size} interactions, {model}"
seeds = [0]

[evaluation]
k = [10]
bootstrap = 0
batch_size = 1000
max_test_users = {test_users}

[evaluation.systems]
latency_requests = 100
warmup = 5
batch_sizes = [1, 256, 1000]
max_seconds = 10.0

[[datasets]]
name = "synthetic"
params = {{ {params} }}

[[splits]]
kind = "random"

[[models]]
name = "{model}"
params = {{ {model_params} }}
"""


def run_one(size: str, model: str, out: Path, test_users: int) -> dict:
    folder = out / f"{size}-{model}"
    folder.mkdir(parents=True, exist_ok=True)
    suite = folder / "suite.toml"
    suite.write_text(suite_text(size, model, test_users), encoding="utf-8")
    command = [sys.executable, "-m", "bench.cli", "run", "--suite", str(suite), "--out", str(folder / "runs")]
    start = time.perf_counter()
    with open(folder / "log.txt", "w", encoding="utf-8") as log:
        proc = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    record = {"size": size, "model": model, "exit_status": os.waitstatus_to_exitcode(status),
              "process_wall_seconds": wall, "process_tree_peak_rss_mb": usage.ru_maxrss / 1024}
    runs = list(runs_under(folder / "runs"))
    if not runs:
        return record | {"error": "no results (see log.txt)"}
    frame, _provenance = load_results(runs[-1].path)
    ok = frame[frame["status"] == "ok"]
    for name in FIGURES:
        values = ok[(ok["metric"] == name) & (ok["segment"].isin(["fit", "all"]))]["value"]
        record[name] = float(values.iloc[0]) if len(values) else None
    ndcg = ok[(ok["metric"] == "ndcg") & (ok["k"] == 10)]["value"]
    record["ndcg@10"] = float(ndcg.iloc[0]) if len(ndcg) else None
    record["evaluated_users"] = int(ok[ok["metric"] == "ndcg"]["n"].iloc[0]) if len(ndcg) else None
    failed = frame[frame["status"] == "failed"]
    if len(failed):
        record["error"] = "cell failed (see cells/*/cell.json)"
    return record


def growth(records: list[dict]) -> list[dict]:
    by = {(r["size"], r["model"]): r for r in records}
    out = []
    for (size, model), big in by.items():
        small = by.get(("1m", model))
        if size != "10m" or small is None:
            continue
        row = {"model": model}
        for name in ("fit_seconds", "recommend_seconds", "fit_peak_rss_mb", "process_tree_peak_rss_mb"):
            a, b = small.get(name), big.get(name)
            row[f"{name} x"] = (b / a) if a and b else None
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["1m", "10m"], choices=sorted(SIZES))
    parser.add_argument("--models", nargs="+", default=["pop", "als", "itemknn"])
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "runs" / "scale")
    parser.add_argument("--test-users", type=int, default=10_000)
    args = parser.parse_args(argv)
    records = []
    for size in args.sizes:
        for model in args.models:
            print(f"scale: {size} {model} ...", file=sys.stderr, flush=True)
            records.append(run_one(size, model, args.out, args.test_users))
            print(json.dumps(records[-1]), file=sys.stderr, flush=True)
    payload = {"sizes": {s: SIZES[s] for s in args.sizes}, "records": records, "growth_10m_over_1m": growth(records)}
    (args.out / "scale.json").write_text(json.dumps(payload, indent=2), encoding="utf-8")
    table = pd.DataFrame(records)
    columns = ["size", "model", "fit_seconds", "recommend_seconds", "evaluated_users", "fit_peak_rss_mb",
               "fit_rss_increase_mb", "process_tree_peak_rss_mb", "process_wall_seconds", "ndcg@10"]
    print(table[[c for c in columns if c in table]].round(3).to_markdown(index=False))
    if payload["growth_10m_over_1m"]:
        print()
        print(pd.DataFrame(payload["growth_10m_over_1m"]).round(2).to_markdown(index=False))
    return 0 if all(r.get("exit_status") == 0 and "error" not in r for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
