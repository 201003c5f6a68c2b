"""jobs.sql: the job pipeline's hand-written SQL, kept in one module.

``together``: statements that do not depend on each other's answers, in one round trip on PostgreSQL, one after
another elsewhere, with the same results. A job's move: the ORM's values, its JobEvent, no private API. And no
other product module writes SQL by hand."""

from __future__ import annotations

import ast
from pathlib import Path
from unittest import mock

import pytest
from django.db import connection, transaction
from django.db.models import F
from django.db.utils import DatabaseError
from django.test.utils import CaptureQueriesContext

from jobs import sql as db
from jobs.models import Job, JobEvent


@pytest.mark.django_db
def test_each_statement_answers_in_order(personas):
    Job.objects.create(workshop=personas.workshop, seat=personas.seat_a, prompt={})
    table = Job._meta.db_table
    with CaptureQueriesContext(connection) as queries:
        counted, empty, labels = db.together(
            [
                (f"SELECT COUNT(*) FROM {table} WHERE seat_id = %s", [personas.seat_a.pk]),
                (f"SELECT id FROM {table} WHERE seat_id = %s", [personas.seat_b.pk]),
                ("SELECT label FROM workshops_seat WHERE id IN (%s, %s) ORDER BY label", [
                    personas.seat_b.pk, personas.seat_a.pk,
                ]),
            ]
        )  # fmt: skip
    assert counted == [(1,)] and empty == [] and labels == [("user001",), ("user002",)]
    # One query string on PostgreSQL (one round trip); three on SQLite.
    assert len(queries.captured_queries) == (1 if connection.vendor == "postgresql" else 3)


@pytest.mark.django_db
def test_a_failing_statement_fails_the_call_and_runs_none_after_it(personas):
    table = Job._meta.db_table
    with pytest.raises(DatabaseError), transaction.atomic():
        db.together(
            [
                (f"SELECT COUNT(*) FROM {table}", []),
                ("SELECT no_such_column FROM workshops_seat", []),
                (f"UPDATE {table} SET status = 'failed' RETURNING id", []),
            ]
        )
    assert Job.objects.filter(status=Job.Status.FAILED).count() == 0


@pytest.mark.django_db
def test_params_are_bound_not_pasted(personas):
    hostile = "x'); DROP TABLE workshops_seat; --"
    ((label,),), ((count,),) = db.together(
        [("SELECT %s", [hostile]), ("SELECT COUNT(*) FROM workshops_seat WHERE label = %s", [hostile])]
    )
    assert label == hostile and count == 0
    assert connection.introspection.table_names().count("workshops_seat") == 1


@pytest.mark.django_db
def test_with_server_side_binding_they_go_one_by_one(personas):
    """A query holds one statement under server-side binding (an option a DATABASE_URL can set): then they run
    one after another, with the same results."""
    with mock.patch.dict(connection.settings_dict["OPTIONS"], {"server_side_binding": True}):
        assert not db.one_round_trip()
        with CaptureQueriesContext(connection) as queries:
            answers = db.together([("SELECT 1", []), ("SELECT %s", [2])])
    assert answers == [[(1,)], [(2,)]] and len(queries.captured_queries) == 2
    assert db.one_round_trip() == (connection.vendor == "postgresql")


@pytest.mark.django_db
def test_a_move_stores_values_as_the_orm_would_and_logs_one_event(personas):
    """JSON, a foreign key set to NULL, a time and a number go through the fields' own preparation: what the
    row holds afterwards reads back exactly as set."""
    job = Job.objects.create(workshop=personas.workshop, seat=personas.seat_a, prompt={}, backend=personas.backend)
    assert job.transition(Job.Status.DISPATCHING)
    error = {"type": "oops", "message": "naïve \u2603 'quoted'", "details": [1, None]}
    assert job.transition(Job.Status.FAILED, reason="r" * 600, error=error, backend=None, gpu_seconds=1.5)
    stored = Job.objects.get(pk=job.pk)
    assert (stored.status, stored.error, stored.backend_id, stored.gpu_seconds) == ("failed", error, None, 1.5)
    assert stored.status_reason == "r" * 500 and stored.finished_at == job.finished_at
    events = list(JobEvent.objects.filter(job=job).values_list("from_status", "to_status", "reason"))
    assert events == [("queued", "dispatching", ""), ("dispatching", "failed", "r" * 500)]


@pytest.mark.django_db
def test_a_move_refuses_an_expression_instead_of_pasting_it(personas):
    job = Job.objects.create(workshop=personas.workshop, seat=personas.seat_a, prompt={})
    with pytest.raises(TypeError, match="attempts"):
        db.move_job(job.pk, "queued", "cancelled", "", {"attempts": F("attempts") + 1})
    assert Job.objects.get(pk=job.pk).status == "queued" and not JobEvent.objects.filter(job=job).exists()


ROOT = Path(__file__).resolve().parents[2]
# Product modules that talk to the database by hand for a reason of their own, not for a query.
_OTHER_CURSORS = {
    "comfyume/health.py": "the health check's SELECT 1: is the database there at all",
    "storage/backup_snapshot.py": "a backup's consistent snapshot: the transaction's isolation, set by hand",
}


def _hand_written_sql(path: Path, root: Path = ROOT) -> list[str]:
    """Where a module reaches past the ORM: a cursor, ``raw``/``extra``/``RawSQL``, the ORM's private SQL."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute) and node.attr in {"cursor", "raw", "extra"}:
            found.append(f"{path.relative_to(root)}:{node.lineno} .{node.attr}")
        elif isinstance(node, ast.Name) and node.id == "RawSQL":
            found.append(f"{path.relative_to(root)}:{node.lineno} RawSQL")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("django.db.models.sql"):
            found.append(f"{path.relative_to(root)}:{node.lineno} imports {node.module}")
    return found


def test_hand_written_sql_lives_in_jobs_sql_only():
    found: list[str] = []
    for package in ("comfyume", "workshops", "jobs", "gpu_backends", "storage"):
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if "/tests/" in relative or "/migrations/" in relative or relative in ("jobs/sql.py", *_OTHER_CURSORS):
                continue
            found += _hand_written_sql(path)
    assert found == [], "SQL by hand belongs in jobs/sql.py, behind a named function:\n" + "\n".join(found)
    assert not [line for line in _hand_written_sql(ROOT / "jobs/sql.py") if "imports" in line]


def test_the_sql_contract_sees_a_cursor(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from django.db import connection\nwith connection.cursor() as c:\n    pass\nJob.objects.raw('')\n"
    )
    assert sorted(_hand_written_sql(sample, tmp_path)) == ["sample.py:2 .cursor", "sample.py:4 .raw"]
