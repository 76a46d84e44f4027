"""flowlog's Python client library (clients.client) and command-line tool (clients.cli)."""

from clients.client import FlowLogClient, FlowLogError

__all__ = ["FlowLogClient", "FlowLogError"]
