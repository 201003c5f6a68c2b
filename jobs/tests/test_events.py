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


def test_a_backend_changing_state_tells_its_workshops_and_their_seats(
    personas, monkeypatch, django_capture_on_commit_callbacks
):
    from gpu_backends.models import GpuBackend
    from jobs import events as events_module

    sent = []
    monkeypatch.setattr(events_module, "publish", lambda groups, message: sent.append((groups, message)))
    with django_capture_on_commit_callbacks(execute=True):
        assert personas.backend.mark(GpuBackend.State.WARMING)
        assert not personas.backend.mark(GpuBackend.State.WARMING)  # no change, no message
    [(groups, message)] = sent
    ws1, ws2 = personas.workshop.pk, personas.other_workshop.pk
    seats = {personas.seat_a.pk, personas.seat_b.pk, personas.seat_c.pk}
    assert set(groups) == {events_module.workshop_group(ws1), events_module.workshop_group(ws2)} | {
        events_module.seat_group(pk) for pk in seats
    }
    assert message["message"]["type"] == "comfyume.backend"
    assert message["message"]["data"]["state"] == "warming" and message["message"]["data"]["backend"] == "sim"
