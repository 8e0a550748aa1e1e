"""Every run file registers itself; a killed run is told apart from a running one; the
catalog being down or locked never costs a measurement; two processes registering at once
lose nothing. On SQLite and PostgreSQL."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import pcmlab
from pcmlab.catalog import open_catalog, registration
from pcmlab.cli import main

ROOT = Path(__file__).resolve().parents[3]
CONFIG = pcmlab.RunConfig(schedule=pcmlab.ReadoutSchedule(t0_s=20.0, t_end_s=3600.0,
                                                          n_readouts=4))

# a run that stops to wait (on the wall clock) before its third readout
SLOW_RUN = """
import sys, time
import numpy as np
import pcmlab
cfg = pcmlab.RunConfig(schedule=pcmlab.ReadoutSchedule(t0_s=20.0, t_end_s=3600.0,
                                                       n_readouts=4))
def wait(i, t_s, now_s):
    if i == 2:
        print("waiting", flush=True)
        time.sleep(120)
with pcmlab.open_driver("mock://?rows=8&cols=8&seed=3") as d:
    pcmlab.measure_run(d, cfg, sys.argv[1], cells=np.arange(64),
                       target_us=np.linspace(0, 20, 64), on_wait=wait)
"""

# both processes start together (a go file) and add the same new chips in the same order,
# so they race on every chip's first row as well as on the runs
REGISTER_MANY = """
import os, sys, time
from pcmlab.catalog import new_run_id, open_catalog
with open_catalog(sys.argv[1]) as cat:
    while not os.path.exists(sys.argv[4]):
        time.sleep(0.005)
    for i in range(int(sys.argv[2])):
        cat.register(new_run_id(), kind="run", path=f"/data/{sys.argv[3]}-{i}.h5",
                     chip_identity=f"pcmlab,MockPCM,SN-{i // 2},1.0", meta={"i": i})
"""


def _env(catalog: str) -> dict[str, str]:
    return {**os.environ, "PCMLAB_CATALOG": catalog, "PYTHONPATH": str(ROOT)}


def _measure(path: Path, seed: int = 1) -> None:
    with pcmlab.open_driver(f"mock://?rows=8&cols=8&seed={seed}") as d:
        pcmlab.measure_run(d, CONFIG, path, cells=np.arange(64),
                           target_us=np.linspace(0, 20, 64))


def test_a_run_registers_with_its_id_and_pulses(catalog_url, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PCMLAB_CATALOG", catalog_url)
    _measure(tmp_path / "a.h5")
    with h5py.File(tmp_path / "a.h5", "r") as f:
        run_id = f.attrs["run_id"]
        assert "catalog_pending" not in f.attrs
        n_set = int(f["programming/set_pulses"][:].sum())
        n_reset = int(f["programming/reset_pulses"][:].sum())
    with open_catalog(catalog_url) as cat:
        rec = cat.get(run_id)
    assert (rec["kind"], rec["status"], rec["n_readouts"], rec["n_cells"]) == \
        ("run", "finished", 4, 64)
    assert rec["content_hash"] == registration.content_hash(tmp_path / "a.h5")
    assert rec["path"] == str(tmp_path / "a.h5") and rec["pid"] == os.getpid()
    assert (rec["chip_maker"], rec["chip_model"]) == ("pcmlab", "MockPCM-8x8")
    programmed = [c for c in rec["cells"] if c.action == "programmed"]
    assert [(c.start, c.stop) for c in programmed] == [(0, 64)]
    assert n_set > 64 and (programmed[0].n_set, programmed[0].n_reset) == (n_set, n_reset)


def test_a_catalog_missed_at_the_start_still_gets_the_pulses(tmp_path, monkeypatch) -> None:
    """The first send fails (the catalog was briefly away): the programming's update is
    then skipped for RETRY_AFTER_S, and the finish used to send the cells without their
    pulse counts (n_set, n_reset NULL for good; scan did not repair it)."""
    from pcmlab.catalog import database

    where = str(tmp_path / "c.sqlite")
    open_catalog(where).close()
    monkeypatch.setenv("PCMLAB_CATALOG", where)
    real_open = database.Catalog.open.__func__
    calls = []

    def away_once(cls, *a, **kw):
        calls.append(1)
        if len(calls) == 1:
            raise database.CatalogError("the catalog is away for a moment")
        return real_open(cls, *a, **kw)

    monkeypatch.setattr(database.Catalog, "open", classmethod(away_once))
    _measure(tmp_path / "a.h5")
    with h5py.File(tmp_path / "a.h5", "r") as f:
        run_id = f.attrs["run_id"]
        n_set = int(f["programming/set_pulses"][:].sum())
        n_reset = int(f["programming/reset_pulses"][:].sum())
    with open_catalog(where) as cat:
        rec = cat.get(run_id)
    assert rec["status"] == "finished" and rec["n_readouts"] == 4
    programmed = [c for c in rec["cells"] if c.action == "programmed"]
    assert [(c.start, c.stop, c.n_set, c.n_reset) for c in programmed] == [
        (0, 64, n_set, n_reset)]


def test_killed_and_resumed_runs(catalog_url, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PCMLAB_CATALOG", catalog_url)
    path = tmp_path / "slow.h5"
    child = subprocess.Popen([sys.executable, "-c", SLOW_RUN, str(path)], env=_env(catalog_url),
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "waiting"
        with open_catalog(catalog_url) as cat:
            assert [r["status"] for r in cat.list_runs()] == ["running"]
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
            (killed,) = cat.list_runs()
            assert killed["status"] == "killed"  # recorded as running, its writer is gone
            assert [r["run_id"] for r in cat.list_runs(status="killed")] == [killed["run_id"]]
            assert cat.list_runs(status="running") == []
            assert main(["resume", str(path)]) == 0
            rec = cat.get(killed["run_id"])
        assert (rec["status"], rec["n_readouts"]) == ("finished", 4)
        assert rec["content_hash"] == registration.content_hash(path)
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize("how", ["down", "locked"])
def test_catalog_unavailable_never_costs_a_measurement(how, tmp_path, monkeypatch,
                                                        caplog) -> None:
    if how == "down":
        where = "postgresql://nobody@127.0.0.1:1/lab"
    else:
        where = str(tmp_path / "locked.sqlite")
        open_catalog(where).close()
        holder = sqlite3.connect(where, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # another process writing, for ever
    monkeypatch.setenv("PCMLAB_CATALOG", where)
    monkeypatch.setattr(registration, "REGISTER_TIMEOUT_S", 0.2)
    monkeypatch.setattr(registration, "_warned", set())
    caplog.set_level(logging.WARNING, logger="pcmlab.catalog.registration")
    _measure(tmp_path / "a.h5")
    ds = pcmlab.open_run(tmp_path / "a.h5")
    assert ds.sizes["readout"] == 4  # the run went on
    warnings = [r for r in caplog.records if "catalog is unavailable" in r.getMessage()]
    assert len(warnings) == 1  # said once, not at the start and again at the end
    with h5py.File(tmp_path / "a.h5", "r") as f:
        pending = json.loads(f.attrs["catalog_pending"])
        assert pending["run_id"] == f.attrs["run_id"]
    if how == "locked":
        holder.execute("ROLLBACK")
        holder.close()
        with open_catalog(where) as cat:
            assert cat.list_runs() == []


def test_two_processes_registering_at_once(catalog_url, tmp_path) -> None:
    open_catalog(catalog_url).close()  # both find the tables made
    n = 40
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", REGISTER_MANY, catalog_url, str(n),
                               name, str(go)], env=_env(catalog_url)) for name in ("a", "b")]
    time.sleep(3)  # both connected and waiting
    go.touch()
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    with open_catalog(catalog_url) as cat:
        runs = cat.list_runs()
        assert len(runs) == 2 * n
        assert len({r["path"] for r in runs}) == 2 * n
        assert len(cat.chips()) == n // 2


def test_registered_before_the_file_exists(tmp_path, monkeypatch) -> None:
    """A kill while the catalog answers must not find a file that is not yet in SWMR mode
    (it would open in no mode at all)."""
    seen = []
    start = registration.Registration.start.__func__

    def spy(cls, kind, path, **fields):
        seen.append(Path(path).exists())
        return start(cls, kind, path, **fields)

    monkeypatch.setattr(registration.Registration, "start", classmethod(spy))
    _measure(tmp_path / "a.h5")
    assert seen == [False]


# holds the run file open as another HDF5 program would (a notebook, the dashboard): HDF5
# keeps a shared flock on it for as long as it is open
HOLD_OPEN = """
import sys, time
import h5py
with h5py.File(sys.argv[1], "r", swmr=sys.argv[2] == "swmr") as f:
    assert "readouts/conductance_us" in f
    print("open", flush=True)
    time.sleep(120)
"""


@pytest.mark.parametrize("reader", ["swmr", "plain"])
def test_killed_while_a_reader_holds_the_file(reader, tmp_path) -> None:
    """A reader with the file open (HDF5 holds a file lock for it) neither makes a killed
    run look running nor a running one killed."""
    catalog = str(tmp_path / "catalog.sqlite")
    path = tmp_path / "slow.h5"
    writer = subprocess.Popen([sys.executable, "-c", SLOW_RUN, str(path)], env=_env(catalog),
                              stdout=subprocess.PIPE, text=True)
    holder = None
    try:
        assert writer.stdout.readline().strip() == "waiting"
        holder = subprocess.Popen([sys.executable, "-c", HOLD_OPEN, str(path), reader],
                                  env=_env(catalog), stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "open"
        with open_catalog(catalog) as cat:
            assert [r["status"] for r in cat.list_runs()] == ["running"]
            writer.send_signal(signal.SIGKILL)
            writer.wait(timeout=30)
            assert holder.poll() is None  # the reader still has the file open
            assert [r["status"] for r in cat.list_runs()] == ["killed"]
    finally:
        for proc in (writer, holder):
            if proc is not None:
                proc.kill()
                proc.wait()


def test_a_catalog_back_mid_run_gets_the_whole_record(tmp_path, monkeypatch) -> None:
    import datetime as dt

    from pcmlab.catalog.registration import Registration

    where = str(tmp_path / "c.sqlite")
    open_catalog(where).close()
    monkeypatch.setenv("PCMLAB_CATALOG", where)
    monkeypatch.setattr(registration, "REGISTER_TIMEOUT_S", 0.2)
    monkeypatch.setattr(registration, "RETRY_AFTER_S", 0.0)  # the next update tries again
    holder = sqlite3.connect(where, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # locked while the run starts
    before = dt.datetime.now(dt.timezone.utc)
    reg = Registration.start("run", tmp_path / "a.h5", chip_identity="pcmlab,MockPCM,SN-7,1.2",
                             config={"schedule": {"t0_s": 20.0}}, meta={"part": 1},
                             geometry={"rows": 8, "cols": 8, "arrays": 1})
    assert reg.pending is not None
    time.sleep(0.05)
    holder.execute("ROLLBACK")
    holder.close()
    assert reg.update(n_readouts=3, meta={"note": "back"})  # the first send that reaches it
    with open_catalog(where) as cat:
        rec = cat.get(reg.run_id)
    assert (rec["chip_serial"], rec["rows"], rec["n_readouts"]) == ("SN-7", 8, 3)
    assert rec["config"] == {"schedule": {"t0_s": 20.0}}
    assert rec["meta"] == {"part": 1, "note": "back"}
    assert before <= rec["started_at"] < before + dt.timedelta(seconds=0.2)  # not "now"
    assert reg.finish("finished", hash_file=False)
    with open_catalog(where) as cat:
        assert cat.get(reg.run_id)["status"] == "finished"


def test_a_locked_catalog_delays_one_readout_not_every_one(tmp_path, monkeypatch) -> None:
    from pcmlab.catalog import database
    from pcmlab.catalog.registration import Registration

    where = str(tmp_path / "c.sqlite")
    open_catalog(where).close()
    monkeypatch.setenv("PCMLAB_CATALOG", where)
    monkeypatch.setattr(registration, "REGISTER_TIMEOUT_S", 0.3)  # a real lock timeout
    opened = []
    real_open = database.Catalog.open.__func__

    def counting_open(cls, *a, **kw):
        opened.append(time.monotonic())
        return real_open(cls, *a, **kw)

    monkeypatch.setattr(database.Catalog, "open", classmethod(counting_open))
    holder = sqlite3.connect(where, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process writing, for ever
    try:
        reg = Registration.start("run", tmp_path / "a.h5")
        assert reg.pending is not None and len(opened) == 1
        t0 = time.monotonic()
        for i in range(5):  # the readouts' updates: none of them waits on the lock
            assert not reg.update(n_readouts=i + 1)
        waited_s = time.monotonic() - t0
        assert len(opened) == 1, f"updates tried the locked catalog {len(opened) - 1} times"
        assert waited_s < 0.3 * 5 / 2  # far from five lock timeouts (1.5 s)
        assert not reg.finish("finished", hash_file=False)  # the end always tries
        assert len(opened) == 2
        monkeypatch.setattr(registration, "RETRY_AFTER_S", 0.0)
        assert not reg.update(n_readouts=9)  # once the period is over, it tries again
        assert len(opened) == 3
    finally:
        holder.execute("ROLLBACK")
        holder.close()
