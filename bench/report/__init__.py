"""The self-contained HTML comparison report and its Markdown leaderboard.

``write_report(run_dir, compare=..., out=...)`` is what ``bench report`` and the
end of ``bench run`` call. Modules: ``rundata`` (reading a run folder),
``tables`` (leaderboards, significance, systems, model details),
``which_model`` (the "Which model when" answers per segment and latency budget,
and per model the update policy to run), ``plots`` (matplotlib figures as
inline SVG), ``style`` (one colour-marker pair per model, by family),
``units`` (numbers for people), ``markdown`` (the summary), ``render``
(Jinja2 templates shipped in ``templates/``).
"""

from bench.report.render import DEFAULT_METRIC, ReportFiles, write_report
from bench.report.rundata import ReportError, load_run

__all__ = ["DEFAULT_METRIC", "ReportError", "ReportFiles", "load_run", "write_report"]
