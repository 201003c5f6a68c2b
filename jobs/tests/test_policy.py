"""The queue policies as a table: candidates in, the job that goes next out."""

import pytest

from jobs.policy import FIFO, PRIORITY, ROUND_ROBIN, Candidate, head_key, head_order, pick_next, seat_head


def c(job_id, seat_id, running=0, gpu=0.0, priority=0, lane=False):
    return Candidate(job_id, seat_id, running, gpu, priority, lane)


CASES = [
    # (name, policy, candidates, cap, expected job id)
    ("fifo takes the oldest job", FIFO, [c(5, 1), c(3, 2), c(9, 3)], 1, 3),
    ("fifo skips a seat at its running cap", FIFO, [c(3, 1, running=1), c(5, 2)], 1, 5),
    ("fifo ignores gpu time", FIFO, [c(3, 1, gpu=500), c(5, 2)], 1, 3),
    ("round robin prefers the seat with fewer running jobs", ROUND_ROBIN, [c(3, 1, running=1), c(9, 2)], 2, 9),
    ("round robin then the least gpu time", ROUND_ROBIN, [c(3, 1, gpu=120.0), c(9, 2, gpu=30.0)], 1, 9),
    ("round robin then the oldest job", ROUND_ROBIN, [c(9, 1, gpu=30.0), c(3, 2, gpu=30.0)], 1, 3),
    ("round robin: a newcomer goes before a backlog", ROUND_ROBIN, [c(1, 1, gpu=5.0), c(11, 2)], 1, 11),
    ("priority: instructor lane first", PRIORITY, [c(1, 1, priority=9), c(20, 2, lane=True)], 1, 20),
    ("priority: then higher priority", PRIORITY, [c(1, 1, priority=0), c(20, 2, priority=5)], 1, 20),
    ("priority: ties fall back to round robin", PRIORITY, [c(1, 1, gpu=60.0), c(20, 2)], 1, 20),
    ("priority: the lane ignores the seat's cap", PRIORITY, [c(1, 1), c(20, 2, running=1, lane=True)], 1, 20),
    ("round robin: the lane obeys the cap", ROUND_ROBIN, [c(1, 1), c(20, 2, running=1, lane=True)], 1, 1),
]


@pytest.mark.parametrize(("name", "policy", "candidates", "cap", "expected"), CASES, ids=[c[0] for c in CASES])
def test_pick_next(name, policy, candidates, cap, expected):
    assert pick_next(policy, candidates, cap).job_id == expected


@pytest.mark.parametrize("policy", [FIFO, ROUND_ROBIN, PRIORITY])
def test_nothing_to_pick_when_every_seat_is_at_its_cap(policy):
    assert pick_next(policy, [c(1, 1, running=1), c(2, 2, running=2)], 1) is None
    assert pick_next(policy, [], 1) is None


def test_round_robin_serves_new_seat_next_after_another_seats_backlog():
    """Seat A queued 10 jobs, seat B then queues 1: B's job is the next one dispatched."""
    a_head = c(1, seat_id=1)  # A's oldest of ten
    b_head = c(11, seat_id=2)
    # After A's first job was dispatched, A has one running and B none.
    assert pick_next(ROUND_ROBIN, [c(2, 1, running=1), b_head], max_running_per_seat=3).job_id == 11
    # Even when nothing runs, equal load falls to GPU time, then age: A's job is older.
    assert pick_next(ROUND_ROBIN, [a_head, b_head], 3).job_id == 1


def test_unknown_policy_is_a_clear_error():
    with pytest.raises(ValueError, match="Unknown queue policy 'lottery'"):
        pick_next("lottery", [c(1, 1)], 1)


def test_priority_orders_a_seats_own_jobs_by_lane_then_priority():
    assert head_order(PRIORITY) == ("-instructor_lane", "-priority", "id")
    assert head_order(ROUND_ROBIN) == ("id",)


@pytest.mark.parametrize("policy", [FIFO, ROUND_ROBIN, PRIORITY])
def test_head_key_sorts_a_seats_jobs_as_head_order_says(policy):
    jobs = [c(4, 1), c(2, 1, priority=5), c(3, 1, lane=True), c(1, 1), c(5, 1, priority=5, lane=True)]
    expected = {
        FIFO: [1, 2, 3, 4, 5],
        ROUND_ROBIN: [1, 2, 3, 4, 5],
        # -instructor_lane, -priority, id
        PRIORITY: [5, 3, 2, 1, 4],
    }[policy]
    assert [job.job_id for job in sorted(jobs, key=head_key(policy))] == expected


SEAT_HEADS = [
    # (name, policy, unpinned head, head pinned to the claiming backend, expected job id)
    ("the older of the two under fifo", FIFO, c(7, 1), c(3, 1), 3),
    ("the older of the two under round robin", ROUND_ROBIN, c(3, 1), c(7, 1), 3),
    ("priority: a pinned lane job before an older unpinned one", PRIORITY, c(3, 1), c(7, 1, lane=True), 7),
    ("priority: higher priority before age", PRIORITY, c(3, 1, priority=1), c(2, 1), 3),
    ("only unpinned jobs", ROUND_ROBIN, c(3, 1), None, 3),
    ("only pinned jobs", ROUND_ROBIN, None, c(7, 1), 7),
]


@pytest.mark.parametrize(
    ("name", "policy", "unpinned", "pinned", "expected"), SEAT_HEADS, ids=[s[0] for s in SEAT_HEADS]
)
def test_seat_head_is_the_first_of_the_jobs_the_backend_may_run(name, policy, unpinned, pinned, expected):
    assert seat_head(policy, [unpinned, pinned]).job_id == expected


def test_a_seat_whose_jobs_are_all_pinned_elsewhere_has_no_head():
    assert seat_head(ROUND_ROBIN, [None, None]) is None
