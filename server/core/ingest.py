"""Ingest from real collectors: which flow log a batch belongs to and which records to keep.

Each record is checked on its own (records.check_record); a bad record is rejected with its
field and reason and the good records of the same batch are kept. Identity fields (account,
region, resource, destination) always come from the flow log, never from the collector.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from server.core import rules
from server.core.errors import FailedPrecondition, InvalidArgument, NotFound
from server.core.model import FlowLog, FlowLogState, FlowRecord, RECORD_VERSION
from server.core.ports import MetadataStore
from server.core.records import canonical_address, check_record, record_id


@dataclass(frozen=True)
class Rejection:
    index: int
    field: str
    reason: str


def flow_log_for_ingest(metadata: MetadataStore, account: str, flow_log_id: str) -> FlowLog:
    """The caller's ACTIVE flow log; NOT_FOUND for unknown or another account's."""
    try:
        rules.check_flow_log_id(flow_log_id)
    except InvalidArgument:
        raise InvalidArgument.field("flow_log_id", f"{flow_log_id[:40]!r} is not a flow log id ('fl-' and 8-32 lowercase letters or digits)") from None
    with metadata.transaction() as tx:
        fl = tx.get_flow_log(account, flow_log_id)
    if fl is None:
        raise NotFound(f"flow log {flow_log_id} not found")
    if fl.state != FlowLogState.ACTIVE:
        raise FailedPrecondition(f"flow log {flow_log_id} is PAUSED; set its state to FLOW_LOG_STATE_ACTIVE to ingest")
    return fl


def accept(fl: FlowLog, raw: Iterable[tuple], first_index: int, now_ms: int) -> tuple[list[FlowRecord], list[Rejection]]:
    """Turn raw collector rows into stored records.

    `raw` yields tuples (record_id, account_id, flow_log_id, src_addr, dst_addr, src_port, dst_port, protocol,
    packets, bytes, start_ms, end_ms, action, log_status, direction, tcp_flags) exactly as sent.
    """
    ok: list[FlowRecord] = []
    bad: list[Rejection] = []
    account, fid = fl.account_id, fl.id
    for i, (rid, acc, flid, src, dst, sport, dport, proto, pkts, nbytes, start, end, action, status, direction,
            flags) in enumerate(raw, first_index):
        if flid and flid != fid:
            bad.append(Rejection(i, "flow_log_id", f"record names flow log {flid[:40]!r} but the batch is for {fid}"))
            continue
        if acc and acc != account:
            bad.append(Rejection(i, "account_id", "must be empty or the caller's account"))
            continue
        try:
            src = canonical_address(src)
        except ValueError:
            bad.append(Rejection(i, "src_addr", f"{src[:50]!r} is not an IP address"))
            continue
        try:
            dst = canonical_address(dst)
        except ValueError:
            bad.append(Rejection(i, "dst_addr", f"{dst[:50]!r} is not an IP address"))
            continue
        rec = FlowRecord("", RECORD_VERSION, account, fid, fl.region, fl.project, fl.log_store, int(fl.resource_type),
                         fl.resource_id, fl.network_id, src, dst, sport, dport, proto, pkts, nbytes, start, end,
                         action, status, direction, flags)
        problem = check_record(rec, now_ms)
        if problem is not None:
            bad.append(Rejection(i, problem.field, problem.reason))
            continue
        wanted = record_id(fid, src, dst, sport, dport, proto, direction, start, end)
        if rid and rid != wanted:
            bad.append(Rejection(i, "record_id", "must be empty or the stable id of the flow window; leave it empty and the server computes it"))
            continue
        ok.append(rec._replace(record_id=wanted))
    return ok, bad
