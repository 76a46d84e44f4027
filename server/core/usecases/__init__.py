"""Use cases: the rules and orchestration of each API call over the ports (no gRPC, no storage)."""
