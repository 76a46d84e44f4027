"""pytest plugin: real Elasticsearch and S3 servers for flowlog's tests.

Enable with ``pytest_plugins = ["tests.fixtures_services"]`` (tests/conftest.py) or
``pytest -p tests.fixtures_services``.

Session-scoped fixtures
  es_service     dict describing a running Elasticsearch 9 (``url``, ``pid``, ``data_dir``, ...)
  es_client      elasticsearch.Elasticsearch connected to it
  minio_service  dict describing a running S3 server (``endpoint``, ``access_key``,
                 ``secret_key``, ``url``, ``region``, ``service`` = "minio" or "versitygw")
  minio_client   minio.Minio(endpoint, ..., secure=False) connected to it

Servers are started through scripts/flowlog_services.py (fetched/built once into
$FLOWLOG_CACHE), on free loopback ports with throwaway data dirs, and stopped at session end
(session finish, atexit, and a watchdog process that stops them if pytest itself is killed).
As soon as collection shows that a selected test needs one of them, it is started in a
background thread, so Elasticsearch boots while other tests run.

External servers instead (nothing is started or stopped):
  FLOWLOG_TEST_ES_URL=http://host:9200
  FLOWLOG_TEST_S3_ENDPOINT=host:port  FLOWLOG_TEST_S3_ACCESS_KEY=...  FLOWLOG_TEST_S3_SECRET_KEY=...
  (optional FLOWLOG_TEST_S3_SECURE=1, FLOWLOG_TEST_S3_REGION=...)

A server that cannot be fetched or started fails the tests that need it, with a message
saying how to get it.  They are never skipped.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import os
import sys
import threading
import time

import pytest

_SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")
if _SCRIPTS not in sys.path:
    sys.path.insert(0, _SCRIPTS)

import flowlog_services as _svc  # noqa: E402

_ES_FIXTURES = {"es_service", "es_client"}
_S3_FIXTURES = {"minio_service", "minio_client"}


def _external(kind: str) -> dict | None:
    if kind == "postgres":  # tests/fixtures_postgres.py
        dsn = os.environ.get("FLOWLOG_TEST_POSTGRES_DSN")
        return {"service": "postgres", "dsn": dsn, "url": dsn, "external": True} if dsn else None
    if kind == "es":
        url = os.environ.get("FLOWLOG_TEST_ES_URL")
        if url:
            return {"service": "es", "url": url.rstrip("/"), "external": True}
        return None
    endpoint = os.environ.get("FLOWLOG_TEST_S3_ENDPOINT")
    if not endpoint:
        return None
    missing = [v for v in ("FLOWLOG_TEST_S3_ACCESS_KEY", "FLOWLOG_TEST_S3_SECRET_KEY") if not os.environ.get(v)]
    if missing:
        raise _svc.ServiceError(f"FLOWLOG_TEST_S3_ENDPOINT is set but {', '.join(missing)} is not")
    endpoint = endpoint.split("://", 1)[-1].rstrip("/")
    secure = os.environ.get("FLOWLOG_TEST_S3_SECURE", "0").lower() in ("1", "true", "yes")
    return {
        "service": "s3",
        "endpoint": endpoint,
        "url": f"{'https' if secure else 'http'}://{endpoint}",
        "access_key": os.environ["FLOWLOG_TEST_S3_ACCESS_KEY"],
        "secret_key": os.environ["FLOWLOG_TEST_S3_SECRET_KEY"],
        "region": os.environ.get("FLOWLOG_TEST_S3_REGION") or None,
        "secure": secure,
        "external": True,
    }


class _Services:
    """Starts each kind ("es", "s3", "postgres": tests/fixtures_postgres.py) at most once per process,
    possibly in the background."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._futures: dict[str, concurrent.futures.Future] = {}
        self._started: list[dict] = []
        self._closed = False

    def begin(self, kind: str) -> concurrent.futures.Future:
        with self._lock:
            fut = self._futures.get(kind)
            if fut is not None:
                return fut
            fut = concurrent.futures.Future()
            self._futures[kind] = fut
            if self._closed:
                fut.set_exception(_svc.ServiceError("test session already finished"))
                return fut
        threading.Thread(target=self._run, args=(kind, fut), name=f"flowlog-start-{kind}", daemon=True).start()
        return fut

    def _run(self, kind: str, fut: concurrent.futures.Future) -> None:
        fut.set_running_or_notify_cancel()
        t0 = time.monotonic()
        try:
            info = _external(kind)
            if info is None:
                info = _svc.start(kind, owner_pid=os.getpid(), on_spawn=self._spawned)
                if self._closed:  # the session ended while the server was booting
                    _svc.stop(info)
                    raise _svc.ServiceError("test session already finished")
            info["ready_after"] = round(time.monotonic() - t0, 1)
        except BaseException as e:  # noqa: BLE001 - handed to the waiting fixture
            fut.set_exception(e)
            return
        fut.set_result(info)

    def _spawned(self, info: dict) -> None:
        # Called from the starting thread as soon as the server process exists, so that
        # shutdown() can stop a server that is still booting (e.g. Ctrl-C during start-up).
        with self._lock:
            self._started.append(info)

    def get(self, kind: str) -> dict:
        fut = self.begin(kind)
        try:
            return fut.result()
        except _svc.ServiceError as e:
            problem = str(e)
        except Exception as e:  # noqa: BLE001
            problem = f"{type(e).__name__}: {e}"
        what = {"es": "Elasticsearch", "postgres": "PostgreSQL"}.get(kind, "the S3 server (MinIO/versitygw)")
        # outside the except block, so that the report is not cluttered by exception chaining
        pytest.fail(f"could not start {what}:\n{problem}\n\nTo get it: {_svc.how_to_get(kind)}", pytrace=False)

    def results(self) -> dict[str, dict]:
        out = {}
        for kind, fut in list(self._futures.items()):
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                out[kind] = fut.result()
        return out

    def shutdown(self, wait_for_pending: float = 0.0) -> None:
        with self._lock:
            self._closed = True
            pending = [f for f in self._futures.values() if not f.done()]
        if wait_for_pending and pending:
            # let a start that is about to finish complete (clean log); stop it regardless
            concurrent.futures.wait(pending, timeout=wait_for_pending)
        while True:
            with self._lock:
                if not self._started:
                    break
                info = self._started.pop()
            try:
                _svc.stop(info)
            except Exception as e:  # noqa: BLE001
                print(
                    f"flowlog services: failed to stop {info.get('service')} pid {info.get('pid')}: {e}",
                    file=sys.stderr,
                )


_SERVICES = _Services()
atexit.register(_SERVICES.shutdown)


@pytest.hookimpl(trylast=True)  # after -k/-m deselection
def pytest_collection_modifyitems(session, config, items):
    if config.getoption("collectonly", False):
        return
    names: set[str] = set()
    for item in items:
        names.update(getattr(item, "fixturenames", ()))
    if names & _ES_FIXTURES:
        _SERVICES.begin("es")
    if names & _S3_FIXTURES:
        _SERVICES.begin("s3")


def pytest_sessionfinish(session, exitstatus):
    # Stops everything this session started, including servers still booting (the watchdog
    # process would stop them anyway once pytest has exited).
    _SERVICES.shutdown(wait_for_pending=1.0)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    res = _SERVICES.results()
    if not res:
        return
    parts = []
    for kind, info in sorted(res.items()):
        if info.get("external"):
            parts.append(f"{kind}: external {info.get('url')}")
            continue
        s = f"{info['service']} {info.get('version', '')} at {info['url']} (ready after {info.get('ready_after')}s)"
        if info.get("fallback_reason"):
            s += f" [MinIO unavailable: {info['fallback_reason']}]"
        parts.append(s)
    terminalreporter.write_line("flowlog services: " + "; ".join(parts))


@pytest.fixture(scope="session")
def es_service() -> dict:
    """A running Elasticsearch 9.x (dict with at least ``url``)."""
    # Stopped once, at session finish (see pytest_sessionfinish / atexit / watchdog).
    return _SERVICES.get("es")


@pytest.fixture(scope="session")
def minio_service() -> dict:
    """A running S3 server (dict with ``endpoint``, ``access_key``, ``secret_key``, ``url``)."""
    # Stopped once, at session finish (see pytest_sessionfinish / atexit / watchdog).
    return _SERVICES.get("s3")


@pytest.fixture(scope="session")
def es_client(es_service):
    from elasticsearch import Elasticsearch

    client = Elasticsearch(es_service["url"], request_timeout=30)
    yield client
    client.close()


@pytest.fixture(scope="session")
def minio_client(minio_service):
    from minio import Minio

    return Minio(
        minio_service["endpoint"],
        access_key=minio_service["access_key"],
        secret_key=minio_service["secret_key"],
        secure=bool(minio_service.get("secure")),
        region=minio_service.get("region"),
    )
