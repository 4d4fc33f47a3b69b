"""Content-addressed folders on disk that outlive a process (converted checkpoints).

Why: some inputs cost far more to prepare than to read back -- transformers
de-quantises SmolLM2's GGUF in ~25 s on a 2-core CPU, and every cell process
paid that again. An entry is a folder named by the hash of everything that
decides its content (the caller's ``key``), so a changed input, library version
or dtype is a different entry and a stale one is never read.

Where: under bench's one cache home, the folder ``--cache-dir`` /
``$BENCH_CACHE_DIR`` name (``bench.data.DataOptions.cache_dir``, default
``~/.cache/bench/datasets``; the canonical data cache lives there too), in
``<cache home>/<kind>/<key hash>/``. The CLI resolves that folder and the runner
hands it to every cell (:func:`use_root`); library code never reads the
environment.

How: an entry is built in a temporary sibling folder, ends with a manifest
file, and appears by one ``rename``; a folder without the manifest (an older,
interrupted writer) or one that its loader cannot read (a truncated file) is
removed and rebuilt, with a message on stderr. Lookups are counted per kind, so
a cell records whether its fit found the entry on disk (``disk_caches`` in
cell.json: ``hit`` or ``miss``) -- a different kind of warm from the process
caches of :mod:`bench.systems` (``caches_warm``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, TypeVar

T = TypeVar("T")

DEFAULT_ROOT = Path.home() / ".cache" / "bench" / "datasets"  # DataOptions.cache_dir's default (one home)
MANIFEST = "bench-cache-entry.json"  # written last: only a folder with it is a finished entry

_root: Path | None = None
_counters: dict[str, list[int]] = {}  # kind -> [lookups, misses] in this process


def use_root(folder: Path | None) -> None:
    """Set the cache home for this process (the runner passes the run's ``cache_dir``); None = the default."""
    global _root
    _root = None if folder is None else Path(folder)


def root() -> Path:
    return _root or DEFAULT_ROOT


def key_digest(key: dict[str, Any]) -> str:
    """The entry's name: sha256 of the key's canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:32]


def entry_dir(kind: str, key: dict[str, Any]) -> Path:
    return root() / kind / key_digest(key)


def counters() -> dict[str, tuple[int, int]]:
    """``kind -> (lookups, misses)`` so far in this process (the runner diffs two readings around a fit)."""
    return {kind: (c[0], c[1]) for kind, c in _counters.items()}


def lookups_between(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]],
                    missed: str, found: str) -> dict[str, str]:
    """Caches looked up between two ``name -> (lookups, misses)`` readings: ``missed`` if any lookup missed,
    else ``found``. One rule for this module's disk caches and bench.systems' process caches."""
    out = {}
    for name, (lookups, misses) in after.items():
        lookups_before, misses_before = before.get(name, (0, 0))
        if lookups > lookups_before:
            out[name] = missed if misses > misses_before else found
    return out


def used(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> dict[str, str]:
    """Kinds looked up between two :func:`counters` readings: ``hit`` (read from disk) or ``miss`` (built)."""
    return lookups_between(before, after, "miss", "hit")


def _say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def _build(folder: Path, key: dict[str, Any], build: Callable[[Path], None]) -> None:
    """Run ``build`` into a temporary sibling, add the manifest, then rename it into place in one step."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        build(tmp)
        (tmp / MANIFEST).write_text(json.dumps(key, sort_keys=True, indent=1, default=str), encoding="utf-8")
        try:
            os.rename(tmp, folder)
        except OSError:  # another process finished the same entry first: same key, same content
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def cached(kind: str, key: dict[str, Any], build: Callable[[Path], None], load: Callable[[Path], T],
           what: str) -> T:
    """``load(entry)``, building the entry first when it is absent, unfinished or unreadable.

    ``build(folder)`` writes the entry's files into an empty folder; ``load(folder)``
    reads them and raises (any ``Exception``) on a damaged entry, which is then
    removed, rebuilt and loaded once more. ``what`` names the entry in messages.
    """
    folder = entry_dir(kind, key)
    count = _counters.setdefault(kind, [0, 0])
    count[0] += 1
    if folder.is_dir() and not (folder / MANIFEST).is_file():
        _say(f"{what}: cache folder {folder} is unfinished (no {MANIFEST}); rebuilding it")
        shutil.rmtree(folder, ignore_errors=True)
    if folder.is_dir():
        try:
            return load(folder)
        except Exception as exc:  # noqa: BLE001 - any damage (truncated file, bad JSON) means rebuild
            _say(f"{what}: cache folder {folder} cannot be read ({type(exc).__name__}: {exc}); rebuilding it")
            shutil.rmtree(folder, ignore_errors=True)
    count[1] += 1
    _build(folder, key, build)
    return load(folder)
