"""comfyume.db.together: statements that do not depend on each other's answers, in one round trip on
PostgreSQL, one after another elsewhere, with the same results."""

from __future__ import annotations

from unittest import mock

import pytest
from django.db import connection, transaction
from django.db.utils import DatabaseError
from django.test.utils import CaptureQueriesContext

from comfyume import db
from jobs.models import Job


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
