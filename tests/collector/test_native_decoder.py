"""The compiled extract (server/native/_fastingest.c, `extract`) against the generated Python one it
stands in for: for any template of fixed-length fields and any record bytes, the decoder gives the
same flows with it (Decoder(native=True), the default) as without it (native=False)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.native.fastpath import compiled
from server.sources import Decoder
from server.sources.layout import ADDRESS_IES, NATIVE_ROLES
from tests.collector import datagrams as d

pytestmark = pytest.mark.skipif(compiled is None, reason="server/native/_fastingest.c is not built here")

_IES = list(NATIVE_ROLES) + [5, 10, 14, 58, 136]  # and some flowlog does not read


@st.composite
def templates(draw) -> list[tuple[int, int]]:
    fields = [(draw(st.sampled_from((8, 27))), 0), (draw(st.sampled_from((12, 28))), 0)]
    fields += [(ie, 0) for ie in draw(st.lists(st.sampled_from(_IES), max_size=14))]
    out = []
    for ie, _ in draw(st.permutations(fields)):
        if ie in ADDRESS_IES:
            n = draw(st.sampled_from((ADDRESS_IES[ie], ADDRESS_IES[ie], 2)))  # mostly right, sometimes not
        else:
            n = draw(st.sampled_from((1, 2, 3, 4, 4, 5, 6, 7, 8, 8, 9)))
        out.append((ie, n))
    return out


def _value(draw, n: int, kind: str) -> bytes:
    if kind == "zero":
        return b"\0" * n
    if kind == "max":
        return b"\xff" * n
    return draw(st.binary(min_size=n, max_size=n))


@st.composite
def records(draw, fields: list[tuple[int, int]]) -> bytes:
    out = b""
    for ie, n in fields:
        if ie in (8, 12) and n == 4:
            out += draw(st.sampled_from((d.a4("10.0.0.1"), d.a4("0.0.0.0"), d.a4("192.0.2.255"))))
        elif ie in (27, 28) and n == 16:
            out += draw(st.sampled_from((d.a6("2001:db8::1"), d.a6("::ffff:1.2.3.4"), d.a6("::1"), d.a6("::"))))
        else:
            out += _value(draw, n, draw(st.sampled_from(("zero", "max", "any", "any"))))
    return out


def _both(datagrams: list[bytes]) -> tuple[list, list]:
    native, python = Decoder(), Decoder(native=False)
    a = [f for dg in datagrams for f in native.decode(dg, ("127.0.0.1", 9), 0.0)]
    b = [f for dg in datagrams for f in python.decode(dg, ("127.0.0.1", 9), 0.0)]
    assert native.counters.as_dict() == python.counters.as_dict()
    return a, b


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), templates(), st.booleans(), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_the_compiled_extract_gives_the_python_extracts_flows(data, fields, ipfix, secs, uptime):
    recs = b"".join(data.draw(records(fields)) for _ in range(data.draw(st.integers(1, 4))))
    pad = data.draw(st.integers(0, 3))
    options: list[bytes] = []
    if data.draw(st.booleans()):  # a session sampling interval and system init time from options
        sampling, init = data.draw(st.integers(0, 2**32 - 1)), data.draw(st.integers(0, 2**63))
        body = struct.pack("!IIQ", 1, sampling, init)
        if ipfix:
            options = [
                d.ipfix_set(3, d.ipfix_options_template(300, [(149, 4)], [(34, 4), (160, 8)])),
                d.ipfix_set(300, body),
            ]
        else:
            options = [
                d.ipfix_set(1, d.v9_options_template(300, [(1, 4)], [(34, 4), (160, 8)])),
                d.ipfix_set(300, body),
            ]
    if ipfix:
        dg = d.ipfix(
            [*options, d.ipfix_set(2, d.ipfix_template(256, fields)), d.ipfix_set(256, recs, pad)], export_time=secs
        )
    else:
        dg = d.v9([*options, d.ipfix_set(0, d.v9_template(256, fields)), d.ipfix_set(256, recs, pad)], uptime=uptime,
                  secs=secs)  # fmt: skip
    a, b = _both([dg])
    assert a == b
    assert [tuple(map(type, f)) for f in a] == [tuple(map(type, f)) for f in b]


def test_it_serves_the_common_exporter_templates():
    """softflowd's IPFIX (-A milli) and NetFlow v9 (uptime) templates take the compiled path."""
    milli = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (6, 1), (2, 8), (1, 8), (152, 8), (153, 8)]
    rec = d.a4("10.0.0.1") + d.a4("10.0.0.2") + struct.pack("!HHBBQQQQ", 1234, 80, 6, 0x18, 3, 180, 1000, 2000)
    dg = d.ipfix([d.ipfix_set(2, d.ipfix_template(256, milli)), d.ipfix_set(256, rec * 3)], export_time=5)
    a, b = _both([dg])
    assert a == b and len(a) == 3 and a[0][:9] == ("10.0.0.1", "10.0.0.2", 1234, 80, 6, 3, 180, 1000, 2000)
    assert compiled.extract(rec * 3, Decoder()._layout(tuple(_fields(milli)), True).native, 5000, 0, 0, 0) == a
    v9 = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (2, 4), (1, 4), (22, 4), (21, 4)]
    rec9 = d.a4("10.0.0.1") + d.a4("10.0.0.2") + struct.pack("!HHBIIII", 1, 2, 17, 1, 60, 1000, 1500)
    dg9 = d.v9([d.ipfix_set(0, d.v9_template(256, v9)), d.ipfix_set(256, rec9)], uptime=2000, secs=100)
    a, b = _both([dg9])
    assert a == b == [("10.0.0.1", "10.0.0.2", 1, 2, 17, 1, 60, 99_000, 99_500, 0, 1, 0)]
    assert compiled.extract(rec9, Decoder()._layout(tuple(_fields(v9)), False).native, 100_000, 2000, 0, 0) == a


def _fields(spec: list[tuple[int, int]]):
    from server.sources.layout import Field

    return [Field(ie, n, 0) for ie, n in spec]
