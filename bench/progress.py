"""Progress lines from inside a long cell, so a user never watches a silent terminal for minutes.

The suite loop prints one line per finished cell; a cell that fine-tunes a language
model or trains a neural baseline can take minutes between two such lines. Inside a
cell, the runner names its phase (``fit``, ``recommend shots=3``, ``systems shots=3``)
and models report their steps (``epoch 3/10``, ``fine-tune step 40/200 loss 0.61``,
``scored 300/942 users``). Reporting a step only stores it: a daemon thread prints
the latest state to stderr every ``interval`` seconds, once the cell has run that
long. So a quick cell prints nothing, a long one prints a line every ``interval``
seconds whatever its model does (a heartbeat also covers phases without steps, such
as loading a checkpoint), and a model's inner loop pays one attribute store per step.

Cells run in child processes (or Ray workers) whose stderr is the driver's terminal
(or Ray's log forwarding), so the lines reach the user from wherever the cell runs.
With no active cell (a model used from a notebook, a unit test) every call is a no-op.
"""

from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator, TextIO

DEFAULT_INTERVAL = 15.0  # seconds between two lines of one cell, and before its first


class _CellProgress:
    def __init__(self, label: str, interval: float, stream: TextIO) -> None:
        self.label, self.interval, self.stream = label, interval, stream
        self.started = time.perf_counter()
        self.phase = "starting"
        self.part = ""  # where in the phase the runner is (which users of a segment), set by part()
        self.detail = ""
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="bench-progress", daemon=True)

    def line(self) -> str:
        elapsed = time.perf_counter() - self.started
        part = f", {self.part}" if self.part else ""
        detail = f": {self.detail}" if self.detail else ""
        return f"  {self.label}: {self.phase}{part}{detail} ({elapsed:.0f}s)"

    def _beat(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                print(self.line(), file=self.stream, flush=True)
            except (OSError, ValueError):  # a closed stream (the driver went away) ends the heartbeat
                return


_active: _CellProgress | None = None


@contextmanager
def cell(label: str, interval: float = DEFAULT_INTERVAL, stream: TextIO | None = None) -> Iterator[None]:
    """Report progress of the cell ``label`` while the block runs; ``interval <= 0`` keeps it silent."""
    global _active
    if interval <= 0:
        yield
        return
    state = _CellProgress(label, interval, stream or sys.stderr)
    previous, _active = _active, state
    state.thread.start()
    try:
        yield
    finally:
        state.stopped.set()
        state.thread.join(timeout=1.0)
        _active = previous


def phase(name: str) -> None:
    """The cell entered a phase (``fit``, ``recommend <segment>``, ...); its part and step detail start empty."""
    if _active is not None:
        _active.phase, _active.part, _active.detail = name, "", ""


def part(name: str) -> None:
    """The runner moved to another part of its phase (``users 101-200``): a model's steps count within it.

    The runner hands a model its users in batches, so a model's own "users scored 6/10" is
    within the batch; the part says which batch of the phase that is.
    """
    if _active is not None:
        _active.part, _active.detail = name, ""


def user_batches(n_users: int, batch: int) -> Iterator[tuple[int, int]]:
    """``(lo, hi)`` of each batch of ``batch`` users out of ``n_users``, each named as the phase's part
    (``users 21-40``) when there is more than one."""
    for lo in range(0, n_users, batch):
        hi = min(lo + batch, n_users)
        if batch < n_users:
            part(f"users {lo + 1}-{hi}")
        yield lo, hi


def step(done: int, total: int | None = None, what: str = "", extra: str = "") -> None:
    """A model's loop reached ``done`` of ``total`` (``what``: "epoch", "step", "users"); stored, not printed."""
    if _active is not None:
        count = f"{done}/{total}" if total else f"{done}"
        text = f"{what} {count}".strip()
        _active.detail = f"{text} {extra}".rstrip()


def active() -> bool:
    """True inside a reporting cell (lets a model skip building an expensive ``extra`` string otherwise)."""
    return _active is not None
