"""Dashboard speed, measured in headless Chromium: the time to the first full render of a
512 x 2048 run page with 30 readouts, and the time from a readout's flush (by another
process, SWMR) to its appearance on the open page.

Beside each, in the same run, a baseline: the render of the server's smallest page (the
"not found" page: Bokeh's JavaScript, a websocket, one Div) and the time a bare h5py SWMR
reader polling every 5 ms takes to see the same row (the floor of any follower).

Render: from navigation start to the moment BokehJS reports every root view rendered
(``Document.is_idle``), polled every 5 ms by a script the browser runs before the page's
own. The first load finds no page of the run open on the server and reads and summarizes
its readouts; the server's pages of one file share that (``pcmlab.dashboard.data.SHARED``),
so later loads while a page is open (or its session not yet ended) do not: both are
printed. Live: from the writer's time after its flush to the moment the page's status line
names the new readout (the heatmap, curves and schedule are updated in the same push,
before it); the flush is the writer's time after its append, or the moment a bare h5py
reader first saw the row if that is earlier. Targets: under 2 s and under 2 s.

    python benchmarks/dashboard.py [--loads 3] [--readouts 3] [--json PATH]

Without Chromium, chromedriver or selenium it says "not run: ..." (and run_all.py counts
its rows as not measured).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import _common  # noqa: F401  (takes this folder off sys.path: see _common.py)
import h5py
import numpy as np
from _common import Figures, add_report_options, not_run

ROWS, COLS, READOUTS = 512, 2048, 30

IDLE_PROBE = """
window.__pcmlab_idle_ms = null;
const probe = setInterval(() => {
  try {
    if (window.Bokeh && Bokeh.documents.length && Bokeh.documents[0].is_idle) {
      window.__pcmlab_idle_ms = performance.now(); clearInterval(probe); }
  } catch (e) {}
}, 5);
"""


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1700", "--proxy-server=direct://", "--proxy-bypass-list=*"):
        options.add_argument(arg)
    options.binary_location = shutil.which("chromium") or "chromium"
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": IDLE_PROBE})
    return driver


def render_s(driver, url: str, timeout_s: float = 120.0) -> float:
    driver.get(url)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ms = driver.execute_script("return window.__pcmlab_idle_ms;")
        if ms is not None:
            return ms / 1000.0
        time.sleep(0.02)
    raise RuntimeError(f"{url} never finished rendering")


class BareFollower(threading.Thread):
    """h5py in SWMR read mode, polling time_s every 5 ms: when each row was first seen."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path, self.seen, self.done = path, {}, threading.Event()

    def run(self) -> None:
        with h5py.File(self.path, "r", swmr=True, locking=False) as f:  # as the server
            t = f["readouts/time_s"]
            while not self.done.is_set():
                t.refresh()
                n = int(np.isfinite(t[...]).sum())
                for i in range(n):
                    self.seen.setdefault(i, time.time())
                time.sleep(0.005)


class BuildTimes(logging.Handler):
    """The server's own time to build each run page (its log line), to tell the server's
    share of a render from the browser's."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.times: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("run page of"):
            self.times.append(float(record.args[-1]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--loads", type=int, default=3, help="page loads timed")
    p.add_argument("--readouts", type=int, default=3, help="live readouts timed")
    add_report_options(p)
    a = p.parse_args()
    missing = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip)")
    if missing:
        return not_run(a.json, f"{' and '.join(missing)} not installed (the page is "
                       "measured in headless Chromium)")
    report = Figures("dashboard.py")
    work = Path(tempfile.mkdtemp(prefix="pcmlab-bench-dashboard-"))
    os.environ["PCMLAB_CATALOG"] = str(work / "catalog.sqlite")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from pcmlab.dashboard.catalog import CatalogView
    from pcmlab.dashboard.server import DashboardThread
    from tests.pcmlab.dashboard.conftest import LiveWriter

    def say(text: str) -> None:
        print(text, flush=True)

    t = time.perf_counter()
    writer = LiveWriter(work / "run.h5", rows=ROWS, cols=COLS,
                        readouts=READOUTS + a.readouts, first=READOUTS)
    say(f"wrote a {ROWS} x {COLS} run with {READOUTS} readouts in "
        f"{time.perf_counter() - t:.1f} s (another process, still writing)")
    build = BuildTimes()
    page_log = logging.getLogger("pcmlab.dashboard.pages.run")
    page_log.setLevel(logging.INFO)
    page_log.addHandler(build)
    catalog = CatalogView.open(work / "catalog.sqlite")
    server = DashboardThread(catalog)
    driver = browser()
    try:
        url = f"{server.base}/run?id={writer.run_id}"
        render_s(driver, f"{server.base}/run?id=none")  # the browser's first start
        empty = [render_s(driver, f"{server.base}/run?id=none") for _ in range(a.loads)]
        full = [render_s(driver, url) for _ in range(a.loads)]
        say(f"first full render of the run page: {', '.join(f'{x:.2f}' for x in full)} s "
            f"(the first load: {full[0]:.2f} s, no page of this run open on the server, its "
            f"30 readouts read and summarized; later loads share that reading; median "
            f"{statistics.median(full):.2f} s; target < 2 s); smallest page "
            f"{statistics.median(empty):.2f} s; ratio "
            f"{statistics.median(full) / statistics.median(empty):.1f}x; of it the server "
            f"building the page {', '.join(f'{x:.2f}' for x in build.times)} s")
        follower = BareFollower(work / "run.h5")
        follower.start()
        latencies, bare = [], []
        for k in range(a.readouts):
            n = READOUTS + k + 1
            driver.execute_script(
                "window.__pcmlab_seen = null; const s = Bokeh.documents[0]"
                ".get_model_by_name('readout_status'); const probe = setInterval(() => {"
                f"if (s.text.startsWith('readouts: {n} of')) {{"
                "window.__pcmlab_seen = Date.now(); clearInterval(probe); } }, 5);")
            flushed = writer.next()["flushed"]
            deadline = time.monotonic() + 60
            seen = None
            while seen is None and time.monotonic() < deadline:
                seen = driver.execute_script("return window.__pcmlab_seen;")
                time.sleep(0.02)
            if seen is None:
                raise RuntimeError(f"readout {n} never appeared on the page")
            while n - 1 not in follower.seen:
                time.sleep(0.01)
            # the writer's clock is read after append_readout returns, which includes its
            # catalog update: a reader can see the row before that; the earlier of the
            # two is the flush (so the page's figure is never flattered)
            flushed = min(flushed, follower.seen[n - 1])
            latencies.append(seen / 1000.0 - flushed)
            bare.append(follower.seen[n - 1] - flushed)
        follower.done.set()
        say(f"flush to page: {', '.join(f'{x:.2f}' for x in latencies)} s (median "
            f"{statistics.median(latencies):.2f} s; target < 2 s); a bare h5py SWMR reader "
            f"saw the row after {statistics.median(bare) * 1000:.0f} ms (median)")
        figures = {
            "render_s": full, "render_median_s": statistics.median(full),
            "render_first_load_s": full[0], "server_build_s": build.times,
            "empty_page_render_median_s": statistics.median(empty),
            "server_build_median_s": statistics.median(build.times),
            "flush_to_page_s": latencies,
            "flush_to_page_median_s": statistics.median(latencies),
            "bare_swmr_reader_median_s": statistics.median(bare),
            "rows": ROWS, "cols": COLS, "readouts": READOUTS,
            "load_average_1min": os.getloadavg()[0],
        }
        say(f"load average {os.getloadavg()[0]:.1f}; render "
            f"{report.add('render_median_s', figures['render_median_s'])}, flush to page "
            f"{report.add('flush_to_page_median_s', figures['flush_to_page_median_s'])}")
        report.write(a.json)
    finally:
        driver.quit()
        server.stop()
        writer.close()
        catalog.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
