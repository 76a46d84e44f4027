"""Flows from real sources: pure decoders of NetFlow v5, NetFlow v9 and IPFIX datagrams.

Nothing here does I/O: `Decoder.decode(datagram, exporter, now)` turns bytes into `Flow` tuples,
keeping each exporter's templates in memory under the caps of `Limits`. The UDP listener
(server/collector.py) owns the socket, one Decoder and the counters' reporting; attribution of
flows to resources and flow logs is server/sources/attribution.py.
"""

from server.sources.decoder import Decoder
from server.sources.flows import ACCEPT, REJECT, Flow, Limits

__all__ = ["ACCEPT", "REJECT", "Decoder", "Flow", "Limits"]
