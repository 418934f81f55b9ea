"""What the two organisations' browser consoles share (`bank-node console`, `platform-node console`).

A console is a local web server on 127.0.0.1, like `kubectl proxy` or `mlflow ui`: it holds no credential
of its own. The bank's console calls its node's control API with the operator's own certificate, exactly as
the CLI does; the platform's console works on the node's state directory on its host, as `platform-node`'s
commands do. Anyone else on the machine could reach a loopback port, so every request must carry the
console's token (printed once at start, like Jupyter's): the link sets it as an HttpOnly, SameSite=Strict
cookie, which also keeps other web sites from posting forms to it. Requests naming another host are refused
(DNS rebinding).

Pages are server-rendered Jinja2 templates (Starlette, served by uvicorn); the only JavaScript sorts tables
and refreshes the live part of a page.
"""

from __future__ import annotations

import datetime as dt
import secrets
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

import jinja2
import uvicorn
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from party_common.progress import duration
from protocols.uncertainty import format_metric

HERE = Path(__file__).resolve().parent
COOKIE = "fedprofile_console"
HOST = "127.0.0.1"


def when(iso: str | None) -> str:
    """An ISO 8601 time as 'YYYY-MM-DD HH:MM:SS' (UTC), '-' when empty."""
    return (iso or "")[:19].replace("T", " ") or "-"


SIGNED_METRIC = "{:+.3f}"


def number(x: Any, fmt: str | None = None) -> str:
    """A metric (no ``fmt``, or :data:`SIGNED_METRIC` for an uplift) by the one rounding rule the CLI and the HTML
    report use (``protocols.uncertainty.format_metric``); anything else in ``fmt``."""
    if fmt is None or fmt == SIGNED_METRIC:
        return format_metric(x, signed=fmt is not None)
    return "-" if x is None else fmt.format(x)


def make_templates() -> Jinja2Templates:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                             autoescape=jinja2.select_autoescape(["html"]), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters.update(duration=lambda s: duration(float(s or 0.0)), when=when, number=number)
    return Jinja2Templates(env=env)


TEMPLATES = make_templates()


def page(request: Request, template: str, context: Mapping[str, Any], *, status: int = 200) -> Response:
    return TEMPLATES.TemplateResponse(request, template, {**request.app.state.site, **context},
                                      status_code=status)


def problem(request: Request, title: str, reason: str, *, hint: str = "", status: int = 403) -> Response:
    """A page that says what went wrong and shows no data: a refusal, an unreachable node, a bad request."""
    return page(request, "problem.html", {"title": title, "reason": reason, "hint": hint}, status=status)


class TokenGate(BaseHTTPMiddleware):
    """Admit a request only with the console's token: in the link (``?token=``, once: it becomes a cookie) or
    in the cookie. A form post must also come from this console's own pages (Origin)."""

    def __init__(self, app: Any, token: str) -> None:
        super().__init__(app)
        self.token = token

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        if request.url.path.startswith("/static/"):  # style sheet and script only: no data
            return await call_next(request)
        given = request.query_params.get("token")
        if given is not None and secrets.compare_digest(given.encode(), self.token.encode()):
            query = "&".join(f"{k}={v}" for k, v in request.query_params.multi_items() if k != "token")
            response: Response = RedirectResponse(request.url.path + (f"?{query}" if query else ""), status_code=303)
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict", path="/")
            return response
        if not secrets.compare_digest(request.cookies.get(COOKIE, "").encode(), self.token.encode()):
            return problem(request, "Open the console's link",
                           "This console answers only the link it printed when it started (it carries a token), "
                           "so that nobody else on this machine acts with your certificate.",
                           hint="Copy the http://127.0.0.1:PORT/?token=... line from the terminal that runs the "
                                "console.", status=401)
        origin = request.headers.get("origin")
        if request.method == "POST" and origin not in (None, f"{request.url.scheme}://{request.url.netloc}"):
            return problem(request, "Refused", f"a form from {origin} may not act through this console", status=403)
        return await call_next(request)


def make_app(routes: Sequence[BaseRoute], *, token: str, site: Mapping[str, Any],
             on_shutdown: Callable[[], None] | None = None) -> Starlette:
    """The console's application: its routes, the static files, the token and host checks; ``site`` is what
    every page's frame shows (organisation, node name, the navigation)."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        yield
        if on_shutdown is not None:
            on_shutdown()

    app = Starlette(routes=[*routes, Mount("/static", StaticFiles(directory=HERE / "static"), name="static")],
                    middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=[HOST, "localhost"]),
                                Middleware(TokenGate, token=token)], lifespan=lifespan)
    app.state.site = dict(site)
    app.state.token = token
    return app


def bind(port: int) -> socket.socket:
    """A listening socket on 127.0.0.1 (``port`` 0: a free one); a port in use is a clear error."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
    except OSError as err:
        sock.close()
        raise OSError(f"cannot listen on {HOST}:{port}: {err.strerror} (pick another --port)") from None
    sock.listen(64)
    return sock


def serve_console(app: Starlette, *, port: int, program: str) -> int:
    """Serve ``app`` on 127.0.0.1:``port`` until Ctrl-C / SIGTERM, printing the link (with the token)."""
    try:
        sock = bind(port)
    except OSError as err:
        print(f"{program} console: {err}", file=sys.stderr)
        return 2
    host, bound = sock.getsockname()[:2]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    print(f"{program} console: open http://{host}:{bound}/?token={app.state.token}  (Ctrl-C stops it)", file=sys.stderr,
          flush=True)
    server.run(sockets=[sock])
    return 0


def new_token() -> str:
    return secrets.token_urlsafe(24)


# ---- charts: small inline SVG, drawn on the server (no plotting library in the browser) ----

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")


def line_chart(series: Sequence[tuple[str, Sequence[tuple[float, float]]]], *, title: str, xlabel: str,
               ylabel: str, width: int = 560, height: int = 260, integer_x: bool = True) -> Markup:
    """Lines (one per named series) as an inline SVG with axes, ticks and a legend; empty series are skipped."""
    series = [(name, list(points)) for name, points in series if points]
    left, right, top, bottom = 52, 12, 28, 40
    w, h = width - left - right, height - top - bottom
    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" '
           f'xmlns="http://www.w3.org/2000/svg"><text x="{width / 2}" y="16" text-anchor="middle" '
           f'class="chart-title">{escape(title)}</text>']
    if not series:
        out.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" class="chart-empty">'
                   "no points yet</text></svg>")
        return Markup("".join(out))
    xs = [x for _, pts in series for x, _ in pts]
    ys = [y for _, pts in series for _, y in pts]
    x0, x1 = min(xs), max(xs)
    if x0 == x1:
        x0, x1 = x0 - 1, x1 + 1
    y0, y1 = min(ys), max(ys)
    pad = max(0.02, (y1 - y0) * 0.1)
    y0, y1 = y0 - pad, y1 + pad

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * w

    def py(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * h

    out.append(f'<rect x="{left}" y="{top}" width="{w}" height="{h}" class="chart-frame"/>')
    for i in range(5):  # y ticks
        y = y0 + (y1 - y0) * i / 4
        out.append(f'<line x1="{left}" x2="{left + w}" y1="{py(y):.1f}" y2="{py(y):.1f}" class="chart-grid"/>'
                   f'<text x="{left - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{y:.3f}</text>')
    ticks = sorted({round(x) for x in xs}) if integer_x else [x0 + (x1 - x0) * i / 4 for i in range(5)]
    step = max(1, len(ticks) // 10)
    for x in ticks[::step]:
        out.append(f'<text x="{px(x):.1f}" y="{top + h + 16}" text-anchor="middle">'
                   f'{x:g}</text>')
    out.append(f'<text x="{left + w / 2}" y="{height - 4}" text-anchor="middle">{escape(xlabel)}</text>'
               f'<text transform="translate(12 {top + h / 2}) rotate(-90)" text-anchor="middle">'
               f'{escape(ylabel)}</text>')
    for i, (name, pts) in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        out.extend(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{color}"><title>{escape(name)}: '
                   f'{x:g}, {y:.3f}</title></circle>' for x, y in pts)
        ly = top + 14 + 14 * i
        out.append(f'<rect x="{left + 8}" y="{ly - 8}" width="10" height="3" fill="{color}"/>'
                   f'<text x="{left + 22}" y="{ly - 3}" class="chart-legend">{escape(name)}</text>')
    out.append("</svg>")
    return Markup("".join(out))


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


__all__ = ["COOKIE", "HOST", "TEMPLATES", "TokenGate", "line_chart", "make_app", "new_token", "number", "page",
           "problem", "serve_console", "utc_now", "when"]
