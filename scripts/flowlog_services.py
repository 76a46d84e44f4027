"""Real Elasticsearch and S3 (MinIO / versitygw) servers for flowlog's tests and CI.

Stdlib only. Importable (``fetch(name)``, ``start(name) -> dict``, ``stop(info)``) and used by
the ``scripts/services`` CLI and by ``tests/fixtures_services.py``.

Service names
  es         Elasticsearch ``integ-test-zip`` distribution from Maven Central (ES_VERSION).
  minio      MinIO built from its Go module with ``go install`` (MINIO_VERSION).
  versitygw  Versity S3 gateway built with ``go install`` (VERSITYGW_VERSION), posix backend.
  s3         Alias: minio if it can be fetched/built, otherwise versitygw
             (FLOWLOG_S3_SERVER=minio|versitygw|auto forces the choice; default auto).

Everything downloaded or built lives outside the repository, in ``$FLOWLOG_CACHE``
(default ``~/.cache/flowlog``).  Running as root, Elasticsearch (which refuses to run as
root) is started as the unprivileged system user ``flowlog-es`` via ``runuser``; because
``/root`` is normally mode 700, its unpacked installation then lives in a world-readable
directory (``/var/cache/flowlog`` unless FLOWLOG_ES_INSTALL_ROOT says otherwise).

Environment knobs
  FLOWLOG_CACHE             cache directory (default ~/.cache/flowlog)
  FLOWLOG_ES_HEAP           ES heap, e.g. 512m (default) or 1g
  FLOWLOG_ES_JAVA_OPTS      extra JVM options appended to ES_JAVA_OPTS
  FLOWLOG_ES_QUICK_JIT      1 = -XX:TieredStopAtLevel=1 (boots ~2 s faster, slower queries)
  FLOWLOG_ES_ARGS           extra command-line arguments for ES, e.g. "-Esome.setting=x"
  FLOWLOG_ES_JAVA_HOME      JDK (21+) to run ES with (default: newest JDK >= 21 in /usr/lib/jvm)
  FLOWLOG_ES_INSTALL_ROOT   where the ES zip is unpacked (see above)
  FLOWLOG_ES_USER           unprivileged user for ES when running as root (default flowlog-es)
  FLOWLOG_S3_SERVER         minio | versitygw | auto (what the "s3" alias means)
  FLOWLOG_TMPDIR            parent of the per-instance temporary data dirs (default: system tmp)
  FLOWLOG_GO                go binary (default: go on PATH, else /usr/local/go/bin/go)
  FLOWLOG_MVN               mvn binary (default: mvn on PATH)

The code lives in three modules by job: services_common.py (pins, errors, helpers),
services_fetch.py (fetching/building once into the cache) and services_run.py (starting,
watching, restarting and stopping servers). This module is their importable front: `import
flowlog_services as fs` gives fs.fetch, fs.start, fs.stop, ... as before.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))

from services_common import *  # noqa: E402,F401,F403
from services_fetch import *  # noqa: E402,F401,F403
from services_run import *  # noqa: E402,F401,F403
