"""Running the real servers: start one on a free loopback port with a fresh data dir (Elasticsearch
as an unprivileged user, since it refuses root), wait until it is healthy, keep a run registry in
$FLOWLOG_CACHE/run, stop it when its owner process exits (watchdog), restart it on the same port
and data, and stop it. Fetching is scripts/services_fetch.py's job."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable

from services_common import (
    ES_MIN_JAVA,
    ES_START_TIMEOUT,
    ES_VERSION,
    MINIO_VERSION,
    PG_START_TIMEOUT,
    PG_SUPERUSER,
    S3_ACCESS_KEY,
    S3_REGION,
    S3_SECRET_KEY,
    S3_START_TIMEOUT,
    STOP_TIMEOUT,
    VERSITYGW_VERSION,
    ServiceError,
    _http_get,
    _proc_starttime,
    _tail,
    _tmp_parent,
    cache_dir,
    free_port,
    log,
)  # noqa: F401
from services_fetch import (  # noqa: F401
    _S3_FALLBACK_REASON,
    _es_user,
    _pick_java_home,
    fetch,
    fetch_es,
    fetch_postgres,
    resolve,
)

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
            rest = stat[stat.rindex(")") + 2 :].split()
            if int(rest[2]) == pgid and rest[0] != "Z":
                return True
        except (OSError, ValueError, IndexError):
            continue
    return False


def _spawn(cmd: list[str], env: dict, cwd: str, log_path: str) -> subprocess.Popen:
    with open(log_path, "ab") as out:
        p = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )
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
    subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )


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


def _wait_ready(
    proc: subprocess.Popen, probe, timeout: float, what: str, log_path: str, extra_logs: tuple[str, ...] = ()
) -> None:
    t0 = time.monotonic()
    last_note = t0
    while True:
        if proc.poll() is not None:
            raise ServiceError(
                f"{what} exited with code {proc.returncode} before becoming healthy; "
                f"last lines of {log_path}:\n{_tail(log_path)}"
                + "".join(f"\n--- {p}:\n{_tail(p)}" for p in extra_logs if os.path.exists(p))
            )
        try:
            if probe():
                return
        except (OSError, ValueError):
            pass
        now = time.monotonic()
        if now - t0 > timeout:
            raise ServiceError(
                f"{what} not healthy after {timeout:.0f}s; last lines of {log_path}:\n"
                f"{_tail(log_path)}" + "".join(f"\n--- {p}:\n{_tail(p)}" for p in extra_logs if os.path.exists(p))
            )
        if now - last_note >= 10:
            log(f"... waiting for {what}: {now - t0:.0f}s")
            last_note = now
        time.sleep(0.25)


def _same_path(reported: object, ours: str) -> bool:
    """A data path a server reports is the one we started it with (readiness proves it reached OUR server)."""
    return isinstance(reported, str) and os.path.realpath(reported) == os.path.realpath(ours)


def _listens_on(pid: int, port: int) -> bool:
    """Process `pid` holds the listening TCP socket on 127.0.0.1:port (Linux /proc): for servers whose
    health check cannot say who answers it."""
    wanted = set()
    with open("/proc/net/tcp") as fh:
        next(fh)
        for line in fh:
            f = line.split()
            if f[1] == f"0100007F:{port:04X}" and f[3] == "0A":  # 127.0.0.1:port, LISTEN
                wanted.add(f"socket:[{f[9]}]")
    for fd in os.listdir(f"/proc/{pid}/fd") if wanted else ():
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                return True
    return False


def _register_and_wait(
    info: dict,
    proc: subprocess.Popen,
    probe: Callable[[], bool],
    timeout: float,
    what: str,
    *,
    t0: float,
    ready_at: str,
    owner_pid: int | None,
    on_spawn: Callable[[dict], object] | None,
    keep_data: bool,
    port_taken: Callable[[str], bool],
    pause_before_retry: bool,
    extra_logs: tuple[str, ...] = (),
) -> ServiceError | None:
    """A just-spawned service: write its registry file, watch its owner, tell on_spawn, then wait
    until `probe` says it is ready. None when ready (info["started_in"] set and logged). The error,
    after stopping it, when it lost the race for its "free" port (port_taken(message)): the caller
    retries, after 2 s if it asked for the same port or data dir again. Anything else stops it and
    raises."""
    with open(_registry_path(info), "w") as fh:
        json.dump(info, fh)
    if owner_pid:
        _start_watchdog(info, owner_pid)
    if on_spawn:
        on_spawn(info)
    try:
        _wait_ready(proc, probe, timeout, what, info["log"], extra_logs)
    except ServiceError as e:
        stop(info, keep_data=keep_data)
        if port_taken(str(e)):
            if pause_before_retry:  # the old process may still hold the port or the data dir
                time.sleep(2.0)
            return e
        raise
    except BaseException:
        stop(info, keep_data=keep_data)
        raise
    info["started_in"] = round(time.monotonic() - t0, 1)
    log(f"{ready_at} in {info['started_in']}s (pid {proc.pid})")
    return None


def _ensure_es_user() -> tuple[int, int]:
    return _ensure_user(_es_user(), "Elasticsearch")


def _ensure_user(user: str, what: str) -> tuple[int, int]:
    """(uid, gid) of an unprivileged system user, created (useradd --system) when missing."""
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        log(f"creating unprivileged system user {user!r} ({what} refuses to run as root)")
        try:
            subprocess.run(
                [
                    "useradd",
                    "--system",
                    "--no-create-home",
                    "--home-dir",
                    "/nonexistent",
                    "--shell",
                    "/usr/sbin/nologin",
                    "--user-group",
                    user,
                ],
                check=True,
                capture_output=True,
                text=True,
            )
        except (OSError, subprocess.CalledProcessError) as e:
            detail = getattr(e, "stderr", "") or str(e)
            try:  # created concurrently by another session?
                pw = pwd.getpwnam(user)
            except KeyError:
                raise ServiceError(f"cannot create system user {user!r} for {what} (useradd): {detail}") from None
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
    opts = [
        f"-Xms{heap}",
        f"-Xmx{heap}",
        # a throwaway test server: no heap dumps, no /tmp/hsperfdata_* left behind
        "-XX:-HeapDumpOnOutOfMemoryError",
        "-XX:-UsePerfData",
    ]
    if os.environ.get("FLOWLOG_ES_QUICK_JIT", "0") == "1":
        opts.append("-XX:TieredStopAtLevel=1")
    if os.environ.get("FLOWLOG_ES_JAVA_OPTS"):
        opts.append(os.environ["FLOWLOG_ES_JAVA_OPTS"])
    return " ".join(opts)


def start_es(
    owner_pid: int | None = None,
    on_spawn=None,
    *,
    data_dir: str | None = None,
    port: int | None = None,
    transport_port: int | None = None,
) -> dict:
    """See start().  data_dir/port/transport_port: reuse an instance dir and ports (restart)."""
    home = fetch_es()
    java_home = _pick_java_home(ES_MIN_JAVA)
    as_root = os.geteuid() == 0
    uid = gid = None
    if as_root:
        uid, gid = _ensure_es_user()
        probe = subprocess.run(
            [
                "runuser",
                "-u",
                _es_user(),
                "--",
                "test",
                "-r",
                os.path.join(home, "lib", f"elasticsearch-{ES_VERSION}.jar"),
            ],
            capture_output=True,
        )
        if probe.returncode != 0:
            raise ServiceError(
                f"user {_es_user()!r} cannot read the Elasticsearch install at {home}; "
                "make its parent directories world-traversable or set "
                "FLOWLOG_ES_INSTALL_ROOT to a readable location and re-run fetch"
            )
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
            env = {
                k: v
                for k, v in os.environ.items()
                if k not in ("JAVA_HOME", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JAVA_OPTS")
            }
            env.update(
                ES_JAVA_HOME=java_home,
                ES_PATH_CONF=os.path.join(inst, "config"),
                ES_TMPDIR=os.path.join(inst, "tmp"),
                ES_JAVA_OPTS=_es_java_opts(),
                CLI_JAVA_OPTS="-XX:-UsePerfData",
                HOME=inst,
            )
            cmd = [
                os.path.join(home, "bin", "elasticsearch"),
                "-Ecluster.name=flowlog-test",
                "-Enode.name=flowlog-test",
                "-Expack.security.enabled=false",
                "-Ediscovery.type=single-node",
                "-Enetwork.host=127.0.0.1",
                f"-Ehttp.port={http_port}",
                f"-Etransport.port={t_port}",
                "-Ecluster.routing.allocation.disk.threshold_enabled=false",
                f"-Epath.data={os.path.join(inst, 'data')}",
                f"-Epath.logs={os.path.join(inst, 'logs')}",
            ]
            cmd += os.environ.get("FLOWLOG_ES_ARGS", "").split()
            if as_root:
                cmd = ["runuser", "-u", _es_user(), "--"] + cmd
            open(log_path, "ab").close()
            if as_root:
                os.chown(log_path, uid, gid)
            t0 = time.monotonic()
            log(f"starting elasticsearch {ES_VERSION} on 127.0.0.1:{http_port} (java {java_home}, data {inst})")
            proc = _spawn(cmd, env, inst, log_path)
            spawned = True
            url = f"http://127.0.0.1:{http_port}"
            info = {
                "service": "es",
                "version": ES_VERSION,
                "url": url,
                "host": "127.0.0.1",
                "port": http_port,
                "transport_port": t_port,
                "pid": proc.pid,
                "pgid": proc.pid,
                "starttime": _proc_starttime(proc.pid),
                "data_dir": inst,
                "log": log_path,
                "server_log": os.path.join(inst, "logs", "flowlog-test.log"),
                "java_home": java_home,
            }

            def probe() -> bool:
                # Another Elasticsearch on this port (ours lost the race for it and is still booting) would be
                # yellow too: ready only when the node answering serves OUR data path.
                status, body = _http_get(f"{url}/_nodes/_local/settings?filter_path=nodes.*.settings.path.data", 3)
                nodes = json.loads(body).get("nodes", {}) if status == 200 else {}
                paths = [n.get("settings", {}).get("path", {}).get("data") for n in nodes.values()]
                if not any(_same_path(p, os.path.join(inst, "data")) for p in paths):
                    return False
                status, body = _http_get(f"{url}/_cluster/health?wait_for_status=yellow&timeout=1s", timeout=3)
                return status == 200 and json.loads(body).get("status") in ("yellow", "green")

            last_err = _register_and_wait(
                info, proc, probe, ES_START_TIMEOUT, f"elasticsearch {ES_VERSION}",
                t0=t0, ready_at=f"elasticsearch ready at {url}", owner_pid=owner_pid, on_spawn=on_spawn,
                keep_data=not own_dir, extra_logs=(info["server_log"],),
                port_taken=lambda m: "BindException" in m or "Address already in use" in m,
                pause_before_retry=bool(not own_dir or port),
            )  # fmt: skip
            if last_err is None:
                return info
        except BaseException:
            if spawned:
                stop(info, keep_data=not own_dir)  # idempotent; also covers KeyboardInterrupt while waiting
            elif own_dir:
                shutil.rmtree(inst, ignore_errors=True)
            raise
    assert last_err is not None
    raise last_err


def start_s3(
    name: str, owner_pid: int | None = None, on_spawn=None, *, data_dir: str | None = None, port: int | None = None
) -> dict:
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
            env.update(
                MINIO_ROOT_USER=S3_ACCESS_KEY,
                MINIO_ROOT_PASSWORD=S3_SECRET_KEY,
                MINIO_SITE_REGION=S3_REGION,
                MINIO_UPDATE="off",
                MINIO_BROWSER="off",
            )
            cmd = [
                binary,
                "server",
                data,
                "--address",
                f"127.0.0.1:{port}",
                "--console-address",
                f"127.0.0.1:{console_port}",
                "--quiet",
            ]
            health = "/minio/health/ready"
            version = MINIO_VERSION
        else:
            cmd = [
                binary,
                "--port",
                f"127.0.0.1:{port}",
                "--access",
                S3_ACCESS_KEY,
                "--secret",
                S3_SECRET_KEY,
                "--region",
                S3_REGION,
                "--health",
                "/health",
                "--quiet",
                "posix",
                data,
            ]
            health = "/health"
            version = VERSITYGW_VERSION
        t0 = time.monotonic()
        log(f"starting {name} {version} on 127.0.0.1:{port} (data {data})")
        proc = _spawn(cmd, env, inst, log_path)
        url = f"http://127.0.0.1:{port}"
        info = {
            "service": name,
            "version": version,
            "url": url,
            "endpoint": f"127.0.0.1:{port}",
            "host": "127.0.0.1",
            "port": port,
            "access_key": S3_ACCESS_KEY,
            "secret_key": S3_SECRET_KEY,
            "region": S3_REGION,
            "secure": False,
            "pid": proc.pid,
            "pgid": proc.pid,
            "starttime": _proc_starttime(proc.pid),
            "data_dir": inst,
            "log": log_path,
        }

        def probe() -> bool:
            # The health URL says nothing of who answers: another S3 server holding this port would pass it.
            return _http_get(url + health, timeout=2)[0] == 200 and _listens_on(proc.pid, port)

        last_err = _register_and_wait(
            info, proc, probe, S3_START_TIMEOUT, f"{name} {version}",
            t0=t0, ready_at=f"{name} ready at {url}", owner_pid=owner_pid, on_spawn=on_spawn,
            keep_data=not own_dir, pause_before_retry=bool(wanted_port or not own_dir),
            port_taken=lambda m: "address already in use" in m.lower(),
        )  # fmt: skip
        if last_err is None:
            return info
    assert last_err is not None
    raise last_err


def _remove_stale_pid_file(pgdata: str) -> None:
    """After a SIGKILL, postmaster.pid names the dead postmaster. Postgres removes it itself unless
    that pid still "exists": a zombie whose parent (an exited `services start`, re-parented to a
    container's init that reaps nothing) never waits for it. Such a file is stale: remove it."""
    path = os.path.join(pgdata, "postmaster.pid")
    try:
        with open(path) as fh:
            pid = int(fh.readline().strip())
    except (OSError, ValueError):
        return
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        state = "gone"
    if state in ("Z", "X", "gone"):
        log(f"removing stale {path} (postmaster {pid} is {'a zombie' if state == 'Z' else 'gone'})")
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _pg_user() -> str:
    return os.environ.get("FLOWLOG_PG_USER", "flowlog-pg")


def _pg_major(bin_dir: str) -> str:
    return os.path.basename(os.path.dirname(bin_dir))


def start_postgres(
    owner_pid: int | None = None, on_spawn=None, *, data_dir: str | None = None, port: int | None = None
) -> dict:
    """See start().  A fresh cluster (initdb: superuser PG_SUPERUSER, trust auth, UTF8) in a temp
    dir, served on 127.0.0.1 only (no Unix socket); as root it runs as the unprivileged system
    user FLOWLOG_PG_USER (default flowlog-pg, created when missing), since postgres refuses root.
    data_dir/port: reuse an instance dir and port (restart).  A throwaway test server: fsync off
    (FLOWLOG_PG_FSYNC=on keeps it), so a crash of the machine may lose it; a crash of flowlog may not."""
    bin_dir = fetch_postgres()
    as_root = os.geteuid() == 0
    uid = gid = None
    if as_root:
        uid, gid = _ensure_user(_pg_user(), "PostgreSQL")
    last_err: ServiceError | None = None
    wanted_port = port
    for attempt in range(3):  # retry on a lost race for a "free" port
        own_dir = data_dir is None
        inst = tempfile.mkdtemp(prefix="flowlog-postgres-", dir=_tmp_parent()) if own_dir else data_dir
        pgdata = os.path.join(inst, "data")
        log_path = os.path.join(inst, "console.log")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(HOME=inst, LC_ALL="C.UTF-8", LANG="C.UTF-8")
        as_user = {"user": uid, "group": gid, "extra_groups": []} if as_root else {}
        try:
            if as_root:
                os.chown(inst, uid, gid)
            if not os.path.isdir(pgdata):
                t0 = time.monotonic()
                r = subprocess.run(
                    [
                        os.path.join(bin_dir, "initdb"),
                        "-D",
                        pgdata,
                        "-U",
                        PG_SUPERUSER,
                        "--auth=trust",
                        "-E",
                        "UTF8",
                        "--locale=C.UTF-8",
                        "--no-sync",
                    ],
                    env=env,
                    cwd=inst,
                    capture_output=True,
                    text=True,
                    **as_user,
                )
                if r.returncode != 0:
                    raise ServiceError(f"initdb ({bin_dir}) failed with code {r.returncode}:\n{r.stdout}{r.stderr}")
                log(f"initdb {pgdata} in {time.monotonic() - t0:.1f}s")
        except BaseException:
            if own_dir:
                shutil.rmtree(inst, ignore_errors=True)
            raise
        _remove_stale_pid_file(pgdata)
        port = wanted_port or free_port()
        cmd = [
            os.path.join(bin_dir, "postgres"), "-D", pgdata, "-p", str(port),
            "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
            "-c", "max_connections=300", "-c", "shared_buffers=64MB",
            "-c", f"fsync={os.environ.get('FLOWLOG_PG_FSYNC', 'off')}",
        ]  # fmt: skip
        open(log_path, "ab").close()
        if as_root:
            os.chown(log_path, uid, gid)
        t0 = time.monotonic()
        log(f"starting postgres {_pg_major(bin_dir)} on 127.0.0.1:{port} (data {pgdata})")
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=inst,
                start_new_session=True, close_fds=True, **as_user,
            )  # fmt: skip
        _PROCS[proc.pid] = proc
        info = {
            "service": "postgres",
            "version": _pg_major(bin_dir),
            "bin_dir": bin_dir,
            "host": "127.0.0.1",
            "port": port,
            "user": PG_SUPERUSER,
            "dsn": f"postgresql://{PG_SUPERUSER}@127.0.0.1:{port}/postgres",
            "url": f"postgresql://{PG_SUPERUSER}@127.0.0.1:{port}/postgres",
            "pid": proc.pid,
            "pgid": proc.pid,
            "starttime": _proc_starttime(proc.pid),
            "data_dir": inst,
            "log": log_path,
        }

        def probe() -> bool:
            # Accepting connections is not enough: another PostgreSQL on this port (ours then fails to bind and
            # exits, which is the retry below) would accept them too. Ready when the server answering is OURS.
            r = subprocess.run(
                [os.path.join(bin_dir, "psql"), "-XAtq", "-h", "127.0.0.1", "-p", str(port), "-U", PG_SUPERUSER,
                 "-d", "postgres", "-c", "SHOW data_directory"],
                env=dict(env, PGCONNECT_TIMEOUT="3"), capture_output=True, text=True,
            )  # fmt: skip
            return r.returncode == 0 and _same_path(r.stdout.strip(), pgdata)

        last_err = _register_and_wait(
            info, proc, probe, PG_START_TIMEOUT, f"postgres {_pg_major(bin_dir)}",
            t0=t0, ready_at=f"postgres ready at 127.0.0.1:{port}", owner_pid=owner_pid, on_spawn=on_spawn,
            keep_data=not own_dir, pause_before_retry=bool(wanted_port or not own_dir),
            port_taken=lambda m: "could not bind" in m or "already in use" in m,
        )  # fmt: skip
        if last_err is None:
            return info
    assert last_err is not None
    raise last_err


def start(
    name: str,
    owner_pid: int | None = None,
    on_spawn=None,
    *,
    data_dir: str | None = None,
    port: int | None = None,
    transport_port: int | None = None,
) -> dict:
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
    if name == "postgres":
        return start_postgres(owner_pid, on_spawn, data_dir=data_dir, port=port)
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
            # postgres: SIGTERM is its "smart" shutdown, which waits for every client to leave; SIGINT is "fast"
            clean = signal.SIGINT if info.get("service") == "postgres" else signal.SIGTERM
            _kill_group(pgid, sig=signal.SIGKILL if kill else clean)
    else:
        p = _PROCS.pop(pgid, None)
        if p is not None:
            p.poll()
    data_dir = info.get("data_dir")
    if not keep_data and data_dir and os.path.basename(data_dir).startswith("flowlog-") and os.path.isdir(data_dir):
        shutil.rmtree(data_dir, ignore_errors=True)
    if "service" in info:
        with contextlib.suppress(FileNotFoundError):
            os.remove(_registry_path(info))


def restart(info: dict, owner_pid: int | None = None, on_spawn=None, down_s: float = 0.0, kill: bool = False) -> dict:
    """Stop the server described by info (SIGKILL if kill), stay down for down_s seconds, and
    start the same service again on the same port(s) and data dir; returns the new info."""
    stop(info, keep_data=True, kill=kill)
    if down_s > 0:
        time.sleep(down_s)
    return start(
        info["service"],
        owner_pid=owner_pid,
        on_spawn=on_spawn,
        data_dir=info["data_dir"],
        port=int(info["port"]),
        transport_port=info.get("transport_port"),
    )


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
