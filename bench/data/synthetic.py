"""Deterministic synthetic interactions for smoke runs and scale tests.

Items have power-law popularity and one category each; users have power-law
activity and a preferred category they draw from with probability
``preference``, so collaborative models have real structure to find (a random
model scores clearly below ALS). Everything is vectorised: 10M interactions are
generated in seconds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.errors import ConfigError

CATEGORY_WORDS = [
    "jazz", "noir", "comedy", "space", "cooking", "history", "horror", "romance", "sports", "travel",
    "anime", "drama", "science", "fantasy", "western", "poetry", "crime", "nature", "music", "war",
]
ADJECTIVES = ["quiet", "bold", "classic", "strange", "bright", "dark", "gentle", "epic", "short", "modern"]


def generate(
    n_users: int = 500,
    n_items: int = 300,
    n_interactions: int = 20_000,
    n_categories: int = 8,
    alpha: float = 1.1,
    preference: float = 0.8,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Return (interactions, items, users) raw frames; duplicates are removed later."""
    if min(n_users, n_items, n_interactions, n_categories) < 1:
        raise ConfigError("synthetic: n_users, n_items, n_interactions and n_categories must be >= 1")
    if n_categories > len(CATEGORY_WORDS):
        raise ConfigError(f"synthetic: n_categories must be <= {len(CATEGORY_WORDS)}")
    if not 0.0 <= preference <= 1.0:
        raise ConfigError("synthetic: preference must lie in [0, 1]")
    rng = np.random.default_rng(seed)

    item_category = rng.integers(0, n_categories, n_items)
    order = np.argsort(item_category, kind="stable")  # items grouped by category
    popularity = 1.0 / np.arange(1, n_items + 1) ** alpha
    popularity = popularity[rng.permutation(n_items)]
    grouped_pop = popularity[order]
    cum = np.concatenate([[0.0], np.cumsum(grouped_pop)])
    counts = np.bincount(item_category, minlength=n_categories)
    bounds = np.concatenate([[0], np.cumsum(counts)])

    activity = 1.0 / np.arange(1, n_users + 1) ** (alpha * 0.8)
    activity = activity[rng.permutation(n_users)]
    activity /= activity.sum()
    user_pref = rng.integers(0, n_categories, n_users)
    user_pref = np.where(counts[user_pref] > 0, user_pref, item_category[0])

    users = rng.choice(n_users, size=n_interactions, p=activity)
    random_cat = item_category[rng.integers(0, n_items, n_interactions)]  # non-empty categories only
    chosen_cat = np.where(rng.random(n_interactions) < preference, user_pref[users], random_cat)
    lo, hi = cum[bounds[chosen_cat]], cum[bounds[chosen_cat + 1]]
    target = lo + rng.random(n_interactions) * (hi - lo)
    pos = np.clip(np.searchsorted(cum, target, side="right") - 1, bounds[chosen_cat], bounds[chosen_cat + 1] - 1)
    items = order[pos]
    timestamps = np.sort(rng.integers(1_500_000_000, 1_600_000_000, n_interactions))
    values = rng.integers(1, 6, n_interactions).astype(np.float32)

    interactions = pd.DataFrame({"user": users, "item": items, "value": values, "timestamp": timestamps})
    adjective = rng.integers(0, len(ADJECTIVES), n_items)
    item_frame = pd.DataFrame({
        "text": [f"Item {i}: a {ADJECTIVES[a]} {CATEGORY_WORDS[c]} title" for i, (a, c) in
                 enumerate(zip(adjective, item_category))],
        "categories": [[CATEGORY_WORDS[c]] for c in item_category],
        "tokens": [[ADJECTIVES[a]] for a in adjective],
    }, index=np.arange(n_items))
    user_frame = pd.DataFrame({"features": [[f"likes:{CATEGORY_WORDS[c]}"] for c in user_pref]},
                              index=np.arange(n_users))
    return interactions, item_frame, user_frame
