"""Published experiments re-run under their published protocols: published vs ours, side by side.

A reproduce file (``bench/suites/reproduce.toml``) lists ``[[experiments]]``; each
carries its citation (``source``), the published protocol and what we could not
match (``differences``), the published figures with the source's own tolerance,
the model label to read, and a complete suite (``[experiments.suite]``) that runs
under the normal runner, so every cell keeps its provenance, per-user values and
top-k lists. The table puts the published value beside ours (mean over the
suite's seeds, with their spread) and says whether the gap is within tolerance.
Nothing here adjusts a model toward the published number.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bench.config import SuiteConfig, parse_suite
from bench.errors import ConfigError

_EXPERIMENT_KEYS = {"id", "title", "source", "model", "protocol", "differences", "published", "suite"}
_PUBLISHED_KEYS = {"metric", "k", "value", "tolerance"}


@dataclass(frozen=True)
class Published:
    metric: str  # a bench metric name, variants included ("map[denominator=test]")
    k: int
    value: float
    tolerance: float  # the source's own: its rounding, or the spread between its published runs


@dataclass
class Experiment:
    id: str
    title: str
    source: str
    model: str  # the model label in the suite whose numbers are compared
    protocol: str
    differences: str
    published: list[Published]
    suite: SuiteConfig


@dataclass
class ReproduceFile:
    name: str
    description: str
    experiments: list[Experiment] = field(default_factory=list)


def is_reproduce_file(name_or_path: str) -> bool:
    """Whether a suite name or path points at a reproduce file (it has ``[[experiments]]``)."""
    path = _resolve(name_or_path)
    if path is None:
        return False
    try:
        return "experiments" in tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False  # load_suite reports the real problem


def _resolve(name_or_path: str) -> Path | None:
    from bench.config import builtin_suites

    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        return path if path.is_file() else None
    return builtin_suites().get(name_or_path)


def load_reproduce(name_or_path: str) -> ReproduceFile:
    """Parse and validate a reproduce file; every experiment's suite is checked like any suite."""
    path = _resolve(name_or_path)
    if path is None:
        raise ConfigError(f"reproduce file '{name_or_path}' not found")
    source = str(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML ({exc})") from exc
    unknown = sorted(set(raw) - {"name", "description", "experiments"})
    if unknown:
        raise ConfigError(f"{source}: unknown top-level key(s) {unknown}; a reproduce file has name, description, "
                          f"[[experiments]]")
    out = ReproduceFile(raw.get("name", path.stem), raw.get("description", ""))
    seen: set[str] = set()
    for i, table in enumerate(raw.get("experiments", [])):
        where = f"{source}: experiments[{i}]"
        bad = sorted(set(table) - _EXPERIMENT_KEYS)
        missing = sorted(_EXPERIMENT_KEYS - set(table))
        if bad or missing:
            raise ConfigError(f"{where}: unknown key(s) {bad} / missing key(s) {missing}; "
                              f"an experiment has {', '.join(sorted(_EXPERIMENT_KEYS))}")
        if table["id"] in seen:
            raise ConfigError(f"{where}: id '{table['id']}' is used twice")
        seen.add(table["id"])
        suite = parse_suite(table["suite"], f"{where}.suite")
        labels = {m.label for m in suite.models} | {m.grid_of for m in suite.models if m.grid_of}
        if table["model"] not in labels:
            raise ConfigError(f"{where}: model = '{table['model']}' is not a model label of its suite; "
                              f"labels: {', '.join(sorted(labels))}")
        published = []
        for j, entry in enumerate(table["published"]):
            if set(entry) != _PUBLISHED_KEYS:
                raise ConfigError(f"{where}.published[{j}] needs exactly {', '.join(sorted(_PUBLISHED_KEYS))}")
            metrics = suite.evaluation.metrics
            if metrics and entry["metric"] not in metrics:
                raise ConfigError(f"{where}.published[{j}]: metric '{entry['metric']}' is not computed by the "
                                  f"suite; add it to evaluation.metrics")
            if entry["k"] not in suite.evaluation.k:
                raise ConfigError(f"{where}.published[{j}]: k = {entry['k']} is not in the suite's evaluation.k")
            published.append(Published(entry["metric"], int(entry["k"]), float(entry["value"]),
                                       float(entry["tolerance"])))
        out.experiments.append(Experiment(table["id"], table["title"], table["source"], table["model"],
                                          table["protocol"], table["differences"], published, suite))
    if not out.experiments:
        raise ConfigError(f"{source}: no [[experiments]]")
    return out


def compare(experiment: Experiment, frame: pd.DataFrame) -> list[dict[str, Any]]:
    """One row per published figure: published, ours (mean and spread over seeds), gap, verdict."""
    ok = frame[(frame["model"] == experiment.model) & (frame["status"] == "ok") & (frame["segment"] == "all")]
    rows = []
    for pub in experiment.published:
        values = ok[(ok["metric"] == pub.metric) & (ok["k"] == pub.k)].groupby("seed")["value"].mean()
        ours = float(values.mean()) if len(values) else float("nan")
        spread = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
        gap = ours - pub.value
        rows.append({"experiment": experiment.id, "model": experiment.model, "metric": f"{pub.metric}@{pub.k}",
                     "published": pub.value, "ours": ours, "ours_sd": spread, "seeds": int(len(values)),
                     "gap": gap, "tolerance": pub.tolerance,
                     "within": bool(abs(gap) <= pub.tolerance) if len(values) else False,
                     "source": experiment.source})
    return rows


def to_markdown(table: pd.DataFrame) -> str:
    """The published-vs-ours table as Markdown (no optional dependency)."""
    cols = ["experiment", "metric", "published", "ours", "ours_sd", "gap", "tolerance", "within"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in table.itertuples():
        lines.append(f"| {r.experiment} | {r.metric} | {r.published:.4f} | {r.ours:.4f} | {r.ours_sd:.4f} | "
                     f"{r.gap:+.4f} | {r.tolerance:.4f} | {'yes' if r.within else 'no'} |")
    return "\n".join(lines)


def run_reproduce(name_or_path: str, *, out_root: Path, data: Any = None, progress: Any = None,
                  only: list[str] | None = None) -> tuple[pd.DataFrame, Path]:
    """Run every experiment (or those in ``only``) and write ``reproduce.csv`` / ``reproduce.md``."""
    from bench.runner import run_suite, stderr_progress

    spec = load_reproduce(name_or_path)
    chosen = [e for e in spec.experiments if not only or e.id in only]
    if only and len(chosen) != len(set(only)):
        known = ", ".join(e.id for e in spec.experiments)
        raise ConfigError(f"unknown experiment id in {only}; known: {known}")
    folder = Path(out_root) / spec.name
    rows: list[dict[str, Any]] = []
    for experiment in chosen:
        summary = run_suite(experiment.suite, out_root=folder, data=data,
                            progress=stderr_progress if progress is None else progress)
        if summary.failed:
            raise ConfigError(f"reproduce experiment '{experiment.id}' had failed cells: {summary.failures}")
        rows.extend(r | {"run_dir": str(summary.run_dir)} for r in compare(experiment, summary.frame))
    table = pd.DataFrame(rows)
    folder.mkdir(parents=True, exist_ok=True)
    table.to_csv(folder / "reproduce.csv", index=False)
    notes = "\n".join(f"- **{e.id}** ({e.title}): {e.source}\n  - protocol: {e.protocol}\n"
                      f"  - differences: {e.differences}" for e in chosen)
    (folder / "reproduce.md").write_text(f"# {spec.name}: published vs ours\n\n{to_markdown(table)}\n\n"
                                         f"## Sources and protocols\n\n{notes}\n", encoding="utf-8")
    return table, folder


def print_reproduce(name_or_path: str, *, out_root: Path, data: Any = None, narrowed: bool = False) -> int:
    """``bench run --suite reproduce``: run, print the table, say where it landed; exit code 0."""
    if narrowed:
        raise ConfigError("a reproduce file runs its experiments as published: drop --dataset/--model/--seed")
    table, folder = run_reproduce(name_or_path, out_root=out_root, data=data)
    print(to_markdown(table))
    print(f"\npublished vs ours: {folder / 'reproduce.md'} (csv: {folder / 'reproduce.csv'}); "
          f"sources and protocol differences are listed there and in docs/reproduce.md")
    return 0
