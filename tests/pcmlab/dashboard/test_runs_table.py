"""The runs table pages on the server through the catalog's public paging (list_runs
with offset and limit, count_runs)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from bokeh.document import Document

from pcmlab.catalog import new_run_id
from pcmlab.dashboard.catalog import RunFilter
from pcmlab.dashboard.pages.runs import PAGE_ROWS, RunsPage


def _many(catalog, n: int) -> list[str]:
    start = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    ids = []
    for i in range(n):
        rid = new_run_id()
        catalog.catalog.register(rid, kind=("run", "deployment")[i % 2],
                                 path=f"/data/r{i}.h5", chip_identity="pcmlab,MockPCM,SN-1,1",
                                 started_at=start + dt.timedelta(minutes=i),
                                 status="stopped" if i % 5 == 0 else "finished",
                                 meta={"i": i})
        ids.append(rid)
    return ids[::-1]  # newest first


def test_the_runs_table_is_paged_on_the_server(catalog, monkeypatch):
    ids = _many(catalog, 2 * PAGE_ROWS + 17)
    calls = []
    real = catalog.catalog.list_runs

    def spy(**kw):
        calls.append(kw)
        return real(**kw)

    monkeypatch.setattr(catalog.catalog, "list_runs", spy)
    entries, total = catalog.runs(RunFilter(), PAGE_ROWS, PAGE_ROWS)
    assert total == len(ids) and [e.id for e in entries] == ids[PAGE_ROWS:2 * PAGE_ROWS]
    assert calls[-1]["offset"] == PAGE_ROWS and calls[-1]["limit"] == PAGE_ROWS
    stopped = [rid for k, rid in enumerate(ids) if (len(ids) - 1 - k) % 5 == 0]
    entries, total = catalog.runs(RunFilter(status="stopped"), 10, 5)
    assert total == len(stopped) and [e.id for e in entries] == stopped[10:15]

    doc = Document()
    page = RunsPage(doc, catalog)
    assert page.info.text == f"runs 1-{PAGE_ROWS} of {len(ids)}"
    assert [i[:8] for i in ids[:PAGE_ROWS]] == page.source.data["id"]
    page._move(PAGE_ROWS)
    page._move(PAGE_ROWS)
    assert page.info.text == f"runs {2 * PAGE_ROWS + 1}-{len(ids)} of {len(ids)}"
    assert page.source.data["id"] == [i[:8] for i in ids[2 * PAGE_ROWS:]]
    assert page.next.disabled and not page.prev.disabled
    page.kind.value = "deployment"  # a filter starts again at the first page
    deployments = ids[::2] if (len(ids) - 1) % 2 == 1 else ids[1::2]
    assert page.info.text == f"runs 1-{PAGE_ROWS} of {len(deployments)}"
    assert page.source.data["id"] == [i[:8] for i in deployments[:PAGE_ROWS]]
    assert all(kw.get("limit") == PAGE_ROWS for kw in calls[-2:])  # never the whole table
    page.tag.value = "."  # a key the catalog refuses: said on the page
    assert "metadata key" in page.message.text


def test_the_until_box_takes_in_the_whole_day(catalog):
    ids = _many(catalog, 3)  # 2026-01-01 00:00, 00:01, 00:02
    entries, total = catalog.runs(RunFilter(until="2026-01-01"), 0, 10)
    assert total == 3 and [e.id for e in entries] == ids
    entries, total = catalog.runs(RunFilter(until="2026-01-01T00:01"), 0, 10)
    assert total == 2 and [e.id for e in entries] == ids[1:]


def test_the_where_box_reads_values_as_the_cli_does(catalog):
    rid = new_run_id()
    catalog.catalog.register(rid, kind="run", path="/data/fw.h5", meta={"firmware": "1.10"})
    assert RunFilter(where=("firmware=1.10",)).arguments()["where"] == {"firmware": "1.10"}
    entries, total = catalog.runs(RunFilter(where=("firmware=1.10",)), 0, 10)
    assert total == 1 and [e.id for e in entries] == [rid]


def test_the_id_link_is_escaped():
    import re

    from pcmlab.dashboard.catalog import RunEntry
    from pcmlab.dashboard.pages.runs import LINK_TEMPLATE, _columns

    # underscore's <%= %> inserts raw HTML; every field must go through <%- %> (escaped)
    assert re.findall(r"<%(.)", LINK_TEMPLATE) == ["-", "-"]
    hostile = '"><img src=x onerror=alert(1)>'
    cols = _columns([RunEntry(id=hostile, kind="run", status="finished",
                              path=Path("/d/x.h5"), started="")])
    assert cols["link"] == ["/run?id=%22%3E%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E"]


def test_the_dashboard_never_makes_or_writes_a_catalog(tmp_path):
    import pytest

    from pcmlab.catalog import open_catalog
    from pcmlab.dashboard.catalog import CatalogView
    from pcmlab.errors import CatalogError

    missing = tmp_path / "mistyped.sqlite"
    with pytest.raises(CatalogError, match=r"mistyped\.sqlite does not exist.*catalog scan"):
        CatalogView.open(missing)
    assert not missing.exists()  # not made empty
    path = tmp_path / "catalog.sqlite"
    with open_catalog(path) as cat:
        rid = cat.register(new_run_id(), kind="run", path="/d/a.h5", status="finished")
    view = CatalogView.open(path)
    try:
        assert [e.id for e in view.runs(RunFilter())[0]] == [rid]
        with pytest.raises(CatalogError, match="readonly"):
            view.catalog.register(new_run_id(), kind="run", path="/d/b.h5")
    finally:
        view.close()


def test_the_tag_box_takes_a_key_or_key_value(catalog):
    ada, bob = new_run_id(), new_run_id()
    catalog.catalog.register(ada, kind="run", path="/d/a.h5", meta={"operator": "ada"},
                             started_at="2026-01-02T00:00:00")
    catalog.catalog.register(bob, kind="run", path="/d/b.h5", meta={"operator": "bob"},
                             started_at="2026-01-01T00:00:00")
    page = RunsPage(Document(), catalog)
    page.tag.value = "operator=ada"
    assert page.info.text == "runs 1-1 of 1" and page.source.data["id"] == [ada[:8]]
    page.tag.value = "operator"
    assert page.info.text == "runs 1-2 of 2"
    page.where.value = "operator=bob"  # both boxes apply
    assert page.source.data["id"] == [bob[:8]]
    assert page.chip.placeholder == "serial"  # what the chip filter matches
