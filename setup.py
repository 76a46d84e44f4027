"""Builds the optional C fast path of the Ingest RPC (server/api/_fastingest.c); everything else
is declared in pyproject.toml. optional=True: without a C compiler the install still succeeds and
the server uses the pure-Python path (the same results, ~3 us more CPU per ingested record)."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("server.api._fastingest", ["server/api/_fastingest.c"],
                             extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
                             optional=True)])
