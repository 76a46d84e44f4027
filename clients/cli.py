"""`flowlog`: the command-line client of a flowlog server.

`main(argv)` returns the exit code and writes to whatever sys.stdout / sys.stderr are at
call time, so tests run it in-process. Exit codes: 0 success, 1 a failed call (server
error, connection failure, unreadable file, rejected ingest records), 2 a usage error,
130 interrupted (except `tail`, where Ctrl-C is the normal way to stop and exits 0).

Every failure is one `flowlog: CODE: message` line on stderr, then one line per field
violation and a hint; never a traceback for anything the server or the network did.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Sequence, TextIO, cast

from clients import format as fmt
from clients import presets
from clients.client import DEFAULT_TARGET, MAX_INGEST_BATCH, FlowLogClient, FlowLogError, PagedQuery
from clients.importers import FORMATS as IMPORT_FORMATS
from clients.importers import LineError
from clients.importers.send import ImportProgress, ImportResult
from flowlog.v1 import query_pb2, record_pb2, resource_pb2, types_pb2

PROG = "flowlog"
ENV_SERVER = "FLOWLOG_SERVER"
ENV_API_KEY = "FLOWLOG_API_KEY"
ENV_CA_FILE = "FLOWLOG_CA_FILE"
DEFAULT_TIMEOUT = 30.0


class UsageError(Exception):
    """A command line that parses but does not make sense (exit code 2)."""


# --------------------------------------------------------------------------------------------
# Argument types: validate at parse time so mistakes are usage errors with the choices listed
# --------------------------------------------------------------------------------------------


def _enum_type(enum_type: Any) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            return fmt.parse_enum(enum_type, text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = enum_type.DESCRIPTOR.name
    return parse


def _enum_metavar(enum_type: Any) -> str:
    return "{" + ",".join(fmt.enum_choices(enum_type)) + "}"


def _time_type(text: str) -> str:
    """Checks the form now, but keeps the text: relative times count from when the command
    runs, not from when it was parsed."""
    try:
        fmt.parse_time(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _store_ref(text: str) -> tuple[str, str]:
    """`PROJECT/NAME` -> (project, name)."""
    project, sep, name = text.partition("/")
    if not sep or not project or not name or "/" in name:
        raise argparse.ArgumentTypeError(f"expected PROJECT/NAME, got {text!r}")
    return project, name


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {value}")
    return value


def _duration_type(text: str) -> timedelta:
    try:
        value = fmt.parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if value.total_seconds() <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be longer than zero")
    return value


def _agg_limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if not 1 <= value <= 10_000:
        raise argparse.ArgumentTypeError(f"{value} is out of range: 1 to 10000")
    return value


def _port_type(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"invalid port {text!r} (0-65535)")
    return int(text)


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


def _batch_size(text: str) -> int:
    value = _positive_int(text)
    if not 1 <= value <= MAX_INGEST_BATCH:
        raise argparse.ArgumentTypeError(f"must be 1-{MAX_INGEST_BATCH}")
    return value


_RULE_KEYS = {"priority", "direction", "action", "protocol", "peer", "ports", "id", "kind"}


def _aws_fields(text: str) -> list[str]:
    """`'version srcaddr dstaddr ...'` (or AWS's `${srcaddr} ${dstaddr}` form) -> field names."""
    from clients.importers import aws

    names = aws.header_fields(text.replace(",", " ").split())
    if names is None:
        raise argparse.ArgumentTypeError(f"not a list of AWS flow log fields: {text[:80]!r}")
    return names


def parse_rule(text: str) -> resource_pb2.SecurityRule:
    """`priority=100,action=accept,direction=ingress,protocol=tcp,peer=0.0.0.0/0,ports=22`.

    priority and action are required. Optional, each defaulting to "any": direction,
    protocol (name or number), peer (an IP or CIDR), ports (`22` or `1024-2048`); and `id`
    (default: assigned by the server) and `kind` (`acl` or `security_group`/`sg`, the default).
    """
    values: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip().lower().replace("-", "_")
        key = {"peer_cidr": "peer", "port": "ports"}.get(key, key)
        if not sep or key not in _RULE_KEYS:
            raise argparse.ArgumentTypeError(
                f"invalid rule part {part!r}: use key=value with keys priority, action, direction, protocol, peer, "
                "ports, id, kind"
            )
        values[key] = value.strip()
    anything = ("", "any", "*")
    try:
        if "priority" not in values or "action" not in values:
            raise ValueError("a rule needs priority= and action=")
        rule = resource_pb2.SecurityRule(
            priority=int(values["priority"]),
            action=cast(Any, fmt.parse_enum(types_pb2.Action, values["action"])),
            protocol=fmt.parse_protocol(values.get("protocol", "any")),
        )
        if values.get("direction", "any").lower() not in anything:
            rule.direction = cast(Any, fmt.parse_enum(types_pb2.Direction, values["direction"]))
        if values.get("id"):
            rule.id = values["id"]
        kind = values.get("kind", "").lower()
        if kind:
            rule.kind = cast(Any, fmt.parse_enum(types_pb2.RuleKind, {"sg": "security_group"}.get(kind, kind)))
        if values.get("peer", "any").lower() not in anything:
            rule.peer_cidr = values["peer"]
        ports = values.get("ports", "any").lower()
        if ports not in anything:
            low, _, high = ports.partition("-")
            rule.port_from = int(low)
            rule.port_to = int(high or low)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"invalid rule {text!r}: {e}") from None
    return rule


# --------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------


def _add_global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """The connection/output options, accepted before or after the command.

    On subcommands their default is SUPPRESS, so an option given after the command
    overrides the top-level value and an absent one leaves it alone.
    """

    def d(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    g = parser.add_argument_group("connection and output options")
    g.add_argument(
        "--server",
        metavar="HOST:PORT",
        default=d(None),
        help=f"server address (env {ENV_SERVER}, default {DEFAULT_TARGET})",
    )
    g.add_argument("--api-key", metavar="KEY", default=d(None), help=f"API key (env {ENV_API_KEY})")
    g.add_argument("--tls", action="store_true", default=d(False), help="connect with TLS")
    g.add_argument(
        "--ca-file",
        metavar="PEM",
        default=d(None),
        help=f"CA certificates to trust (implies --tls; env {ENV_CA_FILE}); an https:// server address "
        "also means TLS, with the system's CAs",
    )
    g.add_argument("--cert-file", metavar="PEM", default=d(None), help="client certificate for mutual TLS")
    g.add_argument("--key-file", metavar="PEM", default=d(None), help="client private key for mutual TLS")
    g.add_argument(
        "--json", action="store_true", default=d(False), help="JSON output: one document, or JSON lines for query/tail"
    )
    g.add_argument(
        "--timeout",
        type=_timeout,
        metavar="SECONDS",
        default=d(DEFAULT_TIMEOUT),
        help=f"deadline of each call (default {DEFAULT_TIMEOUT:g}; tail has none)",
    )
    g.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=d(False),
        help="more detail on stderr (tail heartbeats, tracebacks of client bugs)",
    )


def _sub(
    subparsers: Any, name: str, common: argparse.ArgumentParser, help: str, **kwargs: Any
) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help, description=help, parents=[common], **kwargs)
    parser.set_defaults(_parser=parser)
    return parser


def _add_store_address(p: argparse.ArgumentParser) -> None:
    """A LogStore is addressed by (region, project, name): positionally or by flags."""
    p.add_argument("pos_region", nargs="?", metavar="REGION")
    p.add_argument("pos_project", nargs="?", metavar="PROJECT")
    p.add_argument("pos_name", nargs="?", metavar="NAME")
    p.add_argument("--region")
    p.add_argument("--project", help="the log set grouping LogStores")
    p.add_argument("--name")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; parse-only use is fine (`build_parser().parse_args([...])`)."""
    common = argparse.ArgumentParser(add_help=False)
    _add_global_options(common, top=False)

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Command-line client of a flowlog server: resources, LogStores, flow logs, "
        "query, live tail and ingest.",
        epilog="examples:\n"
        "  flowlog resource list --region ap-guangzhou\n"
        "  flowlog flowlog create --region ap-guangzhou --name web --resource-type eip \\\n"
        "      --resource-id eip-1a2b3c4d --traffic-type all --new-log-store ops/eip-flows\n"
        "  flowlog query --region ap-guangzhou --project ops --log-store eip-flows \\\n"
        "      --since 1h --filter 'action = REJECT AND dst_port = 22'\n"
        "  flowlog tail --region ap-guangzhou --project ops --log-store eip-flows",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_global_options(parser, top=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    # -- resource ----------------------------------------------------------------------------
    resource = _sub(commands, "resource", common, "the network inventory flow logs attach to", aliases=["resources"])
    rs = resource.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = _sub(rs, "list", common, "list resources (every filter optional)")
    p.add_argument("--region")
    p.add_argument("--type", type=_enum_type(types_pb2.ResourceType), metavar=_enum_metavar(types_pb2.ResourceType))
    p.add_argument("--network-id", metavar="ID", help="VPC (vpc-...) or CSN instance (csn-...)")
    p.set_defaults(handler=cmd_resource_list)
    p = _sub(rs, "get", common, "show one resource")
    p.add_argument("id", metavar="ID")
    p.set_defaults(handler=cmd_resource_get)
    p = _sub(rs, "register", common, "register a resource")
    p.add_argument(
        "--type", required=True, type=_enum_type(types_pb2.ResourceType), metavar=_enum_metavar(types_pb2.ResourceType)
    )
    p.add_argument("--region", required=True)
    p.add_argument("--network-id", required=True, metavar="ID", help="VPC (vpc-...) or CSN instance (csn-...)")
    p.add_argument("--name", required=True)
    p.add_argument(
        "--address",
        dest="addresses",
        action="append",
        required=True,
        metavar="IP_OR_CIDR",
        help="an IP or CIDR the resource owns (repeat for several)",
    )
    p.add_argument("--id", default="", help="the id to use (default: assigned by the server)")
    p.add_argument(
        "--rule",
        dest="rules",
        action="append",
        type=parse_rule,
        default=[],
        metavar="SPEC",
        help="an ACL or security-group rule, repeatable: priority=100,action=accept[,direction=ingress]"
        "[,protocol=tcp][,peer=10.0.0.0/8][,ports=22 or 1024-2048][,kind=acl|sg][,id=sg-ssh]",
    )
    p.set_defaults(handler=cmd_resource_register)
    p = _sub(rs, "delete", common, "delete a resource (refused while a flow log uses it)")
    p.add_argument("id", metavar="ID")
    p.set_defaults(handler=cmd_resource_delete)

    # -- logstore ----------------------------------------------------------------------------
    logstore = _sub(
        commands, "logstore", common, "LogStores (log topics) that keep records", aliases=["logstores", "log-store"]
    )
    ls = logstore.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = _sub(ls, "create", common, "create a LogStore")
    p.add_argument("--region", required=True)
    p.add_argument("--project", required=True, help="the log set grouping LogStores")
    p.add_argument("--name", required=True)
    p.add_argument("--retention-days", type=_positive_int, default=0, metavar="N", help="1-3650 (default 7)")
    p.add_argument("--description", default="")
    p.set_defaults(handler=cmd_logstore_create)
    p = _sub(ls, "get", common, "show one LogStore: REGION PROJECT NAME, or the flags")
    _add_store_address(p)
    p.set_defaults(handler=cmd_logstore_get)
    p = _sub(ls, "list", common, "list LogStores")
    p.add_argument("--region")
    p.add_argument("--project")
    p.set_defaults(handler=cmd_logstore_list)
    p = _sub(ls, "update", common, "change retention and/or description (only the flags given)")
    _add_store_address(p)
    p.add_argument("--retention-days", type=_positive_int, metavar="N")
    p.add_argument("--description")
    p.set_defaults(handler=cmd_logstore_update)
    p = _sub(ls, "delete", common, "delete a LogStore and its records")
    _add_store_address(p)
    p.set_defaults(handler=cmd_logstore_delete)

    # -- flowlog -----------------------------------------------------------------------------
    flowlog = _sub(commands, "flowlog", common, "flow-log configurations", aliases=["flowlogs", "fl"])
    fs = flowlog.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = _sub(fs, "create", common, "create a flow log")
    p.add_argument("--region", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--resource-id", required=True, metavar="ID")
    p.add_argument(
        "--resource-type",
        type=_enum_type(types_pb2.ResourceType),
        metavar=_enum_metavar(types_pb2.ResourceType),
        help="default: the resource's type",
    )
    p.add_argument("--network-id", metavar="ID", help="default: the resource's network")
    p.add_argument(
        "--traffic-type",
        required=True,
        type=_enum_type(types_pb2.TrafficType),
        metavar=_enum_metavar(types_pb2.TrafficType),
    )
    dest = p.add_mutually_exclusive_group(required=True)
    dest.add_argument("--log-store", type=_store_ref, metavar="PROJECT/NAME", help="an existing LogStore")
    dest.add_argument(
        "--new-log-store", type=_store_ref, metavar="PROJECT/NAME", help="a LogStore created with the flow log"
    )
    p.add_argument("--retention-days", type=_positive_int, metavar="N", help="of --new-log-store (default 7)")
    p.add_argument("--description", default="")
    p.add_argument("--client-token", default="", metavar="TOKEN", help="idempotency key for safe retries")
    p.add_argument("--paused", action="store_true", help="create it paused")
    p.set_defaults(handler=cmd_flowlog_create)
    p = _sub(fs, "get", common, "show one flow log")
    p.add_argument("id", metavar="ID")
    p.set_defaults(handler=cmd_flowlog_get)
    p = _sub(fs, "list", common, "list flow logs")
    p.add_argument("--region")
    p.add_argument("--resource-id", default="", metavar="ID")
    p.add_argument("--state", type=_enum_type(types_pb2.FlowLogState), metavar=_enum_metavar(types_pb2.FlowLogState))
    p.set_defaults(handler=cmd_flowlog_list)
    p = _sub(fs, "update", common, "change name, description, traffic type and/or state (only the flags given)")
    p.add_argument("id", metavar="ID")
    p.add_argument("--name")
    p.add_argument("--description")
    p.add_argument(
        "--traffic-type", type=_enum_type(types_pb2.TrafficType), metavar=_enum_metavar(types_pb2.TrafficType)
    )
    p.add_argument("--state", type=_enum_type(types_pb2.FlowLogState), metavar=_enum_metavar(types_pb2.FlowLogState))
    p.set_defaults(handler=cmd_flowlog_update)
    p = _sub(fs, "delete", common, "delete a flow log (its LogStore and records stay)")
    p.add_argument("id", metavar="ID")
    p.set_defaults(handler=cmd_flowlog_delete)

    # -- query / tail ------------------------------------------------------------------------
    def stores(p: argparse.ArgumentParser) -> None:
        p.add_argument("--region", required=True)
        p.add_argument("--project", required=True)
        p.add_argument(
            "--log-store",
            dest="log_stores",
            action="append",
            required=True,
            metavar="NAME",
            help="a LogStore of the project; repeat (or comma-separate) for several",
        )
        p.add_argument("--filter", default="", metavar="EXPR", help="e.g. 'action = REJECT AND dst_port = 22'")

    p = _sub(commands, "query", common, "search records")
    stores(p)
    p.add_argument(
        "--since",
        "--start",
        dest="start",
        type=_time_type,
        default="15m",
        metavar="TIME",
        help="from: a duration before now (15m, 2h, 1d) or RFC 3339 (default 15m)",
    )
    p.add_argument(
        "--until",
        "--end",
        dest="end",
        type=_time_type,
        metavar="TIME",
        help="to (exclusive): a duration before now or RFC 3339 (default now)",
    )
    p.add_argument(
        "--limit", type=_positive_int, default=0, metavar="N", help="records per call (default: the server's page size)"
    )
    p.add_argument("--oldest-first", action="store_true", help="oldest records first (default newest first)")
    paging = p.add_mutually_exclusive_group()
    paging.add_argument("--all", action="store_true", help="follow page tokens to the last record")
    paging.add_argument("--page-token", default="", metavar="TOKEN", help="continue a previous query")
    p.set_defaults(handler=cmd_query)

    p = _sub(commands, "tail", common, "follow records live (Ctrl-C to stop)")
    stores(p)
    p.add_argument(
        "--since",
        "--start",
        dest="start",
        type=_time_type,
        metavar="TIME",
        help="first replay records stored from this time (a duration before now or RFC 3339)",
    )
    p.add_argument("--cursor", default="", help="resume exactly after a previous tail (printed when it stops)")
    p.set_defaults(handler=cmd_tail)

    # -- aggregate / top -----------------------------------------------------------------------
    def window(p: argparse.ArgumentParser, default: str) -> None:
        stores(p)
        p.add_argument(
            "--since",
            "--start",
            dest="start",
            type=_time_type,
            default=default,
            metavar="TIME",
            help=f"from: a duration before now (15m, 2h, 1d) or RFC 3339 (default {default})",
        )
        p.add_argument(
            "--until",
            "--end",
            dest="end",
            type=_time_type,
            metavar="TIME",
            help="to (exclusive): a duration before now or RFC 3339 (default now)",
        )

    p = _sub(
        commands, "aggregate", common, "answers, not rows: group matching records and compute metrics on the server"
    )
    window(p, "1h")
    p.add_argument(
        "--group-by",
        action="append",
        default=[],
        metavar="FIELD",
        help="src_addr, dst_addr/24, dst_port, protocol, action, rule_kind, ... (repeat or comma-separate)",
    )
    p.add_argument(
        "--metric",
        dest="metrics",
        action="append",
        default=[],
        metavar="METRIC",
        help="count, sum(bytes), sum(packets), min(start_time), max(end_time), count_distinct(FIELD) "
        "(repeat or comma-separate; default count, sum(bytes), sum(packets))",
    )
    p.add_argument(
        "--order-by",
        default="",
        metavar="METRIC",
        help="one of the metrics, '-' in front for descending (default: the first, descending)",
    )
    p.add_argument("--interval", type=_duration_type, metavar="DURATION", help="rows per time bucket (1m, 1h)")
    p.add_argument("--limit", type=_agg_limit, default=0, metavar="N", help="top N groups (per bucket; default 10)")
    p.set_defaults(handler=cmd_aggregate)

    top = _sub(
        commands,
        "top",
        common,
        "the usual questions as one Aggregate each: talkers, destinations, timeline, why, scanners, protocols, badaddr",
    )
    tops = top.add_subparsers(dest="preset", metavar="PRESET", required=True)
    for name, help_text in (
        ("talkers", "sources by bytes (per address, or per network with --prefix)"),
        ("destinations", "destinations by bytes (per address, or per network with --prefix)"),
    ):
        p = _sub(tops, name, common, help_text)
        window(p, "1h")
        p.add_argument("--prefix", metavar="LEN", help="group by network: 24, 64, or 24/64 (IPv4 /24, IPv6 /64)")
        p.add_argument("--limit", type=_agg_limit, default=10, metavar="N", help="top N (default 10)")
        p.set_defaults(handler=cmd_top_talkers, side="src" if name == "talkers" else "dst")
    p = _sub(tops, "timeline", common, "traffic over time per action, as one sparkline per action")
    window(p, "1h")
    p.add_argument(
        "--interval",
        type=_duration_type,
        metavar="DURATION",
        help="bucket size (default: about 60 buckets over the window)",
    )
    p.add_argument("--metric", choices=sorted(presets.TIMELINE_METRICS), default="bytes")
    p.set_defaults(handler=cmd_top_timeline)
    p = _sub(tops, "why", common, "why can't SRC reach DST: its rejected flows by rule kind and rule")
    window(p, "1h")
    p.add_argument("--src", required=True, metavar="ADDRESS")
    p.add_argument("--dst", required=True, metavar="ADDRESS")
    p.add_argument("--port", type=_port_type, metavar="PORT", help="only flows to this destination port")
    p.set_defaults(handler=cmd_top_why)
    p = _sub(tops, "scanners", common, "sources of rejected flows with the most distinct destinations")
    window(p, "1h")
    p.add_argument(
        "--by",
        choices=("addr", "port"),
        default="addr",
        help="rank by distinct destination addresses (default) or ports",
    )
    p.add_argument("--limit", type=_agg_limit, default=10, metavar="N", help="top N (default 10)")
    p.set_defaults(handler=cmd_top_scanners)
    p = _sub(tops, "protocols", common, f"traffic of uncommon protocols (not {presets.COMMON_PROTOCOLS})")
    window(p, "1h")
    p.add_argument("--all", action="store_true", help="every protocol, the common ones too")
    p.add_argument("--limit", type=_agg_limit, default=10, metavar="N", help="top N (default 10)")
    p.set_defaults(handler=cmd_top_protocols)
    p = _sub(tops, "badaddr", common, "flows to or from the addresses/CIDRs listed in a file")
    window(p, "1h")
    p.add_argument(
        "--file", required=True, metavar="PATH", help="one address or CIDR per line, # comments ('-': stdin)"
    )
    p.add_argument("--limit", type=_agg_limit, default=50, metavar="N", help="at most N rows (default 50)")
    p.set_defaults(handler=cmd_top_badaddr)

    # -- ingest ------------------------------------------------------------------------------
    p = _sub(commands, "ingest", common, "upload records from a JSON-lines file")
    p.add_argument("--flow-log-id", required=True, metavar="ID")
    p.add_argument("--file", required=True, metavar="PATH", help="one FlowRecord JSON object per line ('-' for stdin)")
    p.add_argument(
        "--batch-size",
        type=_batch_size,
        default=1000,
        metavar="N",
        help=f"records per message, 1-{MAX_INGEST_BATCH} (default 1000)",
    )
    p.set_defaults(handler=cmd_ingest)

    # -- collector (reads the server's status file: no connection) ------------------------------
    p = _sub(commands, "collector", common, "the NetFlow/IPFIX collector of a server on this machine")
    collector_commands = p.add_subparsers(dest="collector_command", metavar="COMMAND", required=True)
    q = _sub(
        collector_commands,
        "status",
        common,
        "print the collector's counters (from <data-dir>/collector-status.json, refreshed every second)",
    )
    q.add_argument(
        "--data-dir",
        default=os.environ.get("FLOWLOG_DATA_DIR", "./data"),
        metavar="DIR",
        help="the server's --data-dir (env FLOWLOG_DATA_DIR, default ./data)",
    )
    q.set_defaults(handler=cmd_collector_status)

    # -- import ------------------------------------------------------------------------------
    p = _sub(
        commands,
        "import",
        common,
        "import cloud flow-log files: AWS VPC Flow Logs or Azure VNet flow logs",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  aws s3 sync s3://BUCKET/AWSLogs/ ./flows/\n"
        "  flowlog import --flow-log fl-abc12345 --format aws ./flows\n"
        "  zcat *.log.gz | flowlog import --flow-log fl-abc12345 --format aws -\n"
        "  flowlog import --flow-log fl-abc12345 --format azure PT1H.json\n"
        "exit code: 0 when every line was imported, 1 when any line was rejected (each is reported\n"
        "on stderr as FILE:LINE: reason; the others are imported), 2 for a usage error.",
    )
    p.add_argument("--flow-log", dest="flow_log_id", required=True, metavar="ID", help="the flow log to import into")
    p.add_argument(
        "--format",
        dest="import_format",
        required=True,
        choices=IMPORT_FORMATS,
        help="aws: VPC Flow Logs (default or custom format, text, gzip or Parquet); azure: VNet / NSG flow log JSON",
    )
    p.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="a file, a directory (walked recursively, oldest first) or - for standard input",
    )
    p.add_argument(
        "--batch-size",
        type=_batch_size,
        default=1000,
        metavar="N",
        help=f"records per message, 1-{MAX_INGEST_BATCH} (default 1000)",
    )
    p.add_argument(
        "--max-errors",
        type=_positive_int,
        default=100,
        metavar="N",
        help="bad lines reported one by one on stderr (default 100; all are counted)",
    )
    p.add_argument(
        "--aws-fields",
        type=_aws_fields,
        metavar="'FIELD ...'",
        help="aws: the fields of lines that come before any header line, in order (a custom format "
        "exported without its header, e.g. from CloudWatch Logs); default: AWS's default format",
    )
    p.set_defaults(handler=cmd_import)
    return parser


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


@dataclass
class Ctx:
    """What a command needs: its arguments and the output streams of this invocation."""

    args: argparse.Namespace
    out: TextIO
    err: TextIO

    @property
    def json(self) -> bool:
        return bool(self.args.json)


def make_client(args: argparse.Namespace) -> FlowLogClient:
    return FlowLogClient(
        args.server or os.environ.get(ENV_SERVER) or DEFAULT_TARGET,
        args.api_key or os.environ.get(ENV_API_KEY) or None,
        tls=bool(args.tls),
        ca_file=args.ca_file or os.environ.get(ENV_CA_FILE) or None,
        cert_file=args.cert_file,
        key_file=args.key_file,
        timeout=args.timeout,
    )


def print_error(err: TextIO, error: FlowLogError) -> None:
    """`flowlog: CODE: message`, one `  - field: description` per violation, the hint."""
    err.write(f"{PROG}: {error.one_line()}\n")
    for line in error.detail_lines():
        err.write(f"  - {line}\n")
    if error.hint:
        err.write(f"  hint: {error.hint}\n")
    err.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command; returns the exit code (never raises SystemExit)."""
    out, err = sys.stdout, sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, already printed)
        return e.code if isinstance(e.code, int) else 2
    # Everything printed from here on goes through SafeWriter: data never reaches the terminal
    # as control characters (escape sequences in a record or a resource name are shown escaped).
    # (a SafeWriter is a text stream: write/flush/isatty; typed as the TextIO it stands in for)
    out = cast(TextIO, fmt.SafeWriter(out, json_style=bool(getattr(args, "json", False))))
    err = cast(TextIO, fmt.SafeWriter(err))
    ctx = Ctx(args, out, err)
    try:
        client = make_client(args)
    except OSError as e:
        err.write(f"{PROG}: cannot read {e.filename or 'a TLS file'}: {e.strerror or e}\n")
        return 1
    except ValueError as e:  # a server address with an unknown scheme
        err.write(f"{PROG}: {e}\n")
        return 2
    try:
        with client:
            return int(args.handler(ctx, client) or 0)
    except UsageError as e:
        sub: argparse.ArgumentParser = getattr(args, "_parser", parser)
        sub.print_usage(err)
        err.write(f"{sub.prog}: error: {e}\n")
        return 2
    except FlowLogError as e:
        print_error(err, e)
        return 1
    except OSError as e:
        if isinstance(e, BrokenPipeError):  # `flowlog query ... | head`: the reader is done
            return 0
        err.write(f"{PROG}: {e.filename + ': ' if e.filename else ''}{e.strerror or e}\n")
        return 1
    except KeyboardInterrupt:
        err.write(f"{PROG}: interrupted\n")
        return 130
    except Exception as e:  # a bug in this client: say so in one line, details with -v
        if getattr(args, "verbose", False):
            traceback.print_exc(file=err)
        err.write(f"{PROG}: unexpected error: {type(e).__name__}: {e} (run with -v for the traceback)\n")
        return 1


def run() -> None:
    """Console-script entry point (`flowlog = clients.cli:run`)."""
    code = main()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would complain again at exit while flushing a closed pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    sys.exit(code)


# --------------------------------------------------------------------------------------------
# Output helpers
# --------------------------------------------------------------------------------------------


def _show_one(ctx: Ctx, message: Any, fields: Callable[[Any], list[tuple[str, Any]]]) -> None:
    if ctx.json:
        ctx.out.write(fmt.to_json(message))
    else:
        ctx.out.write(fmt.render_fields(fields(message)))
    ctx.out.flush()


def _show_list(
    ctx: Ctx,
    items: Iterable[Any],
    headers: list[str],
    row: Callable[[Any], list[str]],
    what: str,
    align: list[str] | None = None,
) -> None:
    collected = list(items)
    if ctx.json:
        ctx.out.write(fmt.to_json(collected))
    elif collected:
        ctx.out.write(fmt.render_table(headers, [row(i) for i in collected], align=align))
    else:
        ctx.err.write(f"No {what} found.\n")
    ctx.out.flush()


def _deleted(ctx: Ctx, what: str, ident: str) -> int:
    if ctx.json:
        ctx.out.write(fmt.to_json({"deleted": ident}))
    else:
        ctx.out.write(f"Deleted {what} {ident}.\n")
    return 0


class RecordWriter:
    """Records to stdout as they arrive, a batch at a time: table rows or JSON lines."""

    def __init__(self, ctx: Ctx) -> None:
        self._ctx = ctx
        self._table = None if ctx.json else fmt.record_table(ctx.out)
        self.count = 0

    def write(self, records: Sequence[record_pb2.FlowRecord]) -> None:
        if not records:
            return
        if self._table is not None:
            self._table.write_rows(fmt.record_row(r) for r in records)
        else:
            self._ctx.out.write("".join(fmt.to_json_line(r) for r in records))
            self._ctx.out.flush()
        self.count += len(records)


class Progress:
    """`12,000 records, page 12…` on stderr: one line rewritten with \\r on a terminal, a
    plain line per page otherwise (logs stay readable)."""

    def __init__(self, err: TextIO, out: TextIO) -> None:
        self._err = err
        self._tty = _isatty(err)
        self._shares_screen = self._tty and _isatty(out)
        self._shown = 0

    @staticmethod
    def _text(q: PagedQuery) -> str:
        total = f" of {q.matched:,}" if q.matched else ""
        return f"{q.returned:,}{total} records, page {q.pages}…"

    def clear(self) -> None:
        """Before stdout writes to the same terminal: blank the progress line."""
        if self._shares_screen and self._shown:
            self._err.write("\r" + " " * self._shown + "\r")
            self._err.flush()
            self._shown = 0

    def _rewrite(self, text: str, end: str = "") -> None:
        self._err.write("\r" + text + " " * max(0, self._shown - len(text)) + end)
        self._err.flush()
        self._shown = 0 if end else len(text)

    def batch(self, q: PagedQuery) -> None:
        """After each batch: a terminal sees the count move."""
        if self._tty:
            self._rewrite(self._text(q))

    def page(self, q: PagedQuery) -> None:
        """After each page: elsewhere (a log file), one line per page."""
        if not self._tty:
            self._err.write(self._text(q) + "\n")
            self._err.flush()

    def done(self, q: PagedQuery) -> None:
        """On a terminal, the progress line becomes the final count."""
        if self._tty:
            self._rewrite(f"{q.returned:,} records in {q.pages} page{'' if q.pages == 1 else 's'}", "\n")


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


# --------------------------------------------------------------------------------------------
# resource
# --------------------------------------------------------------------------------------------


def cmd_resource_list(ctx: Ctx, client: FlowLogClient) -> int:
    a = ctx.args
    items = client.iter_resources(region=a.region or "", type=a.type, network_id=a.network_id or "")
    _show_list(ctx, items, fmt.RESOURCE_HEADERS, fmt.resource_row, "resources")
    return 0


def cmd_resource_get(ctx: Ctx, client: FlowLogClient) -> int:
    _show_one(ctx, client.get_resource(ctx.args.id), fmt.resource_fields)
    return 0


def cmd_resource_register(ctx: Ctx, client: FlowLogClient) -> int:
    a = ctx.args
    resource = client.register_resource(
        type=a.type,
        region=a.region,
        network_id=a.network_id,
        name=a.name,
        addresses=[x.strip() for addr in a.addresses for x in addr.split(",") if x.strip()],
        id=a.id,
        rules=a.rules,
    )
    _show_one(ctx, resource, fmt.resource_fields)
    return 0


def cmd_resource_delete(ctx: Ctx, client: FlowLogClient) -> int:
    client.delete_resource(ctx.args.id)
    return _deleted(ctx, "resource", ctx.args.id)


# --------------------------------------------------------------------------------------------
# logstore
# --------------------------------------------------------------------------------------------


def _store_address(ctx: Ctx) -> tuple[str, str, str]:
    """(region, project, name) from flags and/or positionals: the positionals fill, in
    order, whichever of the three the flags did not give (`get ap-x ops flows`,
    `get --region ap-x ops flows`)."""
    a = ctx.args
    labels = ("region", "project", "name")
    flags = {label: getattr(a, label) for label in labels}
    positionals = [p for p in (a.pos_region, a.pos_project, a.pos_name) if p]
    missing = [label for label in labels if not flags[label]]
    if len(positionals) > len(missing):
        raise UsageError(
            f"too many arguments: {' '.join(positionals)} (give REGION PROJECT NAME, or --region --project --name)"
        )
    values = dict(flags)
    for label, value in zip(missing, positionals):
        values[label] = value
    still_missing = [label for label in labels if not values[label]]
    if still_missing:
        raise UsageError(f"missing {', '.join(still_missing)}: give REGION PROJECT NAME, or --region --project --name")
    return values["region"], values["project"], values["name"]


def cmd_logstore_create(ctx: Ctx, client: FlowLogClient) -> int:
    a = ctx.args
    store = client.create_log_store(
        a.region, a.project, a.name, retention_days=a.retention_days, description=a.description
    )
    _show_one(ctx, store, fmt.log_store_fields)
    return 0


def cmd_logstore_get(ctx: Ctx, client: FlowLogClient) -> int:
    _show_one(ctx, client.get_log_store(*_store_address(ctx)), fmt.log_store_fields)
    return 0


def cmd_logstore_list(ctx: Ctx, client: FlowLogClient) -> int:
    a = ctx.args
    items = client.iter_log_stores(region=a.region or "", project=a.project or "")
    _show_list(ctx, items, fmt.LOG_STORE_HEADERS, fmt.log_store_row, "LogStores", fmt.LOG_STORE_ALIGN)
    return 0


def cmd_logstore_update(ctx: Ctx, client: FlowLogClient) -> int:
    a = ctx.args
    address = _store_address(ctx)
    fields: dict[str, Any] = {}
    if a.retention_days is not None:
        fields["retention_days"] = a.retention_days
    if a.description is not None:
        fields["description"] = a.description
    if not fields:
        raise UsageError("nothing to update: give --retention-days and/or --description")
    _show_one(ctx, client.update_log_store(*address, **fields), fmt.log_store_fields)
    return 0


def cmd_logstore_delete(ctx: Ctx, client: FlowLogClient) -> int:
    region, project, name = _store_address(ctx)
    client.delete_log_store(region, project, name)
    return _deleted(ctx, "LogStore", f"{region}/{project}/{name}")


# --------------------------------------------------------------------------------------------
# flowlog
# --------------------------------------------------------------------------------------------


def cmd_flowlog_create(ctx: Ctx, client: FlowLogClient) -> int:
    a = ctx.args
    if a.retention_days is not None and a.new_log_store is None:
        raise UsageError("--retention-days applies only with --new-log-store")
    resource_type, network_id = a.resource_type, a.network_id
    if resource_type is None or not network_id:
        # Saves typing what the inventory already knows; the server still checks them.
        resource = client.get_resource(a.resource_id)
        resource_type = resource_type if resource_type is not None else resource.type
        network_id = network_id or resource.network_id
    flow_log = client.create_flow_log(
        region=a.region,
        name=a.name,
        resource_type=resource_type,
        resource_id=a.resource_id,
        network_id=network_id,
        traffic_type=a.traffic_type,
        log_store=a.log_store,
        new_log_store=a.new_log_store,
        retention_days=a.retention_days or 0,
        description=a.description,
        client_token=a.client_token,
        paused=a.paused,
    )
    _show_one(ctx, flow_log, fmt.flow_log_fields)
    return 0


def cmd_flowlog_get(ctx: Ctx, client: FlowLogClient) -> int:
    _show_one(ctx, client.get_flow_log(ctx.args.id), fmt.flow_log_fields)
    return 0


def cmd_flowlog_list(ctx: Ctx, client: FlowLogClient) -> int:
    a = ctx.args
    items = client.iter_flow_logs(region=a.region or "", resource_id=a.resource_id, state=a.state)
    _show_list(ctx, items, fmt.FLOW_LOG_HEADERS, fmt.flow_log_row, "flow logs")
    return 0


def cmd_flowlog_update(ctx: Ctx, client: FlowLogClient) -> int:
    a = ctx.args
    fields = {
        key: getattr(a, key) for key in ("name", "description", "traffic_type", "state") if getattr(a, key) is not None
    }
    if not fields:
        raise UsageError("nothing to update: give --name, --description, --traffic-type and/or --state")
    _show_one(ctx, client.update_flow_log(a.id, **fields), fmt.flow_log_fields)
    return 0


def cmd_flowlog_delete(ctx: Ctx, client: FlowLogClient) -> int:
    client.delete_flow_log(ctx.args.id)
    return _deleted(ctx, "flow log", ctx.args.id)


# --------------------------------------------------------------------------------------------
# query / tail
# --------------------------------------------------------------------------------------------


def _log_stores(values: Sequence[str]) -> list[str]:
    return [s.strip() for v in values for s in v.split(",") if s.strip()]


def _continue_command(ctx: Ctx, request: query_pb2.QueryRequest, token: str) -> str:
    """The exact command that fetches the next page: same absolute window, same filter."""
    a = ctx.args
    argv = [PROG, "query", "--region", request.region, "--project", request.project]
    for store in request.log_stores:
        argv += ["--log-store", store]
    argv += ["--start", fmt.format_time(request.start_time), "--end", fmt.format_time(request.end_time)]
    if request.filter:
        argv += ["--filter", request.filter]
    if request.limit:
        argv += ["--limit", str(request.limit)]
    if a.oldest_first:
        argv.append("--oldest-first")
    if a.json:
        argv.append("--json")
    argv += ["--page-token", token]
    return shlex.join(argv)


def cmd_query(ctx: Ctx, client: FlowLogClient) -> int:
    a = ctx.args
    now = datetime.now(timezone.utc)
    start = fmt.parse_time(a.start, now=now)
    end = fmt.parse_time(a.end, now=now) if a.end else now
    if end <= start:
        raise UsageError(
            f"the window is empty: --start {fmt.format_time(start)} is not before --end {fmt.format_time(end)}"
        )
    request = client.build_query(
        region=a.region,
        project=a.project,
        log_stores=_log_stores(a.log_stores),
        start=start,
        end=end,
        filter=a.filter,
        limit=a.limit,
        order="oldest-first" if a.oldest_first else None,
        page_token=a.page_token,
    )
    writer = RecordWriter(ctx)
    if a.all:
        _query_all(ctx, client.query_all(request), writer)
        if writer.count == 0:
            ctx.err.write("No records matched.\n")
        return 0
    stream = client.query(request)
    for batch in stream.batches():
        writer.write(batch)
    summary = stream.summary
    ctx.out.flush()  # the records come before what stderr says about them, even through a pipe
    if writer.count == 0:
        ctx.err.write("No records matched.\n")
    if summary is not None and summary.more and summary.next_page_token:
        ctx.err.write(
            f"{writer.count:,} of {summary.matched:,} matching records shown; more remain. Continue with:\n"
            f"  {_continue_command(ctx, request, summary.next_page_token)}\n"
            "or add --all to fetch everything.\n"
        )
    ctx.err.flush()
    return 0


# aggregate / top
# --------------------------------------------------------------------------------------------


def _window(ctx: Ctx) -> tuple[datetime, datetime]:
    a = ctx.args
    now = datetime.now(timezone.utc)
    start = fmt.parse_time(a.start, now=now)
    end = fmt.parse_time(a.end, now=now) if a.end else now
    if end <= start:
        raise UsageError(
            f"the window is empty: --start {fmt.format_time(start)} is not before --end {fmt.format_time(end)}"
        )
    return start, end


def _split(values: Sequence[str]) -> list[str]:
    return [s.strip() for v in values for s in v.split(",") if s.strip()]


def _aggregate(ctx: Ctx, client: FlowLogClient, **kwargs: Any) -> query_pb2.AggregateResponse:
    """One Aggregate over the command's scope and window; preset filters AND the user's."""
    a = ctx.args
    start, end = _window(ctx)
    kwargs.setdefault("filter", a.filter)
    request = client.build_aggregate(
        region=a.region, project=a.project, log_stores=_log_stores(a.log_stores), start=start, end=end, **kwargs
    )
    return client.aggregate(request)


def _print_answer(
    ctx: Ctx, resp: query_pb2.AggregateResponse, *, extra: Sequence[tuple[str, Sequence[str]]] = ()
) -> None:
    if ctx.json:
        ctx.out.write(fmt.to_json(resp))
        return
    if resp.rows:
        ctx.out.write(fmt.aggregate_table(resp, extra=extra))
    ctx.out.flush()
    ctx.err.write(fmt.aggregate_footer(resp) if resp.rows else "No records matched.\n")
    ctx.err.flush()


def cmd_aggregate(ctx: Ctx, client: FlowLogClient) -> int:
    a = ctx.args
    resp = _aggregate(
        ctx,
        client,
        group_by=_split(a.group_by),
        metrics=_split(a.metrics),
        order_by=a.order_by,
        interval=a.interval,
        limit=a.limit,
    )
    _print_answer(ctx, resp)
    return 0


def _preset(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except presets.PresetError as e:
        raise UsageError(str(e)) from None


def cmd_top_talkers(ctx: Ctx, client: FlowLogClient) -> int:
    a = ctx.args
    resp = _aggregate(ctx, client, limit=a.limit, **_preset(presets.talkers, a.side, a.prefix, a.filter))
    _print_answer(ctx, resp)
    return 0


def cmd_top_timeline(ctx: Ctx, client: FlowLogClient) -> int:
    a = ctx.args
    start, end = _window(ctx)
    interval = a.interval or presets.nice_interval(end - start)
    resp = _aggregate(ctx, client, **presets.timeline(a.metric, interval, a.filter))
    if ctx.json:
        ctx.out.write(fmt.to_json(resp))
        return 0
    ms = int(interval.total_seconds() * 1000)
    ctx.out.write(fmt.timeline_chart(resp, int(start.timestamp() * 1000), int(end.timestamp() * 1000), ms))
    ctx.out.flush()
    ctx.err.write(f"{resp.matched:,} records matched\n")
    return 0


def cmd_top_why(ctx: Ctx, client: FlowLogClient) -> int:
    a = ctx.args
    rejected, overall = _preset(presets.why, a.src, a.dst, a.port, a.filter)
    resp = _aggregate(ctx, client, **rejected)
    context = _aggregate(ctx, client, **overall) if not resp.rows or ctx.json else None
    if ctx.json:
        ctx.out.write(fmt.to_json({"rejected": fmt.to_dict(resp), "by_action": fmt.to_dict(context)}))
        return 0
    target = f"{a.dst}" + (f" port {a.port}" if a.port is not None else "")
    if resp.rows:
        ctx.out.write(fmt.aggregate_table(resp))
        top = resp.rows[0]
        kind = top.keys[0].removeprefix("RULE_KIND_").replace("_", " ").lower()
        rule = f"{kind} rule {top.keys[1]}" if top.keys[1] else f"{kind} rule (not recorded)"
        ctx.out.write(
            f"\n{a.src} -> {target}: {resp.matched:,} rejected flows; most by the {rule} "
            f"({top.values[0]:,} flows, last seen {fmt.metric_cell('max(end_time)', top.values[3])}).\n"
        )
        return 0
    assert context is not None
    counts = {r.keys[0]: r.values[0] for r in context.rows}
    if not counts:
        ctx.out.write(
            f"{a.src} -> {target}: no flows at all in the window (not rejected either: check the "
            "addresses, the LogStores and the time window).\n"
        )
    else:
        seen = ", ".join(f"{n:,} {k.removeprefix('ACTION_')}" for k, n in sorted(counts.items()))
        ctx.out.write(f"{a.src} -> {target}: nothing rejected in the window ({seen}).\n")
    return 0


def cmd_top_scanners(ctx: Ctx, client: FlowLogClient) -> int:
    a = ctx.args
    resp = _aggregate(ctx, client, limit=a.limit, **presets.scanners(a.by, a.filter))
    _print_answer(ctx, resp)
    return 0


def cmd_top_protocols(ctx: Ctx, client: FlowLogClient) -> int:
    a = ctx.args
    resp = _aggregate(ctx, client, limit=a.limit, **presets.protocols(a.all, a.filter))
    _print_answer(ctx, resp)
    return 0


def cmd_top_badaddr(ctx: Ctx, client: FlowLogClient) -> int:
    a = ctx.args
    if a.file == "-":
        nets = _preset(presets.read_bad_list, sys.stdin.read().splitlines(), "standard input")
    else:
        try:
            with open(a.file, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except UnicodeDecodeError:
            raise UsageError(f"{a.file} is not UTF-8 text: one address or CIDR per line") from None
        nets = _preset(presets.read_bad_list, lines, a.file)
    answers = [
        _aggregate(ctx, client, group_by=presets.BAD_GROUPS, metrics=presets.BAD_METRICS, filter=f, limit=a.limit)
        for f in presets.bad_filters(nets, a.filter)
    ]
    every = [r for resp in answers for r in resp.rows]
    order = sorted(range(len(every)), key=lambda i: (-every[i].values[0], list(every[i].keys)))
    rows = [every[i] for i in order[: a.limit]]
    merged = query_pb2.AggregateResponse(
        group_by=presets.BAD_GROUPS,
        metrics=presets.BAD_METRICS,
        rows=rows,
        matched=sum(resp.matched for resp in answers),
        approximate=any(resp.approximate for resp in answers),
    )
    folded = [resp.other for resp in answers if resp.HasField("other")] + [every[i] for i in order[a.limit :]]
    if folded:  # count, sum(bytes), min(start_time), max(end_time) of everything not shown
        merged.other.values.extend(
            [
                sum(r.values[0] for r in folded),
                sum(r.values[1] for r in folded),
                min(r.values[2] for r in folded),
                max(r.values[3] for r in folded),
            ]
        )
    if ctx.json:
        data = fmt.to_dict(merged)
        for row, out in zip(rows, data["rows"]):
            out["list_entry"] = presets.bad_entry(row.keys, nets)
        ctx.out.write(fmt.to_json(data))
        return 0
    _print_answer(ctx, merged, extra=[("list entry", [presets.bad_entry(r.keys, nets) for r in rows])])
    return 0


def _query_all(ctx: Ctx, paged: PagedQuery, writer: RecordWriter) -> None:
    """Every page, with a progress report on stderr."""
    progress = Progress(ctx.err, ctx.out)
    paged.on_page = progress.page
    try:
        for batch in paged.batches():
            progress.clear()
            writer.write(batch)
            progress.batch(paged)
    finally:
        progress.done(paged)


def cmd_tail(ctx: Ctx, client: FlowLogClient) -> int:
    a = ctx.args
    stream = client.tail(
        region=a.region,
        project=a.project,
        log_stores=_log_stores(a.log_stores),
        filter=a.filter,
        start=a.start,
        cursor=a.cursor,
        heartbeats=bool(a.verbose),
    )
    writer = RecordWriter(ctx)

    def resume_hint() -> None:
        cursor = stream.cursor or a.cursor
        if cursor:
            ctx.err.write(f"{PROG}: resume with: --cursor {cursor}\n")
        ctx.err.flush()

    try:
        for response in stream:
            if response.WhichOneof("result") == "batch":
                writer.write(response.batch.records)
            elif response.WhichOneof("result") == "heartbeat":
                ctx.err.write(f"heartbeat {fmt.format_time(response.heartbeat.time)} cursor {response.cursor}\n")
                ctx.err.flush()
    except KeyboardInterrupt:
        stream.cancel()
        ctx.err.write(f"\n{PROG}: stopped after {writer.count:,} records\n")
        resume_hint()
        return 0
    except FlowLogError as e:
        print_error(ctx.err, e)
        resume_hint()
        return 1
    ctx.err.write(f"{PROG}: the server ended the tail after {writer.count:,} records\n")
    resume_hint()
    return 0


# --------------------------------------------------------------------------------------------
# ingest
# --------------------------------------------------------------------------------------------


def _record_lines(path: str, stdin_lines: list[str] | None) -> Iterable[tuple[int, str]]:
    """(line number, text) of every non-blank line."""
    if stdin_lines is not None:
        lines: Iterable[str] = stdin_lines
        for number, line in enumerate(lines, 1):
            if line.strip():
                yield number, line
        return
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                yield number, line


def cmd_ingest(ctx: Ctx, client: FlowLogClient) -> int:
    a = ctx.args
    name = "<stdin>" if a.file == "-" else a.file
    stdin_lines = sys.stdin.readlines() if a.file == "-" else None
    # Check the whole file before sending anything: a typo on line 90,000 must not leave
    # the first 89,999 records ingested and the rest not.
    line_numbers: list[int] = []
    for number, line in _record_lines(a.file, stdin_lines):
        try:
            fmt.parse_record_json(line)
        except ValueError as e:
            ctx.err.write(f"{PROG}: {name}:{number}: not a FlowRecord: {e}\n")
            return 1
        line_numbers.append(number)
    records = (fmt.parse_record_json(line) for _, line in _record_lines(a.file, stdin_lines))
    response = client.ingest_records(a.flow_log_id, records, batch_size=a.batch_size)
    if ctx.json:
        ctx.out.write(fmt.to_json(response))
    else:
        ctx.out.write(f"accepted {response.accepted:,}, rejected {response.rejected:,}\n")
        for rejection in response.rejections:
            where = f"record {rejection.index}"
            if rejection.index < len(line_numbers):
                where += f" ({name}:{line_numbers[rejection.index]})"
            field = f"{rejection.field}: " if rejection.field else ""
            ctx.out.write(f"  - {where}: {field}{rejection.reason}\n")
        if response.rejected > len(response.rejections):
            ctx.out.write(f"  ... and {response.rejected - len(response.rejections):,} more\n")
    ctx.out.flush()
    return 1 if response.rejected else 0


def cmd_collector_status(ctx: Ctx, client: FlowLogClient) -> int:
    path = os.path.join(ctx.args.data_dir, "collector-status.json")
    try:
        with open(path) as fh:
            doc = json.load(fh)
    except FileNotFoundError:
        ctx.err.write(
            f"{PROG}: no collector status at {path}: is a server with --collector-listen running on this data dir?\n"
        )
        return 1
    except ValueError:
        ctx.err.write(f"{PROG}: {path} is not a collector status file\n")
        return 1
    if ctx.json:
        ctx.out.write(json.dumps(doc, sort_keys=True) + "\n")
        return 0
    age = time.time() - float(doc.get("time", 0))
    ctx.out.write(
        f"collector udp {doc.get('listen')} pid {doc.get('pid')} "
        f"{'running' if doc.get('running') else 'stopped'}, status written {age:.0f}s ago\n"
    )
    helps = doc.get("help", {})
    for name, value in doc.get("counters", {}).items():
        ctx.out.write(f"  {name:<20} {value:>14}  {helps.get(name, '')}\n")
    return 0


# --------------------------------------------------------------------------------------------
# import
# --------------------------------------------------------------------------------------------

# Without a terminal, a progress line every this many seconds (logs stay short).
IMPORT_PROGRESS_EVERY_S = 10.0
# On a terminal, the progress line is rewritten at most this often.
IMPORT_TTY_EVERY_S = 0.2


class ImportReporter:
    """Progress and bad lines of `flowlog import`, on stderr.

    Called from the thread that feeds the Ingest stream and from the main thread, hence the
    lock. On a terminal one progress line is rewritten in place; elsewhere a line is written
    every IMPORT_PROGRESS_EVERY_S seconds. Bad lines are written as `flowlog: FILE:LINE: reason`
    up to `max_errors`, then counted only.
    """

    def __init__(self, err: TextIO, max_errors: int, every_s: float | None = None) -> None:
        self._err = err
        self._tty = _isatty(err)
        self._every = every_s if every_s is not None else (IMPORT_TTY_EVERY_S if self._tty else IMPORT_PROGRESS_EVERY_S)
        self._max_errors = max_errors
        self._lock = threading.Lock()
        self._shown = 0  # width of the progress line now on screen
        self._next = time.monotonic() + self._every
        self.errors = 0

    @staticmethod
    def text(p: ImportProgress) -> str:
        bad = f", {p.bad:,} bad" if p.bad else ""
        return (
            f"{p.files_done}/{p.files_total} files, {p.records:,} records sent "
            f"({p.rate:,.0f}/s){bad}, {p.elapsed:.0f}s: {p.source}"
        )

    def _clear(self) -> None:
        if self._shown:
            self._err.write("\r" + " " * self._shown + "\r")
            self._shown = 0

    def problem(self, problem: LineError) -> None:
        with self._lock:
            self.errors += 1
            if self.errors > self._max_errors:
                return
            self._clear()
            self._err.write(f"{PROG}: {problem}\n")
            if self.errors == self._max_errors:
                self._err.write(f"{PROG}: further bad lines are counted, not shown (--max-errors {self._max_errors})\n")
            self._err.flush()

    def progress(self, p: ImportProgress) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        with self._lock:
            self._next = now + self._every
            text = self.text(p)
            if self._tty:
                width = shutil.get_terminal_size((100, 24)).columns - 1
                text = text[:width]
                self._err.write("\r" + text + " " * max(0, self._shown - len(text)))
                self._shown = len(text)
            else:
                self._err.write(text + "\n")
            self._err.flush()

    def done(self) -> None:
        with self._lock:
            self._clear()
            self._err.flush()


def cmd_import(ctx: Ctx, client: FlowLogClient) -> int:
    a = ctx.args
    reporter = ImportReporter(ctx.err, a.max_errors)
    if a.aws_fields and a.import_format != "aws":
        raise UsageError("--aws-fields applies only with --format aws")
    try:
        result: ImportResult = client.import_files(
            a.flow_log_id,
            a.files,
            a.import_format,
            batch_size=a.batch_size,
            aws_fields=a.aws_fields,
            on_problem=reporter.problem,
            on_progress=reporter.progress,
        )
    except ValueError as e:  # '-' twice
        raise UsageError(str(e)) from None
    finally:
        reporter.done()
    rate = result.records / result.elapsed if result.elapsed > 0 else 0.0
    if ctx.json:
        ctx.out.write(
            fmt.to_json(
                {
                    "flow_log_id": result.flow_log.id,
                    "files": len(result.files),
                    "records": result.records,
                    "accepted": result.accepted,
                    "rejected": result.rejected,
                    "skipped": result.skipped,
                    "seconds": round(result.elapsed, 3),
                    "problems": [
                        {"source": e.source, "line": e.line, "field": e.field, "reason": e.reason}
                        for e in result.problems
                    ],
                }
            )
        )
    else:
        store = result.flow_log.destination
        skipped = f", skipped {result.skipped:,}" if result.skipped else ""
        ctx.out.write(
            f"imported {len(result.files)} file{'' if len(result.files) == 1 else 's'} into {result.flow_log.id} "
            f"({store.project}/{store.log_store}): accepted {result.accepted:,}, rejected {result.rejected:,}{skipped} "
            f"in {result.elapsed:.1f}s ({rate:,.0f} records/s)\n"
        )
        if result.undetailed:
            ctx.out.write(
                f"  {result.undetailed:,} of the rejected records were counted by the server without "
                "detail (it details the first 1,000 of each call)\n"
            )
    ctx.out.flush()
    return 1 if result.rejected else 0


if __name__ == "__main__":
    run()
