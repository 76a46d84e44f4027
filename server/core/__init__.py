"""The domain core: entities, the rules of API.md and the ports they need.

Nothing here imports gRPC, a storage client or does I/O of its own; adapters implement the
ports (server/core/ports.py) and the API layer translates messages to these calls.
"""
