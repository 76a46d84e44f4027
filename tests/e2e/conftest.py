"""A real flowlog-server process on a free loopback port, driven through the generated stubs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flowlog.v1 import flow_log_pb2_grpc, ingest_pb2_grpc, log_store_pb2_grpc, query_pb2_grpc, resource_pb2_grpc
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
KEY_A = "test-key-account-a-0123456789"
KEY_B = "test-key-account-b-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    address: str
    data_dir: Path
    config_path: Path
    log_path: Path

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _channel(address: str, ca: bytes | None, client: tuple[bytes, bytes] | None) -> grpc.Channel:
    if ca is None:
        return grpc.insecure_channel(address)
    key, cert = client or (None, None)
    return grpc.secure_channel(address, grpc.ssl_channel_credentials(ca, key, cert))


def serving(proc: subprocess.Popen, address: str, ca: bytes | None = None, client=None) -> bool:
    """One probe of a starting flowlog-server (for wait_for, ignoring grpc.RpcError: not listening yet): its
    health service reports SERVING. RuntimeError when the process has exited, since nothing will come."""
    if proc.poll() is not None:
        raise RuntimeError(f"flowlog-server exited with {proc.returncode}")
    with _channel(address, ca, client) as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
    return resp.status == health_pb2.HealthCheckResponse.SERVING


def start_server(
    tmp: Path,
    settings: dict | None = None,
    data_dir: Path | None = None,
    port: int | None = None,
    timeout: float = 60,
    health_tls: bytes | None = None,
    health_client: tuple[bytes, bytes] | None = None,
) -> ServerProcess:
    """Start flowlog-server with a YAML config (merged over test defaults) and wait until healthy."""
    port = port or free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    data_dir = data_dir or tmp / "data"
    cfg = {
        "listen": f"127.0.0.1:{port}",
        "data_dir": str(data_dir),
        "demo": True,
        "api_keys": {KEY_A: "acct-a", KEY_B: "acct-b"},
        "generator": {"enabled": True, "window_seconds": 1.0, "seed": 7},
    }
    for k, v in (settings or {}).items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict) and k != "api_keys":  # keys replace
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    config_path = tmp / f"config-{port}.yaml"
    config_path.write_text(yaml.safe_dump(cfg))
    log_path = tmp / f"server-{port}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWLOG_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.main", "--config", str(config_path)],
        cwd=ROOT,
        env=env,
        stdout=open(log_path, "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    sp = ServerProcess(proc, f"127.0.0.1:{port}", data_dir, config_path, log_path)
    try:
        wait_for(
            lambda: serving(proc, sp.address, health_tls, health_client), "flowlog-server to report SERVING",
            timeout, 0.2, ignoring=(grpc.RpcError,),
        )  # fmt: skip
    except RuntimeError as e:  # it exited
        raise RuntimeError(f"{e}:\n{sp.log_tail()}") from None
    except AssertionError as e:
        sp.stop(signal.SIGKILL)
        raise RuntimeError(f"flowlog-server did not become healthy in {timeout}s ({e}):\n{sp.log_tail()}") from None
    return sp


class Stubs:
    def __init__(self, address: str, key: str | None) -> None:
        self.channel = grpc.insecure_channel(address)
        md = (("authorization", f"Bearer {key}"),) if key else ()
        self.md = md
        self.resources = resource_pb2_grpc.ResourceServiceStub(self.channel)
        self.log_stores = log_store_pb2_grpc.LogStoreServiceStub(self.channel)
        self.flow_logs = flow_log_pb2_grpc.FlowLogServiceStub(self.channel)
        self.ingest = ingest_pb2_grpc.IngestServiceStub(self.channel)
        self.query = query_pb2_grpc.QueryServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def close(self) -> None:
        self.channel.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    sp = start_server(tmp_path_factory.mktemp("server"))
    yield sp
    code = sp.stop()
    assert code == 0, f"server exited with {code} on SIGTERM:\n{sp.log_tail()}"


@pytest.fixture
def a(server):
    s = Stubs(server.address, KEY_A)
    yield s
    s.close()


@pytest.fixture
def b(server):
    s = Stubs(server.address, KEY_B)
    yield s
    s.close()
