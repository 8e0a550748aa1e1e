"""The dashboard over plain HTTP: only catalog runs are read, the token is enforced,
websocket origins are checked."""

from __future__ import annotations

import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from pcmlab.dashboard.catalog import RunFilter
from pcmlab.dashboard.security import is_loopback
from pcmlab.store import RunReader
from tests.pcmlab.dashboard.live_writer import write_run


def title(body: str) -> str:
    """The page's title: the document's, set by the page (the rest comes over the
    websocket)."""
    return re.search(r"<title>(.*?)</title>", body, re.S).group(1).strip()


def get(url: str, cookie: str | None = None) -> tuple[int, str, dict]:
    req = urllib.request.Request(url, headers={"Cookie": cookie} if cookie else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), dict(e.headers)


@pytest.fixture
def two_runs(tmp_path, catalog, monkeypatch):
    """One registered run and one pcmlab file beside it that is not registered."""
    registered, other = tmp_path / "registered.h5", tmp_path / "unregistered.h5"
    write_run(registered)
    monkeypatch.setenv("PCMLAB_CATALOG", "off")
    write_run(other)
    return catalog, registered, other


def test_only_catalog_runs_are_read(serve, two_runs, monkeypatch):
    catalog, registered, other = two_runs
    opened: list[Path] = []
    import pcmlab.dashboard.data as data

    real = data.UnlockedReader

    def spy(path):
        opened.append(Path(path).resolve())
        return real(path)

    monkeypatch.setattr(data, "UnlockedReader", spy)
    s = serve(catalog)
    run_id = catalog.runs(RunFilter(), 0, 10)[0][0].id
    status, body, _ = get(f"{s.base}/run?id={run_id}")
    assert status == 200 and title(body) == f"pcmlab run {run_id}"
    assert opened == [registered.resolve()]
    with RunReader(other) as r:
        other_id = r.run_id
    assert other_id and catalog.run(other_id) is None  # a pcmlab file, not in the catalog
    rel = Path("..") / ".." / other.relative_to(other.anchor)
    for bad in (str(other), str(rel), "../" * 12 + str(other).lstrip("/"),
                urllib.parse.quote(str(other), safe=""), "%2e%2e%2fetc%2fpasswd",
                "/etc/passwd", run_id + "/../" + run_id, run_id[:8], other_id, ""):
        status, body, _ = get(f"{s.base}/run?id={bad}")
        assert status == 200 and title(body) == "pcmlab: not found", bad
    status, body, _ = get(f"{s.base}/run?path={urllib.parse.quote(str(other))}")
    assert title(body) == "pcmlab: not found"
    for page in ("deployment", "sweep"):  # a run is not a deployment or a sweep
        assert title(get(f"{s.base}/{page}?id={run_id}")[1]) == "pcmlab: not found"
    assert opened == [registered.resolve()]  # nothing else was ever opened
    # a second page of the run shares the server's one reading of its file
    assert title(get(f"{s.base}/run?id={run_id}")[1]) == f"pcmlab run {run_id}"
    assert opened == [registered.resolve()] and len(s.dashboard.shared) == 1
    status, _, _ = get(f"{s.base}/static/../../../../etc/passwd")
    assert status in (403, 404)


def test_token_required(serve, two_runs):
    catalog, _, _ = two_runs
    token = "t" * 8 + "-secret-0123456789"
    s = serve(catalog, token=token)
    status, body, _ = get(f"{s.base}/")
    assert status == 403 and "token" in body
    status, body, _ = get(f"{s.base}/?token=wrong-token-0123456789")
    assert status == 403
    status, body, headers = get(f"{s.base}/?token={token}")
    assert status == 200 and "pcmlab runs" in body
    cookie = headers["Set-Cookie"].split(";")[0]
    assert cookie == f"pcmlab_token={token}" and "HttpOnly" in headers["Set-Cookie"]
    assert get(f"{s.base}/run?id=x", cookie=cookie)[0] == 200  # the cookie is enough
    assert get(f"{s.base}/run?id=x", cookie="pcmlab_token=nope")[0] == 403
    # the token never reaches the page's session (Bokeh's session token carries cookies)
    assert token not in get(f"{s.base}/run?id=x", cookie=cookie)[1]


def test_token_off_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.7")
    assert not is_loopback("lab-pc.example.org")


def _session_token(body: str) -> str:
    return re.search(r'"token":\s*"([^"]+)"', body).group(1)


def test_websocket_origin_and_session_checked(serve, two_runs):
    from tornado.httpclient import HTTPClientError, HTTPRequest
    from tornado.ioloop import IOLoop
    from tornado.websocket import websocket_connect

    catalog, _, _ = two_runs
    s = serve(catalog)
    _, body, _ = get(f"{s.base}/")
    token = _session_token(body)
    ws = f"ws://127.0.0.1:{s.dashboard.port}/ws"

    async def connect(origin: str, session_token: str) -> bool:
        req = HTTPRequest(ws, headers={"Origin": origin})
        try:
            conn = await websocket_connect(req, subprotocols=["bokeh", session_token])
        except (HTTPClientError, OSError):
            return False
        msg = await conn.read_message()  # the server's ACK, or None: closed on us
        conn.close()
        return msg is not None

    loop = IOLoop(make_current=False)
    try:
        assert loop.run_sync(lambda: connect(s.base, token))
        assert not loop.run_sync(lambda: connect("http://evil.example.org", token))
        forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        assert not loop.run_sync(lambda: connect(s.base, forged))
    finally:
        loop.close()


def test_cell_page_from_the_catalog(serve, catalog, tmp_path):
    from pcmlab.dashboard.pages.cell import history_rows

    first = write_run(tmp_path / "a.h5", readouts=2)
    second = write_run(tmp_path / "b.h5", readouts=3, seed=1)
    ds = catalog.cell_history("1", 7)  # the synthetic chip's serial is 1
    assert list(ds.run_id.values) == [first, second]
    rows = history_rows(ds)
    assert rows["run"] == [first[:8], second[:8]] and rows["reads"] == ["2", "3"]
    with RunReader(tmp_path / "b.h5") as r:
        assert rows["target"][1] == f"{float(r.targets().conductance_us[7]):.3g}"
        np.testing.assert_array_equal(ds.conductance_us.values[ds.read_run.values == 1, 0],
                                      r.readouts().conductance_us[:, 7])
    s = serve(catalog)
    assert title(get(f"{s.base}/cell?chip=1&cell=7")[1]) == "pcmlab cell 7"
    for bad in ("chip=1&cell=../7", "chip=1&cell=-1", "chip=nope&cell=7",
                f"chip={urllib.parse.quote(str(tmp_path / 'a.h5'))}&cell=7", "cell=7",
                "chip=1&cell=100000"):
        assert title(get(f"{s.base}/cell?{bad}")[1]) == "pcmlab: not found", bad


def test_origins_off_loopback_are_the_machine_and_what_the_user_allows(monkeypatch):
    import socket

    from pcmlab.dashboard.server import websocket_origins

    monkeypatch.setattr(socket, "gethostname", lambda: "labpc")
    monkeypatch.setattr(socket, "getfqdn", lambda *a: "labpc.lab.example.org")
    addresses = {"labpc": ["192.0.2.7", "2001:db8::7"], "labpc.lab.example.org": ["192.0.2.7"]}
    monkeypatch.setattr(socket, "getaddrinfo", lambda name, *a: [
        (None, None, None, "", (addr, 0)) for addr in addresses[name]])
    origins = websocket_origins("0.0.0.0", 5006, ["lab-dash", "http://proxy.example.org:8080/"])
    for o in ("labpc:5006", "labpc.lab.example.org:5006", "192.0.2.7:5006",
              "[2001:db8::7]:5006", "lab-dash:5006", "proxy.example.org:8080"):
        assert o in origins
    assert "localhost:5006" not in origins  # not loopback
    assert websocket_origins("127.0.0.1", 5006) == ["127.0.0.1:5006", "localhost:5006"]
