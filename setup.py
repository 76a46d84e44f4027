"""Build steps pyproject.toml cannot declare: the gRPC stubs and the optional C fast path.

- The `flowlog.v1` stubs (messages, gRPC stubs, .pyi types) are build output generated from
  protos/ by scripts/gen_protos.py with the grpcio-tools pinned in [build-system] requires, at
  build time (build_py): `pip install .`, `pip wheel .`, an sdist and `make install` all get stubs
  that match the protos, and none are committed.
- server/native/_fastingest.c, the compiled path of Ingest and the collector, is optional=True: without a C compiler
  the install still succeeds and the server uses the pure-Python path (the same results, ~3 us
  more CPU per ingested record).
"""

from __future__ import annotations

import runpy
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
STUB_PACKAGES = ["flowlog", "flowlog.v1"]


def generate_stubs() -> None:
    """Run scripts/gen_protos.py (writes flowlog/v1/ beside protos/)."""
    if not (ROOT / "protos").is_dir():  # building from a tree that already holds the stubs
        return
    gen = runpy.run_path(str(ROOT / "scripts" / "gen_protos.py"))
    if gen["main"]() != 0:
        raise SystemExit("generating the gRPC stubs from protos/ failed (see protoc's message above)")


class BuildPyWithStubs(build_py):
    """build_py that first generates the flowlog.v1 stubs from protos/ (in finalize_options, so
    that egg_info's file list, which asks build_py for its files, sees them too)."""

    def finalize_options(self) -> None:
        generate_stubs()
        super().finalize_options()


packages = sorted(set(find_packages(include=["server*", "backends*", "clients*"])) | set(STUB_PACKAGES))

setup(
    packages=packages,
    package_data={
        "flowlog.v1": ["*.pyi"],
        "clients": [
            "web/static/*",
            # Chart.js, when `make web` installed it
            "web/node_modules/chart.js/dist/chart.umd.min.js",
        ],
    },
    cmdclass={"build_py": BuildPyWithStubs},
    ext_modules=[
        Extension(
            "server.native._fastingest",
            ["server/native/_fastingest.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        )
    ],
)
