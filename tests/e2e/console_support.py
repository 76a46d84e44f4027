"""Helpers for the web console's tests: a real flowlog-server with `http.listen`, and a small
client of its JSON/HTTP API (the Connect protocol) written from the protocol, not from the code
under test."""

from __future__ import annotations

import http.client
import json
import struct
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.e2e.conftest import ServerProcess, free_port, start_server
from tests.waiting import wait_for


@dataclass
class ConsoleServer:
    grpc: ServerProcess
    http_port: int

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


def start_console_server(tmp: Path, settings: dict | None = None, timeout: float = 60) -> ConsoleServer:
    port = free_port()
    sp = start_server(tmp, {**(settings or {}), "http": {"listen": f"127.0.0.1:{port}"}}, timeout=timeout)

    def console_open() -> bool:  # the HTTP listener opens right after gRPC reports SERVING
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError):
            if sp.proc.poll() is not None:
                raise  # the server exited: nothing to wait for
            return False

    try:
        wait_for(console_open, f"the web console on port {port}", timeout, 0.1)
    except (AssertionError, urllib.error.URLError, ConnectionError) as e:
        sp.stop()
        raise RuntimeError(f"the web console did not open on port {port} ({e}):\n{sp.log_tail()}") from None
    return ConsoleServer(sp, port)


class HttpError(Exception):
    def __init__(self, status: int, body: dict) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body

    @property
    def code(self) -> str:
        return self.body.get("code", "")

    def violations(self) -> dict[str, str]:
        out = {}
        for d in self.body.get("details", []):
            if d.get("type") == "google.rpc.BadRequest":
                for v in d["debug"].get("fieldViolations", []):
                    out[v["field"]] = v["description"]
        return out


def unary(
    base: str,
    method: str,
    body: dict,
    key: str | None,
    content_type: str = "application/json",
    raw: bytes | None = None,
) -> dict:
    """POST /flowlog.v1.<method> with a JSON body; the JSON answer, or HttpError."""
    headers = {"Content-Type": content_type}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(f"{base}/flowlog.v1.{method}", data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        payload = e.read()
        try:
            parsed = json.loads(payload)
        except ValueError:
            parsed = {"raw": payload.decode(errors="replace")}
        raise HttpError(e.code, parsed) from None


def envelope(flags: int, payload: bytes) -> bytes:
    return struct.pack(">BI", flags, len(payload)) + payload


class Stream:
    """One server-streaming call: iterate the messages; `end` is the end-of-stream JSON once seen."""

    def __init__(self, base_port: int, method: str, body: dict, key: str | None, timeout: float = 30) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", base_port, timeout=timeout)
        headers = {"Content-Type": "application/connect+json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self.conn.request("POST", f"/flowlog.v1.{method}", body=envelope(0, json.dumps(body).encode()), headers=headers)
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.content_type = self.resp.getheader("Content-Type", "")
        self.end: dict | None = None

    def _read(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.resp.read1(n - len(out)) if hasattr(self.resp, "read1") else self.resp.read(n - len(out))
            if not chunk:
                raise EOFError("stream closed before the end-of-stream message")
            out += chunk
        return out

    def __iter__(self) -> Iterator[Any]:
        while self.end is None:
            flags, n = struct.unpack(">BI", self._read(5))
            msg = json.loads(self._read(n))
            if flags & 0x02:
                self.end = msg
                return
            yield msg

    def close(self) -> None:
        self.conn.close()
