"""PostgreSQL: the metadata store shared by several flowlog replicas (metadata_backend: postgres)."""
