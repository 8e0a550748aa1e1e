"""The catalog's Python API on both backends: register, update, filter, tag, versions."""

from __future__ import annotations

import datetime as dt

import pytest

import pcmlab
from pcmlab.catalog import Catalog, cell_ranges, new_run_id, open_catalog, schema
from pcmlab.errors import CatalogError, CatalogUnavailableError

IDN = "pcmlab,MockPCM,SN-7,1.2"


def _register(cat: Catalog, kind: str = "run", started: str = "2026-03-01T10:00:00",
              **fields) -> str:
    rid = new_run_id()
    cat.register(rid, kind=kind, path=f"/data/{rid}.h5", chip_identity=fields.pop("idn", IDN),
                 started_at=started, geometry={"rows": 64, "cols": 128, "arrays": 1},
                 **fields)
    return rid


def test_register_update_get(catalog_url: str) -> None:
    with open_catalog(catalog_url) as cat:
        rid = _register(cat, config={"schedule": {"t0_s": 20.0}}, meta={"operator": "ada"},
                        cells=cell_ranges([5, 0, 1, 2, 6], "programmed",
                                          n_set=[5, 1, 2, 3, 4]))
        cat.update(rid, status="finished", n_readouts=30, ended_at="2026-03-02T10:00:00",
                   meta={"scheme": "new"})
        rec = cat.get(rid[:8])  # a unique prefix is enough
    assert rec["run_id"] == rid and rec["status"] == "finished" and rec["n_readouts"] == 30
    assert rec["config"] == {"schedule": {"t0_s": 20.0}}
    assert rec["meta"] == {"operator": "ada", "scheme": "new"}  # merged, not replaced
    assert (rec["chip_maker"], rec["chip_model"], rec["chip_serial"], rec["chip_firmware"]) \
        == ("pcmlab", "MockPCM", "SN-7", "1.2")
    assert (rec["rows"], rec["cols"]) == (64, 128)
    assert rec["started_at"] == dt.datetime(2026, 3, 1, 10, tzinfo=dt.timezone.utc)
    assert [(c.start, c.stop, c.n_set) for c in rec["cells"]] == [(0, 3, 6), (5, 7, 9)]


def test_filters(catalog_url: str) -> None:
    with open_catalog(catalog_url) as cat:
        a = _register(cat, "run", "2026-03-01T00:00:00", meta={"pulse": {"scheme": "new",
                                                                         "n": 3}})
        b = _register(cat, "deployment", "2026-04-01T00:00:00", status="finished",
                      meta={"pulse": {"scheme": "old", "n": 4}, "ok": True})
        c = _register(cat, "run", "2026-05-01T00:00:00", idn="acme,X1,SN-9,2",
                      status="stopped")

        def ids(**f) -> list[str]:
            return [r["run_id"] for r in cat.list_runs(**f)]

        assert ids() == [c, b, a]  # newest first
        assert ids(kind="run") == [c, a]
        assert ids(status=["finished", "stopped"]) == [c, b]
        assert ids(since="2026-03-15", until="2026-04-15") == [b]
        assert ids(chip="SN-9") == [c]
        assert ids(tag="pulse") == [b, a]
        assert ids(where={"pulse.scheme": "new"}) == [a]
        assert ids(where={"pulse.n": 4}) == [b]
        assert ids(where={"ok": True}) == [b]
        assert ids(where={"pulse.n": 5}) == []
        cat.tag(a, {"sample.batch": "B7"})
        assert ids(where={"sample.batch": "B7"}, tag="pulse") == [a]
    frame = pcmlab.runs(catalog_url, kind="run")
    assert list(frame["run_id"]) == [c, a]
    assert list(frame["chip_serial"]) == ["SN-9", "SN-7"]
    assert str(frame["started_at"].dt.tz) == "UTC"


def test_one_chip_row_per_chip(catalog_url: str) -> None:
    with open_catalog(catalog_url) as cat:
        _register(cat)
        _register(cat, idn="pcmlab,MockPCM,SN-7,1.3")  # same chip, new firmware
        chips = cat.chips()
    assert [(c["serial"], c["firmware"]) for c in chips] == [("SN-7", "1.3")]


def test_bad_requests_name_the_value(catalog_url: str) -> None:
    with open_catalog(catalog_url) as cat:
        with pytest.raises(CatalogError, match="'experiment'"):
            cat.register(new_run_id(), kind="experiment", path="/x.h5")
        rid = _register(cat)
        with pytest.raises(CatalogError, match="'done'"):
            cat.update(rid, status="done")
        with pytest.raises(CatalogError, match="no run 'nope'"):
            cat.get("nope")
        with pytest.raises(CatalogError, match="colour"):
            cat.update(rid, colour="red")


def test_schema_version_migrations(tmp_path, monkeypatch) -> None:
    where = tmp_path / "c.sqlite"
    with open_catalog(where) as cat:
        assert cat.schema_version() == schema.SCHEMA_VERSION
    steps = []
    monkeypatch.setattr(schema, "SCHEMA_VERSION", schema.SCHEMA_VERSION + 1)
    monkeypatch.setitem(schema.MIGRATIONS, schema.SCHEMA_VERSION - 1,
                        lambda conn: steps.append(conn.dialect.name))
    with open_catalog(where) as cat:
        assert cat.schema_version() == schema.SCHEMA_VERSION
    assert steps == ["sqlite"]
    monkeypatch.setattr(schema, "SCHEMA_VERSION", schema.SCHEMA_VERSION - 1)
    with pytest.raises(CatalogError, match="newer than this pcmlab"):
        open_catalog(where)


def test_where_the_catalog_is(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("PCMLAB_CATALOG", raising=False)
    with open_catalog() as cat:
        assert cat.location.endswith(str(tmp_path / "xdg" / "pcmlab" / "catalog.sqlite"))
    monkeypatch.setenv("PCMLAB_CATALOG", str(tmp_path / "env.sqlite"))
    with open_catalog() as cat:
        assert cat.location.endswith("env.sqlite")
    with pytest.raises(CatalogUnavailableError) as err:
        open_catalog("postgresql://ada:s3cret@127.0.0.1:1/lab", timeout_s=1)
    assert "s3cret" not in str(err.value) and "ada:***@127.0.0.1:1/lab" in str(err.value)


def test_pages_and_counts_of_many_runs(catalog_url: str) -> None:
    import os
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()  # a writer that is gone: its runs still recorded as running are killed
    start = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    kinds = ("run", "deployment", "sweep")
    with open_catalog(catalog_url) as cat:
        for i in range(130):
            status, pid = ("finished", None) if i % 3 else ("stopped", None)
            if i % 7 == 0:
                status, pid = "running", dead.pid
            elif i % 11 == 0:
                status, pid = ("running", os.getpid()) if i % 2 else ("resumed", os.getpid())
            _register(cat, kinds[i % 3], (start + dt.timedelta(hours=i)).isoformat(),
                      status=status, pid=pid, meta={"i": i, "even": i % 2 == 0},
                      config={"i": i}, n_readouts=i)
        everything = cat.list_runs()
        assert [r["meta"]["i"] for r in everything] == list(range(129, -1, -1))
        assert cat.count_runs() == 130
        shown = {r["meta"]["i"]: r["status"] for r in everything}
        assert {i for i, s in shown.items() if s == "killed"} == set(range(0, 130, 7))
        for f in ({}, {"kind": "run"}, {"status": "killed"}, {"status": "running"},
                  {"status": ["killed", "finished"]}, {"status": "resumed"},
                  {"status": "finished", "kind": "deployment"},
                  {"status": ["running", "stopped"], "where": {"even": True}}):
            statuses = f.get("status")
            statuses = {statuses} if isinstance(statuses, str) else set(statuses or ())
            want = [r["run_id"] for r in everything
                    if (not statuses or r["status"] in statuses)
                    and r["kind"] == f.get("kind", r["kind"])
                    and r["meta"]["even"] == f.get("where", {}).get("even", r["meta"]["even"])]
            assert want, f  # every case selects something
            assert [r["run_id"] for r in cat.list_runs(**f)] == want, f
            assert cat.count_runs(**f) == len(want), f
            paged = [r["run_id"] for o in range(0, 140, 25)
                     for r in cat.list_runs(**f, offset=o, limit=25)]
            assert paged == want, f
            assert [r["run_id"] for r in cat.list_runs(**f, limit=3)] == want[:3], f
        oldest = cat.list_runs(newest_first=False, offset=5, limit=2)
        assert [r["meta"]["i"] for r in oldest] == [5, 6]
        # a listing's record is what get() has (its configuration aside, unless asked)
        for r in cat.list_runs(offset=40, limit=5, with_config=True):
            one = cat.get(r["run_id"])
            one.pop("cells")
            assert {k: v for k, v in r.items() if k not in ("status", "recorded_status")} \
                == {k: v for k, v in one.items() if k != "status"}
            assert r["recorded_status"] == one["status"]
            assert r["started_at"].tzinfo == dt.timezone.utc
            assert r["config"] == {"i": r["meta"]["i"]}
        assert cat.list_runs(limit=1)[0]["config"] is None
        with pytest.raises(CatalogError, match="offset -1"):
            cat.list_runs(offset=-1)
        with pytest.raises(CatalogError, match="'done'"):
            cat.count_runs(status="done")


def test_status_killed_matches_runs_recorded_as_killed(catalog_url: str) -> None:
    # scan records a killed run as "killed": the filter must find it, beside the judged ones
    with open_catalog(catalog_url) as cat:
        stored = _register(cat, status="killed", started="2026-03-02T00:00:00")
        done = _register(cat, status="finished", started="2026-03-01T00:00:00")
        assert [r["run_id"] for r in cat.list_runs(status="killed")] == [stored]
        assert cat.count_runs(status="killed") == 1
        assert [r["run_id"] for r in cat.list_runs(status=["killed", "finished"],
                                                   offset=1, limit=1)] == [done]
        assert cat.count_runs(status=["killed", "finished"]) == 2


def test_until_a_date_takes_in_that_whole_day(catalog_url: str) -> None:
    with open_catalog(catalog_url) as cat:
        late = _register(cat, started="2026-03-31T15:00:00")
        _register(cat, started="2026-04-01T00:00:00")  # the next day: left out
        early = _register(cat, started="2026-03-30T23:59:59")
        assert [r["run_id"] for r in cat.list_runs(until="2026-03-31")] == [late, early]
        assert [r["run_id"] for r in cat.list_runs(until=dt.date(2026, 3, 31))] == [late,
                                                                                     early]
        assert cat.count_runs(until="2026-03-31") == 2
        # a time is kept as given, inclusive
        assert [r["run_id"] for r in cat.list_runs(until="2026-03-31T15:00:00")] == [late,
                                                                                      early]
        assert [r["run_id"] for r in cat.list_runs(until="2026-03-31T14:59")] == [early]


def test_a_resumed_run_loses_its_end_and_hash(catalog_url: str, tmp_path) -> None:
    import os

    from pcmlab.catalog.registration import file_fields
    from pcmlab.catalog.scan import verify

    path = tmp_path / "run.h5"
    path.write_bytes(b"first part")
    with open_catalog(catalog_url) as cat:
        rid = _register(cat, status="killed")
        cat.register(rid, kind="run", path=path, status="finished",
                     ended_at="2026-03-02T00:00:00", **file_fields(path))
        assert verify(cat)[1] == []
        cat.register(rid, kind="run", path=path, status="resumed", pid=os.getpid())
        rec = cat.get(rid)
        assert (rec["ended_at"], rec["content_hash"], rec["file_size"]) == (None, None, None)
        path.write_bytes(b"first part, and the readouts after the resume")
        assert verify(cat)[1] == []  # being written again: nothing to compare yet
