"""The report: the paper's tables from a results store, better statistics, plots, one HTML file."""

from astroclass.report.build import build_report
from astroclass.report.tables import Tables, compare_with_paper, paper_reference

__all__ = ["build_report", "Tables", "compare_with_paper", "paper_reference"]
