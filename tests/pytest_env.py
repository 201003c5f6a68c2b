"""Loaded with ``-p`` before pytest-django reads the settings: a private data dir and Redis namespace.

Unix socket paths must be short, hence a short temp dir; the Redis key prefix keeps a test run from ever
touching a developer's queues or another run's, on a shared Redis.
"""

import atexit
import os
import shutil
import tempfile

_RUN_DIR = tempfile.mkdtemp(prefix="cfme-")
os.environ.setdefault("COMFYUME_DATA_DIR", _RUN_DIR)
os.environ.setdefault("COMFYUME_REDIS_PREFIX", f"cfme-test-{os.getpid()}")
# Helper threads (sockets, workers) must not keep PostgreSQL connections open past their work, or the
# test database cannot be dropped at the end.
os.environ.setdefault("DATABASE_CONN_MAX_AGE", "0")
# A developer's own backup destination must never receive the test suite's scheduled backups.
os.environ.pop("COMFYUME_BACKUP_URL", None)
atexit.register(shutil.rmtree, _RUN_DIR, ignore_errors=True)
