"""Pins, errors and small helpers shared by scripts/services_fetch.py and scripts/services_run.py:
the versions of every real server and tool the tests use, the cache folder, inter-process locks,
free ports, HTTP probes. (scripts/flowlog_services.py is the importable front of all three.)"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

# --------------------------------------------------------------------------------------------
# Pins
# --------------------------------------------------------------------------------------------

# Elasticsearch: the integ-test-zip distribution on Maven Central.  Maven Central serves 9.x
# integ-test-zips WITHOUT .pom/.sha1/.sha512/.asc files (and they are absent from
# maven-metadata.xml), so Maven's own checksum verification cannot be used for the zip.  The
# zip is therefore verified (1) against the SHA-512/SHA-1 pinned below, and (2) by checking
# that the server jar inside it is byte-identical to org.elasticsearch:elasticsearch:<ver>,
# which Maven downloads with --strict-checksums (Central publishes checksums for that jar).
# 9.5.3 is the newest 9.x for which that cross-check is possible (9.5.4's zip exists but
# Central has no org.elasticsearch:elasticsearch:9.5.4 jar to check it against).
ES_VERSION = "9.5.3"
ES_GROUP = "org.elasticsearch.distribution.integ-test-zip"
ES_ARTIFACT = "elasticsearch"
ES_ZIP_SHA512 = (
    "ae57654932de854d755af63f2a63667621967870b79ec449407618075c13dc12"
    "012317388e0a232071e4f2a65c9d973bb681d978fac56445a0790443df0823d1"
)
ES_ZIP_SHA1 = "b68fd022c00824b5406b0ed2df50b2bdb9e9bd0f"
ES_SERVER_JAR = f"org.elasticsearch:elasticsearch:{ES_VERSION}:jar"
MVN_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
ES_MIN_JAVA = 21

# MinIO: last community release RELEASE.2025-10-15T17-29-55Z (upstream is archived).
MINIO_MODULE = "github.com/minio/minio"
MINIO_VERSION = "v0.0.0-20251015172955-9e49d5e7a648"
# versitygw: a maintained, Apache-2.0 S3 server; the fallback when MinIO cannot be built.
VERSITYGW_PACKAGE = "github.com/versity/versitygw/cmd/versitygw"
VERSITYGW_VERSION = "v1.7.0"
# Not a server: the shell client the README's grpcurl examples are tested with.
GRPCURL_PACKAGE = "github.com/fullstorydev/grpcurl/cmd/grpcurl"
GRPCURL_VERSION = "v1.9.3"
# The reference NetFlow/IPFIX decoder the collector's benchmark runs next to flowlog's (bench/collector.py).
GOFLOW2_PACKAGE = "github.com/netsampler/goflow2/v2/cmd/goflow2"
GOFLOW2_VERSION = "v2.2.6"
# Real NetFlow/IPFIX exporters and tools for tests/collector, from Debian's packages: command -> package.
EXPORTER_PACKAGES = {
    "softflowd": "softflowd",
    "softflowctl": "softflowd",
    "pmacctd": "pmacct",
    "nfcapd": "nfdump",
    "nfdump": "nfdump",
    "tcpreplay": "tcpreplay",
}

# PostgreSQL (the replicas' shared metadata store): Debian's `postgresql` package, whose initdb,
# pg_ctl and postgres live in /usr/lib/postgresql/<major>/bin (not on PATH). The newest major found
# there is used; PG_MIN_MAJOR is the oldest we accept (15 is Debian 12's).
PG_PACKAGE = "postgresql"
PG_LIB_ROOT = "/usr/lib/postgresql"
PG_MIN_MAJOR = 13  # DROP DATABASE ... WITH (FORCE), used by the tests' per-test databases
PG_SUPERUSER = "flowlog"  # the throwaway server's superuser (trust auth, loopback only)

# Fixed test credentials (loopback-only throwaway servers).
S3_ACCESS_KEY = "flowlog"
S3_SECRET_KEY = "flowlog-secret-key"
S3_REGION = "us-east-1"

ES_START_TIMEOUT = 300.0  # generous: on a loaded 2-core machine Elasticsearch has taken over 120 s to boot
S3_START_TIMEOUT = 30.0
PG_START_TIMEOUT = 120.0  # initdb + first start; ~3 s on an idle 2-core machine, far more at load 20
STOP_TIMEOUT = 30.0

SERVICES = ("es", "minio", "versitygw", "postgres")  # plus the alias "s3"


class ServiceError(RuntimeError):
    """A server could not be fetched, built, started or stopped.  The message says why/how."""


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[flowlog-services] {msg}", file=sys.stderr, flush=True)


def cache_dir() -> str:
    d = os.path.abspath(os.path.expanduser(os.environ.get("FLOWLOG_CACHE", "~/.cache/flowlog")))
    os.makedirs(d, exist_ok=True)
    return d


def _tmp_parent() -> str:
    return os.environ.get("FLOWLOG_TMPDIR") or tempfile.gettempdir()


@contextlib.contextmanager
def _locked(name: str):
    """Inter-process lock so that concurrent sessions fetch/build each thing only once."""
    path = os.path.join(cache_dir(), f".lock-{name}")
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _hash_file(path: str, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _run_with_progress(
    cmd: list[str], what: str, env: dict | None = None, cwd: str | None = None, echo_output: bool = True
) -> str:
    """Run cmd, relay its output to stderr, print a heartbeat with elapsed seconds.
    Returns the combined output; raises ServiceError (with the output tail) on failure."""
    t0 = time.monotonic()
    log(f"$ {' '.join(cmd)}")
    try:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=cwd, text=True, errors="replace"
        )
    except FileNotFoundError as e:
        raise ServiceError(f"{what}: cannot run {cmd[0]!r}: {e}") from e
    lines: list[str] = []
    done = threading.Event()

    def heartbeat():
        while not done.wait(15):
            log(f"... {what}: {time.monotonic() - t0:.0f}s elapsed")

    hb = threading.Thread(target=heartbeat, daemon=True)
    hb.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if echo_output:
                print(f"    {line.rstrip()}", file=sys.stderr, flush=True)
        rc = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        done.set()
    out = "\n".join(lines)
    if rc != 0:
        tail = "\n".join(lines[-40:])
        raise ServiceError(f"{what} failed (exit {rc}) after {time.monotonic() - t0:.0f}s:\n$ {' '.join(cmd)}\n{tail}")
    log(f"{what}: done in {time.monotonic() - t0:.1f}s")
    return out


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: str, n: int = 40) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 256 * 1024))
            data = fh.read().decode("utf-8", "replace")
    except OSError as e:
        return f"(cannot read {path}: {e})"
    return "\n".join(data.splitlines()[-n:])


def _proc_starttime(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat: lets stop() detect a recycled pid."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
        return stat[stat.rindex(")") + 2 :].split()[19]
    except (OSError, ValueError, IndexError):
        return None


def _http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, method="GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read() or b""
