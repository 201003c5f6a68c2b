"""The publisher's coalescing of superseded progress snapshots."""

from jobs.events import coalesce


def msg(kind, prompt="p1", **data):
    return {"type": "comfy.message", "message": {"type": kind, "data": {"prompt_id": prompt, **data}}}


def test_only_the_newest_waiting_progress_state_of_a_prompt_is_sent_and_order_is_kept():
    seat, both = ["seat.1"], ["seat.1", "workshop.1"]
    items = [
        (seat, msg("progress_state", n=1)),
        (both, msg("executing", node="1")),
        (seat, msg("progress_state", n=2)),
        (seat, msg("progress_state", prompt="p2", n=9)),
        (both, msg("executed", node="3")),
        (seat, msg("progress_state", n=3)),
        (both, msg("executing", node=None)),
    ]
    kept = coalesce(items)
    assert [
        (m["message"]["type"], m["message"]["data"].get("n"), m["message"]["data"].get("node")) for _, m in kept
    ] == [
        ("executing", None, "1"),
        ("progress_state", 9, None),  # another prompt's snapshot is not superseded
        ("executed", None, "3"),
        ("progress_state", 3, None),
        ("executing", None, None),
    ]


def test_nothing_is_dropped_when_nothing_is_superseded():
    items = [(["seat.1"], msg("progress", value=i)) for i in range(5)]
    assert coalesce(items) == items
