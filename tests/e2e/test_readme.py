"""The README's examples, run as written (only the address changed) against a real server with
no API keys and the demo inventory: if the README drifts from the code, this fails."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, start_server
from tests.waiting import poll

README = (ROOT / "README.md").read_text()
DEFAULT_ADDRESS = "127.0.0.1:50051"


def commands(section: str) -> list[str]:
    """Shell commands of the ```sh blocks in a README section, continuation lines and
    multi-line quoted arguments joined."""
    body = README.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    out: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", body, re.S):
        pending = ""
        for line in block.splitlines():
            if not pending and (not line.strip() or line.lstrip().startswith("#")):
                continue
            pending = (pending + "\n" + line) if pending else line
            if pending.endswith("\\"):
                pending = pending[:-1]
                continue
            try:
                shlex.split(pending)
            except ValueError:  # an open quote: the argument goes on on the next line
                continue
            out.append(pending.split("  #", 1)[0].strip())
            pending = ""
    return out


def grpcurl() -> str:
    sys.path.insert(0, str(ROOT / "scripts"))
    import flowlog_services as fs

    try:
        return fs.fetch("grpcurl")
    except Exception as e:  # noqa: BLE001 - say how to get it
        pytest.fail(f"grpcurl is needed for the README's examples: {e}\nrun: scripts/services fetch grpcurl")


@pytest.fixture(scope="module")
def readme_server(tmp_path_factory):
    sp = start_server(tmp_path_factory.mktemp("readme"), {"api_keys": {}, "generator": {"window_seconds": 1.0}})
    yield sp
    assert sp.stop() == 0, sp.log_tail()


def run(cmd: str, address: str, tool: str, flowlog_bin: str) -> subprocess.CompletedProcess | None:
    argv = shlex.split(cmd.replace(DEFAULT_ADDRESS, address))
    if argv[0] == "grpcurl":
        argv[0] = tool
    elif argv[0] == "flowlog":
        argv = [flowlog_bin, "--server", address] + argv[1:]
    follows = "tail" in argv or any(a.endswith("/Tail") for a in argv)
    try:
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=6 if follows else 60,
            cwd=ROOT,
            env={k: v for k, v in os.environ.items() if not k.startswith("FLOWLOG_")},
        )
    except subprocess.TimeoutExpired as e:
        assert follows, f"{cmd} did not finish"
        return subprocess.CompletedProcess(argv, 0, e.stdout or "", e.stderr or "")


def test_try_it_examples_work_as_written(readme_server):
    tool = grpcurl()
    flowlog_bin = str(Path(sys.executable).with_name("flowlog"))
    cmds = commands("Try it")
    assert any(c.startswith("grpcurl") for c in cmds) and any(c.startswith("flowlog") for c in cmds)
    outputs = {}
    waited = False
    for cmd in cmds:
        if cmd.startswith("flowlog query") and not waited:
            # The first query waits (polling, 30 s at most) until the new flow log's first
            # generator windows are stored.
            r = poll(
                lambda: run(cmd, readme_server.address, tool, flowlog_bin), 30, 0.2,
                until=lambda r: r.returncode != 0 or "ACCEPT" in r.stdout or "REJECT" in r.stdout,
            )  # fmt: skip
            waited = True
        else:
            r = run(cmd, readme_server.address, tool, flowlog_bin)
        assert r.returncode == 0, f"{cmd}\nexit {r.returncode}\n{r.stdout}\n{r.stderr}"
        outputs[cmd] = r.stdout
    listing = next(v for k, v in outputs.items() if k.startswith("grpcurl") and k.endswith(" list"))
    assert "flowlog.v1.FlowLogService" in listing and "grpc.health.v1.Health" in listing
    first_query = next(v for k, v in outputs.items() if k.startswith("flowlog query"))
    assert "web" in first_query and ("ACCEPT" in first_query or "REJECT" in first_query)


def test_scenario_filters_parse_and_run(readme_server):
    """The README's scenario queries are accepted by the filter language and run."""
    flowlog_bin = str(Path(sys.executable).with_name("flowlog"))
    cmds = [c.split(" | ")[0] for c in commands("Filter language (Query and Tail)") if c.startswith("flowlog")]
    assert len(cmds) >= 4
    subprocess.run(
        [
            flowlog_bin,
            "--server",
            readme_server.address,
            "logstore",
            "create",
            "--region",
            "bj",
            "--project",
            "demo",
            "--name",
            "scen",
        ],
        check=True,
        capture_output=True,
    )
    for cmd in cmds:
        r = run(cmd.replace("--log-store web", "--log-store scen"), readme_server.address, "", flowlog_bin)
        assert r.returncode == 0, f"{cmd}\n{r.stderr}"


def test_configuration_example_loads():
    """Every key of the README's YAML example is a real setting (unknown keys are refused)."""
    import yaml

    from server.config import Config, _apply

    block = re.search(r"```yaml\n(.*?)```", README, re.S).group(1)
    cfg = Config()
    _apply(cfg, yaml.safe_load(block), "")
    assert cfg.query_backend == "elasticsearch" and cfg.archive_backend == "minio"
    assert cfg.limits.max_tail_streams_per_account == 100
