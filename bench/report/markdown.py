"""The leaderboard as Markdown, for CI logs and pull-request comments.

Pull-request comments render inline HTML and Markdown, so data-derived text is
HTML-escaped and Markdown's active characters are backslash-escaped.
"""

from __future__ import annotations

import html
import re

from bench.report import units
from bench.report.tables import (ALPHA, PAIRED_METHOD, SIGNIFICANCE_METHOD, Cell, FigureTable, Leaderboard,
                                 PairedComparison, fmt)
from bench.report.which_model import WhichModel

_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def md_escape(text: object) -> str:
    """Literal text inside a Markdown table cell."""
    return _MD_SPECIAL.sub(r"\\\1", html.escape(str(text), quote=False)).replace("\n", " ")


def summary_columns(board: Leaderboard, headline_k: int) -> list[str]:
    """Every metric at the headline cut-off (the full grid of k stays in the HTML)."""
    keys = [c.key for c in board.columns if c.k == headline_k]
    return keys or [c.key for c in board.columns]


def which_model_markdown(which: WhichModel) -> list[str]:
    """The "Which model when" section: one row per situation, one cell per latency budget."""
    lines = ['<a id="which-model"></a>', "", "### Which model when", "",
             f"Best {md_escape(which.metric)} among the models meeting each p99 single-request latency budget, "
             f"with its 95% CI; then why: models within noise (same paired test as the leaderboards), sampled, "
             f"over budget, not served."]
    for note in which.notes:
        lines += ["", f"_{md_escape(note)}_"]
    if which.rows:
        lines += ["", "| situation | " + " | ".join(md_escape(t[1]) for t in which.tiers) + " |",
                  "|---|" + "---|" * len(which.tiers)]
        for row in which.rows:
            cells = []
            for c in row.choices:
                head = f"**{md_escape(c.headline)}** {md_escape(c.value_text)}" if c.best else "*no model*"
                cells.append(f"{head}<br>{md_escape(c.why)}")
            lines.append(f"| {md_escape(row.label)} | " + " | ".join(cells) + " |")
    if which.realtime:
        lines += ["", "Real time: freshest update policy per model, and the cheapest policy within noise of it "
                      "(paired t-test over replay blocks, Holm).", "",
                  "| dataset · model | freshest | cheapest within noise | why |", "|---|---|---|---|"]
        for p in which.realtime:
            lines.append(f"| {md_escape(p.dataset)} · {md_escape(p.model)} | **{md_escape(p.freshest)}** "
                         f"{fmt(p.freshest_rate)}, {units.seconds(p.freshest_cost)} | **{md_escape(p.cheapest)}** "
                         f"{fmt(p.cheapest_rate)}, {units.seconds(p.cheapest_cost)} | {md_escape(p.why)} |")
    return lines


def leaderboard_markdown(boards: list[Leaderboard], *, suite: str, run_id: str, headline: str,
                         html_name: str, compare_id: str | None = None, which: WhichModel | None = None,
                         paired: list[PairedComparison] | None = None, losses: FigureTable | None = None) -> str:
    """"Which model when", then one table per leaderboard; **bold** = best, † = not significantly different."""
    headline_k = int(headline.partition("@")[2] or 10)
    lines = [f"## bench report: suite `{md_escape(suite)}`, run `{md_escape(run_id)}`", "",
             f"**bold** = best in column; † = not significantly different from the best "
             f"({SIGNIFICANCE_METHOD}); *not served* = the model lacks the capability. "
             f"Metrics at k={headline_k}; every k with 95% CIs is in {md_escape(html_name)}."]
    if compare_id:
        lines.append(f"Deltas against run `{md_escape(compare_id)}` in parentheses; ▲/▼ = significant "
                     f"(p_adj < {ALPHA}) improvement/regression.")
    if which is not None:
        lines += [""] + which_model_markdown(which)
    for board in boards:
        keys = summary_columns(board, headline_k)
        lines += ["", f"### {md_escape(board.title)}", ""]
        lines += _table(keys, [(model + (f" ({board.model_note(model)})" if board.model_note(model) else ""),
                                [_leaderboard_cell(board.cell(model, key)) for key in keys])
                               for model in board.models])
        for note in board.notes:
            lines.append(f"\n_{md_escape(note)}_")
        same = board.same_users
        if same is not None:
            same_keys = [k for k in keys if any(c.key == k for c in same.columns)]
            lines += ["", f"Same {same.n_users} users, every model:", ""]
            lines += _table(same_keys, [(model, [_leaderboard_cell(same.cell(model, key)) for key in same_keys])
                                        for model in same.models])
    if paired:
        lines += ["", "### Paired comparisons", "", md_escape(PAIRED_METHOD) + "."]
        for pc in paired:
            users = (f"{pc.n_users} users, the same for both" if pc.same_users else
                     f"{pc.n_users} users scored by both ({pc.n_model} and {pc.n_reference} scored)")
            lines += ["", f"**{md_escape(pc.model)} − {md_escape(pc.reference)}**, {md_escape(pc.board.title)}: "
                          f"{users}.", "",
                      f"| metric | {md_escape(pc.model)} | {md_escape(pc.reference)} | difference | 95% CI | p |",
                      "|---|---:|---:|---:|---:|---:|"]
            lines += [f"| {md_escape(r.column)} | {fmt(r.model)} | {fmt(r.reference)} | {r.diff:+.4f} | "
                      f"[{r.ci_low:+.4f}, {r.ci_high:+.4f}] | {fmt(r.p, 3)} |" for r in pc.rows]
    if losses is not None:
        header = "| " + " | ".join(md_escape(h) for h in losses.headers) + " |"
        lines += ["", f"### {md_escape(losses.title)}", "", header,
                  "|---|---|" + "---:|" * (len(losses.headers) - 2)]
        lines += ["| " + " | ".join(md_escape(v) for v in row) + " |" for row in losses.rows]
        lines += ["", f"_{md_escape(losses.note)}_"]
    return "\n".join(lines) + "\n"


def _table(keys: list[str], rows: list[tuple[str, list[str]]]) -> list[str]:
    """A Markdown table: model label, then one already-formatted cell per key."""
    out = ["| model | " + " | ".join(md_escape(k) for k in keys) + " |", "|---|" + "---:|" * len(keys)]
    return out + [f"| {md_escape(label)} | " + " | ".join(cells) + " |" for label, cells in rows]


def _leaderboard_cell(cell: Cell) -> str:
    """**best**, † = tied with the best, (delta ▲/▼) against a compared run, *status* when not scored."""
    if cell.status != "ok":
        return f"*{cell.text}*"
    text = fmt(cell.value)
    text = f"**{text}**" if cell.best else text + (" †" if cell.tied else "")
    if cell.delta is not None:
        mark = "" if not cell.delta.significant else (" ▲" if cell.delta.better else " ▼")
        text += f" ({cell.delta.value:+.3g}{mark})"
    return text
