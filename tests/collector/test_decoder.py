"""The decoders on hand-built datagrams: what exporters in the tests do not send (forwardingStatus,
sampling options, withdrawals, templates after their data, every time representation, variable-length
fields, truncation), checked against values written into the datagrams."""

from __future__ import annotations

import struct

from server.sources import Decoder, Flow, Limits
from tests.collector import datagrams as d

T0 = 1_764_000_000_000  # epoch ms, a whole second
SECS = T0 // 1000

V4_FIELDS = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (6, 1), (2, 4), (1, 8), (152, 8), (153, 8)]


def v4_record(src, dst, sport, dport, proto, flags, pkts, octets, start, end) -> bytes:
    return struct.pack("!4s4sHHBBIQQQ", d.a4(src), d.a4(dst), sport, dport, proto, flags, pkts, octets, start, end)


def flows(dec: Decoder, data: bytes, exporter="192.0.2.1", now=0.0) -> list[Flow]:
    return [Flow(*f) for f in dec.decode(data, exporter, now)]


def test_v5_header_times_and_sampling():
    dec = Decoder()
    recs = [
        dict(
            src="10.0.0.1",
            dst="10.0.0.2",
            pkts=3,
            octets=180,
            first=9_000,
            last=9_500,
            sport=1234,
            dport=80,
            flags=0x12,
            proto=6,
        ),
        dict(
            src="10.0.0.2", dst="10.0.0.1", pkts=1, octets=60, first=9_900, last=9_900, sport=80, dport=1234, proto=17
        ),
    ]
    got = flows(dec, d.v5(recs, uptime=10_000, secs=SECS, nsecs=250_000_000, sampling=(1 << 14) | 100))
    assert got == [
        Flow("10.0.0.1", "10.0.0.2", 1234, 80, 6, 3, 180, T0 + 250 - 1000, T0 + 250 - 500, 0x12, 1, 100),
        Flow("10.0.0.2", "10.0.0.1", 80, 1234, 17, 1, 60, T0 + 250 - 100, T0 + 250 - 100, 0, 1, 100),
    ]
    assert dec.counters.flows == 2 and dec.counters.decoded == 1


def test_v5_uptime_wrap():
    dec = Decoder()
    recs = [
        dict(
            src="10.0.0.1",
            dst="10.0.0.2",
            pkts=1,
            octets=40,
            first=2**32 - 500,
            last=2**32 - 100,
            sport=1,
            dport=2,
            proto=6,
        )
    ]
    (f,) = flows(dec, d.v5(recs, uptime=400, secs=SECS))
    assert (f.start_time, f.end_time) == (T0 - 900, T0 - 500)


def test_v5_truncated_keeps_whole_records_and_counts():
    dec = Decoder()
    recs = [dict(src="10.0.0.1", dst="10.0.0.2", pkts=1, octets=40, first=1, last=2, sport=1, dport=2, proto=6)] * 2
    data = d.v5(recs, uptime=10, secs=SECS)[:-10]
    assert len(flows(dec, data)) == 1
    assert dec.counters.malformed == 1


def test_ipfix_v4_v6_and_millisecond_times():
    dec = Decoder()
    v6_fields = [(27, 16), (28, 16), (7, 2), (11, 2), (4, 1), (2, 8), (1, 8), (150, 4), (151, 4)]
    data = d.ipfix(
        [
            d.ipfix_set(2, d.ipfix_template(256, V4_FIELDS) + d.ipfix_template(257, v6_fields)),
            d.ipfix_set(
                256,
                v4_record("192.0.2.10", "198.51.100.1", 40000, 443, 6, 0x1B, 10, 5000, T0, T0 + 1500)
                + v4_record("198.51.100.1", "192.0.2.10", 443, 40000, 6, 0x1B, 8, 9000, T0 + 5, T0 + 1499),
                pad=3,
            ),
            d.ipfix_set(
                257,
                struct.pack(
                    "!16s16sHHBQQII", d.a6("2001:db8::1"), d.a6("2001:db8:1::2"), 5353, 53, 17, 2, 150, SECS, SECS + 2
                ),
            ),
        ],
        export_time=SECS + 10,
    )
    got = flows(dec, data)
    assert got == [
        Flow("192.0.2.10", "198.51.100.1", 40000, 443, 6, 10, 5000, T0, T0 + 1500, 0x1B, 1, 0),
        Flow("198.51.100.1", "192.0.2.10", 443, 40000, 6, 8, 9000, T0 + 5, T0 + 1499, 0x1B, 1, 0),
        Flow("2001:db8::1", "2001:db8:1::2", 5353, 53, 17, 2, 150, T0, T0 + 2000, 0, 1, 0),
    ]


def test_ipfix_every_time_representation():
    cases = [
        ([(154, 8), (155, 8)], lambda: struct.pack("!QQ", d.ntp(T0 + 7), d.ntp(T0 + 900))),
        ([(156, 8), (157, 8)], lambda: struct.pack("!QQ", d.ntp(T0 + 7), d.ntp(T0 + 900))),
        ([(158, 4), (159, 4)], lambda: struct.pack("!II", (10_000 - 7) * 1000, (10_000 - 900) * 1000)),
        ([(152, 8), (161, 4)], lambda: struct.pack("!QI", T0 + 7, 893)),
        ([(153, 8), (162, 4)], lambda: struct.pack("!QI", T0 + 900, 893_000)),
    ]
    for fields, value in cases:
        dec = Decoder()
        data = d.ipfix(
            [
                d.ipfix_set(2, d.ipfix_template(300, [(8, 4), (12, 4)] + fields)),
                d.ipfix_set(300, d.a4("10.1.1.1") + d.a4("10.1.1.2") + value()),
            ],
            export_time=SECS + 10,
        )
        (f,) = flows(dec, data)
        assert (f.start_time, f.end_time) == (T0 + 7, T0 + 900), fields


def test_ipfix_sysuptime_with_system_init_time_from_options():
    dec = Decoder()
    init = T0 - 3_600_000
    opts = d.ipfix_set(3, d.ipfix_options_template(400, [(149, 4)], [(160, 8)]))
    tmpl = d.ipfix_set(2, d.ipfix_template(401, [(8, 4), (12, 4), (22, 4), (21, 4)]))
    first = d.ipfix([opts, tmpl, d.ipfix_set(400, struct.pack("!IQ", 0, init))], export_time=SECS)
    assert flows(dec, first) == []
    data = d.ipfix(
        [d.ipfix_set(401, d.a4("10.0.0.1") + d.a4("10.0.0.2") + struct.pack("!II", 3_600_000, 3_600_250))],
        export_time=SECS + 1,
    )
    (f,) = flows(dec, data)
    assert (f.start_time, f.end_time) == (T0, T0 + 250)


def test_v9_sysuptime_times_forwarding_status_and_sampling_options():
    dec = Decoder()
    fields = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (2, 4), (1, 4), (22, 4), (21, 4), (89, 1), (48, 1)]
    tmpl = d.ipfix_set(0, d.v9_template(260, fields))
    # options: scope System (1, 4 bytes) [a v9 scope type, not octetDeltaCount], sampler id 48, interval 34
    opts = d.ipfix_set(1, d.v9_options_template(261, [(1, 4)], [(48, 1), (34, 4)]))
    opt_data = d.ipfix_set(261, struct.pack("!IBI", 77, 3, 512), pad=3)

    def rec(status: int) -> bytes:
        return (
            d.a4("10.0.0.1")
            + d.a4("10.0.0.9")
            + struct.pack("!HHBIIIIBB", 1000, 22, 6, 4, 240, 50_000, 51_000, status, 3)
        )

    data = d.v9(
        [tmpl, opts, opt_data, d.ipfix_set(260, rec(0x40) + rec(0x80 | 3) + rec(0xC0))], uptime=60_000, secs=SECS
    )
    got = flows(dec, data)
    assert [f.action for f in got] == [1, 2, 1]  # forwarded, dropped (reason 3), consumed
    assert {f.sampling_rate for f in got} == {512}
    assert (got[0].start_time, got[0].end_time) == (T0 - 10_000, T0 - 9_000)
    assert got[0].packets == 4 and got[0].bytes == 240


def test_ipfix_sampling_interval_for_the_domain_and_in_records():
    dec = Decoder()
    opts = d.ipfix_set(3, d.ipfix_options_template(500, [(149, 4)], [(305, 4), (306, 4)]))
    data = d.ipfix(
        [
            opts,
            d.ipfix_set(500, struct.pack("!III", 0, 1, 99)),
            d.ipfix_set(
                2, d.ipfix_template(501, [(8, 4), (12, 4)]) + d.ipfix_template(502, [(8, 4), (12, 4), (50, 2)])
            ),
            d.ipfix_set(501, d.a4("10.0.0.1") + d.a4("10.0.0.2")),
            d.ipfix_set(502, d.a4("10.0.0.1") + d.a4("10.0.0.2") + struct.pack("!H", 64)),
        ],
        export_time=SECS,
    )
    assert [f.sampling_rate for f in flows(dec, data)] == [100, 64]


def test_data_before_template_is_held_then_decoded():
    dec = Decoder()
    data = d.ipfix([d.ipfix_set(256, v4_record("10.0.0.1", "10.0.0.2", 1, 2, 17, 0, 1, 100, T0, T0))], export_time=SECS)
    assert flows(dec, data, now=1.0) == []
    assert dec.counters.template_misses == 1
    got = flows(dec, d.ipfix([d.ipfix_set(2, d.ipfix_template(256, V4_FIELDS))], export_time=SECS), now=2.0)
    assert got == [Flow("10.0.0.1", "10.0.0.2", 1, 2, 17, 1, 100, T0, T0, 0, 1, 0)]
    assert dec.counters.held_decoded == 1 and dec.held_bytes == 0


def test_held_data_expires_and_is_counted():
    dec = Decoder(Limits(hold_seconds=5))
    data = d.ipfix([d.ipfix_set(256, v4_record("10.0.0.1", "10.0.0.2", 1, 2, 17, 0, 1, 100, T0, T0))], export_time=SECS)
    flows(dec, data, now=1.0)
    flows(dec, d.ipfix([], export_time=SECS), now=7.0)
    assert dec.counters.undecodable == 1 and dec.held_bytes == 0
    assert flows(dec, d.ipfix([d.ipfix_set(2, d.ipfix_template(256, V4_FIELDS))], export_time=SECS), now=8.0) == []


def test_template_withdrawal_and_refresh():
    dec = Decoder()
    rec = v4_record("10.0.0.1", "10.0.0.2", 1, 2, 6, 0, 1, 100, T0, T0)
    flows(dec, d.ipfix([d.ipfix_set(2, d.ipfix_template(256, V4_FIELDS))], export_time=SECS))
    assert len(flows(dec, d.ipfix([d.ipfix_set(256, rec)], export_time=SECS))) == 1
    flows(dec, d.ipfix([d.ipfix_set(2, struct.pack("!HH", 256, 0))], export_time=SECS))  # withdraw
    assert dec.counters.templates_withdrawn == 1
    assert flows(dec, d.ipfix([d.ipfix_set(256, rec)], export_time=SECS)) == []
    # refreshed with another layout: ports first
    new = [(7, 2), (11, 2), (8, 4), (12, 4)]
    got = flows(
        dec,
        d.ipfix(
            [
                d.ipfix_set(2, d.ipfix_template(256, new)),
                d.ipfix_set(256, struct.pack("!HH", 53, 5353) + d.a4("10.9.9.9") + d.a4("10.8.8.8")),
            ],
            export_time=SECS,
        ),
    )
    assert [(f.src_addr, f.src_port) for f in got] == [("10.9.9.9", 53)]


def test_withdraw_all_templates():
    dec = Decoder()
    flows(
        dec,
        d.ipfix(
            [d.ipfix_set(2, d.ipfix_template(256, V4_FIELDS) + d.ipfix_template(257, V4_FIELDS))], export_time=SECS
        ),
    )
    flows(dec, d.ipfix([d.ipfix_set(2, struct.pack("!HH", 2, 0))], export_time=SECS))
    assert dec.counters.templates_withdrawn == 2


def test_templates_are_per_exporter_and_domain():
    dec = Decoder()
    flows(dec, d.ipfix([d.ipfix_set(2, d.ipfix_template(256, V4_FIELDS))], export_time=SECS, domain=1))
    rec = d.ipfix_set(256, v4_record("10.0.0.1", "10.0.0.2", 1, 2, 6, 0, 1, 100, T0, T0))
    assert flows(dec, d.ipfix([rec], export_time=SECS, domain=2)) == []
    assert flows(dec, d.ipfix([rec], export_time=SECS, domain=1), exporter="192.0.2.2") == []
    assert len(flows(dec, d.ipfix([rec], export_time=SECS, domain=1))) == 1


def test_variable_length_fields_and_enterprise_fields():
    dec = Decoder()
    fields = [(8, 4), (96, d.VAR), (12, 4), (1, 4, 29305), (7, 2), (82, d.VAR), (11, 2)]
    recs = (
        d.a4("10.0.0.1")
        + d.varlen(b"app")
        + d.a4("10.0.0.2")
        + b"\0\0\0\x05"
        + struct.pack("!H", 1)
        + d.varlen(b"x" * 300)
        + struct.pack("!H", 2)
    )
    recs += (
        d.a4("10.0.0.3")
        + d.varlen(b"")
        + d.a4("10.0.0.4")
        + b"\0\0\0\x05"
        + struct.pack("!H", 3)
        + d.varlen(b"eth0")
        + struct.pack("!H", 4)
    )
    got = flows(dec, d.ipfix([d.ipfix_set(2, d.ipfix_template(256, fields)), d.ipfix_set(256, recs)], export_time=SECS))
    assert [(f.src_addr, f.dst_addr, f.src_port, f.dst_port, f.bytes) for f in got] == [
        ("10.0.0.1", "10.0.0.2", 1, 2, 0),
        ("10.0.0.3", "10.0.0.4", 3, 4, 0),
    ]


def test_reduced_size_counters():
    dec = Decoder()
    fields = [(8, 4), (12, 4), (2, 3), (1, 5), (86, 2)]
    got = flows(
        dec,
        d.ipfix(
            [
                d.ipfix_set(2, d.ipfix_template(256, fields)),
                d.ipfix_set(
                    256,
                    d.a4("10.0.0.1")
                    + d.a4("10.0.0.2")
                    + (70000).to_bytes(3, "big")
                    + (2**33).to_bytes(5, "big")
                    + b"\0\1",
                ),
            ],
            export_time=SECS,
        ),
    )
    assert (got[0].packets, got[0].bytes) == (70000, 2**33)


def test_truncated_sets_are_counted_not_fatal():
    dec = Decoder()
    data = d.ipfix(
        [
            d.ipfix_set(2, d.ipfix_template(256, V4_FIELDS)),
            d.ipfix_set(256, v4_record("10.0.0.1", "10.0.0.2", 1, 2, 6, 0, 1, 100, T0, T0)),
        ],
        export_time=SECS,
    )
    for cut in range(0, len(data)):
        Decoder().decode(data[:cut], "x", 0.0)
    assert dec.decode(data[:-5], "x", 0.0) == []
    assert dec.counters.malformed == 1
    assert dec.decode(b"\x00\x07" + b"\0" * 30, "x", 0.0) == [] and dec.counters.unsupported_version == 1


def test_template_caps():
    dec = Decoder(Limits(max_templates_per_session=4, max_template_fields=8))
    for tid in range(256, 266):
        dec.decode(d.ipfix([d.ipfix_set(2, d.ipfix_template(tid, V4_FIELDS[:2]))], export_time=SECS), "x", 0.0)
    (session,) = dec.sessions.values()
    assert list(session.templates) == [262, 263, 264, 265] and dec.counters.templates_evicted == 6
    dec.decode(d.ipfix([d.ipfix_set(2, d.ipfix_template(300, [(1, 4)] * 9))], export_time=SECS), "x", 0.0)
    assert 300 not in session.templates and dec.counters.templates_refused == 1


def test_zero_length_template_is_refused():
    dec = Decoder()
    dec.decode(
        d.ipfix(
            [d.ipfix_set(2, d.ipfix_template(256, [(8, 0), (12, 0)])), d.ipfix_set(256, b"\0" * 100)], export_time=SECS
        ),
        "x",
        0.0,
    )
    assert dec.counters.templates_refused == 1


def test_ipfix_sysuptime_before_the_system_init_time_is_known_ends_at_export_time():
    dec = Decoder()
    data = d.ipfix(
        [
            d.ipfix_set(2, d.ipfix_template(401, [(8, 4), (12, 4), (22, 4), (21, 4)])),
            d.ipfix_set(401, d.a4("10.0.0.1") + d.a4("10.0.0.2") + struct.pack("!II", 5_000, 5_250)),
        ],
        export_time=SECS,
    )
    (f,) = flows(dec, data)
    assert (f.start_time, f.end_time) == (T0 - 250, T0)
