"""The job pipeline's hand-written SQL, all of it, each statement behind a function that says why it exists.

The ORM writes every other statement of the product. These few sit on the hot path — a submit, a claim, a job's
move from one state to the next — where a statement costs its round trips to the database (under load each
costs about a millisecond on PostgreSQL beyond its work: the server process and then ours must each get one of
the busy cores again) and, for the candidates, the ORM's compile time. Two tools serve them:

- :func:`together` sends SELECTs that do not depend on each other's answers in one round trip;
- a job's move and its :class:`~jobs.models.JobEvent` are one statement on PostgreSQL (a data-modifying WITH).

Only Django's public API: tables and columns come from the models' ``_meta`` through the app registry (so no
model is imported here and ``jobs.models`` can use this module), values go through each field's
``get_db_prep_save`` as the ORM's own UPDATE does, rows become models through ``Manager.raw``.
``tests/test_layers.py`` keeps hand-written SQL out of every other product module.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from django.apps import apps
from django.db import connection, transaction
from django.db.models import Field, Model
from django.db.models.options import Options
from django.utils import timezone

from .policy import head_order

Statement = tuple[str, Sequence[Any]]


# --- Running statements ------------------------------------------------------------------------------------


def together(statements: Sequence[Statement]) -> list[list[tuple[Any, ...]]]:
    """Run the SELECTs in order on the default connection and return each one's rows.

    On PostgreSQL with client-side binding (psycopg's ``ClientCursor``, Django's default) they go as one query
    string in one round trip; each still runs on its own snapshot, in order, so a statement after a locking
    read sees everything committed before the lock was granted. A failing statement fails the call and skips
    the ones after it, as a sequence would. SQLite runs in our process (no round trip to save): there they run
    one after another, with the same SQL and the same results.
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


# --- The schema's names ------------------------------------------------------------------------------------


def _meta(label: str) -> Options:
    return apps.get_model(label)._meta


@functools.cache
def _table(label: str) -> str:
    return str(_meta(label).db_table)


@functools.cache
def _column(label: str, name: str) -> str:
    return str(_meta(label).get_field(name).column)  # type: ignore[union-attr]


@functools.cache
def _active() -> str:
    """``Job.ACTIVE`` as an SQL list (fixed strings of our own)."""
    return ", ".join(f"'{status}'" for status in apps.get_model("jobs.Job").ACTIVE)


# --- A claim -----------------------------------------------------------------------------------------------


def claim_reads(backend_id: int) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """A claim's reads, in its transaction, in one round trip: the backend's row, locked (whether it may take a
    job, how many), then its count of active jobs (run after the lock is granted, so it sees every claim
    committed before: two claims cannot overfill the backend), then the workshops with work waiting for it,
    the one with the fewest jobs running first (so one's backlog cannot starve another's)."""
    backend, job = _table("gpu_backends.GpuBackend"), _table("jobs.Job")
    workshop, through = (
        _table("workshops.Workshop"),
        str(apps.get_model("workshops.Workshop").backends.through._meta.db_table),
    )
    waiting = f"""
        SELECT w.id, w.queue_policy, w.max_running_per_seat, w.job_timeout_seconds,
               (SELECT COUNT(*) FROM {job} a WHERE a.workshop_id = w.id AND a.status IN ({_active()})) AS active
        FROM {workshop} w
        JOIN {through} wb ON wb.workshop_id = w.id
        WHERE wb.gpubackend_id = %s AND NOT w.paused AND w.archived_at IS NULL
          AND (w.spending_cap IS NULL OR w.cost_used < w.spending_cap)
          AND EXISTS (SELECT 1 FROM {job} q WHERE q.workshop_id = w.id AND q.status = %s)
        ORDER BY active, w.id
    """
    locked, counted, workshops = together(
        [
            (f"SELECT enabled, state, max_concurrency FROM {backend} WHERE id = %s{for_update()}", [backend_id]),
            (f"SELECT COUNT(*) FROM {job} WHERE backend_id = %s AND status IN ({_active()})", [backend_id]),
            (waiting, [backend_id, "queued"]),
        ]
    )
    return locked, counted, workshops


@functools.cache
def head_order_sql(policy: str) -> str:
    """One seat's own queued jobs, best first: ``jobs.policy.head_order`` in SQL. The pin leads although the WHERE
    fixes it: PostgreSQL does not count ``IS NULL`` as an equality when matching an index's order, and without it
    would sort the seat's whole unpinned queue instead of reading its first index entry."""
    columns = ["q.pinned_backend_id"]
    for name in head_order(policy):
        column = _column("jobs.Job", name.lstrip("-"))
        columns.append(f"q.{column} DESC" if name.startswith("-") else f"q.{column}")
    return ", ".join(columns)


@functools.cache
def candidates_sql(policy: str) -> str:
    """One statement: each seat of the workshop joined to its two heads of queue for the claiming backend —
    of its unpinned jobs and of those pinned to that backend, an index seek each on ``job_seat_pin_head`` /
    ``job_seat_pin_priority_head`` — and its count of active jobs. Jobs pinned to another backend are never
    read. Written by hand because the ORM spent longer compiling the equivalent correlated subqueries than
    the database spent running them, on every claim. Parameters: the queued status twice, the backend, the
    workshop (:func:`candidate_rows`)."""
    order = head_order_sql(policy)
    job, seat = _table("jobs.Job"), _table("workshops.Seat")
    head = f"SELECT q.id FROM {job} q WHERE q.seat_id = s.id AND q.status = %s AND {{pin}} ORDER BY {order} LIMIT 1"
    return f"""
        SELECT s.id, s.gpu_seconds_used,
               (SELECT COUNT(*) FROM {job} r WHERE r.seat_id = s.id AND r.status IN ({_active()})),
               u.id, u.priority, u.instructor_lane, p.id, p.priority, p.instructor_lane
        FROM {seat} s
        LEFT JOIN {job} u ON u.id = ({head.format(pin="q.pinned_backend_id IS NULL")})
        LEFT JOIN {job} p ON p.id = ({head.format(pin="q.pinned_backend_id = %s")})
        WHERE s.workshop_id = %s AND (u.id IS NOT NULL OR p.id IS NOT NULL)
    """


def candidate_rows(workshop_id: int, policy: str, backend_id: int) -> list[tuple[Any, ...]]:
    """:func:`candidates_sql`'s rows: per seat with a job the backend may run, ``(seat, its GPU seconds, its
    active jobs, unpinned head id, priority, lane, pinned head id, priority, lane)``."""
    with connection.cursor() as cursor:
        cursor.execute(candidates_sql(policy), ["queued", "queued", backend_id, workshop_id])
        return cursor.fetchall()


def claim_job(job_id: int, backend_id: int, *, columns: Sequence[str]) -> Model | None:
    """``queued → dispatching`` on the backend, with its JobEvent, if the job still waits and is not pinned to
    another backend; the job as it is now (only ``columns`` read), or None. The row is moved by one conditional
    UPDATE, so two processes claiming the same job cannot both win; on PostgreSQL the JobEvent rides in the same
    statement (see :func:`move_job`)."""
    pinned = _column("jobs.Job", "pinned_backend")
    fields = {"status": "dispatching", "backend": backend_id, "dispatched_at": timezone.now()}
    rows = _moved(
        job_id,
        "queued",
        "dispatching",
        "",
        fields,
        also=(f"{_column('jobs.Job', 'attempts')} = {_column('jobs.Job', 'attempts')} + 1", []),
        where=(f"({pinned} IS NULL OR {pinned} = %s)", [backend_id]),
        returning=columns,
    )
    return rows[0] if rows else None


# --- A submit ----------------------------------------------------------------------------------------------


def submit_reads(seat_id: int, workshop_id: int) -> list[Statement]:
    """A submit's reads, for :func:`together` in its transaction: the seat's usage, locked with its workshop's
    row (a workshop's submits take turns, which keeps the queue-depth cap exact), then the workshop's waiting
    jobs and the seat's share of them (run after the lock is granted, so two quick submits of a seat cannot
    both pass its cap)."""
    seat, workshop, job = _table("workshops.Seat"), _table("workshops.Workshop"), _table("jobs.Job")
    return [
        (
            f"SELECT s.gpu_seconds_used, s.cost_used FROM {seat} s JOIN {workshop} w ON w.id = s.workshop_id "
            f"WHERE s.id = %s{for_update()}",
            [seat_id],
        ),
        (
            f"SELECT COUNT(*), COUNT(*) FILTER (WHERE seat_id = %s) FROM {job} WHERE workshop_id = %s AND status = %s",
            [seat_id, workshop_id, "queued"],
        ),
    ]


def seat_uploads(seat_id: int, names: Sequence[str], fields: Sequence[str]) -> Statement:
    """The seat's uploads among ``names`` (``fields`` of each): a SELECT that needs no lock, so it can ride along
    with :func:`submit_reads`' round trip on PostgreSQL."""
    columns = ", ".join(connection.ops.quote_name(_column("storage.SeatInput", name)) for name in fields)
    placeholders = ", ".join(["%s"] * len(names))
    return (
        f"SELECT {columns} FROM {_table('storage.SeatInput')} WHERE seat_id = %s AND name IN ({placeholders})",
        [seat_id, *names],
    )


# --- A job's move ------------------------------------------------------------------------------------------


def move_job(job_id: int, source: str, to: str, reason: str, fields: Mapping[str, Any]) -> bool:
    """``Job.transition``: set ``fields`` (model field names) on the job if it is still in ``source``, and log the
    move as a JobEvent, as one change; whether it moved.

    On PostgreSQL the UPDATE and the INSERT are one statement (a data-modifying WITH): atomic on its own, one
    round trip instead of four (BEGIN, UPDATE, INSERT, COMMIT) outside a transaction, one instead of two inside.
    Elsewhere both run in one transaction — inside a caller's (a claim, a finish) without a savepoint of its
    own, so a failure here fails the caller's.
    """
    return bool(_moved(job_id, source, to, reason, fields, returning=("id",)))


def _moved(
    job_id: int,
    source: str,
    to: str,
    reason: str,
    fields: Mapping[str, Any],
    *,
    returning: Sequence[str],
    also: Statement = ("", ()),
    where: Statement = ("", ()),
) -> Sequence[Model]:
    """Move the job (``also``: an assignment written in SQL; ``where``: a further condition) and log it; the job
    as the UPDATE returned it (``returning``: model field names), or nothing if it did not move."""
    job_model = apps.get_model("jobs.Job")
    qn = connection.ops.quote_name
    assignments, params = _assignments(job_model._meta, fields)
    if also[0]:
        assignments.append(also[0])
        params.extend(also[1])
    condition = f"{qn(_column('jobs.Job', 'id'))} = %s AND {qn(_column('jobs.Job', 'status'))} = %s"
    params.extend([job_id, source])
    if where[0]:
        condition += f" AND {where[0]}"
        params.extend(where[1])
    columns = ", ".join(qn(_column("jobs.Job", name)) for name in returning)
    update = f"UPDATE {qn(_table('jobs.Job'))} SET {', '.join(assignments)} WHERE {condition} RETURNING {columns}"
    event_meta = _meta("jobs.JobEvent")
    event_columns = ", ".join(
        qn(_column("jobs.JobEvent", name)) for name in ("job", "from_status", "to_status", "reason", "at")
    )
    at = event_meta.get_field("at").get_db_prep_save(timezone.now(), connection)  # type: ignore[union-attr]
    insert = f"INSERT INTO {qn(_table('jobs.JobEvent'))} ({event_columns})"
    if connection.vendor == "postgresql":
        logged = f"{insert} SELECT {qn(_column('jobs.Job', 'id'))}, %s, %s, %s, %s FROM moved"
        sql = f"WITH moved AS ({update}), logged AS ({logged}) SELECT * FROM moved"
        return list(job_model.objects.raw(sql, [*params, source, to, reason, at]))
    # SQLite has UPDATE … RETURNING, not a data-modifying WITH: the JobEvent is a statement of its own.
    with transaction.atomic(savepoint=False):
        moved = list(job_model.objects.raw(update, params))
        if moved:
            with connection.cursor() as cursor:
                cursor.execute(f"{insert} VALUES (%s, %s, %s, %s, %s)", [job_id, source, to, reason, at])
    return moved


def _assignments(meta: Options, fields: Mapping[str, Any]) -> tuple[list[str], list[Any]]:
    """``column = %s`` for each field, with its value made ready for the database as the ORM's UPDATE makes it."""
    assignments, params = [], []
    for name, value in fields.items():
        field = meta.get_field(name)
        if not isinstance(field, Field) or hasattr(field, "get_placeholder") or hasattr(value, "resolve_expression"):
            raise TypeError(f"{name}: only plain values of plain fields here; write an expression in SQL (`also`)")
        assignments.append(f"{connection.ops.quote_name(str(field.column))} = %s")
        params.append(field.get_db_prep_save(value, connection))
    return assignments, params


def job_columns(leave: Sequence[str] = ()) -> list[str]:
    """The names of the Job's fields stored in its table, but ``leave``: what a claim reads back."""
    return [field.name for field in _meta("jobs.Job").concrete_fields if field.name not in leave]
