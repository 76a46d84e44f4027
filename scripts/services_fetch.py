"""Fetching the real servers and tools once into $FLOWLOG_CACHE: Elasticsearch from Maven Central
(checksums pinned, cross-checked), MinIO / versitygw / grpcurl / goflow2 built with `go install`,
the JDK to run Elasticsearch on, Debian's chromium and the NetFlow exporters (apt-get); and
`how_to_get(name)`, what to tell a user when one is missing. Nothing here starts a server
(scripts/services_run.py does)."""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import tempfile
import time
import zipfile

from services_common import (
    ES_ARTIFACT,
    ES_GROUP,
    ES_MIN_JAVA,
    ES_SERVER_JAR,
    ES_VERSION,
    ES_ZIP_SHA1,
    ES_ZIP_SHA512,
    EXPORTER_PACKAGES,
    GOFLOW2_PACKAGE,
    GOFLOW2_VERSION,
    GRPCURL_PACKAGE,
    GRPCURL_VERSION,
    MINIO_MODULE,
    MINIO_VERSION,
    MVN_DEPENDENCY_PLUGIN,
    PG_LIB_ROOT,
    PG_MIN_MAJOR,
    PG_PACKAGE,
    SERVICES,
    VERSITYGW_PACKAGE,
    VERSITYGW_VERSION,
    ServiceError,
    _hash_file,
    _locked,
    _run_with_progress,
    cache_dir,
    log,
)  # noqa: F401

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
        raise ServiceError(
            "mvn (Apache Maven) not found on PATH; install it (apt-get install maven) or set FLOWLOG_MVN"
        )
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
        log(f"fetching elasticsearch {ES_VERSION} ({ES_GROUP}:{ES_ARTIFACT}:zip) from Maven Central into {_m2()} ...")
        # 1. The server jar, with Maven's checksum verification enforced.
        _mvn_get(ES_SERVER_JAR, strict=True, what=f"mvn: {ES_SERVER_JAR} (--strict-checksums)")
        server_jar = _m2_path("org.elasticsearch", "elasticsearch", ES_VERSION, "jar")
        # 2. The distribution zip (Central has no checksum files for it: verified below).
        zip_path = _m2_path(ES_GROUP, ES_ARTIFACT, ES_VERSION, "zip")
        if not (os.path.exists(zip_path) and _hash_file(zip_path, "sha512") == ES_ZIP_SHA512):
            _mvn_get(
                f"{ES_GROUP}:{ES_ARTIFACT}:{ES_VERSION}:zip",
                strict=False,
                what=f"mvn: {ES_GROUP}:{ES_ARTIFACT}:{ES_VERSION}:zip",
            )
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
                f"the download was moved to {bad} and NOT used"
            )
        log(
            f"sha512/sha1 of the zip match the pinned values ({time.monotonic() - t0:.0f}s elapsed); "
            f"unpacking into {es_install_root()} ..."
        )
        _extract_zip(zip_path, es_install_root(), f"elasticsearch-{ES_VERSION}")
        inner = os.path.join(home, "lib", f"elasticsearch-{ES_VERSION}.jar")
        if not os.path.exists(inner) or _hash_file(inner, "sha1") != _hash_file(server_jar, "sha1"):
            shutil.rmtree(home, ignore_errors=True)
            raise ServiceError(
                f"{inner} differs from the checksum-verified {ES_SERVER_JAR}; refusing to use this distribution"
            )
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
        raise ServiceError(
            f"no JDK {min_major}+ found under /usr/lib/jvm; {for_what} needs Java "
            f"{min_major}+ (e.g. apt-get install temurin-25-jdk or openjdk-21-jdk), "
            "or set FLOWLOG_ES_JAVA_HOME"
        )
    return best[1]


# --------------------------------------------------------------------------------------------
# Go builds (MinIO, versitygw)
# --------------------------------------------------------------------------------------------


def _find_go() -> str:
    go = os.environ.get("FLOWLOG_GO") or shutil.which("go")
    if not go and os.access("/usr/local/go/bin/go", os.X_OK):
        go = "/usr/local/go/bin/go"
    if not go:
        raise ServiceError(
            "the Go toolchain (go) was not found on PATH or at /usr/local/go/bin/go; install Go 1.24+ or set FLOWLOG_GO"
        )
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
        log(
            f"building {pkg_at_version} with `go install` (CGO_ENABLED=0) into {env['GOBIN']}; "
            "this takes minutes on 2 cores ..."
        )
        _run_with_progress([go, "install", pkg_at_version], f"go install {pkg_at_version}", env=env, cwd=env["GOBIN"])
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
        _S3_FALLBACK_REASON[0] = next(
            (ln for ln in reversed(lines) if ln.startswith("go: ")), lines[-1] if lines else "build failed"
        )
        return "versitygw"


_S3_FALLBACK_REASON: list[str | None] = [None]


def fetch_grpcurl() -> str:
    return _go_install("grpcurl", f"{GRPCURL_PACKAGE}@{GRPCURL_VERSION}")


# The web console's browser tests drive Debian's chromium (Playwright with executable_path; no
# browser download is possible here). FLOWLOG_CHROMIUM points at another build.
CHROMIUM = "/usr/bin/chromium"


def _apt_install(packages: list[str], unavailable: str) -> None:
    """Install Debian packages with apt-get, as root: first from the package lists as they are (quietly; enough
    when they are fresh), else after an `apt-get update` (whose failure, e.g. one unreachable source, is logged,
    not fatal) once more, relaying apt's output; ServiceError when that install fails too. Not root or no
    apt-get: ServiceError(unavailable), which says how to install them by hand."""
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        raise ServiceError(unavailable)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = [apt, "install", "-y", "-q", "--no-install-recommends", *packages]
    log(f"installing Debian packages {', '.join(packages)} with apt-get ...")
    if subprocess.run(install, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0:
        return
    try:
        _run_with_progress([apt, "update", "-q"], "apt-get update", env=env)
    except ServiceError as e:
        log(f"{e}\n-> installing anyway: the sources that did answer may hold the packages")
    _run_with_progress(install, f"apt-get install {' '.join(packages)}", env=env)


def chromium_path() -> str:
    return os.environ.get("FLOWLOG_CHROMIUM") or CHROMIUM


def fetch_browser() -> str:
    """Debian's chromium package, installed with apt-get when it is missing (as root)."""
    path = chromium_path()
    if os.path.exists(path):
        return path
    _apt_install(
        ["chromium"],
        f"{path} is missing: run `apt-get install -y chromium` as root "
        "(or point FLOWLOG_CHROMIUM at a Chromium binary)",
    )
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
                # policy-rc.d-less machines would start nfdump's service: nothing listens on our ports anyway
                _apt_install(
                    missing,
                    f"the exporters' Debian packages {', '.join(missing)} are missing; install "
                    f"them as root: apt-get install -y {' '.join(missing)}",
                )
    still = sorted(cmd for cmd in EXPORTER_PACKAGES if exporter_path(cmd) is None)
    if still:
        raise ServiceError(f"after apt-get, still missing: {', '.join(still)}")
    return ", ".join(exporter_path(cmd) or cmd for cmd in EXPORTER_PACKAGES)


_PG_TOOLS = ("initdb", "postgres", "psql")  # psql: the readiness check


def pg_bin_dir() -> str | None:
    """The newest /usr/lib/postgresql/<major>/bin holding initdb, postgres and psql
    (FLOWLOG_PG_BIN overrides), or None."""
    override = os.environ.get("FLOWLOG_PG_BIN")
    if override:
        return override if all(os.access(os.path.join(override, t), os.X_OK) for t in _PG_TOOLS) else None
    found: list[tuple[int, str]] = []
    for d in glob.glob(os.path.join(PG_LIB_ROOT, "*", "bin")):
        major = os.path.basename(os.path.dirname(d))
        if (
            major.isdigit()
            and int(major) >= PG_MIN_MAJOR
            and all(os.access(os.path.join(d, t), os.X_OK) for t in _PG_TOOLS)
        ):
            found.append((int(major), d))
    return max(found)[1] if found else None


def fetch_postgres() -> str:
    """Debian's postgresql package, installed with apt-get when it is missing (as root); returns
    the versioned bin dir holding initdb, postgres and psql (not on PATH)."""
    found = pg_bin_dir()
    if found:
        return found
    if os.environ.get("FLOWLOG_PG_BIN"):
        raise ServiceError(f"FLOWLOG_PG_BIN={os.environ['FLOWLOG_PG_BIN']} lacks one of {', '.join(_PG_TOOLS)}")
    with _locked("postgres"):
        found = pg_bin_dir()
        if found:
            return found
        _apt_install(
            [PG_PACKAGE],
            f"PostgreSQL {PG_MIN_MAJOR}+ is missing (no {PG_LIB_ROOT}/<major>/bin/initdb): install it as root "
            f"with `apt-get install -y {PG_PACKAGE}`, or point FLOWLOG_PG_BIN at a folder with initdb, postgres "
            "and psql",
        )
        found = pg_bin_dir()
        if not found:
            raise ServiceError(f"apt-get installed {PG_PACKAGE} but no {PG_LIB_ROOT}/<major>/bin/initdb is there")
        return found


def fetch(name: str) -> str:
    """Obtain a server (or grpcurl, or the browser) once; returns its home dir / binary path."""
    if name == "postgres":
        return fetch_postgres()
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
    if name == "postgres":
        return (
            f"run `{cli} fetch postgres` (as root it installs Debian's {PG_PACKAGE} package with apt-get; "
            f"otherwise install it yourself, or set FLOWLOG_PG_BIN to a folder with initdb, postgres and psql), "
            "or point FLOWLOG_TEST_POSTGRES_DSN at a running PostgreSQL whose user may create databases"
        )
    if name == "es":
        return (
            f"run `{cli} fetch es` (downloads {ES_GROUP}:{ES_ARTIFACT}:{ES_VERSION}:zip from "
            f"Maven Central; needs mvn and a Java {ES_MIN_JAVA}+ JDK under /usr/lib/jvm or in "
            "FLOWLOG_ES_JAVA_HOME; as root it also needs useradd/runuser), or point "
            "FLOWLOG_TEST_ES_URL at a running Elasticsearch 9.x"
        )
    return (
        f"run `{cli} fetch s3` (builds {MINIO_MODULE}@{MINIO_VERSION}, falling back to "
        f"{VERSITYGW_PACKAGE}@{VERSITYGW_VERSION} unless FLOWLOG_S3_SERVER=minio|versitygw "
        "forces one; needs Go 1.24+ and the Go module proxy), or "
        "point FLOWLOG_TEST_S3_ENDPOINT / FLOWLOG_TEST_S3_ACCESS_KEY / FLOWLOG_TEST_S3_SECRET_KEY "
        "at a running S3 server"
    )
