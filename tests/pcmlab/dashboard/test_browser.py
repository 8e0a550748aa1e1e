"""The dashboard in headless Chromium: what a user sees. Each test saves a screenshot
(docs/dashboard.md shows them; PCMLAB_SCREENSHOTS=docs to refresh those)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pcmlab.dashboard.catalog import CatalogView, RunFilter
from pcmlab.dashboard.data import UnlockedReader as RunReader  # as the server opens files

pytestmark = pytest.mark.slow

DEEP_TEXT = """
function deep(n) { let t = ''; if (n.shadowRoot) t += deep(n.shadowRoot);
  for (const c of n.childNodes) t += (c.nodeType === 3 ? c.textContent : deep(c)) + ' ';
  return t; }
return deep(document.body);"""


def wait_for(driver, script: str, timeout_s: float = 60.0):
    """Poll a JavaScript expression in the page until it is truthy; its value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = driver.execute_script(f"try {{ return {script}; }} catch (e) {{ return null; }}")
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"page never satisfied: {script}")
        time.sleep(0.05)


def model(name: str) -> str:
    return f"Bokeh.documents[0].get_model_by_name('{name}')"


def level_means(driver, k: int) -> list[float]:
    """The level curve's measured means (one per readout) as the page holds them."""
    level, mean = driver.execute_script(f"const d = {model('level_source')}.data;"
                                        "return [Array.from(d.level), Array.from(d.mean_us)];")
    return [m for lv, m in zip(level, mean, strict=True) if lv == k]


def open_page(driver, url: str) -> None:
    driver.get(url)
    wait_for(driver, "window.Bokeh && Bokeh.documents.length > 0 && Bokeh.documents[0].is_idle")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, CatalogView]:
    """``pcmlab demo`` (small: few epochs and runs, no chip mode) in its own process,
    registering in a catalog of its own: (output folder, that catalog)."""
    out = tmp_path_factory.mktemp("demo")
    where = out / "catalog.sqlite"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), PCMLAB_CATALOG=str(where))
    subprocess.run([sys.executable, "-m", "pcmlab.cli", "demo", "--output-dir", str(out),
                    "--epochs", "2", "--runs", "2", "--no-mvm"], check=True, env=env,
                   stdout=subprocess.DEVNULL, timeout=900)
    view = CatalogView.open(where)
    yield out, view
    view.close()


def test_runs_table_shows_the_demos_runs(browser, serve, demo, screenshot):
    _, catalog = demo
    entries, total = catalog.runs(RunFilter(), 0, 50)
    assert total >= 1 and "deployment" in {e.kind for e in entries}
    s = serve(catalog)
    open_page(browser, s.base + "/")
    wait_for(browser, f"{model('runs_source')}.data.id.length > 0")
    text = browser.execute_script(DEEP_TEXT)
    for e in entries:
        assert e.id[:8] in text and e.path.name in text
    assert "deployment" in text and "finished" in text and f"runs 1-{total} of {total}" in text
    screenshot(browser, "dashboard-runs")


def test_run_page_shows_heatmap_and_curves(browser, serve, demo, screenshot):
    out, catalog = demo
    path = out / "demo-run.h5"
    with RunReader(path) as r:
        run_id = r.run_id
    s = serve(catalog)
    open_page(browser, f"{s.base}/run?id={run_id}")
    with RunReader(path) as r:
        geometry, targets, ro = r.geometry, r.targets(), r.readouts()
        converged = r.programming().converged
    n = ro.n
    # the heatmap is the last readout, every cell where row * cols + col says
    shape, values = browser.execute_script(
        f"const img = {model('heatmap_source')}.data.image[0];"
        "return [img.shape, Array.from(img.slice(0, img.length))];")
    assert shape == [geometry["rows"] * geometry["arrays"], geometry["cols"]]
    image = np.asarray([np.nan if v is None else v for v in values], dtype=np.float32)
    expected = np.full(image.size, np.nan, np.float32)
    expected[targets.cell] = ro.conductance_us[-1]
    np.testing.assert_array_equal(image, expected)
    # the curves: one point per readout, the mean of the level's converged cells
    from pcmlab.analysis import group_levels

    groups = group_levels(targets.conductance_us)
    k = int(np.argmax(groups.mean_target_us))
    mean = level_means(browser, k)
    sel = (groups.index == k) & converged
    np.testing.assert_allclose(mean, ro.conductance_us[:, sel].astype(np.float64).mean(axis=1),
                               rtol=1e-5)
    assert len(mean) == n
    status = browser.execute_script(f"return {model('readout_status')}.text;")
    assert status.startswith(f"readouts: {n} of {n};")
    nu = browser.execute_script(f"return Array.from({model('nu_source')}.data.nu);")
    assert len(nu) == int((groups.high_us > 0).sum()) and all(0 < v < 0.2 for v in nu)
    screenshot(browser, "dashboard-run")
    # the same run as a deployment: accuracy measured from each readout, as recorded
    open_page(browser, f"{s.base}/deployment?id={run_id}")
    shown = browser.execute_script(f"return Array.from({model('measured_source')}"
                                   ".data.accuracy_pct);")
    with RunReader(path) as r:
        ev = r.evaluation()
    np.testing.assert_allclose(shown, 100 * ev["measured_accuracy"], rtol=1e-12)
    fill = browser.execute_script(f"return {model('layers_table')}.source.data.name.length;")
    assert fill >= 2  # the demo CNN's weight layers
    screenshot(browser, "dashboard-deployment")


def test_live_run_gains_readouts_on_the_open_page(browser, serve, catalog, live_writer,
                                                  screenshot):
    path, writer = live_writer(rows=128, cols=256, readouts=6, first=2)
    run_id = writer.run_id
    assert catalog.run(run_id).status == "running"
    s = serve(catalog)
    open_page(browser, f"{s.base}/run?id={run_id}")
    status = f"{model('readout_status')}.text"
    assert "readouts: 2 of 6" in wait_for(browser, status)
    for i in (2, 3):
        assert writer.next()["index"] == i
        wait_for(browser, f"{status}.includes('readouts: {i + 1} of 6')", timeout_s=30)
    with RunReader(path) as r:
        last = r.readouts(3, 4).conductance_us[0]
        target = r.targets().conductance_us
    mean = level_means(browser, 4)
    assert len(mean) == 4
    np.testing.assert_allclose(mean[-1], last[target == 20.0].astype(np.float64).mean(),
                               rtol=1e-5)
    slider = browser.execute_script(f"const s = {model('readout_slider')};"
                                    "return [s.end, s.value];")
    assert slider == [4, 4]  # the page follows the newest readout
    img = browser.execute_script(f"const img = {model('heatmap_source')}.data.image[0];"
                                 "return Array.from(img.slice(0, 64));")
    np.testing.assert_array_equal(np.asarray(img, np.float32), last[:64])
    screenshot(browser, "dashboard-live")


def test_token_refused_without_it(browser, serve, catalog, tmp_path, screenshot):
    from tests.pcmlab.dashboard.live_writer import write_run

    write_run(tmp_path / "r.h5")
    token = "browser-test-token-0123456789"
    s = serve(catalog, token=token)
    browser.delete_all_cookies()
    browser.get(s.base + "/")
    text = browser.execute_script(DEEP_TEXT)
    assert "403" in text and "needs its token" in text
    assert browser.execute_script("return typeof Bokeh") == "undefined"
    screenshot(browser, "dashboard-token-refused")
    open_page(browser, f"{s.base}/?token={token}")
    assert browser.title == "pcmlab runs"
    browser.delete_all_cookies()
