"""One colour-marker pair per model, the same in every plot and in every report.

A reader learns "ALS is the dark-blue circle" once. So a model's style depends
on its *name*, never on the order it appears in a suite or on which other
models a run holds: two reports compared with ``--compare`` draw a shared model
the same way.

- The **family** (:func:`model_family`) picks the hue group: CF/MF models are
  blues and greens, neural models warm reds and oranges, language models
  purples and pinks, anything else greys. A model that declares a ``family``
  (class attribute, recorded in ``cell.json``'s ``model_description``) is taken
  at its word; otherwise a small table of the built-in models decides.
- Within a family, a **slot** ``s`` maps to colour ``s mod C`` and marker
  ``s mod M`` with C and M coprime, so the first C*M slots are C*M distinct
  pairs. Built-in models have fixed slots; any other label gets the slot of a
  stable hash (sha1, not Python's salted ``hash``) of its label, and on a clash
  with another model of the same report the next free slot, in label order, so
  the result does not depend on suite order either.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Mapping

CF_MF, NEURAL, LANGUAGE, OTHER = "CF/MF", "neural", "language model", "other"
FAMILIES = (CF_MF, NEURAL, LANGUAGE, OTHER)

# hue groups; sizes are coprime with len(MARKERS) so slot -> (colour, marker) is one-to-one over C*M slots
PALETTES: dict[str, tuple[str, ...]] = {
    CF_MF: ("#1f4e9c", "#2ca02c", "#17becf", "#6fa8dc", "#0b6e4f", "#9acd32", "#3b3b98", "#20b2aa", "#556b2f",
            "#4682b4", "#66cdaa"),
    NEURAL: ("#d62728", "#ff7f0e", "#8c564b", "#e6ab02", "#f4a6a6"),
    LANGUAGE: ("#9467bd", "#e377c2", "#6a3d9a", "#c51b8a", "#b39ddb"),
    OTHER: ("#7f7f7f", "#3d3d3d", "#bcbd22", "#a6a6a6", "#6b6b3d"),
}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")
# the marker as a text glyph, for tables and the model key in HTML
GLYPHS = {"o": "●", "s": "■", "^": "▲", "D": "◆", "v": "▼", "P": "✚", "X": "✖", "*": "★", "<": "◀", ">": "▶",
          "h": "⬢", "p": "⬟"}

# Built-in models: family and fixed slot (slots chosen so common models differ in colour *and* marker)
KNOWN: dict[str, tuple[str, int]] = {
    "pop": (CF_MF, 0), "random": (OTHER, 0), "als": (CF_MF, 1), "itemknn": (CF_MF, 2), "ease": (CF_MF, 3),
    "puresvd": (CF_MF, 4), "bpr": (CF_MF, 5), "lmf": (CF_MF, 6), "lightfm": (CF_MF, 7),
    "lightfm-hybrid": (CF_MF, 8), "userknn": (CF_MF, 9), "slim": (CF_MF, 10),
    "bpr-mf": (NEURAL, 0), "lightgcn": (NEURAL, 1), "sasrec": (NEURAL, 2), "melu": (NEURAL, 3),
    "cornac": (NEURAL, 4), "ncf": (NEURAL, 5), "neumf": (NEURAL, 6),
    "text-embed": (LANGUAGE, 0), "text-twotower": (LANGUAGE, 1), "llm-rerank": (LANGUAGE, 2),
    "llm-generate": (LANGUAGE, 3),
}
_ALIASES = {"cf": CF_MF, "mf": CF_MF, "cf/mf": CF_MF, "neural": NEURAL, "language model": LANGUAGE,
            "language models": LANGUAGE, "llm": LANGUAGE, "lm": LANGUAGE}


@dataclass(frozen=True)
class Style:
    color: str
    marker: str
    family: str


def _declared_family(declared: Any) -> str | None:
    if not isinstance(declared, str) or not declared.strip():
        return None
    text = declared.strip()
    return _ALIASES.get(text.lower(), text if text in FAMILIES else None)


def model_family(name: str, declared: Any = None) -> str:
    """The one place that decides a model's family: its declared ``family``, else the built-in table,
    else a name hint (``llm``/``text-``: language model), else "other"."""
    family = _declared_family(declared)
    if family:
        return family
    key = str(name).lower()
    if key in KNOWN:
        return KNOWN[key][0]
    base = key.split(":")[0].split("[")[0]
    if base in KNOWN:
        return KNOWN[base][0]
    if key.startswith(("llm", "text-", "lm-")):
        return LANGUAGE
    return OTHER


def _slots(family: str) -> int:
    return len(PALETTES[family]) * len(MARKERS)


def _hash_slot(label: str, family: str) -> int:
    digest = hashlib.sha1(label.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % _slots(family)


def _pair(family: str, slot: int) -> tuple[str, str]:
    palette = PALETTES[family]
    return palette[slot % len(palette)], MARKERS[slot % len(MARKERS)]


def model_styles(models: Mapping[str, tuple[str, Any]]) -> dict[str, Style]:
    """``label -> (registered name, declared family or None)`` to ``label -> Style``; no two labels share a pair.

    A label equal to a built-in model's name keeps that model's fixed slot; every other label hashes
    into its family's slots, probing past slots already taken (labels in sorted order)."""
    taken: dict[str, set[int]] = {f: set() for f in FAMILIES}
    out: dict[str, Style] = {}
    pending = []
    for label in sorted(models):
        name, declared = models[label]
        family = model_family(name, declared)
        if family not in PALETTES:  # a declared family we have no hue for
            family = OTHER
        known = KNOWN.get(str(label).lower())
        if known and known[0] == family and known[1] not in taken[family]:
            taken[family].add(known[1])
            out[label] = Style(*_pair(family, known[1]), family)
        else:
            pending.append((label, family))
    reserved = {f: {slot for fam, slot in KNOWN.values() if fam == f} for f in FAMILIES}
    for label, family in pending:
        size = _slots(family)
        start = _hash_slot(str(label), family)
        free = [s for s in range(size) if s not in taken[family]]
        if not free:  # more models in one family than distinct pairs: reuse, but never silently in one report
            raise ValueError(f"more than {size} models of family {family!r}: not enough distinct styles")
        preferred = [s for s in free if s not in reserved[family]] or free
        slot = min(preferred, key=lambda s: (s - start) % size)
        taken[family].add(slot)
        out[label] = Style(*_pair(family, slot), family)
    return out


def run_styles(run: Any, other: Any = None) -> dict[str, Style]:
    """Styles of every model of a run (and of a compared run, so both reports' models get distinct pairs)."""
    models: dict[str, tuple[str, Any]] = {}
    for data in (other, run):
        if data is None:
            continue
        frame = data.frame
        names = dict(zip(frame["model"], frame["model_name"])) if len(frame) else {}
        declared = {c.get("model"): (c.get("model_description") or {}).get("family") for c in data.cells.values()}
        for label in data.model_order():
            name = str(names.get(label, label))
            models[label] = (name, declared.get(label) or _registered_family(name))
    return model_styles(models)


def _registered_family(name: str) -> str | None:
    """The ``family`` class attribute of a registered model the built-in table does not know (a plug-in)."""
    if name.lower() in KNOWN:
        return None  # no import needed: the table decides unless the run recorded a family
    try:
        from bench import registry

        return getattr(registry.models.get(name), "family", None)
    except Exception:  # noqa: BLE001 - a report is still written when a plug-in is not installed here
        return None


def by_family(styles: dict[str, Style], order: list[str]) -> list[dict[str, Any]]:
    """``[{"name": family, "models": [...]}]`` in :data:`FAMILIES` order, models in ``order``: the model key."""
    return [{"name": f, "models": [m for m in order if m in styles and styles[m].family == f]} for f in FAMILIES
            if any(m in styles and styles[m].family == f for m in order)]


__all__ = ["FAMILIES", "GLYPHS", "MARKERS", "PALETTES", "Style", "by_family", "model_family", "model_styles",
           "run_styles"]
