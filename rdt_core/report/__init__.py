"""Phase diagrams of a sweep from its MLflow runs: ``draw_report`` or ``python -m rdt_core.report``.

Modules: ``runs`` reads a sweep's parent and child runs, ``diagrams`` turns them into figures (and
holds ``draw_report``), ``panels`` describes a figure, ``render`` draws it as PNG and HTML.
"""

from rdt_core.report.diagrams import DIAGRAMS, Report, draw_report, pareto_front
from rdt_core.report.runs import ReportError

__all__ = ["DIAGRAMS", "Report", "ReportError", "draw_report", "pareto_front"]
