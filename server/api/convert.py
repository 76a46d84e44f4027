"""Proto messages <-> domain values. Enum numbers are shared, so enums convert by value."""

from __future__ import annotations

from typing import Any, Callable, cast

from google.protobuf import timestamp_pb2

from flowlog.v1 import flow_log_pb2, log_store_pb2, query_pb2, record_pb2, resource_pb2
from server.core.aggregate import AggregateResult, AggregateRow
from server.core.model import FlowLog, FlowRecord, LogStore, Resource, RuleKind, SecurityRule


def ts(ms: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def _e(value: int) -> Any:
    """A core enum as the number a message field takes (the stubs type each field with its
    proto enum's own type)."""
    return int(value)


def ms_of(t: timestamp_pb2.Timestamp) -> int:
    return t.seconds * 1000 + t.nanos // 1_000_000


def resource_to_pb(r: Resource) -> resource_pb2.Resource:
    return resource_pb2.Resource(
        id=r.id,
        type=_e(r.type),
        region=r.region,
        network_id=r.network_id,
        name=r.name,
        addresses=list(r.addresses),
        create_time=ts(r.create_time_ms),
        rules=[
            resource_pb2.SecurityRule(
                priority=x.priority,
                direction=_e(x.direction),
                action=_e(x.action),
                protocol=x.protocol,
                peer_cidr=x.peer_cidr,
                port_from=x.port_from,
                port_to=x.port_to,
                id=x.id,
                kind=_e(x.kind),
            )
            for x in r.rules
        ],
    )


def resource_from_pb(m: resource_pb2.Resource) -> Resource:
    return Resource(
        id=m.id,
        type=cast(Any, m.type),  # the proto's number; Resource keeps it as the core enum's
        region=m.region,
        network_id=m.network_id,
        name=m.name,
        addresses=tuple(m.addresses),
        rules=tuple(
            SecurityRule(
                x.priority,
                x.direction,
                x.action,
                x.protocol,
                x.peer_cidr,
                x.port_from,
                x.port_to,
                x.id,
                x.kind or RuleKind.SECURITY_GROUP,
            )
            for x in m.rules
        ),
    )


def log_store_to_pb(s: LogStore) -> log_store_pb2.LogStore:
    return log_store_pb2.LogStore(
        region=s.region,
        project=s.project,
        name=s.name,
        retention_days=s.retention_days,
        description=s.description,
        create_time=ts(s.create_time_ms),
        update_time=ts(s.update_time_ms),
    )


def log_store_from_pb(m: log_store_pb2.LogStore) -> LogStore:
    return LogStore(
        region=m.region, project=m.project, name=m.name, retention_days=m.retention_days, description=m.description
    )


def flow_log_to_pb(f: FlowLog) -> flow_log_pb2.FlowLog:
    return flow_log_pb2.FlowLog(
        id=f.id,
        region=f.region,
        name=f.name,
        resource_type=_e(f.resource_type),
        resource_id=f.resource_id,
        network_id=f.network_id,
        traffic_type=_e(f.traffic_type),
        destination=flow_log_pb2.FlowLogDestination(project=f.project, log_store=f.log_store),
        description=f.description,
        state=_e(f.state),
        create_time=ts(f.create_time_ms),
        update_time=ts(f.update_time_ms),
    )


# (typed as a plain callable: the core's int enums go in as they are, no conversion per record)
_Record: Callable[..., record_pb2.FlowRecord] = record_pb2.FlowRecord
_Timestamp = timestamp_pb2.Timestamp


def record_to_pb(r: FlowRecord) -> record_pb2.FlowRecord:
    s, e = r.start_time, r.end_time
    return _Record(
        record_id=r.record_id,
        version=r.version,
        account_id=r.account_id,
        flow_log_id=r.flow_log_id,
        region=r.region,
        project=r.project,
        log_store=r.log_store,
        resource_type=r.resource_type,
        resource_id=r.resource_id,
        network_id=r.network_id,
        src_addr=r.src_addr,
        dst_addr=r.dst_addr,
        src_port=r.src_port,
        dst_port=r.dst_port,
        protocol=r.protocol,
        packets=r.packets,
        bytes=r.bytes,
        start_time=_Timestamp(seconds=s // 1000, nanos=(s % 1000) * 1_000_000),
        end_time=_Timestamp(seconds=e // 1000, nanos=(e % 1000) * 1_000_000),
        action=r.action,
        log_status=r.log_status,
        direction=r.direction,
        tcp_flags=r.tcp_flags,
        rule_id=r.rule_id,
        rule_kind=r.rule_kind,
        sampling_rate=r.sampling_rate,
    )


def records_to_pb(records: list[FlowRecord]) -> list[record_pb2.FlowRecord]:
    return [record_to_pb(r) for r in records]


def _aggregate_row(row: AggregateRow) -> query_pb2.AggregateRow:
    m = query_pb2.AggregateRow(keys=row.keys, values=row.values)
    if row.bucket_start_ms is not None:
        m.bucket_start.CopyFrom(ts(row.bucket_start_ms))
    return m


def aggregate_to_pb(r: AggregateResult) -> query_pb2.AggregateResponse:
    m = query_pb2.AggregateResponse(
        group_by=r.group_by,
        metrics=r.metrics,
        rows=[_aggregate_row(x) for x in r.rows],
        matched=r.matched,
        approximate=r.approximate,
    )
    if r.other is not None:
        m.other.CopyFrom(_aggregate_row(r.other))
    return m
