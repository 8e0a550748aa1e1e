"""The catalog: one SQL layer (SQLAlchemy Core) over SQLite or PostgreSQL.

Opening a catalog creates its tables if there are none and brings an older schema up to
date (``schema.MIGRATIONS``); a catalog written by a newer pcmlab is refused.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import logging
import socket
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pcmlab import __version__
from pcmlab.catalog import schema as T
from pcmlab.catalog.location import redact, resolve_location, to_url
from pcmlab.catalog.records import (
    CellRange,
    ChipIdentity,
    check_run_id,
    group_members,
    now_utc,
    split_by_chip,
    utc,
)
from pcmlab.errors import CatalogError, CatalogUnavailableError

log = logging.getLogger(__name__)

# columns a caller may set through register/update (the rest are the catalog's own)
RUN_FIELDS = frozenset(c.name for c in T.runs.columns) - {"run_id", "chip_id", "updated_at"}
OPEN_STATUSES = frozenset({"running", "resumed"})  # a file still being written
_JSON_VALUE = (str, int, float, bool, type(None), list, dict)


def _sqlite_engine(url: sa.URL, timeout_s: float, *, create: bool = True,
                   read_only: bool = False) -> Engine:
    path = Path(url.database) if url.database and url.database != ":memory:" else None
    if path is not None and not path.exists() and (not create or read_only):
        raise CatalogError(
            f"catalog {path} does not exist; check --catalog / PCMLAB_CATALOG (a mistyped "
            "path is a new, empty catalog). A catalog is made by any measuring command "
            "(pcmlab run, deploy, ...) or by 'pcmlab catalog scan FOLDER' over your files")
    if path is not None and not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    if path is not None and read_only:  # SQLite's own read-only mode: it writes nothing
        url = url.set(database=f"{path.absolute().as_uri()}?mode=ro",
                      query={"uri": "true"})
    engine = sa.create_engine(url, connect_args={"timeout": timeout_s})

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we say BEGIN ourselves (below)
        cur = dbapi_connection.cursor()
        if not read_only:  # a writer made it WAL; a read-only connection keeps that
            cur.execute("PRAGMA journal_mode=WAL")  # readers never wait for a writer
        # WAL + NORMAL: never corrupt; a power cut may lose the last commits, which the
        # files still hold for 'pcmlab catalog scan'
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # a writer takes the write lock at BEGIN: two processes registering at once queue
        # on the busy timeout instead of one failing when it upgrades a read lock
        write = conn.get_execution_options().get("pcmlab_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


class Catalog:
    """An open catalog. ``Catalog.open()`` finds it (argument, ``PCMLAB_CATALOG``, the
    per-user default); use as a context manager or call ``close()``."""

    def __init__(self, engine: Engine, location: str, *, read_only: bool = False) -> None:
        self.engine = engine
        self.read_only = read_only
        self._write_engine = engine.execution_options(pcmlab_write=True)
        self.location = location

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, location: str | Path | None = None, *, timeout_s: float = 10.0,
             create: bool = True, read_only: bool = False) -> Catalog:
        """Open (and create or migrate) the catalog at a path or URL. ``timeout_s``: how
        long to wait for a locked SQLite file or an unreachable server. ``create=False``:
        a SQLite file that does not exist is refused (CatalogError naming it), not made.
        ``read_only``: nothing is written (no tables made, no migration; SQLite opened in
        its read-only mode); implies ``create=False``.
        Raises ``CatalogUnavailableError`` if it cannot be reached."""
        where = resolve_location(location)
        url = to_url(where)
        if url.get_backend_name() == "sqlite":
            engine = _sqlite_engine(url, timeout_s, create=create, read_only=read_only)
        elif url.get_backend_name() == "postgresql":
            engine = sa.create_engine(url, pool_pre_ping=True,
                                      connect_args={"connect_timeout": max(1, int(timeout_s))})
        else:
            raise CatalogError(f"catalog backend {url.get_backend_name()!r} is not "
                               "supported; use SQLite (a path) or postgresql://")
        catalog = cls(engine, redact(url), read_only=read_only)
        try:
            catalog._check() if read_only else catalog._prepare()
        except BaseException:
            engine.dispose()
            raise
        return catalog

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._errors(), self._write_engine.begin() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._errors(), self.engine.connect() as conn:
            yield conn

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sa.exc.OperationalError as exc:
            raise CatalogUnavailableError(f"catalog {self.location}: {_reason(exc)}") from None
        except sa.exc.InterfaceError as exc:
            raise CatalogUnavailableError(f"catalog {self.location}: {_reason(exc)}") from None
        except sa.exc.DBAPIError as exc:
            raise CatalogError(f"catalog {self.location}: {_reason(exc)}") from None

    def _prepare(self) -> None:
        with self._write() as conn:
            if not sa.inspect(conn).has_table(T.schema_version.name):
                T.metadata.create_all(conn)
                conn.execute(T.schema_version.insert().values(
                    version=T.SCHEMA_VERSION, applied_at=now_utc(),
                    pcmlab_version=__version__))
                log.info("created catalog %s (schema %d)", self.location, T.SCHEMA_VERSION)
                return
            version = self._version(conn)
            if version > T.SCHEMA_VERSION:
                raise CatalogError(
                    f"catalog {self.location} has schema version {version}, newer than "
                    f"this pcmlab ({__version__}) knows ({T.SCHEMA_VERSION}); upgrade pcmlab")
            while version < T.SCHEMA_VERSION:
                step = T.MIGRATIONS.get(version)
                if step is None:
                    raise CatalogError(f"catalog {self.location}: no migration from schema "
                                       f"version {version}")
                step(conn)
                version += 1
                conn.execute(T.schema_version.insert().values(
                    version=version, applied_at=now_utc(), pcmlab_version=__version__))
                log.info("migrated catalog %s to schema %d", self.location, version)

    def _check(self) -> None:
        """A reader's look at the schema: refused unless it is this pcmlab's."""
        with self._read() as conn:
            if not sa.inspect(conn).has_table(T.schema_version.name):
                raise CatalogError(f"catalog {self.location} has no pcmlab tables; is it a "
                                   "pcmlab catalog? (any measuring command or 'pcmlab "
                                   "catalog scan FOLDER' makes one)")
            version = self._version(conn)
        if version != T.SCHEMA_VERSION:
            raise CatalogError(
                f"catalog {self.location} has schema version {version}, this pcmlab "
                f"({__version__}) reads {T.SCHEMA_VERSION}; "
                + ("upgrade pcmlab" if version > T.SCHEMA_VERSION else
                   "run 'pcmlab catalog scan' (a writer) once to bring it up to date"))

    @staticmethod
    def _version(conn: Connection) -> int:
        return int(conn.execute(sa.select(sa.func.max(T.schema_version.c.version)))
                   .scalar_one() or 0)

    def schema_version(self) -> int:
        with self._read() as conn:
            return self._version(conn)

    # -- writing ---------------------------------------------------------------------------
    def register(self, run_id: str, *, kind: str, path: str | Path,
                 chip_identity: str | None = None, cells: Sequence[CellRange] | None = None,
                 **fields: Any) -> str:
        """Record a run (or update it if ``run_id`` is known: then only the fields given
        change, ``meta`` is merged, ``cells`` replaced). Fields: the columns of ``runs``
        (docs/catalog.md); ``geometry`` = {"rows", "cols", "arrays"} is accepted too.
        Returns the run id."""
        if kind not in T.RUN_KINDS:
            raise CatalogError(f"run kind {kind!r} is not one of {', '.join(T.RUN_KINDS)}")
        check_run_id(run_id)
        values = self._values(fields)
        values.update(kind=kind, path=str(Path(path).absolute()))
        now = now_utc()
        with self._write() as conn:
            existing = conn.execute(sa.select(T.runs.c.meta, T.runs.c.chip_id,
                                              T.runs.c.driver, T.runs.c.rows, T.runs.c.cols,
                                              T.runs.c.arrays).where(
                T.runs.c.run_id == run_id)).first()
            group = None
            if chip_identity or cells is not None:
                group = self._group(conn, chip_identity or (existing.driver if existing
                                                            else None), values, existing)
            if group is not None:  # a chip group: every chip its own row (the first's here)
                chip_id = group[0][0]
            else:
                chip_id = self._chip(conn, chip_identity, values) if chip_identity else None
            if chip_identity:
                values.setdefault("driver", chip_identity)
            if chip_id is not None:
                values["chip_id"] = chip_id
            if existing is None:
                values.setdefault("host", socket.gethostname())
                values.setdefault("user", _user())
                values.setdefault("pcmlab_version", __version__)
                values.setdefault("started_at", now)
                values.setdefault("status", "running")
                values.setdefault("meta", {})
                conn.execute(T.runs.insert().values(run_id=run_id, updated_at=now, **values))
            else:
                if "meta" in values:
                    values["meta"] = {**(existing.meta or {}), **values["meta"]}
                if values.get("status") in OPEN_STATUSES:
                    # written again (resumed): its end, hash and size are no longer true
                    for key in ("ended_at", "content_hash", "file_size"):
                        values.setdefault(key, None)
                conn.execute(T.runs.update().where(T.runs.c.run_id == run_id)
                             .values(updated_at=now, **values))
            if cells is not None:
                if chip_id is None and existing is not None:
                    chip_id = existing.chip_id
                self._set_cells(conn, run_id, chip_id, cells, group)
        return run_id

    def update(self, run_id: str, *, cells: Sequence[CellRange] | None = None,
               **fields: Any) -> None:
        """Change fields of a known run (``meta`` is merged); CatalogError if unknown."""
        values = self._values(fields)
        with self._write() as conn:
            row = conn.execute(sa.select(T.runs.c.meta, T.runs.c.chip_id, T.runs.c.driver,
                                         T.runs.c.rows, T.runs.c.cols, T.runs.c.arrays).where(
                T.runs.c.run_id == run_id)).first()
            if row is None:
                raise CatalogError(f"no run {run_id!r} in catalog {self.location}")
            if "meta" in values:
                values["meta"] = {**(row.meta or {}), **values["meta"]}
            conn.execute(T.runs.update().where(T.runs.c.run_id == run_id)
                         .values(updated_at=now_utc(), **values))
            if cells is not None:
                self._set_cells(conn, run_id, row.chip_id, cells,
                                self._group(conn, row.driver, {}, row))

    def tag(self, run_id: str, tags: Mapping[str, Any]) -> dict[str, Any]:
        """Set metadata keys on a run (a dotted key nests: ``a.b=1`` is {"a": {"b": 1}});
        returns the run's metadata after."""
        with self._write() as conn:
            row = conn.execute(sa.select(T.runs.c.meta).where(
                T.runs.c.run_id == self.resolve_id(run_id, conn))).first()
            meta = json.loads(json.dumps(row.meta or {}))
            for key, value in tags.items():
                _set_path(meta, key, value)
            conn.execute(T.runs.update().where(T.runs.c.run_id == self.resolve_id(
                run_id, conn)).values(meta=meta, updated_at=now_utc()))
        return meta

    def _values(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        values = dict(fields)
        geometry = values.pop("geometry", None)
        if geometry:
            for key in ("rows", "cols", "arrays"):
                if geometry.get(key) is not None:
                    values.setdefault(key, int(geometry[key]))
        unknown = sorted(set(values) - RUN_FIELDS)
        if unknown:
            raise CatalogError(f"unknown run field(s) {', '.join(unknown)}; known: "
                               f"{', '.join(sorted(RUN_FIELDS))}")
        status = values.get("status")
        if status is not None and status not in T.STATUSES:
            raise CatalogError(f"status {status!r} is not one of {', '.join(T.STATUSES)}")
        for key in ("started_at", "ended_at"):
            if key in values:
                values[key] = utc(values[key])
        if "meta" in values:
            if not isinstance(values["meta"], Mapping):
                raise CatalogError(f"meta must be a mapping, got {type(values['meta'])}")
            values["meta"] = json.loads(json.dumps(dict(values["meta"]), default=_jsonable))
        if "config" in values and values["config"] is not None:
            values["config"] = json.loads(json.dumps(values["config"], default=_jsonable))
        return {k: v for k, v in values.items() if v is not None}

    def _chip(self, conn: Connection, identity: str, values: Mapping[str, Any]) -> int:
        ident = ChipIdentity.parse(identity)
        key = (T.chips.c.maker == ident.maker) & (T.chips.c.model == ident.model) & (
            T.chips.c.serial == ident.serial)
        found = conn.execute(sa.select(T.chips.c.chip_id, T.chips.c.firmware, T.chips.c.rows,
                                       T.chips.c.cols, T.chips.c.arrays).where(key)).first()
        geometry = {k: values.get(k) for k in ("rows", "cols", "arrays")
                    if values.get(k) is not None}
        if found is not None:
            changed = any(getattr(found, k) != v for k, v in geometry.items())
            if found.firmware != ident.firmware or changed:
                conn.execute(T.chips.update().where(T.chips.c.chip_id == found.chip_id)
                             .values(firmware=ident.firmware, identity=identity, **geometry))
            return int(found.chip_id)
        try:
            with conn.begin_nested():  # another process may add the same chip meanwhile
                return int(conn.execute(T.chips.insert().values(
                    maker=ident.maker, model=ident.model, serial=ident.serial,
                    firmware=ident.firmware, identity=identity, first_seen=now_utc(),
                    **geometry).returning(T.chips.c.chip_id)).scalar_one())
        except sa.exc.IntegrityError:
            return int(conn.execute(sa.select(T.chips.c.chip_id).where(key)).scalar_one())

    def _group(self, conn: Connection, driver: str | None, values: Mapping[str, Any],
               existing: Any) -> tuple[list[int], int | None] | None:
        """For a run on a chip group (``drivers.ChipGroup``'s identity): each chip's id (a
        row of its own, made if new) and the cells per chip; None for one chip."""
        members = group_members(driver) if driver else []
        if len(members) < 2:
            return None
        geo = {k: values.get(k, getattr(existing, k, None) if existing is not None else None)
               for k in ("rows", "cols", "arrays")}
        if geo["rows"] is None or geo["cols"] is None or geo["arrays"] != len(members):
            # the chips are known, not where their cells are in the group
            return [self._chip(conn, m, {}) for m in members], None
        rows = int(geo["rows"]) // len(members)
        chip_geo = {"rows": rows, "cols": int(geo["cols"]), "arrays": 1}
        return [self._chip(conn, m, chip_geo) for m in members], rows * int(geo["cols"])

    @staticmethod
    def _set_cells(conn: Connection, run_id: str, chip_id: int | None,
                   cells: Sequence[CellRange],
                   group: tuple[list[int], int | None] | None = None) -> None:
        """``group``: the run's chips and cells per chip; each chip gets its own ranges,
        in its own cell numbers."""
        conn.execute(T.run_cells.delete().where(T.run_cells.c.run_id == run_id))
        for r in cells:
            if r.action not in T.ACTIONS:
                raise CatalogError(f"cell action {r.action!r} is not one of "
                                   f"{', '.join(T.ACTIONS)}")
        if group is None:
            per_chip = [(chip_id, list(cells))]
        else:
            ids, cells_per_chip = group
            if cells_per_chip is None:
                raise CatalogError(f"run {run_id} is on a group of {len(ids)} chips but its "
                                   "geometry (rows, cols, arrays) is not recorded, so its "
                                   "cells cannot be put on their chips; give geometry")
            per_chip = list(zip(ids, split_by_chip(list(cells), len(ids), cells_per_chip),
                                strict=True))
        rows = [{"run_id": run_id, "chip_id": cid, "action": r.action, "start": r.start,
                 "stop": r.stop, "n_set": r.n_set, "n_reset": r.n_reset}
                for cid, ranges in per_chip for r in ranges]
        if rows:
            conn.execute(T.run_cells.insert(), rows)

    # -- reading ---------------------------------------------------------------------------
    def resolve_id(self, run_id: str, conn: Connection | None = None) -> str:
        """The full id of a run from its id or a unique prefix (at least 4 characters)."""
        if conn is None:
            with self._read() as c:
                return self.resolve_id(run_id, c)
        exact = conn.execute(sa.select(T.runs.c.run_id).where(
            T.runs.c.run_id == run_id)).scalar()
        if exact is not None:
            return str(exact)
        if len(run_id) >= 4:
            like = run_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            found = conn.execute(sa.select(T.runs.c.run_id).where(
                T.runs.c.run_id.like(like + "%", escape="\\")).limit(2)).scalars().all()
            if len(found) == 1:
                return str(found[0])
            if len(found) > 1:
                raise CatalogError(f"run id prefix {run_id!r} is not unique; give more of it")
        raise CatalogError(f"no run {run_id!r} in catalog {self.location} ('pcmlab runs' "
                           "lists them)")

    def get(self, run_id: str) -> dict[str, Any]:
        """Everything recorded about a run (its id or a unique prefix), with its chip and
        its cell ranges (``cells``)."""
        with self._read() as conn:
            full = self.resolve_id(run_id, conn)
            row = conn.execute(_runs_query().where(T.runs.c.run_id == full)).mappings().one()
            cells = conn.execute(sa.select(T.run_cells).where(
                T.run_cells.c.run_id == full).order_by(T.run_cells.c.action,
                                                       T.run_cells.c.start)).mappings().all()
        record = _record(row)
        record["cells"] = [CellRange(c["action"], int(c["start"]), int(c["stop"]),
                                     c["n_set"], c["n_reset"]) for c in cells]
        return record

    def list_runs(self, *, chip: str | None = None, kind: str | Iterable[str] | None = None,
                  status: str | Iterable[str] | None = None,
                  since: dt.datetime | str | None = None,
                  until: dt.datetime | str | None = None,
                  tag: str | Iterable[str] | None = None,
                  where: Mapping[str, Any] | None = None,
                  path: str | Path | None = None, content_hash: str | None = None,
                  offset: int = 0, limit: int | None = None, newest_first: bool = True,
                  with_config: bool = False) -> list[dict[str, Any]]:
        """Runs matching every filter given, newest first. ``chip``: serial (or the full
        identity string); ``kind``/``status``: one or several; ``since``/``until``: start
        times (ISO 8601 or datetime, UTC if no zone; an ``until`` date without a time
        takes in that whole day); ``tag``: metadata keys that must be
        present; ``where``: metadata values by (dotted) key, compared as JSON values.
        A status of ``killed`` matches runs recorded as killed and runs recorded as
        running whose writer is gone.
        ``offset``/``limit``: one page of the result, in its order (``count_runs`` with
        the same filters says how many match in all). ``config`` (large) is None unless
        ``with_config``; ``get`` always has it."""
        _check_page(offset, limit)
        filters = dict(chip=chip, kind=kind, status=status, since=since, until=until,
                       tag=tag, where=where, path=path, content_hash=content_hash)
        order = T.runs.c.started_at.desc() if newest_first else T.runs.c.started_at.asc()
        with self._read() as conn:
            condition, judged = self._condition(conn, **filters)
            q = _runs_query(with_config, listing=True).order_by(order, T.runs.c.run_id)
            if condition is not None:
                q = q.where(condition)
            if offset:
                q = q.offset(offset)
            if limit is not None:
                q = q.limit(limit)
            result = conn.execute(q)
            keys = list(result.keys())
            rows = result.all()
        return _records(keys, rows, judged)

    def count_runs(self, *, chip: str | None = None,
                   kind: str | Iterable[str] | None = None,
                   status: str | Iterable[str] | None = None,
                   since: dt.datetime | str | None = None,
                   until: dt.datetime | str | None = None,
                   tag: str | Iterable[str] | None = None,
                   where: Mapping[str, Any] | None = None,
                   path: str | Path | None = None,
                   content_hash: str | None = None) -> int:
        """How many runs ``list_runs`` with the same filters returns without a limit."""
        with self._read() as conn:
            condition, _ = self._condition(conn, chip=chip, kind=kind, status=status,
                                           since=since, until=until, tag=tag, where=where,
                                           path=path, content_hash=content_hash)
            q = sa.select(sa.func.count()).select_from(
                T.runs.outerjoin(T.chips, T.runs.c.chip_id == T.chips.c.chip_id))
            if condition is not None:
                q = q.where(condition)
            return int(conn.execute(q).scalar_one())

    def _condition(self, conn: Connection, *, chip: str | None,
                   kind: str | Iterable[str] | None, status: str | Iterable[str] | None,
                   since: dt.datetime | str | None, until: dt.datetime | str | None,
                   tag: str | Iterable[str] | None, where: Mapping[str, Any] | None,
                   path: str | Path | None, content_hash: str | None,
                   ) -> tuple[Any, dict[str, str]]:
        """The filters as one SQL condition (None: every run), and the status judged for
        each run recorded as running or resumed that the status filter had to judge.

        A run recorded as running or resumed may be killed (its writer's lock is gone):
        that is judged per run, outside SQL. With a status filter those runs are judged
        first (few: the ones still recorded as running) and named in the condition, so
        that paging and counting stay in SQL."""
        parts: list[Any] = []
        if chip is not None:
            on_chip = (T.chips.c.serial == chip) | (T.chips.c.identity == chip)
            # a run on a chip group is on every chip of it: each has its own cell ranges
            c = T.chips.alias("member_chips")
            member = (sa.select(T.run_cells.c.run_id)
                      .join(c, c.c.chip_id == T.run_cells.c.chip_id)
                      .where((c.c.serial == chip) | (c.c.identity == chip)))
            parts.append(on_chip | T.runs.c.run_id.in_(member))
        if kind is not None:
            parts.append(T.runs.c.kind.in_(_many(kind)))
        if since is not None:
            parts.append(T.runs.c.started_at >= utc(since))
        if until is not None:
            day = _date_only(until)
            if day is not None:  # a date alone: to the end of that day (UTC), inclusive
                parts.append(T.runs.c.started_at < utc(dt.datetime.combine(
                    day + dt.timedelta(days=1), dt.time())))
            else:
                parts.append(T.runs.c.started_at <= utc(until))
        for key in _many(tag) if tag is not None else ():
            parts.append(_meta(key).as_string().is_not(None))
        for key, value in (where or {}).items():
            parts.append(_meta_equals(key, value))
        if path is not None:
            parts.append(T.runs.c.path == str(Path(path).absolute()))
        if content_hash is not None:
            parts.append(T.runs.c.content_hash == content_hash)
        judged: dict[str, str] = {}
        if status is not None:
            statuses = set(_many(status))
            unknown = sorted(statuses - set(T.STATUSES))
            if unknown:
                raise CatalogError(f"status {', '.join(map(repr, unknown))} is not one of "
                                   f"{', '.join(T.STATUSES)}")
            open_ = {"running", "resumed"}
            # as recorded is as shown; "killed" matches both the runs recorded as killed
            # (scan records them so) and the ones judged killed below
            fixed = statuses - open_
            to_judge = open_ if "killed" in statuses else statuses & open_
            status_parts = [T.runs.c.status.in_(sorted(fixed))] if fixed else []
            if to_judge:
                from pcmlab.catalog.liveness import effective_status

                candidates = conn.execute(
                    sa.select(T.runs.c.run_id, T.runs.c.status, T.runs.c.host,
                              T.runs.c.path, T.runs.c.kind, T.runs.c.pid)
                    .select_from(T.runs.outerjoin(T.chips,
                                                  T.runs.c.chip_id == T.chips.c.chip_id))
                    .where(sa.and_(T.runs.c.status.in_(sorted(to_judge)), *parts))).all()
                judged = {str(r.run_id): effective_status(r._asdict()) for r in candidates}
                keep = [i for i, s in judged.items() if s in statuses]
                drop = [i for i, s in judged.items() if s not in statuses]
                # name the shorter list: an IN of a few ids whatever the catalog's size
                status_parts.append(
                    T.runs.c.status.in_(sorted(to_judge)) & (
                        T.runs.c.run_id.in_(keep) if len(keep) <= len(drop)
                        else T.runs.c.run_id.not_in(drop)))
            parts.append(sa.or_(*status_parts) if status_parts else sa.false())
        return (sa.and_(*parts) if parts else None), judged

    def list_runs_by_id(self, run_ids: Iterable[str]) -> list[dict[str, Any]]:
        """The runs with these exact ids (unknown ids are left out)."""
        with self._read() as conn:
            result = conn.execute(_runs_query(listing=True).where(
                T.runs.c.run_id.in_(list(run_ids))))
            keys = list(result.keys())
            rows = result.all()
        return _records(keys, rows, {})

    def count(self) -> dict[str, int]:
        with self._read() as conn:
            return {t.name: int(conn.execute(sa.select(sa.func.count()).select_from(t))
                                .scalar_one()) for t in (T.runs, T.chips, T.run_cells)}

    def chips(self) -> list[dict[str, Any]]:
        with self._read() as conn:
            return [dict(r) for r in conn.execute(
                sa.select(T.chips).order_by(T.chips.c.chip_id)).mappings()]

    def cell_ranges(self, *, chip: str, start: int, stop: int) -> list[dict[str, Any]]:
        """Ranges of runs on ``chip`` (serial or identity) overlapping cells [start, stop),
        with their run's id, kind, path, status and start time, oldest run first."""
        q = (sa.select(T.run_cells, T.runs.c.kind, T.runs.c.path, T.runs.c.status,
                       T.runs.c.started_at, T.runs.c.driver, T.runs.c.rows, T.runs.c.cols,
                       T.runs.c.arrays, T.chips.c.maker, T.chips.c.model, T.chips.c.serial)
             .join(T.runs, T.runs.c.run_id == T.run_cells.c.run_id)
             .join(T.chips, T.chips.c.chip_id == T.run_cells.c.chip_id)
             .where((T.chips.c.serial == chip) | (T.chips.c.identity == chip))
             .where(T.run_cells.c.start < stop, T.run_cells.c.stop > start)
             .order_by(T.runs.c.started_at, T.run_cells.c.run_id, T.run_cells.c.start))
        with self._read() as conn:
            rows = [dict(r) for r in conn.execute(q).mappings()]
        for r in rows:
            r["started_at"] = utc(r["started_at"])
            r["file_offset"] = _file_offset(r)
        return rows


def _file_offset(r: Mapping[str, Any]) -> int:
    """What to add to a range's cells (its chip's own numbers) for the cell numbers of its
    run's file: on a chip group (``drivers.ChipGroup``) chip k's cells come after k chips'."""
    members = group_members(r["driver"]) if r.get("driver") else []
    if len(members) < 2:
        return 0
    key = (r["maker"], r["model"], r["serial"])
    k = next((i for i, m in enumerate(members) if ChipIdentity.parse(m).key == key), None)
    if k is None or not r.get("rows") or not r.get("cols") or r.get("arrays") != len(members):
        raise CatalogError(f"run {r['run_id']}: chip {r['serial']!r} on group {r['driver']!r}"
                           f" with geometry rows={r.get('rows')}, cols={r.get('cols')}, "
                           f"arrays={r.get('arrays')}: its cells cannot be found in the file")
    return k * (int(r["rows"]) // len(members)) * int(r["cols"])


_TIMES = ("started_at", "ended_at", "updated_at")
_JSON_COLUMNS = ("meta", "config")


def _runs_query(with_config: bool = True, *, listing: bool = False) -> sa.Select:
    """The runs with their chip. ``listing``: the times and JSON columns as the database
    holds them (text on SQLite), for ``_records`` to decode in bulk: per-row type
    processing cost more than the query itself on a listing of 10,000 runs."""
    columns = []
    for c in T.runs.columns:
        if c.name == "config" and not with_config:
            continue
        if listing and (c.name in _TIMES or c.name in _JSON_COLUMNS):
            columns.append(sa.type_coerce(c, sa.String).label(c.name))
        else:
            columns.append(c)
    return (sa.select(*columns, T.chips.c.maker.label("chip_maker"),
                      T.chips.c.model.label("chip_model"),
                      T.chips.c.serial.label("chip_serial"),
                      T.chips.c.firmware.label("chip_firmware"))
            .select_from(T.runs.outerjoin(T.chips, T.runs.c.chip_id == T.chips.c.chip_id)))


def _check_page(offset: int, limit: int | None) -> None:
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise CatalogError(f"offset {offset!r}: give a whole number of runs to skip, 0 or "
                           "more")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                              or limit < 0):
        raise CatalogError(f"limit {limit!r}: give a whole number of runs, 0 or more (or "
                           "none for all)")


def _time(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, str):  # SQLite's text, UTC: 'YYYY-MM-DD HH:MM:SS[.ffffff]'
        value = dt.datetime.fromisoformat(value)
    return (value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None
            else value.astimezone(dt.timezone.utc))


def _times(values: Sequence[Any]) -> list[dt.datetime | None]:
    """``_time`` of each; SQLite's UTC texts parsed with their zone in one C call."""
    parse = dt.datetime.fromisoformat
    return [parse(v + "+00:00") if isinstance(v, str) and len(v) <= 26 else _time(v)
            for v in values]


def _records(keys: list[str], rows: Sequence[Sequence[Any]],
             judged: Mapping[str, str]) -> list[dict[str, Any]]:
    """Records of a listing (``_runs_query(listing=True)``): times as aware UTC datetimes,
    JSON decoded (all of a column's texts in one ``json.loads``), the status as shown
    (``judged``, else judged here for runs recorded as running) beside
    ``recorded_status``."""
    from pcmlab.catalog.liveness import effective_status

    columns = list(zip(*rows, strict=True)) if rows else [() for _ in keys]
    data = dict(zip(keys, columns, strict=True))
    for key in _TIMES:
        if key in data:
            data[key] = _times(data[key])
    for key in _JSON_COLUMNS:
        if key not in data:
            continue
        values = data[key]
        text = [i for i, v in enumerate(values) if isinstance(v, str)]
        if text:  # SQLite gives text; PostgreSQL's driver decodes JSON itself
            decoded = json.loads("[" + ",".join(values[i] for i in text) + "]")
            values = list(values)
            for i, v in zip(text, decoded, strict=True):
                values[i] = v
            data[key] = values
    data["meta"] = [m or {} for m in data["meta"]]
    if "config" not in data:
        data["config"] = [None] * len(rows)
    names = list(data)
    out = [dict(zip(names, row, strict=True)) for row in zip(*data.values(), strict=True)]
    for rec in out:
        status = rec["status"]
        rec["recorded_status"] = status
        if status in ("running", "resumed"):
            rec["status"] = judged.get(rec["run_id"]) or effective_status(rec)
    return out


def _record(row: Mapping[str, Any]) -> dict[str, Any]:
    rec = row if isinstance(row, dict) else dict(row)
    for key in _TIMES:
        rec[key] = _time(rec.get(key))
    rec["meta"] = rec.get("meta") or {}
    rec.setdefault("config", None)
    return rec


def _date_only(value: Any) -> dt.date | None:
    """The day of a date given without a time (``date``, or text 'YYYY-MM-DD'), else None."""
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value
    if isinstance(value, str) and len(value.strip()) == 10:
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            return None
    return None


def _many(value: str | Iterable[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _meta(key: str) -> Any:
    parts = tuple(p for p in key.split(".") if p)
    if not parts:
        raise CatalogError(f"metadata key {key!r} is empty; give a key such as 'operator' "
                           "or 'pulse.scheme'")
    return T.runs.c.meta[parts]


def _meta_equals(key: str, value: Any) -> Any:
    expr = _meta(key)
    if isinstance(value, bool):
        return expr.as_boolean() == value
    if isinstance(value, (int, float)):
        return expr.as_float() == float(value)
    if value is None:
        return expr.as_string().is_(None)
    if isinstance(value, str):
        return expr.as_string() == value
    raise CatalogError(f"metadata filter {key}={value!r}: compare with a string, number, "
                       "true/false or null")


def _set_path(meta: dict[str, Any], key: str, value: Any) -> None:
    parts = [p for p in key.split(".") if p]
    if not parts:
        raise CatalogError(f"tag key {key!r} is empty; give key=value")
    if not isinstance(value, _JSON_VALUE):
        raise CatalogError(f"tag {key}: value {value!r} is not a JSON value")
    node = meta
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (dt.datetime, dt.date, Path)):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _reason(exc: sa.exc.DBAPIError) -> str:
    # the driver's message alone: SQLAlchemy's text would repeat the statement's parameters
    text = str(exc.orig).strip().splitlines()
    return text[0] if text else type(exc.orig).__name__


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""
