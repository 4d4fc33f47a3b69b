"""``bench score RUN_DIR``: new metrics from the persisted top-k lists, without refitting.

The design's promise "persist raw top-k first; score afterwards": every finished cell
keeps its lists (``topk-<segment>.npz``) at the largest k the suite asked for, and the
run keeps its splits. Scoring reads those lists, rebuilds each segment's test items
and candidates exactly as the runner did (same sampled users, same stored negatives),
and scores them with the runner's own code (:func:`bench.runner.score_lists`,
:func:`bench.runner.metric_rows`), so a rescored row is the row a fresh run with that
metric writes: same value, same bootstrap CI, same ``n``. No model is built or fitted.

The dataset is loaded again (the run folder keeps index arrays, not the data); the
stored split is checked against it by fingerprint, so changed data is an error, not
a silent rescore. New rows go into each cell's ``cell.json`` (so ``--resume`` keeps
them) and per-user file, and the run's results.csv/json are rebuilt as the runner
builds them (grid selections included).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench import grid
from bench import metrics as metric_lib
from bench import protocols as eval_protocols
from bench import retrieved
from bench.config import config_from_dict
from bench.data import DataOptions, Dataset, load_dataset
from bench.data.dataset import train_data
from bench.errors import ConfigError
from bench.results import write_tables
from bench.rundir import RunDir
from bench.runner import cell_id, metric_rows, plan_cells, retriever_plan, score_lists, segment_data
from bench.specs import DatasetSpec, ModelSpec, SplitSpec, SuiteConfig
from bench.splits import SPLITS, Split, fingerprint

ROW_KEY = ("segment", "metric", "k")


@dataclass
class ScoreSummary:
    run_dir: Path
    columns: list[tuple[str, int]]  # (metric, k) asked for
    cells: int = 0  # cells scored
    segments: int = 0  # segments scored
    rows: int = 0  # accuracy rows written (new or replaced)
    skipped: list[str] = field(default_factory=list)  # failed or unfinished cells, not scored


def split_metric_list(text: str) -> list[str]:
    """``"ndcg[discount=lenskit],recall@50"`` -> entries; commas inside ``[...]`` do not split."""
    entries, depth, current = [], 0, ""
    for char in text:
        depth += (char == "[") - (char == "]")
        if char == "," and depth == 0:
            entries.append(current.strip())
            current = ""
        else:
            current += char
    entries.append(current.strip())
    return [e for e in entries if e]


def parse_ks(text: str) -> list[int]:
    """``"5,10,50"`` -> [5, 10, 50], with a message naming the bad part."""
    ks = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            raise ConfigError(f"--k {text!r}: '{part}' is not an integer >= 1; write e.g. --k 5,10,50")
        ks.append(int(part))
    return sorted(set(ks))


def resolve_columns(config: SuiteConfig, metrics: list[str] | None,
                    ks: list[int] | None) -> tuple[list[str], list[int]]:
    """The metric entries and cut-offs to score, checked before any list is read.

    Lists are stored at the largest k of the suite: a cut-off beyond it cannot be
    scored from them, and saying so is better than scoring a shorter list as if it
    were longer.
    """
    entries = list(metrics) if metrics else (config.evaluation.metrics or list(metric_lib.DEFAULT_METRICS))
    ks = sorted(set(ks)) if ks else sorted(config.evaluation.k)
    stored_k = max(config.evaluation.k)
    try:
        columns = metric_lib.metric_columns(entries, ks)  # unknown names and variants fail here, with suggestions
    except ConfigError as exc:
        raise ConfigError(f"--metrics: {exc}") from None
    beyond = sorted({k for _, k in columns if k > stored_k} | {k for k in ks if k > stored_k})
    if beyond:
        raise ConfigError(f"cannot score at k={', '.join(map(str, beyond))}: this run stored its top-k lists at "
                          f"k={stored_k} (the largest evaluation.k of suite '{config.name}'); ask for k <= {stored_k}, "
                          f"or re-run the suite with {beyond[-1]} in evaluation.k")
    return entries, ks


def _stored_split(folder: RunDir, dataset: Dataset, sspec: SplitSpec, seed: int, expected: str) -> Split:
    """The split as the run stored it, checked against the data loaded now."""
    arrays = folder.splits.read_split(expected)
    if arrays is None:
        raise ConfigError(f"{folder.path}: split {expected} of this run is missing from splits/; it cannot be "
                          f"rescored (re-run the suite)")
    params = SPLITS[sspec.kind][1] | sspec.params
    split = Split(sspec.kind, params, seed, **{name: arrays[name] for name in
                                                ("train", "test", "valid", "history", "cold_users", "cold_items")})
    split.fingerprint = fingerprint(split, dataset)
    if split.fingerprint != expected:
        raise ConfigError(f"dataset '{dataset.name}' as loaded now is not the data run {folder.name} was split "
                          f"from (split fingerprint {split.fingerprint}, stored {expected}); score the run where "
                          f"its data is, or re-run the suite")
    return split


def _replace_rows(rows: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` with each new row replacing the row of the same segment, metric and k, or appended."""
    index = {tuple(r[c] for c in ROW_KEY): i for i, r in enumerate(rows)}
    out = list(rows)
    for row in new:
        key = tuple(row[c] for c in ROW_KEY)
        if key in index:
            out[index[key]] = row
        else:
            index[key] = len(out)
            out.append(row)
    return out


def _merge_per_user(folder: RunDir, cid: str, segment: str, users: np.ndarray, values: np.ndarray,
                    columns: list[str]) -> None:
    """Add (or replace) columns of a segment's per-user file; the users are the stored lists' users."""
    stored = folder.read_per_user(cid, segment)
    if stored is not None and not np.array_equal(stored.users, users):
        raise ConfigError(f"{folder.path}: cell {cid} segment {segment}: per-user file and top-k lists name "
                          f"different users; the run folder was edited")
    old_columns = [] if stored is None else list(stored.columns)
    old_values = np.zeros((len(users), 0)) if stored is None else stored.values
    keep = [j for j, c in enumerate(old_columns) if c not in columns]
    merged = np.column_stack([old_values[:, keep], values]) if keep else values
    folder.write_per_user(cid, segment, users, merged, [old_columns[j] for j in keep] + columns)


def score_cell(folder: RunDir, config: SuiteConfig, dataset: Dataset, split: Split, mspec: ModelSpec, seed: int,
               cid: str, info: dict[str, Any], entries: list[str], ks: list[int]) -> tuple[list[dict[str, Any]], int]:
    """Score one finished cell's stored lists; returns its new rows and the number of segments scored."""
    ev = config.evaluation
    if not info["rows"]:
        return [], 0
    # every row of a cell shares these columns (bench.runner.CellRunner.base_row); take them from the first
    base = {k: v for k, v in info["rows"][0].items()
            if k not in ("segment", "metric", "k", "value", "ci_low", "ci_high", "n", "status")}
    train = train_data(dataset, split.train)
    popularity = np.bincount(train.item, minlength=dataset.n_items)
    n_train_users = int(np.unique(train.user).size)
    if eval_protocols.from_evaluation(ev).pointwise:
        raise ConfigError(f"{folder.path}: a pointwise run scores labelled pairs, not stored top-k lists; its "
                          f"metrics (auc, gauc, logloss) are all written by bench run, so there is nothing to rescore")
    new: list[dict[str, Any]] = []
    scored = 0
    protocols = list(enumerate(eval_protocols.cell_protocols(ev)))
    if info.get("retriever"):  # a retriever's own ranking (bench.runner.run_retriever): its protocol's segments
        protocols = [(i, p) for i, p in protocols if p.label == info.get("protocol")]
    for i, protocol in protocols:
        if not retrieved.applies(ev, protocol, split.kind):
            continue
        max_users = retrieved.user_limit(ev, mspec.max_test_users, protocol)
        found_suffix = retrieved.FOUND if protocol.kind == eval_protocols.RETRIEVED else None
        p_base = base | {"protocol": protocol.label}
        for segment in split.segments(dataset):
            name = retrieved.segment_label(segment.name, protocol, i > 0)
            state = info.get("segments", {}).get(name, {})
            if state.get("status") == "unsupported":
                names = [name] + ([name + found_suffix] if found_suffix else [])
                new.extend(p_base | {"segment": n, "metric": metric, "k": k, "value": float("nan"),
                                     "ci_low": float("nan"), "ci_high": float("nan"), "n": 0,
                                     "status": "unsupported"}
                           for n in names for metric, k in metric_lib.metric_columns(entries, ks))
                continue
            topk = folder.read_topk(cid, name)
            if topk is None:
                raise ConfigError(f"{folder.path}: cell {cid} ({mspec.label}) has no top-k lists for segment "
                                  f"'{name}'; it cannot be rescored (re-run it with bench run --force)")
            data = segment_data(dataset, split, segment, train.matrix, ev.exclude_train, max_users,
                                protocol=protocol, k=max(ev.k), negatives_dir=folder.splits_dir)
            if not np.array_equal(data.users, topk.users):
                raise ConfigError(f"{folder.path}: cell {cid} segment '{name}': the stored lists are for other "
                                  f"users than the split gives now; the run folder does not match its config")
            table = score_lists(topk.items, data, dataset, popularity, n_train_users, entries, ks)
            _merge_per_user(folder, cid, name, topk.users, table.per_user, [f"{m}@{k}" for m, k in table.columns])
            new.extend(metric_rows(table, p_base, name, len(data.users), ev.bootstrap, seed,
                                   ranked_depth=state.get("ranked_depth")))
            if found_suffix:  # LlamaRec's second figure: the users whose held-out item was retrieved
                found = retrieved.found_mask(data.users, data.candidates, data.test_users, data.test_items,
                                             dataset.n_items)
                sub = retrieved.found_table(table, found)
                _merge_per_user(folder, cid, name + found_suffix, topk.users[found], sub.per_user,
                                [f"{m}@{k}" for m, k in sub.columns])
                new.extend(metric_rows(sub, p_base, name + found_suffix, int(found.sum()), ev.bootstrap, seed,
                                       ranked_depth=state.get("ranked_depth")))
            scored += 1
    return new, scored


def score_run(run_dir: Path, *, metrics: list[str] | None = None, ks: list[int] | None = None,
              data: DataOptions | None = None, progress: Any = None) -> ScoreSummary:
    """Score every finished cell of ``run_dir`` at ``metrics`` x ``ks`` from its stored lists and add the rows."""
    folder = RunDir(run_dir)
    stored = folder.read_config()
    if stored is None:
        raise ConfigError(f"{run_dir}: no config.json there, so it is not a bench run folder; pass the folder "
                          f"`bench run` printed (reports/runs/<run-id>)")
    config = config_from_dict(stored, str(folder.config_file))
    entries, ks = resolve_columns(config, metrics, ks)
    say = progress or (lambda _msg: None)
    summary = ScoreSummary(Path(run_dir), metric_lib.metric_columns(entries, ks))
    datasets: dict[str, Dataset] = {}
    splits: dict[tuple[str, str], Split] = {}
    all_rows: list[dict[str, Any]] = []
    plan: list[tuple[DatasetSpec, int, SplitSpec, ModelSpec]] = plan_cells(config) + [
        cell[:4] for cell in retriever_plan(config)]  # the retrievers' own rankings too (protocol "retrieved")
    for dspec, seed, sspec, mspec in plan:
        cid = cell_id(dspec, sspec, mspec, seed, config)
        info = folder.read_cell(cid)
        label = f"{dspec.name} {sspec.kind} seed={seed} {mspec.label}"
        if info is None or info.get("status") != "ok":
            summary.skipped.append(f"{label}: {'not finished' if info is None else info.get('error', 'failed')}")
            all_rows.extend([] if info is None else info["rows"])
            continue
        key = repr((dspec.name, dspec.params, dspec.implicit))
        if key not in datasets:
            datasets[key] = load_dataset(dspec.name, data or DataOptions(), dspec.implicit, **dspec.params)
        dataset = datasets[key]
        skey = (key, info["split_fingerprint"])
        if skey not in splits:  # every model of a split shares it: read and verify it once
            splits[skey] = _stored_split(folder, dataset, sspec, seed, info["split_fingerprint"])
        split = splits[skey]
        new, scored = score_cell(folder, config, dataset, split, mspec, seed, cid, info, entries, ks)
        info["rows"] = _replace_rows(info["rows"], new)
        folder.write_cell(cid, info)
        all_rows.extend(info["rows"])
        summary.cells += 1
        summary.segments += scored
        summary.rows += sum(1 for r in new if r["status"] == "ok")
        say(f"scored {label}: {scored} segment(s)")
    all_rows.extend(grid.selection_rows(all_rows, config.models))  # as the runner ends a suite
    write_tables(folder.path, all_rows, folder.read_provenance() or {})
    return summary
