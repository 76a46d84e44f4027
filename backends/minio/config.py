"""Typed configuration of the S3 archive backend: the `minio:` section of the server's config
(server.config nests this class; FLOWLOG_MINIO_<KEY> in the environment). Any S3 server works:
MinIO, AWS S3, Ceph RGW, SeaweedFS, Garage, versitygw."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class MinioConfig:
    """Where the archive's bucket lives. `endpoint` is host:port, without a scheme."""

    endpoint: str = ""
    access_key: str = ""
    secret_key: str = field(default="", repr=False)
    bucket: str = "flowlog-archive"
    secure: bool = False
    region: str = "us-east-1"
    ca_file: str = ""
    # Per socket operation (connect, and each read of the response) for data calls.
    timeout_s: float = 30.0
    # Connect/read timeout of the health probe.
    probe_timeout_s: float = 1.0

    def problems(self) -> list[str]:
        out = []
        if not self.endpoint or "://" in self.endpoint or "/" in self.endpoint:
            out.append(f"endpoint must be host:port without scheme or path, got {self.endpoint!r}")
        if not self.bucket:
            out.append("bucket is required")
        if not self.region:
            out.append("region is required (us-east-1 for MinIO and most S3 servers)")
        if self.timeout_s <= 0 or self.probe_timeout_s <= 0:
            out.append("timeouts must be positive")
        return out

    def check(self) -> None:
        """ValueError naming every problem."""
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))
