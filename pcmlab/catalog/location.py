"""Where the catalog is: ``--catalog PATH|URL``, else ``PCMLAB_CATALOG``, else an SQLite
file in the user's data folder. A PostgreSQL URL carries no password: libpq finds it in
``PGPASSWORD``, ``PGPASSFILE`` or ``~/.pgpass``; pcmlab never prints or writes one."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL

from pcmlab.errors import CatalogError

ENV_VAR = "PCMLAB_CATALOG"
_PG_SCHEMES = ("postgresql", "postgres")


def user_data_dir() -> Path:
    """The per-user data folder (XDG_DATA_HOME on Linux, Application Support on macOS,
    LOCALAPPDATA on Windows)."""
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "pcmlab"
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "pcmlab"
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "pcmlab"


def default_location() -> str:
    return str(user_data_dir() / "catalog.sqlite")


def resolve_location(location: str | os.PathLike[str] | None = None) -> str:
    """The catalog's location as given (argument, then PCMLAB_CATALOG, then the default)."""
    if location is not None and str(location) != "":
        return str(location)
    return os.environ.get(ENV_VAR) or default_location()


def to_url(location: str) -> URL:
    """An SQLAlchemy URL for a path or a ``postgresql://`` / ``sqlite:///`` URL."""
    scheme = location.split("://", 1)[0].lower() if "://" in location else ""
    if scheme.split("+")[0] in _PG_SCHEMES:
        try:
            url = sa.make_url(location)
        except sa.exc.ArgumentError:
            raise CatalogError(f"catalog URL {redact(location)!r} is not a valid URL; "
                               "expected postgresql://USER@HOST:PORT/DATABASE") from None
        if url.drivername in _PG_SCHEMES:  # psycopg 3, not SQLAlchemy's psycopg2 default
            url = url.set(drivername="postgresql+psycopg")
        return url
    if scheme.startswith("sqlite"):
        return sa.make_url(location)
    if scheme:
        raise CatalogError(f"catalog {redact(location)!r}: unknown scheme {scheme!r}; give "
                           "a file path (SQLite) or postgresql://USER@HOST:PORT/DATABASE")
    path = Path(location).expanduser()
    if path.is_dir():
        raise CatalogError(f"catalog {path} is a folder; give a file path such as "
                           f"{path / 'catalog.sqlite'}")
    return URL.create("sqlite", database=str(path.absolute()))


def redact(location: str | URL) -> str:
    """The location with any password replaced by ***: safe to print or log."""
    if isinstance(location, URL):
        return location.render_as_string(hide_password=True)
    if "://" not in location:
        return location
    try:
        return sa.make_url(location).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return location.split("://", 1)[0] + "://***"
