"""Shared pieces of the benchmark: server processes, real ES/S3 services, RSS sampling, stats.

Nothing here imports the server's packages at module level, so the client worker processes
(bench.workers) start quickly and stay small.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
API_KEY = "bench-api-key-0123456789abcdef"
ACCOUNT = "bench"
REGION = "bj"
PROJECT = "bench"
MD = (("authorization", f"Bearer {API_KEY}"),)
# Bigger than any message the benchmark moves (a 100k-record query batch is ~15 MB at most).
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
]


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- numbers ------------------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank, p in 0..100) of values; nan when empty."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[k]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# -- machine ------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    free = ""
    try:
        free = subprocess.run(["free", "-g"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    load = os.getloadavg()
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "free_g": free,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": [round(x, 2) for x in load],
    }


def dir_bytes(path: Path) -> int:
    total = 0
    for p in Path(path).rglob("*"):
        try:
            if p.is_file():
                total += p.stat().st_size
        except OSError:
            pass
    return total


# -- peak RSS of a process ----------------------------------------------------------------------


class RssSampler:
    """Samples a process's resident set size every `interval` seconds in a thread; `peak` is the
    highest value seen since the last reset(). psutil reads /proc/<pid>/statm: cheap."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        import psutil

        self._proc = psutil.Process(pid)
        self._interval = interval
        self._stop = threading.Event()
        self.peak = 0
        self.last = 0
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss = self._proc.memory_info().rss
            except Exception:  # noqa: BLE001 - the process ended
                return
            self.last = rss
            if rss > self.peak:
                self.peak = rss
            self._stop.wait(self._interval)

    def reset(self) -> None:
        self.peak = self.last

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


# -- a flowlog-server process --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    address: str
    data_dir: Path
    log_path: Path
    rss: RssSampler | None = None
    settings: dict = field(default_factory=dict)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM (the server drains what it acknowledged), SIGKILL after timeout."""
        if self.rss is not None:
            self.rss.stop()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"server {self.proc.pid} did not stop in {timeout}s; killing it")
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_server(workdir: Path, settings: dict, *, data_dir: Path | None = None, timeout: float = 90) -> Server:
    """flowlog-server with a YAML config in its own session; returns once health is SERVING."""
    import grpc
    import yaml
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    data_dir = data_dir or workdir / "data"
    cfg: dict[str, Any] = {
        "listen": f"127.0.0.1:{port}",
        "data_dir": str(data_dir),
        "demo": True,
        "api_keys": {API_KEY: ACCOUNT},
        "log_level": "WARNING",
        "generator": {"enabled": False},
    }
    for k, v in settings.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    config_path = workdir / f"config-{port}.yaml"
    config_path.write_text(yaml.safe_dump(cfg))
    log_path = workdir / f"server-{port}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWLOG_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.main", "--config", str(config_path)],
        cwd=ROOT,
        env=env,
        stdout=open(log_path, "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    srv = Server(proc, f"127.0.0.1:{port}", data_dir, log_path, settings=cfg)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"flowlog-server exited with {proc.returncode}:\n{srv.log_tail()}")
        try:
            with grpc.insecure_channel(srv.address) as ch:
                resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    srv.rss = RssSampler(proc.pid)
                    return srv
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    srv.stop(5)
    raise RuntimeError(f"flowlog-server did not become healthy in {timeout}s:\n{srv.log_tail()}")


# -- real Elasticsearch / S3 ---------------------------------------------------------------------


def services_module():
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    import flowlog_services

    return flowlog_services


class Services:
    """Starts ES / S3 once per benchmark run (on first use) and stops them at the end."""

    def __init__(self) -> None:
        self._infos: dict[str, dict] = {}

    def get(self, name: str) -> dict:
        external = os.environ.get("FLOWLOG_BENCH_ES_URL") if name == "es" else None
        if external and name not in self._infos:
            # an Elasticsearch started elsewhere (kept between runs with its data): not stopped here
            log(f"using the Elasticsearch at {external} (FLOWLOG_BENCH_ES_URL)")
            return {"service": "es", "url": external.rstrip("/"), "external": True}
        if name not in self._infos:
            fs = services_module()
            log(f"starting {name} (scripts/flowlog_services.py)")
            self._infos[name] = fs.start(name, owner_pid=os.getpid())
        return self._infos[name]

    def stop_all(self) -> None:
        fs = services_module()
        for name, info in list(self._infos.items()):
            try:
                fs.stop(info)
            except Exception as e:  # noqa: BLE001 - keep stopping the others
                log(f"stopping {name} failed: {e}")
            del self._infos[name]


def server_settings(backend: str, services: Services, **extra: Any) -> dict:
    """The server config of one benchmarked backend.

    embedded       the default config: DuckDB query store + local-folder archive
    elasticsearch  Elasticsearch query store, no archive (isolates ES)
    s3             DuckDB query store + archive on a real S3 server (versitygw / MinIO)
    """
    if backend == "embedded":
        s: dict[str, Any] = {"query_backend": "embedded", "archive_backend": "embedded"}
    elif backend == "elasticsearch":
        info = services.get("es")
        s = {
            "query_backend": "elasticsearch",
            "archive_backend": "none",
            "elasticsearch": {"url": info["url"], "index_prefix": "flowlog"},
        }
    elif backend == "s3":
        info = services.get("s3")
        s = {
            "query_backend": "embedded",
            "archive_backend": "minio",
            "minio": {
                "endpoint": info["endpoint"],
                "access_key": info["access_key"],
                "secret_key": info["secret_key"],
                "bucket": "flowlog-bench",
                "region": info["region"],
            },
        }
    else:
        raise ValueError(backend)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(s.get(k), dict):
            s[k] = {**s[k], **v}
        else:
            s[k] = v
    return s


def rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


class pyspy:
    """With BENCH_PYSPY=<dir> set: record the server with py-spy (collapsed stacks, all threads,
    GIL-holding samples only when BENCH_PYSPY_GIL=1) while the block runs. A development aid for
    finding hot spots; py-spy is not a dependency of the project (pip install py-spy)."""

    def __init__(self, pid: int, name: str) -> None:
        self.pid, self.name, self.proc = pid, name, None

    def __enter__(self) -> "pyspy":
        out = os.environ.get("BENCH_PYSPY")
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if out and Path(exe).exists():
            Path(out).mkdir(parents=True, exist_ok=True)
            cmd = [
                exe,
                "record",
                "-p",
                str(self.pid),
                "-f",
                "raw",
                "-r",
                "200",
                "--threads",
                "-o",
                str(Path(out) / f"{self.name}.txt"),
            ]
            if os.environ.get("BENCH_PYSPY_GIL") == "1":
                cmd.append("--gil")
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
