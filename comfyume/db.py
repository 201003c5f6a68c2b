"""Fewer round trips to the database on the job's hot path.

Under load each statement costs about a millisecond on PostgreSQL beyond its work: the server process and then
ours must each get one of the busy cores again. Where statements do not depend on each other's answers, this
sends them together. SQLite runs in our process (no round trip to save); there they run one after another,
with the same SQL and the same results.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import connection

Statement = tuple[str, Sequence[Any]]


def together(statements: Sequence[Statement]) -> list[list[tuple[Any, ...]]]:
    """Run the SELECTs in order on the default connection and return each one's rows.

    On PostgreSQL with client-side binding (psycopg's ``ClientCursor``, Django's default) they go as one query
    string in one round trip; each still runs on its own snapshot, in order, so a statement after a locking
    read sees everything committed before the lock was granted. A failing statement fails the call and skips
    the ones after it, as a sequence would.
    """
    with connection.cursor() as cursor:
        if not one_round_trip():
            results = []
            for sql, params in statements:
                cursor.execute(sql, params)
                results.append(cursor.fetchall())
            return results
        cursor.execute(";\n".join(sql for sql, _ in statements), [p for _, params in statements for p in params])
        results = [cursor.fetchall()]
        while len(results) < len(statements):
            if not cursor.nextset():
                raise RuntimeError(f"{len(statements)} statements sent together, {len(results)} answered")
            results.append(cursor.fetchall())
        return results


def one_round_trip() -> bool:
    """Whether :func:`together` sends its statements in one round trip here: on PostgreSQL unless the database
    is set to server-side binding (its ``server_side_binding`` option), where a query holds one statement."""
    return connection.vendor == "postgresql" and not connection.settings_dict["OPTIONS"].get("server_side_binding")


def for_update() -> str:
    """`` FOR UPDATE`` for a locking read, where the database has row locks. SQLite has none: there the
    transaction itself holds the database's write lock (the project runs it ``IMMEDIATE``)."""
    return " FOR UPDATE" if connection.features.has_select_for_update else ""
