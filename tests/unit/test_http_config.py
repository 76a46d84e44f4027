"""`http.listen`: off by default, a flag/env/file setting, loopback-only without API keys."""

from __future__ import annotations

import pytest

from server.config import ConfigError, load
from server.http.console import check_http_listen


def test_off_unless_set_and_read_from_env_and_flags():
    assert load(None, env={}).http.listen == ""
    assert load(None, env={"FLOWLOG_HTTP_LISTEN": "127.0.0.1:9"}).http.listen == "127.0.0.1:9"
    assert load(None, env={}, overrides={"http": {"listen": "127.0.0.1:8080"}}).http.listen == "127.0.0.1:8080"


@pytest.mark.parametrize("listen", ["127.0.0.1:8080", "localhost:1", "[::1]:8080"])
def test_loopback_is_fine_without_keys(listen):
    check_http_listen(load(None, env={}, overrides={"http": {"listen": listen}}))


@pytest.mark.parametrize("listen", ["0.0.0.0:8080", "10.1.2.3:80", "example.org:80"])
def test_anything_else_needs_api_keys(listen):
    cfg = load(None, env={}, overrides={"http": {"listen": listen}})
    with pytest.raises(ConfigError, match="without API keys"):
        check_http_listen(cfg)
    cfg.api_keys = {"k" * 20: "acct"}
    check_http_listen(cfg)


@pytest.mark.parametrize("listen", ["8080", "host:", "127.0.0.1:99999", "127.0.0.1:http"])
def test_malformed_is_refused_with_the_expected_form(listen):
    with pytest.raises(ConfigError, match="HOST:PORT"):
        check_http_listen(load(None, env={}, overrides={"http": {"listen": listen}}))
