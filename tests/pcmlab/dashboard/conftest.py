"""Fixtures of the dashboard tests: a server in a thread, a run written by another
process, and a headless Chromium (Debian's chromium and chromium-driver)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

WRITER = Path(__file__).with_name("live_writer.py")
CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class LiveWriter:
    """``live_writer.py`` in its own process: the next readout on demand."""

    def __init__(self, path: Path, **options: int) -> None:
        args = [sys.executable, str(WRITER), str(path)]
        for k, v in options.items():
            args += [f"--{k}", str(v)]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env)
        line = self.proc.stdout.readline().split()
        if not line or line[0] != "ready":
            self.proc.kill()
            raise RuntimeError(f"live writer did not start: {line!r}")
        self.run_id = line[1]

    def next(self) -> dict:
        """Append one readout; its index and the Unix time it was flushed."""
        self.proc.stdin.write("next\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("\n\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def catalog(tmp_path, monkeypatch):
    """A catalog of this test alone: every file written from here on (in this process or
    a child) registers in it."""
    from pcmlab.dashboard.catalog import CatalogView

    path = tmp_path / "catalog.sqlite"
    monkeypatch.setenv("PCMLAB_CATALOG", str(path))
    from pcmlab.catalog import open_catalog

    # writable, so that tests can register through view.catalog; the server's own view is
    # read-only (CatalogView.open, test_runs_table.py)
    view = CatalogView(open_catalog(path))
    yield view
    view.close()


@pytest.fixture
def serve():
    """The dashboard on 127.0.0.1 (a free port) in a thread, stopped after the test."""
    from pcmlab.dashboard.server import DashboardThread

    servers: list[DashboardThread] = []

    def make(catalog, **kwargs) -> DashboardThread:
        s = DashboardThread(catalog, **kwargs)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop()


@pytest.fixture
def live_writer(tmp_path):
    writers: list[LiveWriter] = []

    def make(name: str = "live.h5", **options: int) -> tuple[Path, LiveWriter]:
        path = tmp_path / name
        w = LiveWriter(path, **options)
        writers.append(w)
        return path, w

    yield make
    for w in writers:
        w.close()


@pytest.fixture(scope="session")
def browser() -> Iterator:
    """Headless Chromium through Selenium. Skipped only where Chromium is absent and CI
    is not set; in CI a missing Chromium fails."""
    if CHROMEDRIVER is None or CHROMIUM is None:
        msg = ("headless Chromium is needed for the browser tests: apt-get install -y "
               "chromium chromium-driver (.ci/services does it)")
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1700", "--proxy-server=direct://",
                "--proxy-bypass-list=*"):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture
def screenshot(request, tmp_path):
    """Save the browser's page as NAME.png (in $PCMLAB_SCREENSHOTS if set, else tmp)."""
    folder = Path(os.environ.get("PCMLAB_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)

    def save(driver, name: str) -> Path:
        path = folder / f"{name}.png"
        driver.save_screenshot(str(path))
        return path

    return save
