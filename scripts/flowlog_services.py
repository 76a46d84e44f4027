"""Real Elasticsearch and S3 (MinIO / versitygw) servers for flowlog's tests and CI.

Stdlib only. Importable (``fetch(name)``, ``start(name) -> dict``, ``stop(info)``) and used by
the ``scripts/services`` CLI and by ``tests/fixtures_services.py``.

Service names
  es         Elasticsearch ``integ-test-zip`` distribution from Maven Central (ES_VERSION).
  minio      MinIO built from its Go module with ``go install`` (MINIO_VERSION).
  versitygw  Versity S3 gateway built with ``go install`` (VERSITYGW_VERSION), posix backend.
  s3         Alias: minio if it can be fetched/built, otherwise versitygw
             (FLOWLOG_S3_SERVER=minio|versitygw|auto forces the choice; default auto).

Everything downloaded or built lives outside the repository, in ``$FLOWLOG_CACHE``
(default ``~/.cache/flowlog``).  Running as root, Elasticsearch (which refuses to run as
root) is started as the unprivileged system user ``flowlog-es`` via ``runuser``; because
``/root`` is normally mode 700, its unpacked installation then lives in a world-readable
directory (``/var/cache/flowlog`` unless FLOWLOG_ES_INSTALL_ROOT says otherwise).

Environment knobs
  FLOWLOG_CACHE             cache directory (default ~/.cache/flowlog)
  FLOWLOG_ES_HEAP           ES heap, e.g. 512m (default) or 1g
  FLOWLOG_ES_JAVA_OPTS      extra JVM options appended to ES_JAVA_OPTS
  FLOWLOG_ES_QUICK_JIT      1 = -XX:TieredStopAtLevel=1 (boots ~2 s faster, slower queries)
  FLOWLOG_ES_ARGS           extra command-line arguments for ES, e.g. "-Esome.setting=x"
  FLOWLOG_ES_JAVA_HOME      JDK (21+) to run ES with (default: newest JDK >= 21 in /usr/lib/jvm)
  FLOWLOG_ES_INSTALL_ROOT   where the ES zip is unpacked (see above)
  FLOWLOG_ES_USER           unprivileged user for ES when running as root (default flowlog-es)
  FLOWLOG_S3_SERVER         minio | versitygw | auto (what the "s3" alias means)
  FLOWLOG_TMPDIR            parent of the per-instance temporary data dirs (default: system tmp)
  FLOWLOG_GO                go binary (default: go on PATH, else /usr/local/go/bin/go)
  FLOWLOG_MVN               mvn binary (default: mvn on PATH)
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zipfile

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
EXPORTER_PACKAGES = {"softflowd": "softflowd", "softflowctl": "softflowd", "pmacctd": "pmacct", "nfcapd": "nfdump",
                     "nfdump": "nfdump", "tcpreplay": "tcpreplay"}

# Fixed test credentials (loopback-only throwaway servers).
S3_ACCESS_KEY = "flowlog"
S3_SECRET_KEY = "flowlog-secret-key"
S3_REGION = "us-east-1"

ES_START_TIMEOUT = 120.0
S3_START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0

SERVICES = ("es", "minio", "versitygw")  # plus the alias "s3"


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


def _run_with_progress(cmd: list[str], what: str, env: dict | None = None, cwd: str | None = None,
                       echo_output: bool = True) -> str:
    """Run cmd, relay its output to stderr, print a heartbeat with elapsed seconds.
    Returns the combined output; raises ServiceError (with the output tail) on failure."""
    t0 = time.monotonic()
    log(f"$ {' '.join(cmd)}")
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                cwd=cwd, text=True, errors="replace")
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
        raise ServiceError(f"{what} failed (exit {rc}) after {time.monotonic() - t0:.0f}s:\n"
                           f"$ {' '.join(cmd)}\n{tail}")
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
        return stat[stat.rindex(")") + 2:].split()[19]
    except (OSError, ValueError, IndexError):
        return None


def _http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, method="GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read() or b""


# --------------------------------------------------------------------------------------------
# Elasticsearch: fetch
# --------------------------------------------------------------------------------------------


def _es_user() -> str:
    return os.environ.get("FLOWLOG_ES_USER", "flowlog-es")


def _dir_traversable_by_others(path: str) -> bool:
    path = os.path.abspath(path)
    while True:
        try:
            if not os.stat(path).st_mode & 0o001:
                return False
        except FileNotFoundError:
            pass
        parent = os.path.dirname(path)
        if parent == path:
            return True
        path = parent


_SYSTEM_ES_ROOT = "/var/cache/flowlog/es"


def es_install_root() -> str:
    """Where the ES zip is unpacked.  Running as root, the ES user must be able to read it."""
    override = os.environ.get("FLOWLOG_ES_INSTALL_ROOT")
    if override:
        return os.path.abspath(os.path.expanduser(override))
    default = os.path.join(cache_dir(), "es")
    if os.geteuid() == 0 and not _dir_traversable_by_others(cache_dir()):
        # /root is 0700: the unprivileged ES user could not read an install under it.  Rather
        # than loosening /root, unpack into a root-owned, world-readable system cache dir.
        return _SYSTEM_ES_ROOT
    return default


def es_home() -> str:
    return os.path.join(es_install_root(), f"elasticsearch-{ES_VERSION}")


def _es_marker() -> str:
    return os.path.join(es_home(), ".flowlog-verified")


def _find_mvn() -> str:
    mvn = os.environ.get("FLOWLOG_MVN") or shutil.which("mvn")
    if not mvn:
        raise ServiceError("mvn (Apache Maven) not found on PATH; install it (apt-get install maven) "
                           "or set FLOWLOG_MVN")
    return mvn


def _m2() -> str:
    return os.path.join(cache_dir(), "m2")


def _m2_path(group: str, artifact: str, version: str, ext: str) -> str:
    return os.path.join(_m2(), *group.split("."), artifact, version, f"{artifact}-{version}.{ext}")


def _mvn_get(artifact: str, strict: bool, what: str) -> None:
    cmd = [_find_mvn(), "-B", "-ntp", f"-Dmaven.repo.local={_m2()}"]
    if strict:
        cmd.append("--strict-checksums")
    cmd += [f"{MVN_DEPENDENCY_PLUGIN}:get", f"-Dartifact={artifact}", "-Dtransitive=false"]
    _run_with_progress(cmd, what, cwd=cache_dir(), echo_output=False)


def _extract_zip(zip_path: str, dest_parent: str, top: str) -> None:
    """Unpack zip_path so that dest_parent/top exists, preserving unix modes; atomic rename."""
    os.makedirs(dest_parent, exist_ok=True)
    os.chmod(dest_parent, 0o755)
    if dest_parent == _SYSTEM_ES_ROOT:
        os.chmod(os.path.dirname(dest_parent), 0o755)
    staging = tempfile.mkdtemp(prefix=".unpack-", dir=dest_parent)
    try:
        with zipfile.ZipFile(zip_path) as zf:
            for info in zf.infolist():
                name = info.filename
                if name.startswith("/") or ".." in name.split("/"):
                    raise ServiceError(f"refusing unsafe path in zip: {name}")
                target = os.path.join(staging, name)
                mode = (info.external_attr >> 16) & 0o777
                if info.is_dir():
                    os.makedirs(target, exist_ok=True)
                    os.chmod(target, 0o755)
                    continue
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                os.chmod(target, 0o755 if mode & 0o111 else 0o644)
        for d, dirs, _ in os.walk(staging):
            for sub in dirs:
                os.chmod(os.path.join(d, sub), 0o755)
        os.chmod(staging, 0o755)
        src_top = os.path.join(staging, top)
        if not os.path.isdir(src_top):
            raise ServiceError(f"{zip_path} does not contain {top}/")
        final = os.path.join(dest_parent, top)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.rename(src_top, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fetch_es() -> str:
    """Download (once) and unpack the ES integ-test-zip; returns ES_HOME."""
    home = es_home()
    if os.path.exists(_es_marker()):
        return home
    with _locked("es"):
        if os.path.exists(_es_marker()):
            return home
        t0 = time.monotonic()
        log(f"fetching elasticsearch {ES_VERSION} ({ES_GROUP}:{ES_ARTIFACT}:zip) from Maven Central "
            f"into {_m2()} ...")
        # 1. The server jar, with Maven's checksum verification enforced.
        _mvn_get(ES_SERVER_JAR, strict=True,
                 what=f"mvn: {ES_SERVER_JAR} (--strict-checksums)")
        server_jar = _m2_path("org.elasticsearch", "elasticsearch", ES_VERSION, "jar")
        # 2. The distribution zip (Central has no checksum files for it: verified below).
        zip_path = _m2_path(ES_GROUP, ES_ARTIFACT, ES_VERSION, "zip")
        if not (os.path.exists(zip_path) and _hash_file(zip_path, "sha512") == ES_ZIP_SHA512):
            _mvn_get(f"{ES_GROUP}:{ES_ARTIFACT}:{ES_VERSION}:zip", strict=False,
                     what=f"mvn: {ES_GROUP}:{ES_ARTIFACT}:{ES_VERSION}:zip")
        if not os.path.exists(zip_path):
            raise ServiceError(f"mvn reported success but {zip_path} is missing")
        got512, got1 = _hash_file(zip_path, "sha512"), _hash_file(zip_path, "sha1")
        if got512 != ES_ZIP_SHA512 or got1 != ES_ZIP_SHA1:
            bad = zip_path + ".rejected"
            os.replace(zip_path, bad)
            raise ServiceError(
                f"checksum mismatch for {ES_GROUP}:{ES_ARTIFACT}:{ES_VERSION}:zip\n"
                f"  expected sha512 {ES_ZIP_SHA512}\n  got      sha512 {got512}\n"
                f"  expected sha1 {ES_ZIP_SHA1}\n  got      sha1 {got1}\n"
                f"the download was moved to {bad} and NOT used")
        log(f"sha512/sha1 of the zip match the pinned values ({time.monotonic() - t0:.0f}s elapsed); "
            f"unpacking into {es_install_root()} ...")
        _extract_zip(zip_path, es_install_root(), f"elasticsearch-{ES_VERSION}")
        inner = os.path.join(home, "lib", f"elasticsearch-{ES_VERSION}.jar")
        if not os.path.exists(inner) or _hash_file(inner, "sha1") != _hash_file(server_jar, "sha1"):
            shutil.rmtree(home, ignore_errors=True)
            raise ServiceError(f"{inner} differs from the checksum-verified {ES_SERVER_JAR}; "
                               "refusing to use this distribution")
        with open(_es_marker(), "w") as fh:
            fh.write(f"{ES_GROUP}:{ES_ARTIFACT}:{ES_VERSION}:zip sha512={ES_ZIP_SHA512}\n")
        os.chmod(_es_marker(), 0o644)
        log(f"elasticsearch {ES_VERSION} ready at {home} (fetch took {time.monotonic() - t0:.1f}s)")
        return home


# --------------------------------------------------------------------------------------------
# Java
# --------------------------------------------------------------------------------------------


def _java_major(java_home: str) -> int | None:
    try:
        with open(os.path.join(java_home, "release")) as fh:
            for line in fh:
                if line.startswith("JAVA_VERSION="):
                    v = line.split("=", 1)[1].strip().strip('"')
                    parts = v.split(".")
                    major = int(parts[1] if parts[0] == "1" else re.match(r"\d+", parts[0]).group())
                    return major
    except (OSError, ValueError, AttributeError):
        pass
    return None


def _pick_java_home(min_major: int, for_what: str = "Elasticsearch") -> str:
    for var in ("FLOWLOG_ES_JAVA_HOME",) if for_what == "Elasticsearch" else ():
        if os.environ.get(var):
            jh = os.environ[var]
            major = _java_major(jh)
            if major is not None and major < min_major:
                raise ServiceError(f"{var}={jh} is Java {major}; {for_what} needs Java {min_major}+")
            return jh
    best: tuple[int, str] | None = None
    for release in glob.glob("/usr/lib/jvm/*/release"):
        jh = os.path.dirname(release)
        if os.path.islink(jh):
            continue
        major = _java_major(jh)
        if major is None or major < min_major or not os.access(os.path.join(jh, "bin", "java"), os.X_OK):
            continue
        if best is None or major > best[0]:
            best = (major, jh)
    if best is None:
        raise ServiceError(f"no JDK {min_major}+ found under /usr/lib/jvm; {for_what} needs Java "
                           f"{min_major}+ (e.g. apt-get install temurin-25-jdk or openjdk-21-jdk), "
                           "or set FLOWLOG_ES_JAVA_HOME")
    return best[1]


# --------------------------------------------------------------------------------------------
# Go builds (MinIO, versitygw)
# --------------------------------------------------------------------------------------------


def _find_go() -> str:
    go = os.environ.get("FLOWLOG_GO") or shutil.which("go")
    if not go and os.access("/usr/local/go/bin/go", os.X_OK):
        go = "/usr/local/go/bin/go"
    if not go:
        raise ServiceError("the Go toolchain (go) was not found on PATH or at /usr/local/go/bin/go; "
                           "install Go 1.24+ or set FLOWLOG_GO")
    return go


def _go_bin(name: str) -> str:
    if name == "minio":
        return os.path.join(cache_dir(), f"minio-{MINIO_VERSION}", "bin", "minio")
    if name == "grpcurl":
        return os.path.join(cache_dir(), f"grpcurl-{GRPCURL_VERSION}", "bin", "grpcurl")
    if name == "goflow2":
        return os.path.join(cache_dir(), f"goflow2-{GOFLOW2_VERSION}", "bin", "goflow2")
    return os.path.join(cache_dir(), f"versitygw-{VERSITYGW_VERSION}", "bin", "versitygw")


def _go_install(name: str, pkg_at_version: str) -> str:
    binary = _go_bin(name)
    if os.access(binary, os.X_OK):
        return binary
    with _locked(name):
        if os.access(binary, os.X_OK):
            return binary
        go = _find_go()
        env = dict(os.environ)
        env["CGO_ENABLED"] = "0"
        env["GOBIN"] = os.path.dirname(binary)
        env["PATH"] = os.path.dirname(go) + os.pathsep + env.get("PATH", "")
        os.makedirs(env["GOBIN"], exist_ok=True)
        log(f"building {pkg_at_version} with `go install` (CGO_ENABLED=0) into {env['GOBIN']}; "
            "this takes minutes on 2 cores ...")
        _run_with_progress([go, "install", pkg_at_version], f"go install {pkg_at_version}", env=env,
                           cwd=env["GOBIN"])
        if not os.access(binary, os.X_OK):
            raise ServiceError(f"go install succeeded but {binary} is missing")
        return binary


def fetch_minio() -> str:
    try:
        return _go_install("minio", f"{MINIO_MODULE}@{MINIO_VERSION}")
    except ServiceError as e:
        raise ServiceError(f"MinIO {MINIO_VERSION} could not be built: {e}") from None


def fetch_versitygw() -> str:
    return _go_install("versitygw", f"{VERSITYGW_PACKAGE}@{VERSITYGW_VERSION}")


def resolve(name: str) -> str:
    """Map the 's3' alias to a concrete server name (building MinIO if needed)."""
    if name != "s3":
        if name not in SERVICES:
            raise ServiceError(f"unknown service {name!r}; expected one of {', '.join(SERVICES + ('s3',))}")
        return name
    choice = os.environ.get("FLOWLOG_S3_SERVER", "auto").lower()
    if choice in ("minio", "versitygw"):
        return choice
    if choice != "auto":
        raise ServiceError(f"FLOWLOG_S3_SERVER={choice!r}: expected minio, versitygw or auto")
    try:
        fetch_minio()
        return "minio"
    except ServiceError as e:
        log(f"{e}\n-> falling back to versitygw {VERSITYGW_VERSION} as the S3 server")
        lines = str(e).splitlines()
        _S3_FALLBACK_REASON[0] = next((ln for ln in reversed(lines) if ln.startswith("go: ")),
                                      lines[-1] if lines else "build failed")
        return "versitygw"


_S3_FALLBACK_REASON: list[str | None] = [None]


def fetch_grpcurl() -> str:
    return _go_install("grpcurl", f"{GRPCURL_PACKAGE}@{GRPCURL_VERSION}")


# The web console's browser tests drive Debian's chromium (Playwright with executable_path; no
# browser download is possible here). FLOWLOG_CHROMIUM points at another build.
CHROMIUM = "/usr/bin/chromium"


def chromium_path() -> str:
    return os.environ.get("FLOWLOG_CHROMIUM") or CHROMIUM


def fetch_browser() -> str:
    """Debian's chromium package, installed with apt-get when it is missing (as root)."""
    path = chromium_path()
    if os.path.exists(path):
        return path
    if os.geteuid() != 0:
        raise ServiceError(f"{path} is missing: run `apt-get install -y chromium` as root "
                           "(or point FLOWLOG_CHROMIUM at a Chromium binary)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run_with_progress(["apt-get", "update", "-q"], "apt-get update", env=env)
    _run_with_progress(["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"],
                       "apt-get install chromium", env=env)
    if not os.path.exists(path):
        raise ServiceError(f"apt-get installed chromium but {path} is not there")
    return path


def fetch_goflow2() -> str:
    return _go_install("goflow2", f"{GOFLOW2_PACKAGE}@{GOFLOW2_VERSION}")


def exporter_path(command: str) -> str | None:
    for d in ("/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        p = os.path.join(d, command)
        if os.access(p, os.X_OK):
            return p
    return shutil.which(command)


def fetch_exporters() -> str:
    """softflowd, pmacct, nfdump and tcpreplay from Debian's packages (apt-get, as root), once."""
    missing = sorted({pkg for cmd, pkg in EXPORTER_PACKAGES.items() if exporter_path(cmd) is None})
    if missing:
        with _locked("exporters"):
            missing = sorted({pkg for cmd, pkg in EXPORTER_PACKAGES.items() if exporter_path(cmd) is None})
            if missing:
                apt = shutil.which("apt-get")
                if apt is None or os.geteuid() != 0:
                    raise ServiceError(f"the exporters' Debian packages {', '.join(missing)} are missing; install "
                                       f"them as root: apt-get install -y {' '.join(missing)}")
                env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
                log(f"installing Debian packages {', '.join(missing)} with apt-get ...")
                # policy-rc.d-less machines would start nfdump's service: nothing listens on our ports anyway
                if subprocess.run([apt, "install", "-y", "--no-install-recommends", *missing], env=env,
                                  stdout=subprocess.DEVNULL).returncode != 0:
                    subprocess.run([apt, "update"], env=env, stdout=subprocess.DEVNULL)
                    _run_with_progress([apt, "install", "-y", "--no-install-recommends", *missing],
                                       f"apt-get install {' '.join(missing)}", env=env)
    still = sorted(cmd for cmd in EXPORTER_PACKAGES if exporter_path(cmd) is None)
    if still:
        raise ServiceError(f"after apt-get, still missing: {', '.join(still)}")
    return ", ".join(exporter_path(cmd) or cmd for cmd in EXPORTER_PACKAGES)


def fetch(name: str) -> str:
    """Obtain a server (or grpcurl, or the browser) once; returns its home dir / binary path."""
    if name == "grpcurl":
        return fetch_grpcurl()
    if name == "browser":
        return fetch_browser()
    if name == "goflow2":
        return fetch_goflow2()
    if name == "exporters":
        return fetch_exporters()
    name = resolve(name)
    if name == "es":
        return fetch_es()
    if name == "minio":
        return fetch_minio()
    return fetch_versitygw()


def how_to_get(name: str) -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    cli = os.path.join(here, "services")
    if name == "es":
        return (f"run `{cli} fetch es` (downloads {ES_GROUP}:{ES_ARTIFACT}:{ES_VERSION}:zip from "
                f"Maven Central; needs mvn and a Java {ES_MIN_JAVA}+ JDK under /usr/lib/jvm or in "
                "FLOWLOG_ES_JAVA_HOME; as root it also needs useradd/runuser), or point "
                "FLOWLOG_TEST_ES_URL at a running Elasticsearch 9.x")
    return (f"run `{cli} fetch s3` (builds {MINIO_MODULE}@{MINIO_VERSION}, falling back to "
            f"{VERSITYGW_PACKAGE}@{VERSITYGW_VERSION} unless FLOWLOG_S3_SERVER=minio|versitygw "
            "forces one; needs Go 1.24+ and the Go module proxy), or "
            "point FLOWLOG_TEST_S3_ENDPOINT / FLOWLOG_TEST_S3_ACCESS_KEY / FLOWLOG_TEST_S3_SECRET_KEY "
            "at a running S3 server")


# --------------------------------------------------------------------------------------------
# Process management
# --------------------------------------------------------------------------------------------

_PROCS: dict[int, subprocess.Popen] = {}  # servers started by this process (to reap them)


def _registry_dir() -> str:
    d = os.path.join(cache_dir(), "run")
    os.makedirs(d, exist_ok=True)
    return d


def _registry_path(info: dict) -> str:
    return os.path.join(_registry_dir(), f"{info['service']}-{info['pid']}.json")


def _group_alive(pgid: int) -> bool:
    p = _PROCS.get(pgid)
    if p is not None:
        p.poll()  # reap our own leader so a zombie does not look alive
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Only zombies left?  Check /proc for a live member of the group.
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
            rest = stat[stat.rindex(")") + 2:].split()
            if int(rest[2]) == pgid and rest[0] != "Z":
                return True
        except (OSError, ValueError, IndexError):
            continue
    return False


def _spawn(cmd: list[str], env: dict, cwd: str, log_path: str) -> subprocess.Popen:
    with open(log_path, "ab") as out:
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                             env=env, cwd=cwd, start_new_session=True, close_fds=True)
    _PROCS[p.pid] = p
    return p


def _kill_group(pgid: int, timeout: float = STOP_TIMEOUT, sig: int = signal.SIGTERM) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _group_alive(pgid):
            break
        time.sleep(0.2)
    else:
        log(f"process group {pgid} still alive after {timeout:.0f}s: SIGKILL")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _group_alive(pgid):
            time.sleep(0.2)
    p = _PROCS.pop(pgid, None)
    if p is not None:
        with contextlib.suppress(Exception):
            p.wait(timeout=5)


def _start_watchdog(info: dict, owner_pid: int) -> None:
    """Detached helper that stops the server if owner_pid dies without stopping it (SIGKILL,
    crash).  It lives in its own session so it survives the owner."""
    cmd = [sys.executable, os.path.abspath(__file__), "_watch", str(owner_pid), json.dumps(info)]
    subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)


def _watch(owner_pid: int, info: dict) -> None:
    pgid = int(info["pid"])
    while True:
        time.sleep(1.0)
        if not _group_alive(pgid):
            return
        try:
            os.kill(owner_pid, 0)
        except ProcessLookupError:
            stop(info)
            return
        except PermissionError:
            pass


def _wait_ready(proc: subprocess.Popen, probe, timeout: float, what: str, log_path: str,
                extra_logs: tuple[str, ...] = ()) -> None:
    t0 = time.monotonic()
    last_note = t0
    while True:
        if proc.poll() is not None:
            raise ServiceError(f"{what} exited with code {proc.returncode} before becoming healthy; "
                               f"last lines of {log_path}:\n{_tail(log_path)}"
                               + "".join(f"\n--- {p}:\n{_tail(p)}" for p in extra_logs
                                         if os.path.exists(p)))
        try:
            if probe():
                return
        except (OSError, ValueError):
            pass
        now = time.monotonic()
        if now - t0 > timeout:
            raise ServiceError(f"{what} not healthy after {timeout:.0f}s; last lines of {log_path}:\n"
                               f"{_tail(log_path)}"
                               + "".join(f"\n--- {p}:\n{_tail(p)}" for p in extra_logs
                                         if os.path.exists(p)))
        if now - last_note >= 10:
            log(f"... waiting for {what}: {now - t0:.0f}s")
            last_note = now
        time.sleep(0.25)


def _ensure_es_user() -> tuple[int, int]:
    user = _es_user()
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        log(f"creating unprivileged system user {user!r} (Elasticsearch refuses to run as root)")
        try:
            subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                            "--shell", "/usr/sbin/nologin", "--user-group", user],
                           check=True, capture_output=True, text=True)
        except (OSError, subprocess.CalledProcessError) as e:
            detail = getattr(e, "stderr", "") or str(e)
            try:  # created concurrently by another session?
                pw = pwd.getpwnam(user)
            except KeyError:
                raise ServiceError(f"cannot create system user {user!r} for Elasticsearch "
                                   f"(useradd): {detail}") from None
            return pw.pw_uid, pw.pw_gid
        pw = pwd.getpwnam(user)
    return pw.pw_uid, pw.pw_gid


def _chown_tree(path: str, uid: int, gid: int) -> None:
    os.chown(path, uid, gid)
    for d, dirs, files in os.walk(path):
        for n in dirs + files:
            os.lchown(os.path.join(d, n), uid, gid)


def _es_java_opts() -> str:
    heap = os.environ.get("FLOWLOG_ES_HEAP", "512m")
    opts = [f"-Xms{heap}", f"-Xmx{heap}",
            # a throwaway test server: no heap dumps, no /tmp/hsperfdata_* left behind
            "-XX:-HeapDumpOnOutOfMemoryError", "-XX:-UsePerfData"]
    if os.environ.get("FLOWLOG_ES_QUICK_JIT", "0") == "1":
        opts.append("-XX:TieredStopAtLevel=1")
    if os.environ.get("FLOWLOG_ES_JAVA_OPTS"):
        opts.append(os.environ["FLOWLOG_ES_JAVA_OPTS"])
    return " ".join(opts)


def start_es(owner_pid: int | None = None, on_spawn=None, *, data_dir: str | None = None,
             port: int | None = None, transport_port: int | None = None) -> dict:
    """See start().  data_dir/port/transport_port: reuse an instance dir and ports (restart)."""
    home = fetch_es()
    java_home = _pick_java_home(ES_MIN_JAVA)
    as_root = os.geteuid() == 0
    uid = gid = None
    if as_root:
        uid, gid = _ensure_es_user()
        probe = subprocess.run(["runuser", "-u", _es_user(), "--", "test", "-r",
                                os.path.join(home, "lib", f"elasticsearch-{ES_VERSION}.jar")],
                               capture_output=True)
        if probe.returncode != 0:
            raise ServiceError(f"user {_es_user()!r} cannot read the Elasticsearch install at {home}; "
                               "make its parent directories world-traversable or set "
                               "FLOWLOG_ES_INSTALL_ROOT to a readable location and re-run fetch")
    last_err: ServiceError | None = None
    for attempt in range(3):  # retry on a lost race for a "free" port
        own_dir = data_dir is None
        inst = tempfile.mkdtemp(prefix="flowlog-es-", dir=_tmp_parent()) if own_dir else data_dir
        spawned = False
        try:
            for sub in ("data", "logs", "tmp"):
                os.makedirs(os.path.join(inst, sub), exist_ok=True)
            if not os.path.isdir(os.path.join(inst, "config")):
                shutil.copytree(os.path.join(home, "config"), os.path.join(inst, "config"))
            if as_root:
                _chown_tree(inst, uid, gid)
            http_port = port or free_port()
            t_port = transport_port or free_port()
            while t_port == http_port:
                t_port = free_port()
            log_path = os.path.join(inst, "console.log")
            env = {k: v for k, v in os.environ.items()
                   if k not in ("JAVA_HOME", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JAVA_OPTS")}
            env.update(ES_JAVA_HOME=java_home, ES_PATH_CONF=os.path.join(inst, "config"),
                       ES_TMPDIR=os.path.join(inst, "tmp"), ES_JAVA_OPTS=_es_java_opts(),
                       CLI_JAVA_OPTS="-XX:-UsePerfData",
                       HOME=inst)
            cmd = [os.path.join(home, "bin", "elasticsearch"),
                   "-Ecluster.name=flowlog-test", "-Enode.name=flowlog-test",
                   "-Expack.security.enabled=false", "-Ediscovery.type=single-node",
                   "-Enetwork.host=127.0.0.1", f"-Ehttp.port={http_port}",
                   f"-Etransport.port={t_port}",
                   "-Ecluster.routing.allocation.disk.threshold_enabled=false",
                   f"-Epath.data={os.path.join(inst, 'data')}",
                   f"-Epath.logs={os.path.join(inst, 'logs')}"]
            cmd += os.environ.get("FLOWLOG_ES_ARGS", "").split()
            if as_root:
                cmd = ["runuser", "-u", _es_user(), "--"] + cmd
            open(log_path, "ab").close()
            if as_root:
                os.chown(log_path, uid, gid)
            t0 = time.monotonic()
            log(f"starting elasticsearch {ES_VERSION} on 127.0.0.1:{http_port} "
                f"(java {java_home}, data {inst})")
            proc = _spawn(cmd, env, inst, log_path)
            spawned = True
            url = f"http://127.0.0.1:{http_port}"
            info = {"service": "es", "version": ES_VERSION, "url": url, "host": "127.0.0.1",
                    "port": http_port, "transport_port": t_port, "pid": proc.pid,
                    "pgid": proc.pid, "starttime": _proc_starttime(proc.pid), "data_dir": inst,
                    "log": log_path, "server_log": os.path.join(inst, "logs", "flowlog-test.log"),
                    "java_home": java_home}
            with open(_registry_path(info), "w") as fh:
                json.dump(info, fh)
            if owner_pid:
                _start_watchdog(info, owner_pid)
            if on_spawn:
                on_spawn(info)

            def probe() -> bool:
                status, body = _http_get(
                    f"{url}/_cluster/health?wait_for_status=yellow&timeout=1s", timeout=3)
                return status == 200 and json.loads(body).get("status") in ("yellow", "green")

            try:
                _wait_ready(proc, probe, ES_START_TIMEOUT, f"elasticsearch {ES_VERSION}", log_path,
                            (info["server_log"],))
            except ServiceError as e:
                stop(info, keep_data=not own_dir)
                if "BindException" in str(e) or "Address already in use" in str(e):
                    last_err = e
                    if not own_dir or port:  # same dir/port asked for: give the old one time to go
                        time.sleep(2.0)
                    continue
                raise
            info["started_in"] = round(time.monotonic() - t0, 1)
            log(f"elasticsearch ready at {url} in {info['started_in']}s (pid {proc.pid})")
            return info
        except BaseException:
            if spawned:
                stop(info, keep_data=not own_dir)  # idempotent; also covers KeyboardInterrupt while waiting
            elif own_dir:
                shutil.rmtree(inst, ignore_errors=True)
            raise
    assert last_err is not None
    raise last_err


def start_s3(name: str, owner_pid: int | None = None, on_spawn=None, *, data_dir: str | None = None,
             port: int | None = None) -> dict:
    """See start().  data_dir/port: reuse an instance dir (its data/ survives) and port (restart)."""
    binary = fetch(name)
    last_err: ServiceError | None = None
    wanted_port = port
    for attempt in range(3):
        own_dir = data_dir is None
        inst = tempfile.mkdtemp(prefix=f"flowlog-{name}-", dir=_tmp_parent()) if own_dir else data_dir
        data = os.path.join(inst, "data")
        os.makedirs(data, exist_ok=True)
        port = wanted_port or free_port()
        log_path = os.path.join(inst, "console.log")
        env = dict(os.environ)
        if name == "minio":
            console_port = free_port()
            env.update(MINIO_ROOT_USER=S3_ACCESS_KEY, MINIO_ROOT_PASSWORD=S3_SECRET_KEY,
                       MINIO_SITE_REGION=S3_REGION, MINIO_UPDATE="off", MINIO_BROWSER="off")
            cmd = [binary, "server", data, "--address", f"127.0.0.1:{port}",
                   "--console-address", f"127.0.0.1:{console_port}", "--quiet"]
            health = "/minio/health/ready"
            version = MINIO_VERSION
        else:
            cmd = [binary, "--port", f"127.0.0.1:{port}", "--access", S3_ACCESS_KEY,
                   "--secret", S3_SECRET_KEY, "--region", S3_REGION, "--health", "/health",
                   "--quiet", "posix", data]
            health = "/health"
            version = VERSITYGW_VERSION
        t0 = time.monotonic()
        log(f"starting {name} {version} on 127.0.0.1:{port} (data {data})")
        proc = _spawn(cmd, env, inst, log_path)
        url = f"http://127.0.0.1:{port}"
        info = {"service": name, "version": version, "url": url, "endpoint": f"127.0.0.1:{port}",
                "host": "127.0.0.1", "port": port, "access_key": S3_ACCESS_KEY,
                "secret_key": S3_SECRET_KEY, "region": S3_REGION, "secure": False,
                "pid": proc.pid, "pgid": proc.pid, "starttime": _proc_starttime(proc.pid),
                "data_dir": inst, "log": log_path}
        with open(_registry_path(info), "w") as fh:
            json.dump(info, fh)
        if owner_pid:
            _start_watchdog(info, owner_pid)
        if on_spawn:
            on_spawn(info)
        try:
            _wait_ready(proc, lambda: _http_get(url + health, timeout=2)[0] == 200,
                        S3_START_TIMEOUT, f"{name} {version}", log_path)
        except ServiceError as e:
            stop(info, keep_data=not own_dir)
            if "address already in use" in str(e).lower():
                last_err = e
                if wanted_port or not own_dir:
                    time.sleep(2.0)
                continue
            raise
        except BaseException:
            stop(info, keep_data=not own_dir)
            raise
        info["started_in"] = round(time.monotonic() - t0, 1)
        log(f"{name} ready at {url} in {info['started_in']}s (pid {proc.pid})")
        return info
    assert last_err is not None
    raise last_err


def start(name: str, owner_pid: int | None = None, on_spawn=None, *, data_dir: str | None = None,
          port: int | None = None, transport_port: int | None = None) -> dict:
    """Fetch if needed, start on a free loopback port with a fresh temp data dir, wait until
    healthy, return a description dict.  The server runs in its own session and outlives the
    caller unless owner_pid is given (then a watchdog stops it when that process dies).
    on_spawn(info), if given, is called as soon as the process exists (before it is healthy),
    so that a caller can stop() it even if it is interrupted while waiting.

    data_dir / port (/ transport_port for es): start on an existing instance dir (the
    ``data_dir`` of an earlier info, stopped with ``stop(info, keep_data=True)``) and a given
    port, so that clients of the earlier instance find the same server with the same data;
    see restart()."""
    name = resolve(name)
    if name == "es":
        return start_es(owner_pid, on_spawn, data_dir=data_dir, port=port, transport_port=transport_port)
    info = start_s3(name, owner_pid, on_spawn, data_dir=data_dir, port=port)
    if _S3_FALLBACK_REASON[0]:
        info["fallback_reason"] = _S3_FALLBACK_REASON[0]
    return info


def stop(info: dict, keep_data: bool = False, kill: bool = False) -> None:
    """Terminate the server's process group (SIGTERM, SIGKILL after a timeout) and remove its
    temporary data dir.  keep_data=True keeps the data dir (for start(..., data_dir=) or
    restart()); kill=True sends SIGKILL at once (a crash, not a clean stop)."""
    pid = int(info["pid"])
    pgid = int(info.get("pgid", pid))
    expected = info.get("starttime")
    current = _proc_starttime(pid)
    if current is not None and expected is not None and current != expected:
        log(f"pid {pid} now belongs to another process; not signalling it")
    elif current is not None or _group_alive(pgid):
        try:
            leader_pgid = os.getpgid(pid) if current is not None else pgid
        except ProcessLookupError:
            leader_pgid = pgid
        if leader_pgid != pgid:
            log(f"pid {pid} is not the leader of process group {pgid}; not signalling it")
        else:
            _kill_group(pgid, sig=signal.SIGKILL if kill else signal.SIGTERM)
    else:
        p = _PROCS.pop(pgid, None)
        if p is not None:
            p.poll()
    data_dir = info.get("data_dir")
    if (not keep_data and data_dir and os.path.basename(data_dir).startswith("flowlog-")
            and os.path.isdir(data_dir)):
        shutil.rmtree(data_dir, ignore_errors=True)
    if "service" in info:
        with contextlib.suppress(FileNotFoundError):
            os.remove(_registry_path(info))


def restart(info: dict, owner_pid: int | None = None, on_spawn=None, down_s: float = 0.0,
            kill: bool = False) -> dict:
    """Stop the server described by info (SIGKILL if kill), stay down for down_s seconds, and
    start the same service again on the same port(s) and data dir; returns the new info."""
    stop(info, keep_data=True, kill=kill)
    if down_s > 0:
        time.sleep(down_s)
    return start(info["service"], owner_pid=owner_pid, on_spawn=on_spawn, data_dir=info["data_dir"],
                 port=int(info["port"]), transport_port=info.get("transport_port"))


def running() -> list[dict]:
    """Servers recorded in the cache's run registry (started by any process)."""
    out = []
    for path in sorted(glob.glob(os.path.join(_registry_dir(), "*.json"))):
        try:
            with open(path) as fh:
                info = json.load(fh)
        except (OSError, ValueError):
            continue
        info["alive"] = _proc_starttime(int(info["pid"])) == info.get("starttime")
        out.append(info)
    return out


def lookup(pid: int) -> dict:
    for info in running():
        if int(info["pid"]) == pid:
            return info
    return {"pid": pid}


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "_watch":
    _watch(int(sys.argv[2]), json.loads(sys.argv[3]))
