"""The command line over the catalog: every writer registers, `pcmlab runs` lists with the
right status (killed, resumed), tag and filters, scan (idempotent, moved files), verify."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from pcmlab.catalog import open_catalog
from pcmlab.catalog.registration import content_hash
from pcmlab.cli import main
from pcmlab.errors import CatalogError
from tests.pcmlab.catalog.test_registration import SLOW_RUN, _env

SWEEP = """
runs = 1
times_s = [25.0, 86400.0]
seed = 3
[training]
stage1_epochs = 1
stage2_epochs = 1
[axes]
bits = [8, 4]
"""


def _runs(capsys, catalog: str, *args: str) -> list[dict]:
    capsys.readouterr()
    assert main(["runs", "--catalog", catalog, "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_writers_register_and_runs_lists_them(catalog_url, tmp_path, capsys,
                                              monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cat = ["--catalog", catalog_url]
    (tmp_path / "r.toml").write_text("[chip.geometry]\nrows = 16\ncols = 16\n"
                                     "[schedule]\nn_readouts = 3\n")
    assert main([*cat, "run", "r.toml", "-o", "run.h5"]) == 0
    assert main([*cat, "characterize", "-o", "char.h5", "--rows", "16", "--cols", "16",
                 "--cells-per-level", "4", "--levels-us", "0", "10", "20", "--burst-reads",
                 "2", "--drift-reads", "3"]) == 0
    assert main([*cat, "check", "--rows", "16", "--cols", "32", "--cells", "0:256",
                 "--yes", "--no-wire", "--json", "check.json"]) == 0
    ids = {}
    for name in ("killed.h5", "resumed.h5"):  # one stays killed, one is resumed
        child = subprocess.Popen([sys.executable, "-c", SLOW_RUN, name],
                                 env=_env(catalog_url), stdout=subprocess.PIPE, text=True,
                                 cwd=tmp_path)
        assert child.stdout.readline().strip() == "waiting"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        with h5py.File(tmp_path / name, "r", swmr=True) as f:
            ids[name] = f.attrs["run_id"]

    records = _runs(capsys, catalog_url)
    by_file = {Path(r["path"]).name: r for r in records}
    assert {n: (r["kind"], r["status"]) for n, r in by_file.items()} == {
        "run.h5": ("run", "finished"), "char.h5": ("characterization", "finished"),
        "check.json": ("check", "finished"), "killed.h5": ("run", "killed"),
        "resumed.h5": ("run", "killed")}
    for name in ("run.h5", "char.h5", "check.json"):
        assert by_file[name]["content_hash"], name  # hashed once finished

    capsys.readouterr()
    assert main(["runs", *cat, "--status", "killed"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "2 run(s)" in out and "take the remaining 2 of 4 on the schedule" in out
    # killed between readouts: the writer had the file closed
    assert "nothing: the file is closed, any HDF5 tool opens it" in out
    shutil.move(tmp_path / "resumed.h5", tmp_path / "moved.h5")
    assert main(["catalog", "scan", str(tmp_path), *cat]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "0 added, 1 updated, 1 moved" in out  # the killed one now recorded as killed
    assert main([*cat, "resume", "moved.h5"]) == 0
    by_id = {r["run_id"]: r for r in _runs(capsys, catalog_url)}
    assert len(by_id) == 5
    resumed = by_id[ids["resumed.h5"]]
    assert (resumed["status"], resumed["n_readouts"], Path(resumed["path"]).name) == (
        "finished", 4, "moved.h5")
    assert resumed["meta"]["interruptions"] == 1
    assert by_id[ids["killed.h5"]]["status"] == "killed"

    # scanning again changes nothing; verify names a file changed behind the catalog
    capsys.readouterr()
    assert main(["catalog", "scan", str(tmp_path), *cat]) == 0
    assert "0 added, 0 updated, 0 moved" in capsys.readouterr().out
    assert main(["catalog", "verify", *cat]) == 0
    with open(tmp_path / "run.h5", "r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    (tmp_path / "char.h5").unlink()
    capsys.readouterr()
    assert main(["catalog", "verify", *cat]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert f"changed since it was registered: {by_file['run.h5']['run_id'][:8]}" in err
    assert f"missing: {by_file['char.h5']['run_id'][:8]}" in err


@pytest.mark.slow
def test_demo_and_sweep_register(tmp_path, capsys, monkeypatch) -> None:
    catalog = str(tmp_path / "c.sqlite")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.toml").write_text(SWEEP)
    assert main(["--catalog", catalog, "sweep", "s.toml", "-o", "sweep.nc"]) == 0
    assert main(["--catalog", catalog, "demo", "--output-dir", "demo", "--epochs", "1",
                 "--runs", "1", "--no-mvm"]) == 0
    by_file = {Path(r["path"]).name: r for r in _runs(capsys, catalog)}
    assert {n: (r["kind"], r["status"]) for n, r in by_file.items()} == {
        "sweep.nc": ("sweep", "finished"), "demo-run.h5": ("deployment", "finished")}
    assert by_file["sweep.nc"]["meta"]["axes"] == {"bits": [8, 4]}
    deployed = by_file["demo-run.h5"]
    assert deployed["network_fingerprint"] and deployed["data_hash"]
    for name, rec in by_file.items():  # hashed as finished (the deployment with /evaluation)
        assert rec["content_hash"] == content_hash(rec["path"]), name


def test_tag_and_filter(catalog_url, tmp_path, capsys) -> None:
    with open_catalog(catalog_url) as cat:
        from pcmlab.catalog import new_run_id

        ids = [new_run_id() for _ in range(3)]
        for i, rid in enumerate(ids):
            cat.register(rid, kind="run", path=f"/d/{i}.h5", status="finished",
                         chip_identity=f"pcmlab,MockPCM,SN-{i % 2},1",
                         started_at=f"2026-0{i + 1}-01T00:00:00")
    c = ["--catalog", catalog_url]
    assert main(["tag", ids[0][:8], "scheme=new", "n=3", "sample.batch=B7", *c]) == 0
    assert main(["tag", ids[2], "scheme=old", *c]) == 0

    def found(*args: str) -> list[str]:
        return [r["run_id"] for r in _runs(capsys, catalog_url, *args)]

    assert found("--where", "scheme=new") == [ids[0]]
    assert found("--where", "n=3", "--where", "sample.batch=B7") == [ids[0]]
    assert found("--tag", "scheme") == [ids[2], ids[0]]
    assert found("--chip", "SN-0") == [ids[2], ids[0]]
    assert found("--since", "2026-02-01", "--until", "2026-02-28") == [ids[1]]
    assert main(["tag", ids[0], "oops", *c]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
    assert main(["runs", "show", "nope", *c]) == 2
    assert "no run 'nope'" in capsys.readouterr().err


def test_catalog_info_never_prints_a_password(capsys) -> None:
    assert main(["catalog", "info", "--catalog", "postgresql://ada:s3cret@127.0.0.1:1/lab"]) \
        == 2
    err = capsys.readouterr().err
    assert "s3cret" not in err and "ada:***@127.0.0.1:1/lab" in " ".join(err.split())


def test_tag_values_are_kept_as_typed(catalog_url, capsys) -> None:
    # firmware=1.10 must not become 1.1, lot=1e3 not 1000.0; exact JSON stays typed
    with open_catalog(catalog_url) as cat:
        from pcmlab.catalog import new_run_id

        rid = cat.register(new_run_id(), kind="run", path="/d/t.h5", status="finished")
    c = ["--catalog", catalog_url]
    assert main(["tag", rid, "firmware=1.10", "lot=1e3", "n=3", "gain=2.5", "ok=true",
                 'serial="42"', *c]) == 0
    with open_catalog(catalog_url) as cat:
        meta = cat.get(rid)["meta"]
    assert meta == {"firmware": "1.10", "lot": "1e3", "n": 3, "gain": 2.5, "ok": True,
                    "serial": "42"}
    assert [r["run_id"] for r in _runs(capsys, catalog_url, "--where", "firmware=1.10",
                                       "--where", "lot=1e3", "--where", "n=3")] == [rid]
    assert _runs(capsys, catalog_url, "--where", 'firmware="1.1"') == []


HOSTILE_ID = '"><img src=x onerror=alert(1)>'


def test_scan_refuses_a_run_id_pcmlab_does_not_write(tmp_path, capsys) -> None:
    # the id reaches pages and links: a file claiming this one must not be registered
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "evil.json").write_text(json.dumps({"run_id": HOSTILE_ID, "results": [],
                                                  "failed": 0}))
    (folder / "good.json").write_text(json.dumps({"run_id": "3f2a6c1e-0b8d-4e57-9a4c-"
                                                  "2d1f0e9b7a65", "results": [], "failed": 0}))
    cat = str(tmp_path / "c.sqlite")
    assert main(["catalog", "scan", str(folder), "--catalog", cat]) == 0
    capsys.readouterr()
    with open_catalog(cat) as c:
        assert [r["run_id"] for r in c.list_runs()] == ["3f2a6c1e-0b8d-4e57-9a4c-2d1f0e9b7a65"]
        from pcmlab.catalog.scan import scan

        report = scan(c, folder)
        (skipped,) = [why for p, why in report.skipped if p.name == "evil.json"]
        assert "is not a run id pcmlab writes" in skipped and "evil.json" in skipped
        with pytest.raises(CatalogError, match="not a run id pcmlab writes"):
            c.register(HOSTILE_ID, kind="run", path="/x/a.h5")


def test_readers_refuse_a_catalog_that_does_not_exist(tmp_path, capsys) -> None:
    missing = tmp_path / "typo.sqlite"
    assert main(["runs", "--catalog", str(missing)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "typo.sqlite does not exist" in err and "pcmlab catalog scan" in err
    assert not missing.exists()
    (tmp_path / "data").mkdir()
    assert main(["catalog", "scan", str(tmp_path / "data"), "--catalog", str(missing)]) == 0
    assert missing.exists()  # a writer makes it
    assert main(["runs", "--catalog", str(missing)]) == 0


def test_scan_names_an_unreadable_pcmlab_file(tmp_path, capsys) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    with h5py.File(folder / "broken.h5", "w") as f:  # pcmlab's schema, its groups lost
        f.attrs["schema"] = "pcmlab/1"
    with h5py.File(folder / "foreign.h5", "w") as f:
        f.attrs["schema"] = "someone-else/3"
    cat = str(tmp_path / "c.sqlite")
    assert main(["catalog", "scan", str(folder), "--catalog", cat]) == 1
    out = capsys.readouterr()
    err = " ".join(out.err.split())
    assert "broken.h5" in err and "unreadable" in err and "foreign.h5" not in err
    assert "1 other file(s) skipped, 1 pcmlab file(s) unreadable" in " ".join(out.out.split())
