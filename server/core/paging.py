"""Opaque page tokens and cursors: signed, bound to the caller and to the query they continue.

A token is base64url(JSON payload) + "." + base64url(HMAC-SHA256). Changing a byte, using it
for another account or with other filters is INVALID_ARGUMENT. The secret is the server's
(persisted under the data dir) so tokens survive restarts and work across replicas sharing it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from server.core.errors import InvalidArgument

_MAX_TOKEN = 4096


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def fingerprint(*parts: Any) -> str:
    """A short stable digest of the request fields a token is bound to."""
    data = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(data).hexdigest()[:16]


class TokenSigner:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("token secret must be at least 16 bytes")
        self._secret = secret

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, payload, hashlib.sha256).digest()[:16]

    def encode(self, kind: str, account: str, bound_to: str, position: Any) -> str:
        payload = json.dumps({"k": kind, "a": account, "b": bound_to, "p": position}, separators=(",", ":")).encode()
        return f"{_b64(payload)}.{_b64(self._mac(payload))}"

    def decode(self, token: str, kind: str, account: str, bound_to: str, field: str = "page_token") -> Any:
        """The position stored in the token; InvalidArgument when it is not one of ours for this request."""
        bad = InvalidArgument.field(
            field,
            "is not a valid token for this request: pass back the token the server returned, "
            "with the same other fields",
        )
        if len(token) > _MAX_TOKEN or token.count(".") != 1:
            raise bad
        body, mac = token.split(".")
        try:
            payload = _unb64(body)
            given = _unb64(mac)
        except (ValueError, TypeError):
            raise bad from None
        if not hmac.compare_digest(given, self._mac(payload)):
            raise bad
        try:
            data = json.loads(payload)
        except ValueError:
            raise bad from None
        if data.get("k") != kind or data.get("a") != account:
            raise bad
        if data.get("b") != bound_to:
            raise InvalidArgument.field(
                field,
                "was issued for a request with other parameters: repeat the original request's fields "
                "with this token, or drop the token to start over",
            )
        return data.get("p")
