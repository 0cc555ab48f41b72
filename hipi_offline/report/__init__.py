"""``hipi-offline report``: which tasks a relabeled dataset teaches, as one HTML page."""

from hipi_offline.report.run import ReportConfig, ReportSummary, make_report

__all__ = ["ReportConfig", "ReportSummary", "make_report"]
