"""Who may open the dashboard: everyone on loopback, a token holder elsewhere.

As Jupyter does it: the token comes once in the URL (``?token=...``), the server answers
with an HTTP-only cookie, and every later request (the page, its websocket) carries the
cookie. Bokeh checks each document and websocket request through this provider; the
websocket's origin is checked by Bokeh against the server's own address.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets

from bokeh.server.auth_provider import AuthProvider
from tornado.web import RequestHandler
from tornado.websocket import WebSocketHandler

COOKIE = "pcmlab_token"
LOGIN_PATH = "/token-required"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address) only listens on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    return secrets.token_urlsafe(24)


class TokenRequired(RequestHandler):
    """Where a request without the right token ends: 403, saying what to do."""

    def get(self) -> None:
        self.set_status(403)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.write("403: this pcmlab dashboard needs its token. Open the URL 'pcmlab serve' "
                   "printed (it ends in ?token=...), or add ?token=TOKEN to this address.\n")


class TokenAuth(AuthProvider):
    """Lets through a request that carries the token (query argument or cookie)."""

    def __init__(self, token: str) -> None:
        self._token = token
        super().__init__()

    @property
    def get_user(self):
        return self._user

    @property
    def login_url(self) -> str:
        return LOGIN_PATH

    @property
    def login_handler(self):
        return TokenRequired

    def _user(self, handler: RequestHandler) -> str | None:
        given = handler.get_query_argument("token", None)
        from_query = given is not None
        if given is None:
            given = handler.get_cookie(COOKIE)
        if given is None or not hmac.compare_digest(given.encode(), self._token.encode()):
            return None
        if from_query and not isinstance(handler, WebSocketHandler):
            handler.set_cookie(COOKIE, self._token, httponly=True, samesite="Strict")
        return "token"
