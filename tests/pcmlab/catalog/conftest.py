"""Catalog fixtures: every catalog test runs on SQLite and on PostgreSQL.

PostgreSQL is the server ``.ci/services`` starts; its URL comes from
PCMLAB_TEST_POSTGRES_URL (password, if any, from PGPASSWORD or ~/.pgpass). Unset: the
PostgreSQL cases are skipped. Set but unreachable: they fail, loudly.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import pytest
import sqlalchemy as sa

PG_ENV = "PCMLAB_TEST_POSTGRES_URL"


def _pg_engine(url: str) -> sa.Engine:
    from pcmlab.catalog.location import to_url

    return sa.create_engine(to_url(url), connect_args={"connect_timeout": 5})


@pytest.fixture(scope="session")
def postgres_url() -> str:
    url = os.environ.get(PG_ENV)
    if not url:
        if os.environ.get("CI"):  # CI starts PostgreSQL: a missing one is a failure there
            pytest.fail(f"{PG_ENV} is not set in CI: .ci/services did not start PostgreSQL")
        pytest.skip(f"{PG_ENV} is not set (run .ci/services to start PostgreSQL)")
    try:
        with _pg_engine(url).connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.DBAPIError as exc:
        pytest.fail(f"{PG_ENV} is set but PostgreSQL does not answer: {exc.orig}")
    return url


@pytest.fixture
def pg_catalog_url(postgres_url: str) -> Iterator[str]:
    """A fresh schema of the test database, so each test starts from an empty catalog."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    engine = _pg_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
    sep = "&" if "?" in postgres_url else "?"
    yield f"{postgres_url}{sep}options={quote(f'-csearch_path={name}')}"
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{name}" CASCADE'))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """An empty catalog on each backend."""
    if request.param == "sqlite":
        return str(tmp_path / "catalog.sqlite")
    return request.getfixturevalue("pg_catalog_url")


@pytest.fixture(autouse=True)
def _registration_location() -> Iterator[None]:
    yield
    from pcmlab.catalog.registration import configure

    configure(None)  # main([..., "--catalog", ...]) set it for this process
    from pcmlab.catalog import registration

    registration._failed_at.clear()  # a catalog one test found down is not another's
