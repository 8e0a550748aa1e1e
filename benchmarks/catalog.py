"""Catalog speed: register 10,000 synthetic runs per backend (each in its own transaction,
as writers do), then list and filter all of them through the catalog beside a plain
SELECT on the same table, in the same run.

SQLite is a temporary file; PostgreSQL is the server at PCMLAB_TEST_POSTGRES_URL (what
.ci/services starts), in a schema of its own that is dropped afterwards; skipped when
unset. Prints ms per registration (reusing one open Catalog, and as writers pay it:
``Registration`` opens the catalog for every send) and, for listing and filtering, the
catalog's time, the plain SELECT's and their ratio; and one page of 50 with the count, as
the dashboard's runs table asks. Target (benchmarks/registry.py): listing 10,000 runs on
SQLite under 0.5 s. ``--json PATH`` also writes the SQLite figures for run_all.py.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import _common  # noqa: F401  (takes this folder off sys.path: see _common.py)
import sqlalchemy as sa
from _common import Figures, add_report_options, best_of

import pcmlab
from pcmlab.catalog import cell_ranges, new_run_id, open_catalog
from pcmlab.catalog import schema as T
from pcmlab.catalog.location import to_url

KINDS = ("run", "deployment", "characterization", "sweep", "check")


def register(cat: Any, n: int) -> float:
    """Seconds per registration: a run as RunWriter registers it (chip, configuration,
    metadata, one cell range), then its end (status, hash, readouts)."""
    config = {"schedule": {"t0_s": 20.0, "t_end_s": 31536000.0, "n_readouts": 30},
              "program": {"max_iterations": 20, "gain_ua_per_us": 2.0}}
    t = time.perf_counter()
    for i in range(n):
        rid = new_run_id()
        cat.register(rid, kind=KINDS[i % len(KINDS)], path=f"/data/run-{i}.h5",
                     chip_identity=f"pcmlab,MockPCM,SN-{i % 20},1.0",
                     geometry={"rows": 512, "cols": 2048, "arrays": 1}, config=config,
                     meta={"operator": ("ada", "grace", "alan")[i % 3], "batch": i % 50},
                     n_cells=1024, cells=cell_ranges(range(1024 * (i % 8), 1024 * (i % 8 + 1)),
                                                     "programmed"))
        cat.update(rid, status="finished" if i % 10 else "stopped", n_readouts=30,
                   content_hash=uuid.uuid4().hex * 2, file_size=1 << 20)
    return (time.perf_counter() - t) / n


def register_as_writers(location: str, n: int) -> float:
    """Seconds per registration as a writer pays it: ``Registration.start`` then
    ``finish`` (what RunWriter calls), each send opening the catalog anew."""
    from pcmlab.catalog import registration
    from pcmlab.catalog.registration import Registration

    registration.configure(location)
    try:
        t = time.perf_counter()
        for i in range(n):
            reg = Registration.start(
                KINDS[i % len(KINDS)], f"/data/writer-{i}.h5",
                chip_identity=f"pcmlab,MockPCM,SN-{i % 20},1.0",
                geometry={"rows": 512, "cols": 2048, "arrays": 1},
                meta={"operator": "ada"}, n_cells=1024,
                cells=cell_ranges(range(1024), "programmed"))
            assert reg.pending is None, reg.pending
            reg.finish("finished", hash_file=False, n_readouts=30)
        return (time.perf_counter() - t) / n
    finally:
        registration.configure(None)


def plain(cat: Any, where: Any = None, *, listed: bool = False) -> int:
    """A plain SELECT of every column of ``runs`` (``listed``: of the columns a listing
    returns, without ``config``, with the chip's), newest first."""
    if listed:
        q = (sa.select(*[c for c in T.runs.columns if c.name != "config"], T.chips.c.serial)
             .select_from(T.runs.outerjoin(T.chips, T.runs.c.chip_id == T.chips.c.chip_id)))
    else:
        q = sa.select(T.runs)
    if where is not None:
        q = q.where(where)
    with cat.engine.connect() as conn:
        return len(conn.execute(q.order_by(T.runs.c.started_at.desc())).all())


def measure(name: str, location: str, n: int) -> dict[str, Any]:
    with open_catalog(location) as cat:
        per_reg_s = register(cat, n)
        assert len(cat.list_runs()) == n
        out: dict[str, Any] = {"backend": name, "runs": n,
                               "register_ms": 1e3 * per_reg_s}
    n_writers = max(1, min(200, n // 10))  # each send opens the catalog: fewer of them
    out["writer_register_ms"] = 1e3 * register_as_writers(location, n_writers)
    out["writer_runs"] = n_writers
    out["writer_ratio"] = out["writer_register_ms"] / out["register_ms"]
    with open_catalog(location) as cat:
        n += n_writers
        filters = {"kind": "run", "where": {"operator": "ada"}}
        expected = len(cat.list_runs(**filters))
        plain_where = (T.runs.c.kind == "run") & (
            T.runs.c.meta[("operator",)].as_string() == "ada")
        assert plain(cat, plain_where) == expected
        out["list_s"] = best_of(lambda: cat.list_runs())
        out["list_plain_s"] = best_of(lambda: plain(cat, listed=True))
        out["list_plain_all_columns_s"] = best_of(lambda: plain(cat))
        out["filter_s"] = best_of(lambda: cat.list_runs(**filters))
        out["filter_plain_s"] = best_of(lambda: plain(cat, plain_where, listed=True))
        out["filtered_runs"] = expected
        out["dataframe_s"] = best_of(lambda: pcmlab.runs(cat))
        # what the dashboard's runs table asks for: one page from the middle and the count
        assert len(cat.list_runs(offset=n // 2, limit=50)) == min(50, n - n // 2)
        out["page_s"] = best_of(lambda: (cat.list_runs(offset=n // 2, limit=50),
                                         cat.count_runs()))
    out["list_ratio"] = out["list_s"] / out["list_plain_s"]
    out["filter_ratio"] = out["filter_s"] / out["filter_plain_s"]
    return out


def postgres_location(url: str) -> tuple[str, Any]:
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(to_url(url))
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in url else "?"

    def drop() -> None:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()

    return f"{url}{sep}options={quote(f'-csearch_path={schema}')}", drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    add_report_options(parser)
    args = parser.parse_args()
    figures = Figures("catalog.py")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        results.append(measure("sqlite", str(Path(tmp) / "catalog.sqlite"), args.runs))
    url = os.environ.get("PCMLAB_TEST_POSTGRES_URL")
    if url:
        location, drop = postgres_location(url)
        try:
            results.append(measure("postgresql", location, args.runs))
        finally:
            drop()
    load = os.getloadavg()[0]
    print(f"load average (1 min) at the end: {load:.1f} on {os.cpu_count()} CPUs")
    for r in results:
        print(f"{r['backend']}: {r['runs']} runs registered, {r['register_ms']:.2f} ms per "
              "registration reusing one open Catalog (register + update, one transaction "
              "each)")
        print(f"  as writers pay it ({r['writer_runs']} runs: Registration.start + finish, "
              f"the catalog opened per send): {r['writer_register_ms']:.2f} ms per "
              f"registration, {r['writer_ratio']:.1f}x the reuse figure")
        print(f"  list all:  catalog {1e3 * r['list_s']:.0f} ms, plain SELECT of the same "
              f"columns {1e3 * r['list_plain_s']:.0f} ms, ratio {r['list_ratio']:.2f} "
              f"(SELECT * with the configurations: {1e3 * r['list_plain_all_columns_s']:.0f}"
              " ms)")
        print(f"  filter ({r['filtered_runs']} of {r['runs']}, kind + metadata): catalog "
              f"{1e3 * r['filter_s']:.0f} ms, plain SELECT {1e3 * r['filter_plain_s']:.0f} "
              f"ms, ratio {r['filter_ratio']:.2f}")
        print(f"  pcmlab.runs() DataFrame of all: {1e3 * r['dataframe_s']:.0f} ms")
        print(f"  one page (50 runs from the middle, offset/limit) and count_runs(): "
              f"{1e3 * r['page_s']:.1f} ms")
    sqlite = results[0]
    print(f"list {sqlite['runs']} runs on SQLite: {sqlite['list_s']:.3f} s "
          f"({figures.add('list_s', sqlite['list_s'])})")
    figures.add("register_ms", sqlite["register_ms"])
    figures.add("list_ratio", sqlite["list_ratio"])
    figures.add("filter_ratio", sqlite["filter_ratio"])
    figures.write(args.json)
    if not url:
        print("PostgreSQL: PCMLAB_TEST_POSTGRES_URL not set (bash .ci/services), skipped")


if __name__ == "__main__":
    main()
