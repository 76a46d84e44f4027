"""API keys -> accounts. Keys are compared by their SHA-256 digest (a dict lookup on a digest
leaks nothing useful about the key) and a final constant-time compare; keys are never logged."""

from __future__ import annotations

import hashlib
import hmac

import grpc

from server.core.errors import Unauthenticated

LOCAL_ACCOUNT = "local"


class Authenticator:
    def __init__(self, api_keys: dict[str, str]) -> None:
        self._by_digest = {
            hashlib.sha256(k.encode()).digest(): (hashlib.sha256(k.encode()).digest(), a) for k, a in api_keys.items()
        }
        self.open = not api_keys

    def account(self, context: grpc.aio.ServicerContext) -> str:
        """The caller's account; raises Unauthenticated for a missing or wrong key."""
        if self.open:
            return LOCAL_ACCOUNT
        header = ""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                header = value if isinstance(value, str) else value.decode("latin-1")
                break
        if not header:
            raise Unauthenticated(
                "missing API key: send metadata 'authorization: Bearer <key>' (flowlog --api-key or FLOWLOG_API_KEY)"
            )
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthenticated("authorization metadata must be 'Bearer <api key>'")
        digest = hashlib.sha256(key.strip().encode()).digest()
        found = self._by_digest.get(digest)
        if found is None or not hmac.compare_digest(found[0], digest):
            raise Unauthenticated("API key not recognised")
        return found[1]
