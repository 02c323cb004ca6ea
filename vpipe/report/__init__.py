"""Figures and comparison tables of trained runs (``vpipe report``)."""

from vpipe.report.build import build_report, plot_run
from vpipe.report.tables import markdown_table, run_row

__all__ = ["build_report", "markdown_table", "plot_run", "run_row"]
