"""Write a seeded, MovieLens-20M-shaped interaction log as Parquet, plus a suite that benchmarks it.

Shape: 138,493 users, 26,744 items, 20,000,263 rows (user, item, rating 0.5-5.0
in halves with ML-20M's rating shares, epoch-second timestamps 1995-2015), with power-law item popularity
and user activity (every user >= 20 rows, as in ML-20M). Vectorised numpy;
about a minute. The data goes to a folder outside the repository (default
/tmp/bench-big); the suite beside it runs pop, als and itemknn on a random split
and scores a seeded sample of test users (evaluation.max_test_users).

    .venv/bin/python scripts/make_big_log.py [--out /tmp/bench-big] [--rows 20000263]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

N_USERS, N_ITEMS, N_ROWS = 138_493, 26_744, 20_000_263

SUITE = """name = "big-own-data"
description = "20M-row MovieLens-20M-shaped Parquet log (scripts/make_big_log.py): pop, als, itemknn"
seeds = [0]

[evaluation]
k = [10, 20]
max_test_users = {max_test_users}
bootstrap = 200

[execution]
isolation = "none"

[[datasets]]
name = "big"
interactions = "interactions.parquet"
columns = {{ user = "userId", item = "movieId", value = "rating", timestamp = "timestamp" }}
implicit = {{ min_value = 4.0 }}

[[splits]]
kind = "random"

[[models]]
name = "pop"

[[models]]
name = "als"
params = {{ factors = 64, iterations = 10 }}

[[models]]
name = "itemknn"
"""


def generate(rows: int, seed: int, n_users: int = N_USERS, n_items: int = N_ITEMS) -> pa.Table:
    """The log as an Arrow table; rows must be at least 20 per user."""
    if rows < 20 * n_users:
        raise SystemExit(f"--rows must be >= 20 x {n_users:,} users")
    rng = np.random.default_rng(seed)
    # user activity: 20 each, the rest spread by a power law (ML-20M: min 20, median ~68, max ~9k)
    weights = 1.0 / np.arange(1, n_users + 1) ** 0.9
    extra = rng.multinomial(rows - 20 * n_users, weights / weights.sum())
    per_user = 20 + extra[rng.permutation(n_users)]
    users = np.repeat(np.arange(1, n_users + 1, dtype=np.int32), per_user)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 1.0
    popularity = popularity[rng.permutation(n_items)]
    cdf = np.cumsum(popularity / popularity.sum())
    items = (np.searchsorted(cdf, rng.random(rows)) + 1).astype(np.int32)
    # ML-20M's rating shares for 0.5, 1.0, ..., 5.0 (half of all ratings are >= 4)
    shares = np.array([1.1, 3.4, 1.4, 7.2, 4.4, 21.4, 10.5, 27.7, 7.7, 14.5])
    ratings = ((rng.choice(10, rows, p=shares / shares.sum()) + 1) / 2.0).astype(np.float32)
    start, end = 789_652_009, 1_427_784_002  # ML-20M's first and last timestamps
    timestamps = rng.integers(start, end, rows, dtype=np.int64)
    return pa.table({"userId": users, "movieId": items, "rating": ratings, "timestamp": timestamps})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-big"))
    parser.add_argument("--rows", type=int, default=N_ROWS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-test-users", type=int, default=5000)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    table = generate(args.rows, args.seed)
    pq.write_table(table, args.out / "interactions.parquet", compression="snappy")
    (args.out / "suite.toml").write_text(SUITE.format(max_test_users=args.max_test_users), encoding="utf-8")
    size = (args.out / "interactions.parquet").stat().st_size
    print(f"wrote {args.out / 'interactions.parquet'} ({table.num_rows:,} rows, {size / 2**20:.0f} MiB) "
          f"and {args.out / 'suite.toml'}")


if __name__ == "__main__":
    main()
