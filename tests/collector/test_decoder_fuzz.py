"""Hostile datagrams against the decoders: random bytes, random but well-framed sets, template bombs
(huge field counts and lengths), endless template churn and data for templates that never come.
The decoder never raises and what it keeps stays under its caps (server.sources.flows.Limits)."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.sources import Decoder, Limits
from tests.collector import datagrams as d

LIMITS = Limits(
    max_sessions=8,
    max_templates_per_session=16,
    max_template_fields=64,
    hold_seconds=5,
    max_held_sets_per_session=4,
    max_held_bytes=64 * 1024,
    max_compiled_layouts=32,
    max_samplers_per_session=8,
)


def within_caps(dec: Decoder) -> None:
    lim = dec.limits
    assert len(dec.sessions) <= lim.max_sessions
    assert len(dec._layouts) <= lim.max_compiled_layouts
    assert 0 <= dec.held_bytes <= lim.max_held_bytes
    assert dec.held_bytes == sum(len(h.body) for s in dec.sessions.values() for h in s.held)
    for s in dec.sessions.values():
        assert len(s.templates) <= lim.max_templates_per_session
        assert len(s.held) <= lim.max_held_sets_per_session
        assert len(s.samplers) <= lim.max_samplers_per_session
        assert all(len(t.layout.fields) <= lim.max_template_fields for t in s.templates.values())


def check_flows(flows: list) -> None:
    for f in flows:
        assert len(f) == 12
        assert isinstance(f[0], str) and isinstance(f[1], str)
        assert all(isinstance(v, int) for v in f[2:])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=1500), max_size=20))
def test_random_bytes(datagrams):
    dec = Decoder(LIMITS)
    for i, dg in enumerate(datagrams):
        check_flows(dec.decode(dg, "x", float(i)))
    within_caps(dec)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from([5, 9, 10]), st.binary(max_size=600)), max_size=20))
def test_random_bodies_behind_valid_headers(datagrams):
    dec = Decoder(LIMITS)
    for i, (version, body) in enumerate(datagrams):
        if version == 10:
            dg = struct.pack("!HHIII", 10, 16 + len(body), 1_700_000_000, i, i % 3) + body
        elif version == 9:
            dg = struct.pack("!HHIIII", 9, 3, 1000, 1_700_000_000, i, i % 3) + body
        else:
            dg = struct.pack("!HHIIIIBBH", 5, len(body) // 48 + 1, 1000, 1_700_000_000, 0, i, 0, 0, 0) + body
        check_flows(dec.decode(dg, f"e{i % 11}", float(i)))
    within_caps(dec)


_FIELD = st.tuples(
    st.sampled_from(
        [
            1,
            2,
            4,
            6,
            7,
            8,
            11,
            12,
            21,
            22,
            27,
            28,
            34,
            48,
            50,
            89,
            150,
            151,
            152,
            153,
            154,
            155,
            156,
            157,
            158,
            159,
            160,
            161,
            162,
            302,
            305,
            306,
            999,
        ]
    ),
    st.sampled_from([0, 1, 2, 3, 4, 5, 8, 16, 255, 65535]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.integers(256, 300), st.lists(_FIELD, max_size=12), st.binary(max_size=300), st.booleans()),
        max_size=15,
    )
)
def test_random_templates_and_data(items):
    """Well-framed IPFIX with random templates (variable lengths, odd sizes, options) and random data."""
    dec = Decoder(LIMITS)
    for i, (tid, fields, data, options) in enumerate(items):
        if options and fields:
            tmpl = d.ipfix_set(3, d.ipfix_options_template(tid, fields[:1], fields[1:]))
        else:
            tmpl = d.ipfix_set(2, d.ipfix_template(tid, fields))
        sets = [d.ipfix_set(tid, data), tmpl] if i % 2 else [tmpl, d.ipfix_set(tid, data)]
        check_flows(dec.decode(d.ipfix(sets, export_time=1_700_000_000), "x", float(i)))
    within_caps(dec)


def test_template_bomb_huge_field_count():
    dec = Decoder(LIMITS)
    fields = struct.pack("!HH", 1, 8) * 16000
    body = struct.pack("!HH", 256, 16000) + fields
    dg = struct.pack("!HHIII", 10, 0, 0, 0, 0) + struct.pack("!HH", 2, 4 + len(body))[:4] + body
    dg = dg[:2] + struct.pack("!H", len(dg) & 0xFFFF) + dg[4:]
    assert dec.decode(dg, "x", 0.0) == []
    assert dec.counters.templates_refused + dec.counters.malformed >= 1
    within_caps(dec)


def test_template_bomb_huge_field_lengths():
    dec = Decoder(LIMITS)
    dg = d.ipfix(
        [
            d.ipfix_set(2, d.ipfix_template(256, [(8, 4), (12, 4), (1, 65000), (96, 65534)])),
            d.ipfix_set(256, b"\0" * 100),
        ],
        export_time=0,
    )
    assert dec.decode(dg, "x", 0.0) == []
    within_caps(dec)


def test_endless_template_churn_stays_bounded():
    dec = Decoder(LIMITS)
    for i in range(5000):
        fields = [(8, 4), (12, 4), (7, 2), (11, 2)] + [(999, 1 + i % 50)]
        exporter = f"10.0.{i % 20}.1" if i >= 2500 else "10.0.0.1"  # one exporter's churn, then many exporters
        dg = d.ipfix(
            [
                d.ipfix_set(2, d.ipfix_template(256 + i % 60000, fields)),
                d.ipfix_set(256 + (i + 7) % 60000, b"\1" * 200),
            ],
            export_time=0,
            domain=i % 5 if i >= 2500 else 0,
        )
        dec.decode(dg, exporter, i * 0.01)
    within_caps(dec)
    assert dec.counters.templates_evicted > 0 and dec.counters.sessions_evicted > 0
    assert dec.counters.undecodable > 0


def test_v9_options_bomb_and_sampler_churn():
    dec = Decoder(LIMITS)
    for i in range(500):
        opts = d.ipfix_set(1, d.v9_options_template(300, [(1, 4)], [(48, 2), (34, 4)]))
        data = d.ipfix_set(300, struct.pack("!IHI", 0, i, 1 + i), pad=2)
        dec.decode(d.v9([opts, data], uptime=0, secs=0), "x", float(i))
    within_caps(dec)
    assert dec.counters.option_records == 500
