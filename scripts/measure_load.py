"""Time one load of a user's file dataset through the canonical cache, in this (fresh) process.

Prints the wall time of the load, the process's peak resident memory, and
whether the cache was hit. Run it twice on an empty --cache-dir: the first run
parses and writes the cache, the second memory-maps it.

    .venv/bin/python scripts/measure_load.py /tmp/bench-big/interactions.parquet --cache-dir /tmp/bench-big/cache \\
        --columns user=userId,item=movieId,value=rating,timestamp=timestamp --min-value 4
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("path", type=Path)
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--columns", required=True)
    parser.add_argument("--min-value", type=float)
    args = parser.parse_args()
    from bench.data import DataOptions
    from bench.data.canonical import FileLoader, parse_source
    from bench.data.dataset import ImplicitConfig

    columns = dict(part.split("=", 1) for part in args.columns.split(","))
    source = parse_source({"interactions": str(args.path), "columns": columns}, Path.cwd(), str(args.path))
    cached = (args.cache_dir / "canonical").is_dir() and any((args.cache_dir / "canonical").glob("*/meta.json"))
    start = time.perf_counter()
    ds = FileLoader("big", source, str(args.path))(DataOptions(cache_dir=args.cache_dir, allow_download=False),
                                                    ImplicitConfig(min_value=args.min_value))
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{'cached reload' if cached else 'first load'}: {seconds:.1f} s, peak RSS {peak_mib:,.0f} MiB; "
          f"{ds.n_users:,} users, {ds.n_items:,} items, {ds.n_interactions:,} interactions ({ds.info['conversion']})")


if __name__ == "__main__":
    main()
