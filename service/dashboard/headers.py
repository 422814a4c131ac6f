"""Headers: no framing, no sniffing, same-origin referrers on every response; a strict CSP on the dashboard.

Dashboard pages run rq-dashboard's scripts: its own files, one inline script
(allowed by a per-request nonce) and underscore templates, which compile
with `new Function` and so need 'unsafe-eval'. That allows no injected
markup to run: inline handlers and injected <script> elements would need
'unsafe-inline', which scripts never get. rq-dashboard's templates carry
style attributes, so those (and only those) are allowed inline.
"""

from __future__ import annotations

import secrets

from flask import Flask, Response, g, request

from service.dashboard.origin import in_dashboard

DASHBOARD_CSP = (
    "default-src 'none'; script-src 'self' {nonce}'unsafe-eval'; style-src 'self'; "
    "style-src-attr 'unsafe-inline'; img-src 'self' data:; font-src 'self'; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
# The API answers JSON only: nothing may load, run or frame it.
API_CSP = "default-src 'none'; frame-ancestors 'none'"
# Files that may be cached (scripts, styles); every other dashboard answer is no-store.
STATIC_ENDPOINTS = frozenset({"rq_dashboard.static", "dashboard_charts.static"})
ALWAYS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # same-origin: the Referer fallback of service.dashboard.origin still works
}


def api_headers() -> dict[str, str]:
    """The security headers of every response outside the dashboard."""
    return {**ALWAYS, "Content-Security-Policy": API_CSP}


def csp_nonce() -> str:
    """This request's script nonce (made on first use); templates put it on their inline script."""
    if "csp_nonce" not in g:
        g.csp_nonce = secrets.token_urlsafe(16)
    return str(g.csp_nonce)


def add_security_headers(response: Response) -> Response:
    """After every request, errors and refusals included."""
    if not in_dashboard():
        response.headers.update(api_headers())
        return response
    response.headers.update(ALWAYS)
    nonce = f"'nonce-{g.csp_nonce}' " if "csp_nonce" in g else ""
    response.headers["Content-Security-Policy"] = DASHBOARD_CSP.format(nonce=nonce)
    if request.endpoint not in STATIC_ENDPOINTS:
        response.headers["Cache-Control"] = "no-store"
    return response


def init_app(app: Flask) -> None:
    """Add the headers to every response of `app` and give templates `csp_nonce()`."""
    app.jinja_env.globals["csp_nonce"] = csp_nonce
    app.after_request(add_security_headers)
