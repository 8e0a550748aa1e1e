"""``pcmlab serve``: the dashboard in the browser (read-only)."""

from __future__ import annotations

import argparse

from pcmlab.cli.common import console, err_console

DEFAULT_PORT = 5006


def add_serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="the lab dashboard in a browser: runs, arrays, drift, "
                       "accuracy, live (read-only)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on; anything "
                   "but loopback requires a token")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (0: any free one)")
    p.add_argument("--token", help="the token to require (default off loopback: a new "
                   "one, printed once)")
    p.add_argument("--allow-origin", action="append", default=[], metavar="HOST[:PORT]",
                   help="off loopback, another name a browser reaches this server by (a "
                   "DNS alias, a proxy); this machine's hostname, FQDN and addresses are "
                   "allowed already; repeatable; the token is still required")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from tornado.ioloop import IOLoop

    from pcmlab.dashboard.catalog import CatalogView
    from pcmlab.dashboard.server import start

    catalog = CatalogView.open(getattr(args, "catalog", None))  # pcmlab --catalog
    dash = start(catalog, host=args.host, port=args.port, token=args.token,
                 allow_origins=args.allow_origin)
    console.print(f"pcmlab dashboard: [bold]{dash.url}[/] (read-only; Ctrl-C stops it)")
    if dash.token is not None and args.token is None:
        err_console.print("a token is required off loopback; it is in the URL above and "
                          "is printed only once")
    try:
        IOLoop.current().start()
    except KeyboardInterrupt:
        console.print("dashboard stopped")
    finally:
        dash.stop()
        catalog.close()
    return 0
