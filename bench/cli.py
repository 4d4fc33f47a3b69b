"""The ``bench`` command line. The only place that reads argv and the environment."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

import pandas as pd

from bench import registry
from bench.errors import BenchError, ConfigError
from bench.rundir import RunDir

MIRROR_ENV = "BENCH_DATA_MIRROR"  # os.pathsep-separated mirror folders, read here and passed down
CACHE_ENV = "BENCH_CACHE_DIR"


class UsageError(Exception):
    """argparse misuse: usage help and exit 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # exit 2 with usage, as argparse does, without SystemExit games
        self.print_usage(sys.stderr)
        raise UsageError(f"{self.prog}: error: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="bench", description="Benchmark recommender systems on identical splits.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    run = sub.add_parser("run", help="run a suite and write results to reports/runs/<run-id>/")
    run.add_argument("--suite", help="built-in suite name (see `bench list suites`) or a .toml path "
                                    "(optional with --resume)")
    run.add_argument("--dataset", action="append", default=[], help="run only this dataset (repeatable)")
    run.add_argument("--model", action="append", default=[], help="run only this model (repeatable)")
    run.add_argument("--seed", action="append", type=int, default=[], help="use this seed instead (repeatable)")
    run.add_argument("--device", choices=["cpu", "cuda", "auto"], help="override the suite's device")
    run.add_argument("--out", type=Path, default=Path("reports/runs"), help="folder that receives the run folder")
    run.add_argument("--resume", type=Path, metavar="RUN_DIR",
                     help="continue an interrupted run in RUN_DIR with the config stored there")
    run.add_argument("--force", action="store_true", help="re-run cells that already finished")
    run.add_argument("--no-report", action="store_true", help="do not write RUN_DIR/report.html and report.md")
    run.add_argument("--mlflow", nargs="?", const="default", metavar="URI",
                     help="log the run to MLflow: each cell a run nested under the suite's (needs the [mlflow] "
                          "extra); URI like file:./mlruns or http://host:5000, none = MLflow's own setting")
    run.add_argument("--executor", choices=["local", "ray"], help="where cells run: this machine (default) or "
                                                                  "one Ray task per cell (the [ray] extra)")
    run.add_argument("--jobs", type=int, metavar="N", help="local: up to N cells at once, threads capped to "
                                                           "cores/N; ray: at most N tasks in flight")
    run.add_argument("--ray-address", metavar="auto|HOST:PORT", help="join this Ray cluster (with --executor ray; "
                                                                     "default: ray.init()'s own choice, a new "
                                                                     "local Ray when none runs)")
    add_data_options(run)

    report = sub.add_parser("report", help="write a self-contained HTML report (and a Markdown leaderboard) "
                                           "for a run folder")
    report.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run folder (printed by `bench run`)")
    report.add_argument("--compare", type=Path, metavar="OTHER_RUN_DIR", help="show deltas against this run")
    report.add_argument("--out", type=Path, metavar="FILE", help="HTML file (default RUN_DIR/report.html); "
                                                                 "the .md summary is written beside it")
    report.add_argument("--metric", default="ndcg@10", help="headline metric for the summary and the plots "
                                                            "(default ndcg@10)")

    score = sub.add_parser("score", help="add metrics to a finished run from its stored top-k lists, "
                                         "without refitting any model")
    score.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run folder (printed by `bench run`)")
    score.add_argument("--metrics", help="comma-separated metric entries as in a suite, e.g. "
                                         "'ndcg[discount=lenskit],recall@50' (default: the suite's metrics)")
    score.add_argument("--k", help="comma-separated cut-offs, e.g. 5,10,50 (default: the suite's evaluation.k); "
                                   "at most the largest k the suite stored its lists at")
    add_data_options(score)

    lst = sub.add_parser("list", help="list registered models, datasets, metrics or suites; with NAME, "
                                      "the details of one (a model's parameters and defaults)")
    lst.add_argument("what", choices=["models", "datasets", "metrics", "suites"])
    lst.add_argument("name", nargs="?", metavar="NAME", help="show one entry in detail")

    data = sub.add_parser("data", help="inspect a dataset before benchmarking it")
    data_sub = data.add_subparsers(dest="data_command", required=True, parser_class=Parser)
    describe = data_sub.add_parser("describe", help="counts, density, per-user/per-item distributions, time range, "
                                                    "cold-start potential")
    describe.add_argument("target", metavar="NAME|PATH", help="a registered dataset or a .csv/.tsv/.parquet/.jsonl file")
    describe.add_argument("--columns", default="", metavar="user=COL,item=COL[,value=COL,timestamp=COL]",
                          help="column mapping for a file (default: columns named user, item, value, timestamp)")
    describe.add_argument("--svg", type=Path, metavar="FILE", help="also write the two distributions as an SVG")
    add_data_options(describe)

    gate = sub.add_parser("gate", help="compare a run with a committed baseline: exit 0 pass, 1 regression, "
                                       "2 cannot compare")
    gate.add_argument("--current", type=Path, required=True, metavar="RUN_DIR", help="the run folder to check")
    gate.add_argument("--baseline", type=Path, help="baseline file (default reports/baselines/<suite>.json)")
    gate.add_argument("--rules", type=Path, help="rules TOML (default: bench's gate_rules/default.toml)")
    gate.add_argument("--update-baseline", action="store_true",
                      help="write the baseline from RUN_DIR instead of checking (deliberate, never automatic)")
    gate.add_argument("--json", type=Path, dest="json_out", help="verdict file (default RUN_DIR/gate/verdict.json)")
    gate.add_argument("--markdown", type=Path, help="pull-request summary (default RUN_DIR/gate/summary.md)")
    return parser


def add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mirror", action="append", type=Path, default=[],
                        help=f"folder with the publishers' files, checked before downloading (repeatable; "
                             f"also ${MIRROR_ENV})")
    parser.add_argument("--cache-dir", type=Path, help=f"download cache (default ~/.cache/bench/datasets; ${CACHE_ENV})")
    parser.add_argument("--no-download", action="store_true", help="never download; fail if files are not local")


def data_options(args: argparse.Namespace):
    from bench.data import DataOptions

    mirrors = list(args.mirror)
    mirrors += [Path(p) for p in os.environ.get(MIRROR_ENV, "").split(os.pathsep) if p]
    kwargs = {"mirrors": tuple(mirrors), "allow_download": not args.no_download}
    cache = args.cache_dir or (Path(os.environ[CACHE_ENV]) if os.environ.get(CACHE_ENV) else None)
    if cache is not None:
        kwargs["cache_dir"] = cache
    return DataOptions(**kwargs)


def summary_table(frame: pd.DataFrame) -> str:
    """A compact leaderboard: NDCG and Recall at the middle cut-off, plus fit time, per segment."""
    ok = frame[frame["status"] == "ok"]
    accuracy = ok[ok["k"] > 0]
    pairs = frame[(frame["k"] == 0) & frame["metric"].isin(["auc", "gauc", "logloss"])]
    if accuracy.empty and not pairs.empty:  # the pointwise protocol: labelled pairs, no cut-offs
        table = pairs.pivot_table(index=["dataset", "split", "protocol", "segment", "model"], columns="metric",
                                  values="value", aggfunc="mean", dropna=False)
        table["pairs"] = frame[frame["metric"] == "test_pairs"].groupby(
            ["dataset", "split", "protocol", "segment", "model"])["value"].max()
        return table.round(4).to_string().replace("NaN", "–") + (
            "\nlogloss '–': the model's scores are not probabilities (Capabilities.calibrated)"
            if (pairs["status"] == "unsupported").any() else "")
    if accuracy.empty:
        return "(no scored cells)"
    ks = sorted(accuracy["k"].unique())
    k = 10 if 10 in ks else ks[len(ks) // 2]
    wanted = accuracy[(accuracy["k"] == k) & accuracy["metric"].isin(["ndcg", "recall", "hit_rate"])]
    # The protocol (full / uniN / popN) stands beside every number: sampled and full figures never mix.
    table = wanted.pivot_table(index=["dataset", "split", "protocol", "segment", "model"], columns="metric",
                               values="value", aggfunc="mean")
    table.columns = [f"{c}@{k}" for c in table.columns]
    # users scored: a model with its own max_test_users shows its sample size here
    table["users"] = wanted.groupby(["dataset", "split", "protocol", "segment", "model"])["n"].max()
    fit = ok[ok["metric"] == "fit_seconds"].groupby(["dataset", "split", "model"])["value"].mean()
    table["fit_s"] = [fit.get((d, s, m), float("nan")) for d, s, _protocol, _seg, m in table.index]
    unsupported = frame[frame["status"] == "unsupported"][["dataset", "split", "segment", "model"]].drop_duplicates()
    text = table.round(4).to_string()
    if len(unsupported):
        text += "\nnot served (model lacks the capability): " + "; ".join(
            f"{r.model} on {r.dataset}/{r.split}/{r.segment}" for r in unsupported.itertuples())
    first = frame[frame["status"] == "first_stage"].groupby(["dataset", "split", "segment", "model"])["k"].min()
    if len(first):
        text += "\nranked by the first stage, not the model (not credited): " + "; ".join(
            f"{model} at k >= {k} on {dataset}/{split}/{segment}" for (dataset, split, segment, model), k in first.items())
    return text


def cmd_run(args: argparse.Namespace) -> int:
    from bench import api

    if args.resume is None and not args.suite:
        raise UsageError("usage: bench run --suite NAME|PATH [options]  or  bench run --resume RUN_DIR\n"
                         "bench run: error: give --suite NAME|PATH, or --resume RUN_DIR (see bench run --help)")
    if args.resume is None:
        from bench.reproduce import is_reproduce_file, print_reproduce

        if is_reproduce_file(args.suite):  # [[experiments]]: published vs ours (bench/reproduce.py)
            return print_reproduce(args.suite, out_root=args.out, data=data_options(args),
                                   narrowed=bool(args.dataset or args.model or args.seed))
    if args.resume is not None and (args.suite or args.dataset or args.model or args.seed):
        raise ConfigError("--resume continues a run with the config stored in it; drop --suite/--dataset/"
                          "--model/--seed (start a new run to change them)")
    options = data_options(args)
    run = api.run(args.suite, resume=args.resume, datasets=args.dataset, models=args.model, seeds=args.seed,
                  device=args.device, out=args.out, force=args.force, mirror=options.mirrors,
                  cache_dir=options.cache_dir, download=options.allow_download, report=not args.no_report,
                  mlflow=args.mlflow, executor=args.executor, jobs=args.jobs,
                  ray_address=args.ray_address, source="command line")
    print(summary_table(run.results))
    print(f"\nresults: {RunDir(run.run_dir).results_csv} ({run.cells} cells, {run.failed} failed, "
          f"{run.reused} reused)")
    for failure in run.failures:
        print(f"FAILED {failure}", file=sys.stderr)
    if run.report_error:
        print(f"bench: the report could not be written ({run.report_error}); results are saved, "
              f"retry with `bench report {run.run_dir}`", file=sys.stderr)
    elif not args.no_report:
        print(f"report: {run.run_dir / 'report.html'} (summary report.md)")
    if run.mlflow_run_id:
        print(f"mlflow: run {run.mlflow_run_id} (one nested run per cell)")
    if run.tracking_error:
        print(f"bench: logging to MLflow failed ({run.tracking_error}); results are saved in {run.run_dir}",
              file=sys.stderr)
    return 1 if run.failed or run.report_error or run.tracking_error else 0


def cmd_report(args: argparse.Namespace) -> int:
    from bench import api

    html = api.load_run(args.run_dir).report(args.out, compare=args.compare, metric=args.metric, markdown=True)
    print(f"report: {html}\nsummary: {html.with_suffix('.md')}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from bench.runner import stderr_progress
    from bench.score import parse_ks, score_run, split_metric_list

    metrics = split_metric_list(args.metrics) if args.metrics else None
    if args.metrics is not None and not metrics:
        raise ConfigError("--metrics is empty; name at least one metric, e.g. --metrics ndcg,recall@50")
    ks = parse_ks(args.k) if args.k else None
    summary = score_run(args.run_dir, metrics=metrics, ks=ks, data=data_options(args), progress=stderr_progress)
    names = ", ".join(f"{m}@{k}" for m, k in summary.columns)
    print(f"scored {names} on {summary.cells} cell(s), {summary.segments} segment(s), from stored top-k lists "
          f"(no model fitted): {summary.rows} rows in {RunDir(summary.run_dir).results_csv}")
    for note in summary.skipped:
        print(f"not scored (no finished lists): {note}", file=sys.stderr)
    print(f"see them with: bench report {summary.run_dir}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from bench import listing

    if args.name:
        describe = {"models": listing.describe_model, "datasets": listing.describe_dataset,
                    "metrics": listing.describe_metric, "suites": listing.describe_suite}[args.what]
        print(describe(args.name))
    elif args.what == "models":
        for row in listing.list_models().itertuples(index=False):
            print(f"{row.name:16s} [{row.family}] {row.summary}")
            facts = f"serves warm users, {row.serves}" if row.serves != "warm users only" else "serves warm users only"
            if row.devices:
                facts += f" · devices: {row.devices} · deterministic: {'yes' if row.deterministic else 'no'}"
            if row.needs:
                facts += f" · needs: {row.needs}"
            facts += f" · {row.origin}"
            print(f"{'':16s} {facts}")
        print("\nDetails and parameters: bench list models NAME")
    elif args.what == "datasets":
        for row in listing.list_datasets().itertuples(index=False):
            # plug-ins and the user's own data say where they come from (cards and the generator are built in)
            where = f"  [{row.origin}]" if row.origin.startswith(("entry point", "the user's")) else ""
            print(f"{row.name:16s} {row.title}" + (f" ({row.size})" if row.size else "") + where)
            print(f"{'':16s} license: {row.license or '?'} · source: {row.source or '?'}")
    elif args.what == "metrics":
        print(listing.format_table(listing.list_metrics(), ["name", "direction", "needs", "formula"]))
    else:
        print(listing.format_table(listing.list_suites(), ["name", "description"]))
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from bench.data import load_dataset
    from bench.data.describe import render, write_svg

    target = Path(args.target)
    if args.target in registry.datasets:
        ds = load_dataset(args.target, data_options(args))
    elif target.suffix or target.exists():
        from bench.data.canonical import FileLoader, parse_source
        from bench.data.dataset import ImplicitConfig

        columns = {"user": "user", "item": "item"}
        for part in filter(None, args.columns.split(",")):
            key, sep, column = part.partition("=")
            if not sep:
                raise ConfigError(f"--columns: '{part}' is not KEY=COLUMN (e.g. user=customer_id)")
            columns[key.strip()] = column.strip()
        source = parse_source({"interactions": str(target), "columns": columns}, Path.cwd(), str(target))
        ds = FileLoader(target.stem, source, str(target))(data_options(args), ImplicitConfig())
    else:
        available = registry.datasets.names()
        raise ConfigError(f"'{args.target}' is neither a registered dataset nor a file; "
                          f"{registry.suggest(args.target, available)}datasets: {', '.join(available)}")
    print(render(ds))
    if args.svg:
        write_svg(ds, args.svg)
        print(f"\nplot: {args.svg}")
    return 0


def cmd_gate(args: argparse.Namespace) -> int:
    from bench import gate

    rules = gate.load_rules(args.rules)
    args.current = gate.resolve_run_dir(args.current)
    baseline = args.baseline or Path("reports/baselines") / f"{gate.suite_of_run(args.current)}.json"
    if args.update_baseline:
        existed = baseline.exists()
        payload = gate.write_baseline(args.current, baseline, rules)
        print(f"{'replaced' if existed else 'wrote'} baseline {baseline}: suite '{payload['suite']}', run "
              f"{payload['source_run']}, {len(payload['cells'])} cells, per-user values of "
              f"{', '.join(payload['metrics'])}; commit it deliberately")
        return 0
    json_out = args.json_out or args.current / "gate" / "verdict.json"
    markdown_out = args.markdown or args.current / "gate" / "summary.md"
    try:
        result = gate.run_gate(baseline, args.current, rules)
    except gate.GateError as exc:  # still leave a verdict behind, so CI never reads a stale "pass"
        if args.current.is_dir():
            gate.write_outputs(gate.error_payload(str(exc), baseline, args.current),
                               f"## :warning: bench gate could not compare (exit 2)\n\n```\n{exc}\n```\n",
                               json_out, markdown_out)
        raise
    print(gate.format_table(result))
    for note in result.notes:
        print(f"note: {note}")
    print(f"\n{gate.headline(result)}")
    gate.write_outputs(gate.verdict_payload(result), gate.format_markdown(result), json_out, markdown_out)
    print(f"verdict: {json_out}; summary: {markdown_out}")
    return result.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    import bench.data  # noqa: F401  (registers datasets and cards)
    import bench.metrics  # noqa: F401

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        handler = {"run": cmd_run, "list": cmd_list, "report": cmd_report, "gate": cmd_gate,
                   "score": cmd_score, "data": cmd_data}[args.command]
        return handler(args)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return 2
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("bench: interrupted; finished cells are saved (continue with --resume RUN_DIR)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
