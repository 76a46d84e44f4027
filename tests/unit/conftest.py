"""Fixtures of the unit tests: `metadata_store`, one fixture parametrised over every metadata
backend (the embedded SQLite file and a real PostgreSQL database), so the suites that take it
(test_core_rules.py: every rule of API.md through the core; test_lifecycle.py: generations,
tombstones, quotas) run whole against each. A backend plugs in here with a few lines."""

from __future__ import annotations

from typing import Iterator

import pytest

from server.core.ports import MetadataStore

METADATA_BACKENDS = ["embedded", "postgres"]


def open_metadata(backend: str, request: pytest.FixtureRequest) -> MetadataStore:
    if backend == "embedded":
        from backends.embedded.metadata import SqliteMetadataStore

        return SqliteMetadataStore(request.getfixturevalue("tmp_path") / "meta.db")
    from backends.postgres.config import PostgresConfig
    from backends.postgres.metadata import PostgresMetadataStore

    return PostgresMetadataStore(PostgresConfig(dsn=request.getfixturevalue("postgres_dsn")))


@pytest.fixture(params=METADATA_BACKENDS)
def metadata_store(request: pytest.FixtureRequest) -> Iterator[MetadataStore]:
    store = open_metadata(request.param, request)
    yield store
    store.close()
