"""The MinIO / S3 archive backend: an ObjectStore on any S3-compatible bucket."""
from backends.minio.objects import S3Config, S3DeleteError, S3ObjectStore

__all__ = ["S3Config", "S3DeleteError", "S3ObjectStore"]
