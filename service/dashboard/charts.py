"""Charts view: the last hour or 24 hours of the per-minute rollup (service.ops.rollup), in the dashboard's look.

The page is markup only; its script (static/charts.js) fetches the data
route and draws with uPlot, vendored in static/uplot with its license (no
CDN: the dashboard works offline). No inline script is added, so the
dashboard's CSP ('self' and the page's one nonce) needs nothing new.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, render_template, request
from rq_dashboard.web import inject_interval

from service.core.errors import InvalidField
from service.dashboard.seam import page_context
from service.ops import rollup

bp = Blueprint(
    "dashboard_charts", __name__, template_folder="templates", static_folder="static", static_url_path="/charts/static"
)
# rq-dashboard gives its own pages the poll interval their shared script needs; this page shares it.
bp.context_processor(inject_interval)
WINDOWS = {"1h": 60, "24h": 24 * 60}  # ?window= -> minutes shown


def window() -> str:
    """The `window` query parameter (default 1h); 422 naming it for anything but 1h or 24h."""
    value = request.args.get("window", "1h")
    if value not in WINDOWS:
        raise InvalidField("window", f"must be one of {', '.join(WINDOWS)}")
    return value


@bp.get("/charts")
def charts_page() -> str:
    """Jobs finished and failed, depth, oldest age, wait p50/p95 per lane; fire lag; workers alive."""
    return render_template("charts.html", window=window(), windows=WINDOWS, **page_context("charts"))


@bp.get("/charts/data.json")
def chart_data() -> Response:
    """The window's summaries as columns, oldest first (service.ops.rollup.series)."""
    return jsonify(rollup.series(current_app.extensions["redis"], WINDOWS[window()]))
