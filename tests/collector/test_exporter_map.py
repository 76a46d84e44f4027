"""collector.exporters: exact addresses and CIDR blocks (most specific wins), the default account,
and IPv4-mapped IPv6 sources (a dual-stack socket)."""

from __future__ import annotations

import pytest

from server.collector import ExporterMap, parse_listen
from server.config import ConfigError, load


def test_exact_cidr_most_specific_and_default():
    m = ExporterMap({"192.0.2.1": "a", "10.0.0.0/8": "b", "10.1.0.0/16": "c", "2001:db8::/32": "d"}, None)
    assert m.account("192.0.2.1") == "a"
    assert m.account("10.9.9.9") == "b"
    assert m.account("10.1.2.3") == "c"
    assert m.account("2001:db8::7") == "d"
    assert m.account("::ffff:10.1.2.3") == "c"
    assert m.account("198.51.100.1") is None
    assert ExporterMap({}, "local").account("198.51.100.1") == "local"


def test_listen_and_exporters_are_checked_at_start_up():
    assert parse_listen("[::1]:2055") == ("::1", 2055)
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_listen("2055")
    with pytest.raises(ConfigError, match="collector.exporters"):
        load(None, env={}, overrides={"collector": {"exporters": {"not-an-ip": "acme"}}})
    with pytest.raises(ConfigError, match="HOST:PORT"):
        load(None, env={}, overrides={"collector": {"listen": "nowhere"}})
    cfg = load(
        None,
        env={
            "FLOWLOG_COLLECTOR_LISTEN": "127.0.0.1:2055",
            "FLOWLOG_COLLECTOR_EXPORTERS": "192.0.2.1=acme,10.0.0.0/8=beta",
        },
    )
    assert cfg.collector.listen == "127.0.0.1:2055"
    assert cfg.collector.exporters == {"192.0.2.1": "acme", "10.0.0.0/8": "beta"}


def test_mapped_address_matches_an_exact_entry():
    assert ExporterMap({"192.0.2.1": "a"}, None).account("::ffff:192.0.2.1") == "a"
