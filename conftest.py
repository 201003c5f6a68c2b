"""Shared test set-up (see tests/pytest_env.py for what happens before Django starts, and tests/fixtures.py).

CI runs the suite against real PostgreSQL and Redis (``DATABASE_URL``, ``REDIS_URL``); without them it
falls back to SQLite and the embedded Redis, started for the session.
"""

pytest_plugins = ["tests.fixtures", "tests.s3_server", "tests.fake_verda"]
