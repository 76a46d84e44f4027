"""`flowlog top` presets: the product page's questions as one Aggregate call each (or a few).

Pure functions: each preset turns its options into AggregateRequest keywords (for
FlowLogClient.build_aggregate); clients/cli.py sends them and clients/format.py renders the
answers. Nothing here exports records: every answer is computed by the server.

- talkers / destinations: bytes per source / destination address or network (--prefix).
- timeline: traffic over time per action (buckets of --interval, a sparkline per action).
- why: rejected flows from one address to another, grouped by the rule kind and rule that
  rejected them ("the security group or the ACL?").
- scanners: sources of REJECTed flows by distinct destination addresses (or ports).
- protocols: traffic of uncommon protocols (not tcp/udp/icmp/icmpv6), by protocol.
- badaddr: flows to or from a list of addresses/CIDRs read from a file.
"""

from __future__ import annotations

import ipaddress
from datetime import timedelta
from typing import Any, Iterable, Sequence

MAX_FILTER_CHARS = 4096  # the server's filter length limit
MAX_IN_VALUES = 1000  # ... and values per IN list
COMMON_PROTOCOLS = "tcp, udp, icmp, icmpv6"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class PresetError(ValueError):
    """A preset's options cannot make a request; the message says what to fix."""


def and_filter(*parts: str) -> str:
    """The conjunction of non-empty filter texts, each parenthesised."""
    kept = [p.strip() for p in parts if p and p.strip()]
    if len(kept) <= 1:
        return kept[0] if kept else ""
    return " AND ".join(f"({p})" for p in kept)


def address_key(side: str, prefix: str | None) -> str:
    """`src_addr`, or `src_addr/24`, `src_addr/24/64` for --prefix 24 / 24/64."""
    if not prefix:
        return f"{side}_addr"
    parts = prefix.strip().lstrip("/").split("/")
    if not all(p.isdigit() for p in parts) or len(parts) > 2:
        raise PresetError(f"--prefix {prefix!r}: write a length (24, 64) or an IPv4 and an IPv6 length (24/64)")
    return f"{side}_addr/{'/'.join(parts)}"


def talkers(side: str, prefix: str | None, extra_filter: str) -> dict[str, Any]:
    return dict(
        group_by=[address_key(side, prefix)], metrics=["sum(bytes)", "sum(packets)", "count"], filter=extra_filter
    )


_NICE = [
    timedelta(seconds=s)
    for s in (1, 5, 10, 30, 60, 300, 600, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400)
]


def nice_interval(span: timedelta, buckets: int = 60) -> timedelta:
    """The smallest round interval that cuts `span` into at most `buckets` buckets."""
    for step in _NICE:
        if span / step <= buckets:
            return step
    return _NICE[-1]


TIMELINE_METRICS = {"bytes": "sum(bytes)", "packets": "sum(packets)", "flows": "count"}


def timeline(metric: str, interval: timedelta, extra_filter: str) -> dict[str, Any]:
    return dict(
        group_by=["action"], metrics=[TIMELINE_METRICS[metric]], interval=interval, limit=10, filter=extra_filter
    )


def _address(text: str, option: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise PresetError(f"{option} {text!r} is not an IP address (e.g. 198.51.100.7 or 2001:db8::7)") from None


def why(src: str, dst: str, port: int | None, extra_filter: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the rejected flows by rule, everything between them by action): the second answers
    "nothing was rejected" with what did happen."""
    pair = f"src_addr = {_address(src, '--src')} AND dst_addr = {_address(dst, '--dst')}"
    if port is not None:
        pair += f" AND dst_port = {port}"
    rejected = dict(
        group_by=["rule_kind", "rule_id"],
        metrics=["count", "sum(packets)", "min(start_time)", "max(end_time)"],
        filter=and_filter(pair, "action = REJECT", extra_filter),
        limit=20,
    )
    overall = dict(group_by=["action"], metrics=["count", "max(end_time)"], filter=and_filter(pair, extra_filter))
    return rejected, overall


def scanners(by: str, extra_filter: str) -> dict[str, Any]:
    metrics = ["count_distinct(dst_addr)", "count_distinct(dst_port)", "count"]
    if by == "port":
        metrics[0], metrics[1] = metrics[1], metrics[0]
    return dict(group_by=["src_addr"], metrics=metrics, filter=and_filter("action = REJECT", extra_filter))


def protocols(include_common: bool, extra_filter: str) -> dict[str, Any]:
    # NODATA/SKIPDATA rows carry protocol 0 and no traffic: not a protocol anyone used
    uncommon = "log_status = OK" if include_common else f"protocol NOT IN ({COMMON_PROTOCOLS}) AND log_status = OK"
    return dict(
        group_by=["protocol"],
        metrics=["count", "sum(bytes)", "count_distinct(src_addr)", "count_distinct(dst_addr)"],
        filter=and_filter(uncommon, extra_filter),
    )


def read_bad_list(lines: Iterable[str], name: str) -> list[Network]:
    """Addresses and CIDRs, one per line; `#` starts a comment; blank lines are skipped."""
    out: list[Network] = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            net = ipaddress.ip_network(text, strict=True)
        except ValueError as e:
            raise PresetError(f"{name} line {number}: {text[:60]!r} is not an address or CIDR ({e})") from None
        if (
            isinstance(net, ipaddress.IPv6Network)
            and net.network_address.ipv4_mapped is not None
            and net.prefixlen >= 96
        ):
            net = ipaddress.ip_network(f"{net.network_address.ipv4_mapped}/{net.prefixlen - 96}")
        out.append(net)
    if not out:
        raise PresetError(f"{name} holds no address or CIDR: one per line, e.g. 203.0.113.0/24")
    return list(dict.fromkeys(out))


def bad_filters(nets: Sequence[Network], extra_filter: str) -> list[str]:
    """`addr IN (...)` filters each within the server's limits (one call per filter)."""
    out: list[str] = []
    chunk: list[str] = []
    room = MAX_FILTER_CHARS - len(extra_filter) - 32

    def flush() -> None:
        if chunk:
            out.append(and_filter(f"addr IN ({', '.join(chunk)})", extra_filter))
            chunk.clear()

    for net in nets:
        text = str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)
        if chunk and (len(chunk) >= MAX_IN_VALUES or sum(len(c) + 2 for c in chunk) + len(text) > room):
            flush()
        chunk.append(text)
    flush()
    return out


BAD_GROUPS = ["src_addr", "dst_addr", "action"]
BAD_METRICS = ["count", "sum(bytes)", "min(start_time)", "max(end_time)"]


def bad_entry(keys: Sequence[str], nets: Sequence[Network]) -> str:
    """The list entries a row's source or destination falls in."""
    hits = []
    for text in keys[:2]:
        if not text:
            continue
        addr = ipaddress.ip_address(text)
        for net in nets:
            if addr.version == net.version and addr in net:
                hits.append(str(net))
                break
    return ", ".join(dict.fromkeys(hits))
