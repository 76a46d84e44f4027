"""pytest plugin: a real PostgreSQL server for flowlog's tests (the replicas' shared metadata store).

Enabled for every run by pyproject.toml's addopts (``-p tests.fixtures_postgres``), next to
tests/fixtures_services.py, whose start-once-in-the-background machinery it shares.

Fixtures
  postgres_service  (session) dict describing the running server: ``dsn`` (a libpq URL to its
                    ``postgres`` database, superuser, trust auth on loopback), ``host``, ``port``,
                    ``pid``, ``data_dir``, ``bin_dir``, ... Started once per session by
                    scripts/services (Debian's postgresql package, a fresh data dir, a free port,
                    the unprivileged user flowlog-pg when run as root), stopped at session end.
  postgres_dsn      (function) the DSN of a FRESH database on that server, dropped after the test
                    (its open connections are closed by ``DROP DATABASE ... WITH (FORCE)``).

Helpers for fixtures of wider scope (e.g. tests/replicas): ``create_database(service)`` returns the
DSN of a new empty database, ``drop_database(service, dsn)`` removes it.

An external server instead (nothing is started or stopped): FLOWLOG_TEST_POSTGRES_DSN=<libpq URL
or key=value string of a user that may CREATE DATABASE>.

A server that cannot be fetched or started fails the tests that need it, with a message saying how
to get it (never a skip).
"""

from __future__ import annotations

import uuid
from typing import Iterator

import pytest

from tests.fixtures_services import _SERVICES

_PG_FIXTURES = {"postgres_service", "postgres_dsn"}


def create_database(service: dict) -> str:
    """A new, empty database on the server; returns its DSN."""
    import psycopg
    from psycopg.conninfo import make_conninfo

    name = "flowlog_t_" + uuid.uuid4().hex[:16]
    with psycopg.connect(service["dsn"], autocommit=True, connect_timeout=30) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return make_conninfo(service["dsn"], dbname=name)


def drop_database(service: dict, dsn: str) -> None:
    """Drop a database made by create_database, closing whatever connections are still open on it."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    name = conninfo_to_dict(dsn)["dbname"]
    assert isinstance(name, str) and name.startswith("flowlog_t_"), name
    with psycopg.connect(service["dsn"], autocommit=True, connect_timeout=30) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.hookimpl(trylast=True)  # after -k/-m deselection
def pytest_collection_modifyitems(session, config, items):
    if config.getoption("collectonly", False):
        return
    for item in items:
        if _PG_FIXTURES & set(getattr(item, "fixturenames", ())):
            _SERVICES.begin("postgres")  # boots in the background while other tests run
            return


@pytest.fixture(scope="session")
def postgres_service() -> dict:
    """A running PostgreSQL (dict with at least ``dsn``); stopped at session end."""
    return _SERVICES.get("postgres")


@pytest.fixture
def postgres_dsn(postgres_service: dict) -> Iterator[str]:
    """The DSN of a fresh database, dropped after the test."""
    dsn = create_database(postgres_service)
    yield dsn
    drop_database(postgres_service, dsn)
