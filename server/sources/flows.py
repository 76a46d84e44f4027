"""What the decoders produce (Flow), the caps they work under (Limits) and what they count.

A Flow is one flow record of an exporter, in flowlog's units: addresses as canonical text,
times as epoch milliseconds, action as the flowlog Action number (ACCEPT unless the exporter's
forwardingStatus says the packets were dropped), and the exporter's sampling interval (0 when
it said nothing; the packet and byte counts are the exporter's, not scaled by it).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import NamedTuple

ACCEPT = 1  # server.core.model.Action numbers (kept literal: the decoders import nothing of the core)
REJECT = 2


class Flow(NamedTuple):
    src_addr: str
    dst_addr: str
    src_port: int
    dst_port: int
    protocol: int
    packets: int
    bytes: int
    start_time: int  # epoch ms
    end_time: int  # epoch ms
    tcp_flags: int
    action: int
    sampling_rate: int


@dataclass(frozen=True)
class Limits:
    """Caps that keep a hostile or broken exporter from growing the collector's memory.

    Every cap is per collector unless it says otherwise; what goes past one is counted (see
    Counters) and dropped, the oldest first where something must make room."""

    # (exporter, observation domain / source id) pairs whose templates are kept; the least
    # recently heard from is forgotten when a new one comes past the cap.
    max_sessions: int = 4096
    # Templates (data and options) kept per (exporter, observation domain); a new template past
    # the cap evicts the least recently used one (endless template churn stays bounded).
    max_templates_per_session: int = 512
    # Fields in one template (RFC 7011 allows ~16k; real exporters send tens).
    max_template_fields: int = 256
    # Data sets that arrived before their template: held at most this long (seconds), at most
    # this many per session and this many bytes in all; then counted as undecodable.
    hold_seconds: float = 10.0
    max_held_sets_per_session: int = 64
    max_held_bytes: int = 8 * 1024 * 1024
    # Compiled record layouts shared by identical templates (template refreshes cost nothing).
    max_compiled_layouts: int = 2048
    # Sampler ids remembered per session from sampling options.
    max_samplers_per_session: int = 256


class Counters:
    """Running totals of one Decoder (plain ints; read them at any time)."""

    __slots__ = (
        "datagrams",
        "decoded",
        "flows",
        "malformed",
        "unsupported_version",
        "template_misses",
        "held_decoded",
        "undecodable",
        "templates",
        "templates_withdrawn",
        "templates_evicted",
        "templates_refused",
        "sessions_evicted",
        "option_records",
    )
    datagrams: int
    decoded: int
    flows: int
    malformed: int
    unsupported_version: int
    template_misses: int
    held_decoded: int
    undecodable: int
    templates: int
    templates_withdrawn: int
    templates_evicted: int
    templates_refused: int
    sessions_evicted: int
    option_records: int

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


COUNTER_HELP: dict[str, str] = {
    "datagrams": "datagrams handed to the decoder",
    "decoded": "datagrams decoded without a structural error",
    "flows": "flow records decoded",
    "malformed": "datagrams (or sets in them) cut short or inconsistent; what could be read was kept",
    "unsupported_version": "datagrams whose version is not 5, 9 or 10",
    "template_misses": "data sets that arrived before their template (held for hold_seconds)",
    "held_decoded": "held data sets decoded once their template arrived",
    "undecodable": "data sets whose template never came (or that the caps pushed out of the hold)",
    "templates": "templates and options templates learned or refreshed",
    "templates_withdrawn": "templates withdrawn by the exporter (IPFIX)",
    "templates_evicted": "templates forgotten to stay under max_templates_per_session",
    "templates_refused": "templates refused: too many fields, or records that could not be laid out",
    "sessions_evicted": "(exporter, domain) template caches forgotten to stay under max_sessions",
    "option_records": "options data records read (sampling, system init time)",
}

assert set(COUNTER_HELP) == set(Counters.__slots__)
assert all(f.name for f in fields(Limits))
