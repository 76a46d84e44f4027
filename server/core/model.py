"""Entities of the flowlog domain, in the domain's words.

Enum values are numbered exactly as in protos/flowlog/v1/types.proto, so the API layer converts
by value and storage keeps small integers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Sequence


class ResourceType(enum.IntEnum):
    UNSPECIFIED = 0
    EIP = 1
    NAT_GATEWAY = 2
    IPV6_GATEWAY = 3
    PEERING_CONNECTION = 4
    DEDICATED_GATEWAY = 5
    SSL_VPN_GATEWAY = 6
    CSN = 7


class TrafficType(enum.IntEnum):
    UNSPECIFIED = 0
    ALL = 1
    ALLOW = 2
    DENY = 3


class Action(enum.IntEnum):
    UNSPECIFIED = 0
    ACCEPT = 1
    REJECT = 2


class LogStatus(enum.IntEnum):
    UNSPECIFIED = 0
    OK = 1
    NODATA = 2
    SKIPDATA = 3


class Direction(enum.IntEnum):
    UNSPECIFIED = 0
    INGRESS = 1
    EGRESS = 2


class RuleKind(enum.IntEnum):
    UNSPECIFIED = 0
    ACL = 1
    SECURITY_GROUP = 2
    DEFAULT = 3


# The rule_id of records that no rule matched (rule_kind DEFAULT).
DEFAULT_DENY_RULE_ID = "default-deny"


class FlowLogState(enum.IntEnum):
    UNSPECIFIED = 0
    ACTIVE = 1
    PAUSED = 2


# Prefix of server-assigned resource ids, per type.
RESOURCE_ID_PREFIX: dict[ResourceType, str] = {
    ResourceType.EIP: "eip",
    ResourceType.NAT_GATEWAY: "nat",
    ResourceType.IPV6_GATEWAY: "ip6gw",
    ResourceType.PEERING_CONNECTION: "peer",
    ResourceType.DEDICATED_GATEWAY: "dcgw",
    ResourceType.SSL_VPN_GATEWAY: "vpn",
    ResourceType.CSN: "csn",
}


@dataclass(frozen=True)
class SecurityRule:
    """One ACL or security-group rule. ACL rules are tried first (ascending priority), then the
    security-group rules; the first that matches decides (server.core.security)."""

    priority: int
    direction: Direction
    action: Action
    protocol: int = 0  # IANA number, 0 = any
    peer_cidr: str = ""  # "" = any
    port_from: int = 0  # 0-0 = any
    port_to: int = 0
    id: str = ""  # unique within the resource; server.core.rules.complete_rule_ids fills it
    kind: RuleKind = RuleKind.SECURITY_GROUP  # ACL or SECURITY_GROUP


@dataclass(frozen=True)
class Resource:
    id: str
    type: ResourceType
    region: str
    network_id: str
    name: str
    addresses: tuple[str, ...]
    rules: tuple[SecurityRule, ...] = ()
    create_time_ms: int = 0
    account_id: str = ""


@dataclass(frozen=True)
class LogStoreKey:
    region: str
    project: str
    name: str

    def __str__(self) -> str:
        return f"{self.region}/{self.project}/{self.name}"


@dataclass(frozen=True)
class LogStore:
    region: str
    project: str
    name: str
    retention_days: int = 7
    description: str = ""
    create_time_ms: int = 0
    update_time_ms: int = 0
    account_id: str = ""

    @property
    def key(self) -> LogStoreKey:
        return LogStoreKey(self.region, self.project, self.name)


@dataclass(frozen=True)
class FlowLog:
    id: str
    region: str
    name: str
    resource_type: ResourceType
    resource_id: str
    network_id: str
    traffic_type: TrafficType
    project: str
    log_store: str
    description: str = ""
    state: FlowLogState = FlowLogState.ACTIVE
    create_time_ms: int = 0
    update_time_ms: int = 0
    account_id: str = ""

    @property
    def destination(self) -> LogStoreKey:
        return LogStoreKey(self.region, self.project, self.log_store)


@dataclass(frozen=True)
class Page:
    """One page of a list: the items and the token for the next page ("" when none)."""

    items: list[Any] = field(default_factory=list)
    next_page_token: str = ""


class FlowRecord(NamedTuple):
    """One flow over one aggregation window, as stored.

    A NamedTuple, not a dataclass: the pipeline builds hundreds of thousands per second and
    backends want tuples/columns. Times are epoch milliseconds (records keep millisecond
    precision). Addresses are canonical text (ipaddress' compressed form); "" on NODATA rows.
    Enums are the proto numbers.
    """

    record_id: str
    version: int
    account_id: str
    flow_log_id: str
    region: str
    project: str
    log_store: str
    resource_type: int
    resource_id: str
    network_id: str
    src_addr: str
    dst_addr: str
    src_port: int
    dst_port: int
    protocol: int
    packets: int
    bytes: int
    start_time: int
    end_time: int
    action: int
    log_status: int
    direction: int
    tcp_flags: int
    # The rule that decided `action` ("" from collectors that do not know), its RuleKind, and
    # the exporter's sampling interval (0 or 1: unsampled). Appended last: older code built
    # records positionally up to tcp_flags, and the defaults keep such records whole.
    rule_id: str = ""
    rule_kind: int = 0
    sampling_rate: int = 0


RECORD_FIELDS: tuple[str, ...] = FlowRecord._fields
RECORD_VERSION = 1

# Records per step when a large batch is turned into columns (record_columns).
COLUMNS_SLICE = 4096


def record_columns(records: Sequence[FlowRecord]) -> list[list[Any]]:
    """The records column by column (one list per FlowRecord field): zip(*records), a slice at a
    time. One zip over a 50,000-record archive range is a single C call that keeps the GIL for
    16-25 ms, and every Tail delivery waiting meanwhile shows it in its p99; slices of 4,096 let
    other threads in between at the same total cost."""
    n = len(records)
    if n <= COLUMNS_SLICE:
        return [list(c) for c in zip(*records)] if n else [[] for _ in RECORD_FIELDS]
    cols: list[list[Any]] = [[] for _ in RECORD_FIELDS]
    for i in range(0, n, COLUMNS_SLICE):
        for col, part in zip(cols, zip(*records[i : i + COLUMNS_SLICE])):
            col.extend(part)
    return cols
