"""Ingest from real collectors: which flow log a batch belongs to and which records to keep.

Each record is checked on its own (records.check_record); a bad record is rejected with its
field and reason and the good records of the same batch are kept. Identity fields (account,
region, resource, destination) always come from the flow log, never from the collector.

`direction` is optional (AWS's default v2 format has none): a record that leaves it unspecified
gets it from the flow log's resource addresses (server.core.attribution: destination in them ->
INGRESS, else source -> EGRESS, else it stays unspecified), before its record_id is computed,
so the id is the same as if the collector had sent that direction.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from itertools import repeat
from operator import contains, ge, le, sub
from typing import Any, Iterable, Sequence

from server.core import rules
from server.core.attribution import AddressMatcher
from server.core.columns import table_of_buffers
from server.core.errors import FailedPrecondition, InvalidArgument, NotFound
from server.core.model import RECORD_VERSION, FlowLog, FlowLogState, FlowRecord, RuleKind
from server.core.ports import CompiledIngest, MetadataStore
from server.core.records import (
    MAX_FUTURE_MS,
    MAX_PAST_MS,
    MAX_PORT,
    MAX_PROTOCOL,
    MAX_TCP_FLAGS,
    MAX_U64,
    MAX_WINDOW_MS,
    ZONE_REFUSED,
    canonical_address,
    check_record,
    record_id,
    record_ids,
)


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
        raise InvalidArgument.field(
            "flow_log_id", f"{flow_log_id[:40]!r} is not a flow log id ('fl-' and 8-32 lowercase letters or digits)"
        ) from None
    with metadata.transaction() as tx:
        fl = tx.get_flow_log(account, flow_log_id)
    if fl is None:
        raise NotFound(f"flow log {flow_log_id} not found")
    if fl.state != FlowLogState.ACTIVE:
        raise FailedPrecondition(f"flow log {flow_log_id} is PAUSED; set its state to FLOW_LOG_STATE_ACTIVE to ingest")
    return fl


def resource_matcher(metadata: MetadataStore, fl: FlowLog) -> AddressMatcher:
    """The addresses of the flow log's resource, compiled: what derives a missing direction. A
    resource that is gone (it cannot be while the flow log exists) matches nothing."""
    with metadata.transaction() as tx:
        resource = tx.get_resource(fl.account_id, fl.resource_id)
    return AddressMatcher(resource.addresses if resource is not None else ())


_NO_MATCHER = AddressMatcher(())

# How many columns accept_columns takes (accept()'s row fields).
RAW_FIELDS = 19


def accept(
    fl: FlowLog, raw: Iterable[tuple[Any, ...]], first_index: int, now_ms: int, matcher: AddressMatcher | None = None
) -> tuple[list[FlowRecord], list[Rejection]]:
    """Turn raw collector rows into stored records.

    `raw` yields tuples (record_id, account_id, flow_log_id, src_addr, dst_addr, src_port, dst_port, protocol,
    packets, bytes, start_ms, end_ms, action, log_status, direction, tcp_flags, rule_id, rule_kind,
    sampling_rate) exactly as sent. `matcher`: the resource's addresses, which give a record without a
    direction its direction (none: it stays unspecified).
    """
    ok: list[FlowRecord] = []
    bad: list[Rejection] = []
    account, fid = fl.account_id, fl.id
    head = stored_head(fl)
    matcher = matcher or _NO_MATCHER
    for i, (
        rid,
        acc,
        flid,
        src,
        dst,
        sport,
        dport,
        proto,
        pkts,
        nbytes,
        start,
        end,
        action,
        status,
        direction,
        flags,
        rule_id,
        rule_kind,
        sampling,
    ) in enumerate(raw, first_index):
        if flid and flid != fid:
            bad.append(Rejection(i, "flow_log_id", f"record names flow log {flid[:40]!r} but the batch is for {fid}"))
            continue
        if acc and acc != account:
            bad.append(Rejection(i, "account_id", "must be empty or the caller's account"))
            continue
        try:
            src = canonical_address(src)
        except ValueError:
            bad.append(Rejection(i, "src_addr", f"{src[:50]!r} is not an IP address{_zone_hint(src)}"))
            continue
        try:
            dst = canonical_address(dst)
        except ValueError:
            bad.append(Rejection(i, "dst_addr", f"{dst[:50]!r} is not an IP address{_zone_hint(dst)}"))
            continue
        if direction == 0 and src and dst:
            direction = matcher.direction(src, dst)
        # head: version .. network_id (mypy cannot count a starred tuple's fields)
        rec = FlowRecord(
            "",
            *head,
            src,
            dst,
            sport,
            dport,
            proto,
            pkts,
            nbytes,
            start,
            end,  # type: ignore[call-arg]
            action,
            status,
            direction,
            flags,
            rule_id,
            rule_kind,
            sampling,
        )
        problem = check_record(rec, now_ms)
        if problem is not None:
            bad.append(Rejection(i, problem.field, problem.reason))
            continue
        wanted = record_id(fid, src, dst, sport, dport, proto, direction, start, end)
        if rid and rid != wanted:
            bad.append(
                Rejection(
                    i,
                    "record_id",
                    "must be empty or the stable id of the flow window; leave it empty and the server computes it",
                )
            )
            continue
        ok.append(rec._replace(record_id=wanted))
    return ok, bad


def stored_head(fl: FlowLog) -> tuple[Any, ...]:
    """The stored fields every record of a flow log takes from it, in FlowRecord order (version
    through network_id): a collector's values for them are never kept."""
    return (
        RECORD_VERSION,
        fl.account_id,
        fl.id,
        fl.region,
        fl.project,
        fl.log_store,
        int(fl.resource_type),
        fl.resource_id,
        fl.network_id,
    )


class _Slow(Exception):
    """Some record of the batch needs the record-by-record path."""


_OK_STATUSES = frozenset({1, 3})  # LogStatus.OK, SKIPDATA: every check applies (NODATA skips some)
_ACTIONS = frozenset({1, 2})
_DIRECTIONS = frozenset({1, 2})
_RULE_KINDS = frozenset(int(k) for k in RuleKind)
_new_record = partial(tuple.__new__, FlowRecord)


def _rule_ids_ok(rule_ids: Sequence[str]) -> bool:
    """Every rule id of the column is "" or a valid id (checked once per distinct value)."""
    for value in set(rule_ids):
        if value and (len(value) > rules.RULE_ID_MAX or not rules.RULE_ID_CHARS.issuperset(value)):
            return False
    return True


def accept_columns(
    fl: FlowLog, cols: Sequence[Sequence[Any]], first_index: int, now_ms: int, matcher: AddressMatcher | None = None
) -> tuple[list[FlowRecord], list[Rejection]]:
    """accept() of a batch given as 19 columns (accept()'s row fields, column by column).

    Same result as accept(fl, zip(*cols), ...), record for record: when every record of the batch
    passes every check (the normal case), the checks run column-wise, with no Python call per
    record; as soon as one check fails anywhere in the batch, the whole batch goes through
    accept(), which finds the bad records and says why.
    """
    (
        rids,
        accs,
        flids,
        srcs,
        dsts,
        sports,
        dports,
        protos,
        pkts,
        nbytes,
        starts,
        ends,
        actions,
        statuses,
        directions,
        flags,
        rule_ids,
        rule_kinds,
        samplings,
    ) = cols
    if not starts:
        return [], []
    account, fid = fl.account_id, fl.id
    try:
        given = set(directions)
        if not (
            set(flids) <= {"", fid}
            and set(accs) <= {"", account}
            and set(statuses) <= _OK_STATUSES
            and set(actions) <= _ACTIONS
            and given <= _DIRECTIONS | {0}
        ):
            raise _Slow
        if not (
            set(rule_kinds) <= _RULE_KINDS
            and _rule_ids_ok(rule_ids)
            and min(samplings) >= 0
            and max(samplings) <= rules.SAMPLING_RATE_MAX
        ):
            raise _Slow
        src = list(map(canonical_address, srcs))  # ValueError: not an address
        dst = list(map(canonical_address, dsts))
        if not (all(src) and all(dst)):
            raise _Slow
        if 0 in given:  # derived before the ids are made: the id covers the direction
            m = matcher or _NO_MATCHER
            directions = [d or m.direction(s, t) for d, s, t in zip(directions, src, dst)]
        lo, hi = min(starts), max(starts)
        if lo <= 0 or hi > now_ms + MAX_FUTURE_MS or lo < now_ms - MAX_PAST_MS:
            raise _Slow
        if not all(map(ge, ends, starts)) or max(map(sub, ends, starts)) > MAX_WINDOW_MS:
            raise _Slow
        if list(map(contains, src, repeat(":"))) != list(map(contains, dst, repeat(":"))):
            raise _Slow
        if (
            min(sports) < 0
            or max(sports) > MAX_PORT
            or min(dports) < 0
            or max(dports) > MAX_PORT
            or min(protos) < 0
            or max(protos) > MAX_PROTOCOL
            or min(flags) < 0
            or max(flags) > MAX_TCP_FLAGS
        ):
            raise _Slow
        if not all(map(le, pkts, nbytes)) or min(pkts) < 0 or max(nbytes) > MAX_U64:
            raise _Slow
        wanted = record_ids(fid, src, dst, sports, dports, protos, directions, starts, ends)
        if any(rids) and any(r and r != w for r, w in zip(rids, wanted)):
            raise _Slow
    except (_Slow, ValueError, TypeError):
        return accept(fl, zip(*cols), first_index, now_ms, matcher)
    r = repeat
    return list(
        map(
            _new_record,
            zip(
                wanted,
                *(r(v) for v in stored_head(fl)),
                src,
                dst,
                sports,
                dports,
                protos,
                pkts,
                nbytes,
                starts,
                ends,
                actions,
                statuses,
                directions,
                flags,
                rule_ids,
                rule_kinds,
                samplings,
            ),
        )
    ), []


# A record of the collector is OK with no rule (an exporter does not say which rule decided).
_LOG_STATUS_OK = 1


def accept_flows(
    fl: FlowLog, flows: list[tuple[Any, ...]], directions: bytes, now_ms: int, compiled: CompiledIngest | None = None
) -> tuple[list[FlowRecord], list[Rejection], tuple[bytes, Any] | None]:
    """The collector's decoded flows of one flow log as Ingest would store them: (records,
    rejections, prepared). `flows` are server.sources.flows.Flow tuples, `directions` one
    Direction number per flow (attribution's). Each flow is the record an Ingest client would
    send with the same values, no rule, log_status OK; the same checks apply and the same
    record_id results. The compiled path takes the batch when every flow passes and gives the
    spool's payload and Arrow table with the records (`prepared`, for RecordPipeline.submit);
    otherwise accept_columns decides, rejecting the bad flows with their reasons."""
    if not flows:
        return [], [], None
    head = stored_head(fl)
    if compiled is not None:
        got = compiled.accept_flows(flows, directions, head, FlowRecord, now_ms)
        if got is not None:
            ok, raw, buffers = got
            return ok, [], (raw, table_of_buffers(len(ok), head, buffers))
    src, dst, sport, dport, proto, pkts, nbytes, start, end, flags, action, sampling = map(list, zip(*flows))
    n = len(flows)
    empty = [""] * n
    cols = [
        *(empty, empty, empty),
        *(src, dst, sport, dport, proto, pkts, nbytes, start, end, action),
        [_LOG_STATUS_OK] * n,
        list(directions),
        flags,
        empty,
        [0] * n,
        sampling,
    ]
    ok, bad = accept_columns(fl, cols, 0, now_ms)
    return ok, bad, None


def _zone_hint(text: str) -> str:
    return f" ({ZONE_REFUSED})" if "%" in text else ""
