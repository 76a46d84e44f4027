"""ObjectStore on MinIO or any S3-compatible server, through the `minio` Python client.

Plain S3 only: path-style requests, SigV4, an explicit region, ListObjectsV2, multi-object
delete. Nothing MinIO-specific (no admin API, no MinIO extensions), because MinIO's community
edition is archived and users point this at AWS S3, Ceph RGW, SeaweedFS, Garage or versitygw.

Two HTTP pools: one for data with moderate timeouts and a few retries, and one for the health
probe with ~1 s timeouts and no retries, so a dead server makes healthy() say False quickly
instead of hanging the health service for minutes (the client's own default is 5 minutes and
5 retries).
"""

from __future__ import annotations

import io
import logging
import os
import threading
from typing import Iterable, Iterator

import certifi
import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import S3Error
from urllib3.util import Retry, Timeout

from backends.minio.config import MinioConfig
from server.core.ports import ObjectInfo

log = logging.getLogger(__name__)

# Codes S3 servers return to "create bucket" when the bucket is already there: ours
# (AWS, MinIO) or, on some servers (Ceph, older MinIO), without saying whose.
_BUCKET_EXISTS_CODES = frozenset({"BucketAlreadyOwnedByYou", "BucketAlreadyExists"})
_NO_SUCH_KEY_CODES = frozenset({"NoSuchKey", "NoSuchObject"})


class S3DeleteError(RuntimeError):
    """The server refused to delete some objects (permissions, object lock, ...)."""

    def __init__(self, failures: list[tuple[str, str, str]]) -> None:
        self.failures = failures  # (key, code, message)
        shown = "; ".join(f"{k}: {c} {m}" for k, c, m in failures[:5])
        more = f" (and {len(failures) - 5} more)" if len(failures) > 5 else ""
        super().__init__(f"could not delete {len(failures)} object(s): {shown}{more}")


def _pool(ca_file: str | None, connect_s: float, read_s: float, retries: Retry | bool) -> urllib3.PoolManager:
    return urllib3.PoolManager(
        timeout=Timeout(connect=connect_s, read=read_s),
        maxsize=10,
        cert_reqs="CERT_REQUIRED",
        ca_certs=ca_file or os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=retries,
    )


class S3ObjectStore:
    """ObjectStore on an S3 bucket.

    Durability: put() is durable when it returns (S3 acknowledges a PUT only once the object is
    stored). The bucket is created on first use if missing (race-safe: "already exists" from a
    concurrent creator counts as success), not in the constructor, so a server whose S3 is down
    at startup still starts and reports the archive unhealthy. A missing key in get() raises
    KeyError; other failures raise the client's errors (minio.error.S3Error, urllib3 errors).
    """

    name = "minio"

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str = "flowlog-archive",
        secure: bool = False,
        region: str = "us-east-1",
        ca_file: str | None = None,
        *,
        timeout_s: float = 30.0,
        probe_timeout_s: float = 1.0,
    ) -> None:
        cfg = MinioConfig(
            endpoint, access_key, secret_key, bucket, secure, region, ca_file or "", timeout_s, probe_timeout_s
        )
        cfg.check()
        self.config = cfg
        self.bucket = cfg.bucket
        self._http = _pool(
            cfg.ca_file,
            min(cfg.timeout_s, 5.0),
            cfg.timeout_s,
            Retry(total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        )
        self._probe_http = _pool(cfg.ca_file, cfg.probe_timeout_s, cfg.probe_timeout_s, False)
        self._client = self._make_client(self._http)
        self._probe = self._make_client(self._probe_http)
        self._bucket_ready = False
        self._bucket_lock = threading.Lock()

    @classmethod
    def from_config(cls, cfg: MinioConfig) -> "S3ObjectStore":
        return cls(
            cfg.endpoint,
            cfg.access_key,
            cfg.secret_key,
            cfg.bucket,
            cfg.secure,
            cfg.region,
            cfg.ca_file or None,
            timeout_s=cfg.timeout_s,
            probe_timeout_s=cfg.probe_timeout_s,
        )

    def _make_client(self, http: urllib3.PoolManager) -> Minio:
        cfg = self.config
        client = Minio(
            cfg.endpoint,
            access_key=cfg.access_key,
            secret_key=cfg.secret_key,
            secure=cfg.secure,
            region=cfg.region,
            http_client=http,
        )
        # Path-style everywhere: the lowest common denominator of S3 servers (virtual-host style
        # needs wildcard DNS that self-hosted servers rarely have).
        client.disable_virtual_style_endpoint()
        return client

    # -- ObjectStore ------------------------------------------------------------------------

    def put(self, key: str, data: bytes) -> None:
        self._ensure_bucket()
        self._client.put_object(self.bucket, key, io.BytesIO(data), len(data), content_type="application/octet-stream")

    def get(self, key: str) -> bytes:
        self._ensure_bucket()
        try:
            resp = self._client.get_object(self.bucket, key)
        except S3Error as e:
            if e.code in _NO_SUCH_KEY_CODES:
                raise KeyError(key) from None
            raise
        try:
            return resp.read()
        finally:
            resp.close()
            resp.release_conn()

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects under `prefix` in key order (S3 lists in UTF-8 binary order), paged lazily."""
        self._ensure_bucket()
        for obj in self._client.list_objects(self.bucket, prefix=prefix or None, recursive=True):
            if obj.is_dir or obj.object_name is None:
                continue
            yield ObjectInfo(key=obj.object_name, size=int(obj.size or 0))

    def delete(self, keys: Iterable[str]) -> None:
        """Multi-object delete, 1,000 keys per request. Missing keys are not errors in S3."""
        self._ensure_bucket()
        errors = self._client.remove_objects(self.bucket, (DeleteObject(k) for k in keys))
        # remove_objects is lazy: nothing is deleted until its error iterator is consumed.
        failures = [(e.name or "", e.code, e.message or "") for e in errors if e.code not in _NO_SUCH_KEY_CODES]
        if failures:
            raise S3DeleteError(failures)

    def healthy(self) -> bool:
        """One HEAD on the bucket with ~1 s timeouts and no retry: reachable and authorised."""
        try:
            self._probe.bucket_exists(self.bucket)
            return True
        except Exception as e:  # noqa: BLE001 - any failure means "not serving"
            log.debug("s3 health probe failed", extra={"endpoint": self.config.endpoint, "error": str(e)})
            return False

    def close(self) -> None:
        self._http.clear()
        self._probe_http.clear()

    # -- helpers ----------------------------------------------------------------------------

    def _ensure_bucket(self) -> None:
        if self._bucket_ready:
            return
        with self._bucket_lock:
            if self._bucket_ready:
                return
            if not self._client.bucket_exists(self.bucket):
                try:
                    self._client.make_bucket(self.bucket)
                    log.info("created archive bucket", extra={"bucket": self.bucket})
                except S3Error as e:
                    # Lost a race with another replica, or the name is taken by someone else:
                    # only the former is fine, so look again.
                    if e.code not in _BUCKET_EXISTS_CODES or not self._client.bucket_exists(self.bucket):
                        raise
            self._bucket_ready = True
