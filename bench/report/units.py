"""Numbers for people: three significant figures with the unit a reader expects.

Every figure the HTML and Markdown report print goes through here (the raw
values stay in ``results.csv``): seconds as ns/µs/ms/s/min/h, rates and counts
with k/M/G, memory as kB/MB/GB. :func:`figure` knows the unit of every tidy-table
row name (``bench.systems``, ``bench.realtime``) from its suffix, so a new row
named like the others is formatted without a new entry.
"""

from __future__ import annotations

import math

DIGITS = 3
_BIG = ((1e9, "G"), (1e6, "M"), (1e3, "k"))


def number(value: float | None, digits: int = DIGITS, integers: bool = True) -> str:
    """``0.303``, ``5.21``, ``150``, ``18.4k``, ``2.1M``; ``–`` for missing; plain decimals, never ``1e+04``.
    A whole number below 1000 prints as one (``40`` updates) unless ``integers`` is off (scaled units)."""
    if value is None or not math.isfinite(value):
        return "–"
    if value == 0:
        return "0"
    size = abs(value)
    if integers and size < 1000 and float(value).is_integer():
        return str(int(value))  # counts: 40, not 40.0
    for scale, suffix in _BIG:
        if size >= scale * (1 - 0.5 * 10 ** -digits):
            return number(value / scale, digits, integers=False) + suffix
    magnitude = math.floor(math.log10(size))
    if magnitude < -4:
        return f"{value:.{digits - 1}e}"
    decimals = max(0, digits - 1 - magnitude)
    text = f"{value:.{decimals}f}"
    if len(text.lstrip("-").replace(".", "").lstrip("0")) > digits and decimals > 0:  # 9.995 rounds up to 10.00
        text = f"{value:.{decimals - 1}f}"
    return text


def seconds(value: float | None) -> str:
    """``23.3 µs``, ``1.20 ms``, ``5.21 s``, ``2.50 min``, ``1.20 h``."""
    if value is None or not math.isfinite(value):
        return "–"
    size = abs(value)
    if size == 0:
        return "0 s"
    for limit, scale, unit in ((1e-6, 1e-9, "ns"), (1e-3, 1e-6, "µs"), (1.0, 1e-3, "ms"), (60.0, 1.0, "s"),
                               (3600.0, 60.0, "min")):
        if size < limit * (1 - 0.5 * 10 ** -DIGITS):
            return f"{number(value / scale, integers=False)} {unit}"
    return f"{number(value / 3600.0, integers=False)} h"


def milliseconds(value: float | None) -> str:
    return seconds(None if value is None else value / 1000.0)


def rate(value: float | None, unit: str = "/s") -> str:
    """``18.4k/s``."""
    text = number(value)
    return text if text == "–" else text + unit


def size_bytes(value: float | None) -> str:
    """``512 B``, ``3.20 kB``, ``12.5 MB``, ``1.10 GB`` (binary multiples, as memory is counted)."""
    if value is None or not math.isfinite(value):
        return "–"
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("kB", 2**10)):
        if abs(value) >= scale:
            return f"{number(value / scale, integers=False)} {unit}"
    return f"{value:.0f} B"


def figure(name: str, value: float | None) -> str:
    """A tidy-table figure (``k == 0`` row) by its name: the unit comes from the name's suffix."""
    if name == "model_bytes":
        return size_bytes(value)
    if name.endswith("_mb"):
        return size_bytes(None if value is None else value * 2**20)
    if name.endswith("_ms"):
        return milliseconds(value)
    if name.endswith("_ns"):
        return seconds(None if value is None else value * 1e-9)
    if "seconds" in name and "per_s" not in name:
        return seconds(value)
    if name.startswith("throughput_") or name == "users_per_second" or (name.startswith("server_")
                                                                        and "rate" in name):
        return rate(value)  # requests or users per second; a hit *rate* is a plain number
    return number(value)


__all__ = ["figure", "milliseconds", "number", "rate", "seconds", "size_bytes"]
