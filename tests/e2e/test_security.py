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
    return subprocess.run(
        [sys.executable, "-m", "server.main", *args],
        cwd=ROOT,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


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
    assert r.returncode == 2 and "threads must be 0" in r.stderr and "embedded" in r.stderr
    r = run_server(["--data-dir", str(tmp_path)], env={"FLOWLOG_EMBEDDED_AGGREGATE_THREADS": "-1"})
    assert r.returncode == 2 and "aggregate_threads must be 0 (every core) or more" in r.stderr


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=flowlog-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        cwd=d,
    )
    for name in ("server", "client"):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            cwd=d,
        )
        (d / f"{name}.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            f"{name}.pem",
            "-extfile",
            f"{name}.ext",
            cwd=d,
        )
    return d


def _list(address: str, creds: grpc.ChannelCredentials) -> grpc.StatusCode | None:
    from flowlog.v1 import resource_pb2_grpc

    with grpc.secure_channel(address, creds) as ch:
        try:
            resource_pb2_grpc.ResourceServiceStub(ch).ListResources(
                rs.ListResourcesRequest(page_size=1), metadata=(("authorization", f"Bearer {KEY_A}"),), timeout=10
            )
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
    sp = start_server(
        tmp_path / "mtls",
        {"tls": mtls, "generator": {"enabled": False}},
        health_tls=ca,
        health_client=((pki / "client.key").read_bytes(), (pki / "client.pem").read_bytes()),
    )
    try:
        assert _list(sp.address, client) is None
        assert _list(sp.address, grpc.ssl_channel_credentials(ca)) == grpc.StatusCode.UNAVAILABLE
    finally:
        assert sp.stop() == 0
    log = sp.log_path.read_text()
    assert KEY_A not in log, "API keys must never be logged"


def test_refuses_plaintext_off_loopback_with_api_keys(tmp_path):
    """API keys on a non-loopback address need TLS (issue 15), or allow_plaintext behind a proxy."""
    env = {"FLOWLOG_API_KEYS": f"{KEY_A}=acct-a"}
    r = run_server(["--listen", f"0.0.0.0:{free_port()}", "--data-dir", str(tmp_path / "a")], env=env)
    assert r.returncode == 2, r.stderr
    assert "without TLS" in r.stderr and "plaintext" in r.stderr and "allow_plaintext" in r.stderr, r.stderr
    assert "tls.cert_file" in r.stderr
    # The console's JSON API takes the same keys: the same rule for http.listen.
    r = run_server(
        [
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--http-listen",
            f"0.0.0.0:{free_port()}",
            "--data-dir",
            str(tmp_path / "h"),
        ],
        env=env,
    )
    assert r.returncode == 2 and "http.listen" in r.stderr and "without TLS" in r.stderr, r.stderr
    # Loopback stays allowed without TLS, and allow_plaintext lets a proxied server start.
    port = free_port()
    sp = start_server(
        tmp_path / "proxied",
        {"listen": f"0.0.0.0:{port}", "allow_plaintext": True, "generator": {"enabled": False}},
        port=port,
    )
    try:
        assert _list_plain(sp.address) is None
    finally:
        assert sp.stop() == 0


def _list_plain(address: str) -> grpc.StatusCode | None:
    from flowlog.v1 import resource_pb2_grpc

    with grpc.insecure_channel(address) as ch:
        try:
            resource_pb2_grpc.ResourceServiceStub(ch).ListResources(
                rs.ListResourcesRequest(page_size=1), metadata=(("authorization", f"Bearer {KEY_A}"),), timeout=10
            )
            return None
        except grpc.RpcError as e:
            return e.code()


def test_client_and_cli_speak_tls_given_a_ca_or_an_https_target(tmp_path, pki, capsys, monkeypatch):
    from clients.cli import main
    from clients.client import FlowLogClient

    ca_file = str(pki / "ca.pem")
    tls = {"cert_file": str(pki / "server.pem"), "key_file": str(pki / "server.key")}
    sp = start_server(
        tmp_path / "tls", {"tls": tls, "generator": {"enabled": False}}, health_tls=(pki / "ca.pem").read_bytes()
    )
    port = sp.address.rsplit(":", 1)[1]
    monkeypatch.delenv("FLOWLOG_CA_FILE", raising=False)
    try:

        def cli(*args: str) -> tuple[int, str, str]:
            code = main(["--api-key", KEY_A, "--timeout", "10", *args, "resource", "list", "--region", "bj", "--json"])
            out, err = capsys.readouterr()
            return code, out, err

        # --ca-file, FLOWLOG_CA_FILE, an https:// target: TLS each time.
        assert cli("--server", sp.address, "--ca-file", ca_file)[0] == 0
        monkeypatch.setenv("FLOWLOG_CA_FILE", ca_file)
        code, out, err = cli("--server", sp.address)
        assert code == 0 and "eip-bj-01" in out, err
        assert cli("--server", f"https://localhost:{port}")[0] == 0
        monkeypatch.delenv("FLOWLOG_CA_FILE")
        # Without a CA the plaintext default cannot talk to a TLS port (and says where it tried).
        code, _, err = cli("--server", sp.address)
        assert code == 1 and "UNAVAILABLE" in err, err
        # The library: an https:// target with the CA; an unknown scheme is refused plainly.
        with FlowLogClient(f"https://127.0.0.1:{port}", KEY_A, ca_file=ca_file, timeout=10) as c:
            assert c.tls and c.target == f"127.0.0.1:{port}"
            assert c.resources.ListResources(rs.ListResourcesRequest(page_size=1), timeout=10).resources
        with pytest.raises(ValueError, match="unknown scheme"):
            FlowLogClient(f"ftp://127.0.0.1:{port}")
    finally:
        assert sp.stop() == 0
