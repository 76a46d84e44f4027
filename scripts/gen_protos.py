#!/usr/bin/env python3
"""Generate the flowlog.v1 Python stubs (messages, gRPC stubs and .pyi types) from protos/.

The stubs are build output, never edited by hand and never committed: `make install` runs this
with the pinned grpcio-tools, so they always match protos/. Output: flowlog/v1/*_pb2*.py(i).
"""

from __future__ import annotations

import pathlib
import sys

import grpc_tools
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"


def main() -> int:
    sources = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / "flowlog" / "v1").glob("*.proto"))
    out = ROOT
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *sources,
    ]
    code = protoc.main(args)
    if code != 0:
        print(f"protoc failed with exit code {code}", file=sys.stderr)
        return code
    for pkg in (out / "flowlog", out / "flowlog" / "v1"):
        init = pkg / "__init__.py"
        if not init.exists():
            init.write_text('"""Generated from protos/ by scripts/gen_protos.py; do not edit."""\n')
    print(f"generated {len(sources)} proto files into {out / 'flowlog' / 'v1'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
