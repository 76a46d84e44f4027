"""Start-up refusals, TLS with and without client certificates, and API keys never logged."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from flowlog.v1 import resource_pb2 as rs
from tests.e2e.conftest import KEY_A, ROOT, free_port, start_server


def run_server(args: list[str], env: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLOWLOG_")}
    return subprocess.run([sys.executable, "-m", "server.main", *args], cwd=ROOT, env={**clean, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def test_refuses_non_loopback_without_keys(tmp_path):
    r = run_server(["--listen", f"0.0.0.0:{free_port()}", "--data-dir", str(tmp_path)])
    assert r.returncode == 2
    assert "without API keys" in r.stderr and "FLOWLOG_API_KEYS" in r.stderr


def test_refuses_unknown_setting_and_bad_values(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("listen: 127.0.0.1:0\nquery_backnd: embedded\n")
    r = run_server(["--config", str(cfg)])
    assert r.returncode == 2 and "unknown setting 'query_backnd'" in r.stderr
    r = run_server(["--data-dir", str(tmp_path)], env={"FLOWLOG_FLOW_LOG_QUOTA": "ten"})
    assert r.returncode == 2 and "FLOWLOG_FLOW_LOG_QUOTA" in r.stderr
    r = run_server(["--data-dir", str(tmp_path)], env={"FLOWLOG_QUERY_BACKEND": "elasticsearch"})
    assert r.returncode == 2 and "FLOWLOG_ELASTICSEARCH_URL" in r.stderr
    r = run_server(["--data-dir", str(tmp_path)], env={"FLOWLOG_PIPELINE_INGEST_PACE_MAX_SECONDS": "-1"})
    assert r.returncode == 2 and "pipeline.ingest_pace_max_seconds must be 0 (never wait) or more" in r.stderr
    r = run_server(["--data-dir", str(tmp_path)], env={"FLOWLOG_EMBEDDED_THREADS": "-2"})
    assert r.returncode == 2 and "embedded.threads must be 0" in r.stderr


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=flowlog-test-ca",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", cwd=d)
        (d / f"{name}.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext", cwd=d)
    return d


def _list(address: str, creds: grpc.ChannelCredentials) -> grpc.StatusCode | None:
    from flowlog.v1 import resource_pb2_grpc
    with grpc.secure_channel(address, creds) as ch:
        try:
            resource_pb2_grpc.ResourceServiceStub(ch).ListResources(
                rs.ListResourcesRequest(page_size=1), metadata=(("authorization", f"Bearer {KEY_A}"),), timeout=10)
            return None
        except grpc.RpcError as e:
            return e.code()


def test_tls_and_client_certificates(tmp_path, pki):
    ca = (pki / "ca.pem").read_bytes()
    tls = {"cert_file": str(pki / "server.pem"), "key_file": str(pki / "server.key")}
    sp = start_server(tmp_path / "tls", {"tls": tls, "generator": {"enabled": False}}, health_tls=ca)
    try:
        assert _list(sp.address, grpc.ssl_channel_credentials(ca)) is None
        with grpc.insecure_channel(sp.address) as ch:  # plaintext to a TLS port fails
            from flowlog.v1 import resource_pb2_grpc
            with pytest.raises(grpc.RpcError):
                resource_pb2_grpc.ResourceServiceStub(ch).ListResources(rs.ListResourcesRequest(), timeout=5)
    finally:
        assert sp.stop() == 0
    mtls = {**tls, "client_ca_file": str(pki / "ca.pem")}
    client = grpc.ssl_channel_credentials(ca, (pki / "client.key").read_bytes(), (pki / "client.pem").read_bytes())
    sp = start_server(tmp_path / "mtls", {"tls": mtls, "generator": {"enabled": False}}, health_tls=ca,
                      health_client=((pki / "client.key").read_bytes(), (pki / "client.pem").read_bytes()))
    try:
        assert _list(sp.address, client) is None
        assert _list(sp.address, grpc.ssl_channel_credentials(ca)) == grpc.StatusCode.UNAVAILABLE
    finally:
        assert sp.stop() == 0
    log = sp.log_path.read_text()
    assert KEY_A not in log, "API keys must never be logged"
