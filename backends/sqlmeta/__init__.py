"""The metadata store's SQL, shared by the SQL metadata backends (backends/embedded: SQLite,
backends/postgres: PostgreSQL): the tables, the MetadataTx statements and the row <-> model
mapping, written once and parametrised by a Dialect. It imports neither backend; each backend keeps
its own connection, transaction, locking and change-counter code and plugs in its Dialect."""
