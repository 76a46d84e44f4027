"""The MinIO / S3 archive backend: an ObjectStore on any S3-compatible bucket (objects.py) and its
config (config.py). Nothing is imported here, so the server's config can nest MinioConfig without
loading the S3 client."""
