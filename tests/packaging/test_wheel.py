"""The package as users install it: a wheel built from a clean checkout (no generated stubs, no
build output), installed into a fresh virtual environment, must give working `flowlog-server`
and `flowlog` commands (issue 14: `pip install .` once gave ModuleNotFoundError: 'flowlog').

The wheel is built the way `pip wheel .` builds it (isolated, with [build-system] requires:
setuptools and the pinned grpcio-tools that generates the stubs in setup.py). Wheels of the
dependencies (at requirements.lock's versions) are kept in $FLOWLOG_CACHE/wheels so that later
runs need no network; the first run fetches them (a few minutes).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import grpc

from tests.e2e.conftest import free_port, serving
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("FLOWLOG_CACHE", Path.home() / ".cache" / "flowlog"))
BUILD_REQUIRES = ["setuptools", "grpcio-tools"]


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert out.returncode == 0, (
        f"{' '.join(map(str, cmd))} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    )
    return out


def _clean_checkout(dest: Path) -> Path:
    """The files of the checkout that git tracks or would track: no .venv, flowlog/ stubs, build/, .so."""
    files = _run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT).stdout.split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    assert not (dest / "flowlog").exists()
    return dest


def _pip_env(wheelhouse: Path, offline: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWLOG_", "PYTHON"))}
    env["PIP_FIND_LINKS"] = str(wheelhouse)  # also read by the isolated build's own pip
    if offline:
        env["PIP_NO_INDEX"] = "1"
    return env


def test_wheel_from_a_clean_checkout_installs_working_commands(tmp_path):
    lock = (ROOT / "requirements.lock").read_bytes() + (ROOT / "pyproject.toml").read_bytes()
    wheelhouse = CACHE / "wheels"
    wheelhouse.mkdir(parents=True, exist_ok=True)
    complete = wheelhouse / f".complete-{hashlib.sha256(lock).hexdigest()[:16]}"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    constraints = ["-c", str(ROOT / "requirements.lock")]
    if not complete.exists():
        _run(
            pip + ["download", "-q", "-d", str(wheelhouse), *constraints, *BUILD_REQUIRES],
            env=_pip_env(wheelhouse, offline=False),
        )

    src = _clean_checkout(tmp_path / "src")
    dist = tmp_path / "dist"
    _run(pip + ["wheel", "-q", "--no-deps", "-w", str(dist), str(src)], env=_pip_env(wheelhouse, complete.exists()))
    wheels = list(dist.glob("flowlog-*.whl"))
    assert len(wheels) == 1, wheels
    if not complete.exists():
        _run(
            pip + ["download", "-q", "-d", str(wheelhouse), *constraints, str(wheels[0])],
            env=_pip_env(wheelhouse, offline=False),
        )
        complete.touch()

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    bin_dir = env_dir / "bin"
    _run(
        [
            str(bin_dir / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            *constraints,
            str(wheels[0]),
        ],
        env=_pip_env(wheelhouse, offline=True),
    )

    # Run from an empty folder, so nothing can come from the checkout.
    work = tmp_path / "work"
    work.mkdir()
    env = _pip_env(wheelhouse, offline=True)
    probe = "import flowlog.v1.query_pb2_grpc, server.main, clients.cli, server.native.fastpath as f; print(f.compiled)"
    loaded = _run([str(bin_dir / "python"), "-c", probe], cwd=work, env=env).stdout
    if shutil.which("cc") or shutil.which("gcc"):  # the compiled record path ships in the wheel (server/native)
        assert "server.native._fastingest" in loaded, loaded
    port = free_port()
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(bin_dir / "flowlog-server"), "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "data")],
            cwd=work,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_serving(f"127.0.0.1:{port}", proc, log_path)
        out = _run(
            [str(bin_dir / "flowlog"), "--server", f"127.0.0.1:{port}", "resource", "list", "--region", "bj"],
            cwd=work,
            env=env,
        ).stdout
        assert "eip-bj-01" in out, out  # the demo inventory, served by the installed server
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_serving(address: str, proc: subprocess.Popen, log_path: Path, deadline_s: float = 120) -> None:
    """Poll the health service until SERVING; fail with the server's log if it exits or never serves."""
    try:
        wait_for(
            lambda: serving(proc, address), "the installed flowlog-server to serve", deadline_s, 0.2,
            ignoring=(grpc.RpcError,),
        )  # fmt: skip
    except (AssertionError, RuntimeError) as e:  # RuntimeError: it exited
        raise AssertionError(f"{e}:\n{log_path.read_text(errors='replace')[-3000:]}") from None
