"""The Bokeh server: one port, one application per page, token and origin checks."""

from __future__ import annotations

import contextlib
import logging
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

from bokeh.application import Application
from bokeh.application.handlers.function import FunctionHandler
from bokeh.server.server import BaseServer
from bokeh.server.tornado import BokehTornado
from bokeh.server.util import bind_sockets
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop

from pcmlab.dashboard.catalog import CatalogView
from pcmlab.dashboard.data import SharedRuns
from pcmlab.dashboard.pages.deployment import deployment_page
from pcmlab.dashboard.pages.run import run_page
from pcmlab.dashboard.pages.runs import runs_page
from pcmlab.dashboard.pages.sweep import sweep_page
from pcmlab.dashboard.security import COOKIE, TokenAuth, is_loopback
from pcmlab.errors import ConfigError

log = logging.getLogger(__name__)

WEBSOCKET_MAX_MESSAGE_BYTES = 64 * 2**20


@dataclass
class Dashboard:
    server: BaseServer
    host: str
    port: int
    token: str | None
    shared: SharedRuns  # the run files its pages have open

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        base = f"http://{host}:{self.port}/"
        return base + (f"?token={self.token}" if self.token else "")

    def stop(self) -> None:
        self.server.stop()
        self.server.unlisten()
        self.shared.close_all()


def pages(catalog: CatalogView, shared: SharedRuns | None = None
          ) -> dict[str, Application]:
    """The pages; ``shared``: the run files open on the server, shared by its run pages."""
    def app(fn, **kwargs) -> Application:
        return Application(FunctionHandler(partial(fn, catalog, **kwargs)))

    if shared is None:
        shared = SharedRuns()
    out = {"/": app(runs_page), "/run": app(run_page, shared=shared),
           "/deployment": app(deployment_page),
           "/sweep": app(sweep_page)}
    try:
        from pcmlab.dashboard.pages.cell import cell_page
    except ImportError:  # the cell page needs the catalog's cell history
        pass
    else:
        out["/cell"] = app(cell_page)
    return out


def websocket_origins(host: str, port: int, allow: Sequence[str] = ()) -> list[str]:
    """The ``host:port`` a browser's page may come from (its Origin) to open the page's
    websocket: the address served, loopback's names on loopback; off loopback also this
    machine's hostname, FQDN and addresses (all of them when serving every interface,
    0.0.0.0 or ::) and ``allow`` (HOST or HOST:PORT, e.g. a name the users type or a
    proxy's; the port defaults to the one served). The token is required all the same."""
    origins = [f"{host}:{port}"]
    if is_loopback(host):
        origins += [f"localhost:{port}", f"127.0.0.1:{port}"]
    else:
        names = {socket.gethostname(), socket.getfqdn()}
        addresses: set[str] = set()
        for name in sorted(names):
            with contextlib.suppress(OSError):  # a name this machine cannot resolve
                addresses |= {str(a[4][0]) for a in socket.getaddrinfo(name, None)}
        if host in ("0.0.0.0", "::", ""):
            addresses.discard(host)
        else:
            addresses.add(host)
        for name in sorted(names) + sorted(addresses):
            if name and name not in ("0.0.0.0", "::"):
                origins.append(f"[{name}]:{port}" if ":" in name else f"{name}:{port}")
    for origin in allow:
        origin = origin.strip()
        if not origin:
            continue
        bare = origin.split("://", 1)[-1].rstrip("/")  # http://lab-pc:5006 is taken too
        has_port = bare.rsplit(":", 1)[-1].isdigit() and (
            not bare.startswith("[") or "]:" in bare)
        origins.append(bare if has_port else f"{bare}:{port}")
    return list(dict.fromkeys(origins))


def start(catalog: CatalogView, *, host: str = "127.0.0.1", port: int = 0,
          token: str | None = None, io_loop: IOLoop | None = None,
          allow_origins: Sequence[str] = ()) -> Dashboard:
    """Start serving on ``host:port`` (port 0: any free one) in ``io_loop`` (default: the
    current one; run it to serve). Off loopback a token is required: ``token``, or a new
    one (``Dashboard.token``). ``allow_origins``: more HOST[:PORT] a page may come from
    (``websocket_origins``)."""
    if not is_loopback(host) and token is None:
        token = secrets.token_urlsafe(24)
    if token is not None and len(token) < 16:
        raise ConfigError(f"token of {len(token)} characters: give at least 16 (or leave "
                          "--token out and one is generated)")
    try:
        sockets, bound = bind_sockets(host, port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick "
                          "another --port or --host") from None
    origins = websocket_origins(host, bound, allow_origins)
    kwargs = {}
    if token is not None:
        kwargs["auth_provider"] = TokenAuth(token)
    shared = SharedRuns()
    app = BokehTornado(pages(catalog, shared), extra_websocket_origins=origins,
                       absolute_url=f"http://{host}:{bound}",
                       # sessions only from pages this server handed out
                       secret_key=secrets.token_bytes(32), sign_sessions=True,
                       generate_session_ids=True, exclude_cookies=[COOKIE],
                       websocket_max_message_size_bytes=WEBSOCKET_MAX_MESSAGE_BYTES,
                       use_index=False, redirect_root=False, **kwargs)
    http = HTTPServer(app, xheaders=False)
    http.start(1)
    http.add_sockets(sockets)
    server = BaseServer(io_loop or IOLoop.current(), app, http)
    server.start()
    log.info("dashboard on %s:%d", host, bound)
    return Dashboard(server, host, bound, token, shared)


class DashboardThread:
    """The dashboard served from a thread with its own event loop (a script, a notebook,
    the tests); ``stop()`` ends it."""

    def __init__(self, catalog: CatalogView, **kwargs) -> None:
        import asyncio
        import threading

        ready = threading.Event()
        box: dict = {}

        def run() -> None:
            asyncio.set_event_loop(asyncio.new_event_loop())
            loop = IOLoop.current()
            try:
                box["dash"] = start(catalog, io_loop=loop, **kwargs)
            except BaseException as exc:
                box["error"] = exc
                ready.set()
                return
            box["loop"] = loop
            ready.set()
            loop.start()
            loop.close(all_fds=False)

        self._thread = threading.Thread(target=run, name="pcmlab-dashboard", daemon=True)
        self._thread.start()
        ready.wait(60)
        if "error" in box:
            raise box["error"]
        self.dashboard: Dashboard = box["dash"]
        self._loop: IOLoop = box["loop"]
        self.base = f"http://{self.dashboard.host}:{self.dashboard.port}"

    def stop(self) -> None:
        def halt() -> None:
            self.dashboard.stop()
            self._loop.stop()

        self._loop.add_callback(halt)
        self._thread.join(10)
