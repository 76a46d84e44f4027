"""Compiled code of the record path, optional (setup.py builds it when a C compiler is there).

`_fastingest.c` turns an IngestRequest's bytes, or the collector's decoded flows, into stored
records together with the spool's payload and their Arrow columns: it writes the spool's storage
format, so it lives beside the pipeline rather than in the API layer. `fastpath` loads it once,
hands it the record limits of server.core.records and checks its field numbers against the
protos; without a compiler the server takes the pure-Python path with the same results.
"""
