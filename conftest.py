"""Shared test set-up (see tests/pytest_env.py for what happens before Django starts, and tests/fixtures.py).

CI runs the suite against real PostgreSQL and Redis (``DATABASE_URL``, ``REDIS_URL``); without them it
falls back to SQLite and the embedded Redis, started for the session.
"""

# tests.docker_engine and tests.images.built: the engine and the images every container test module shares.
pytest_plugins = [
    "tests.fixtures",
    "tests.s3_server",
    "tests.fake_verda",
    "tests.docker_engine",
    "tests.images.built",
]
