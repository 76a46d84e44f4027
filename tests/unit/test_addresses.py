"""The fast address paths (inet_pton/inet_ntop) give exactly what ipaddress gives.

canonical_address and the embedded store's ip_to_blob take the C library's parser first and
fall back to ipaddress; these tests compare them with ipaddress itself over generated
addresses, written every way a collector might, and over arbitrary short strings."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.embedded.filter_sql import ip_to_blob
from server.core.records import _inet_canonical, canonical_address


def _reference(text: str) -> str | None:
    """ipaddress' answer, except that zone identifiers ("fe80::1%eth0"), which ipaddress keeps
    with any text after the '%', are refused (issue 15: addresses are canonical)."""
    if "%" in text:
        return None
    try:
        return ipaddress.ip_address(text).compressed
    except ValueError:
        return None


def _reference_blob(text: str) -> bytes | None:
    addr = ipaddress.ip_address(text)
    if addr.version == 4:
        return b"\x00" * 10 + b"\xff\xff" + addr.packed
    return addr.packed


def _ours(text: str) -> str | None:
    canonical_address.cache_clear()
    try:
        return canonical_address(text)
    except ValueError:
        return None


# Groups biased towards zeros, so that runs of zero groups (what compression decides on) abound.
_group = st.one_of(st.just(0), st.just(0), st.integers(0, 0xFFFF), st.integers(0, 15))


@st.composite
def _ipv6_texts(draw) -> str:
    groups = draw(st.lists(_group, min_size=8, max_size=8))
    style = draw(st.sampled_from(["full", "padded", "upper", "compressed", "v4tail"]))
    if style == "compressed":
        return str(ipaddress.IPv6Address(sum(g << (16 * (7 - i)) for i, g in enumerate(groups))))
    if style == "v4tail":
        head = ":".join(f"{g:x}" for g in groups[:6])
        return f"{head}:{groups[6] >> 8}.{groups[6] & 255}.{groups[7] >> 8}.{groups[7] & 255}"
    fmt = {"full": "{:x}", "padded": "{:04x}", "upper": "{:X}"}[style]
    return ":".join(fmt.format(g) for g in groups)


_octet = st.one_of(st.integers(0, 255), st.sampled_from([0, 1, 10, 127, 172, 192, 255]))
_ipv4_texts = st.tuples(_octet, _octet, _octet, _octet).map(lambda t: ".".join(map(str, t)))


@settings(max_examples=3000, deadline=None)
@given(_ipv6_texts())
def test_ipv6_canonical_text_is_ipaddress(text: str) -> None:
    assert _ours(text) == _reference(text)
    assert ip_to_blob(text) == _reference_blob(text)


@settings(max_examples=1000, deadline=None)
@given(_ipv4_texts)
def test_ipv4_canonical_text_is_ipaddress(text: str) -> None:
    assert _ours(text) == _reference(text) == text
    assert ip_to_blob(text) == _reference_blob(text)


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet="0123456789abcdefABCDEF:.%x ", min_size=1, max_size=24))
def test_any_text_is_accepted_or_refused_as_ipaddress_does(text: str) -> None:
    assert _ours(text) == _reference(text)


@pytest.mark.parametrize(
    "text",
    [
        "::ffff:1.2.3.4",
        "::1.2.3.4",
        "64:ff9b::1.2.3.4",
        "::ffff:0:0",
        "::",
        "::1",
        "1::",
        "1:0:0:1:0:0:0:1",
        "1:0:0:1:0:0:1:1",
        "0:0:1:0:0:1:0:0",
        "2001:DB8::1",
        "fe80::1%eth0",
        "fe80::1%1",
        "1.2.3.04",
        "01.2.3.4",
        "1.2.3",
        "1.2.3.4.5",
        "256.1.1.1",
        " 1.2.3.4",
        "1.2.3.4 ",
        "1.2.3.4\n",
        "1.2.3.4\x00",
        "١.٢.٣.٤",
        "00001::",
        "1:2:3:4:5:6:7:8:9",
        "1::2::3",
        ":::",
        "::ffff:01.2.3.4",
    ],
)
def test_edge_cases_agree_with_ipaddress(text: str) -> None:
    assert _ours(text) == _reference(text)
    if _reference(text) is not None:
        assert ip_to_blob(text) == _reference_blob(text)


def test_empty_stays_empty() -> None:
    assert canonical_address("") == "" and ip_to_blob("") is None  # NODATA records have no address


def test_fast_path_is_taken_for_plain_addresses() -> None:
    # The point of the change: these never reach ipaddress.
    assert _inet_canonical("10.1.2.3") == "10.1.2.3"
    assert _inet_canonical("2001:0DB8:0:0:0:0:0:1") == "2001:db8::1"
    assert _inet_canonical("::ffff:1.2.3.4") is None  # ipaddress writes it in hex: its call
    assert _inet_canonical("fe80::1%eth0") is None
