"""The shapes of the live dashboard's action bodies (``POST {"action": ..., ...}``), as ``comfyume.jsonbody``
schemas: strict, so ``"12"``, ``true`` and ``12.0`` name no job.

The dashboard answers a body of the wrong shape with the action's own refusal (``views.Refused``: a code the
page acts on and a sentence that shows what to send), not with jsonbody's words, so no field has a
``description``. Only the shape is checked here; whether the jobs, backend or announcement named exist, and
belong to the workshop, is asked of the database afterwards. The queue settings are not here: a Django form
reads them, the Workshop admin's own validation.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field, PositiveInt

from comfyume.jsonbody import Body


def _distinct(ids: list[int]) -> list[int]:
    # A job named twice is acted on once, in the order it was first named.
    return list(dict.fromkeys(ids))


def _text(value: str) -> str:
    # str.strip, not pydantic's strip_whitespace: the same blanks as post_announcement drops.
    value = value.strip()
    if not value:
        raise ValueError("The announcement is blank.")
    return value


class Action(Body):
    action: str


class Jobs(Body):
    """``{"jobs": [12, 15]}``: the jobs an action applies to, by number, each once."""

    jobs: Annotated[list[PositiveInt], AfterValidator(_distinct)] = Field(min_length=1)


class Target(Body):
    """``{"backend": 3}`` or ``{"backend": null}``: where ``move`` sends jobs (null: any backend)."""

    backend: int | None


class Backend(Body):
    """``{"backend": 3}``: the GPU backend a backend action applies to."""

    backend: int


class Announce(Body):
    """``{"message": "Coffee break until 14:30"}``, its surrounding blanks dropped."""

    message: Annotated[str, AfterValidator(_text)]


class Withdraw(Body):
    """``{"announcement": 7}``: the announcement to take down."""

    announcement: int
