"""Decoding a request's JSON body: the one place that decides what JSON the hub accepts, and what shape.

Every endpoint that takes JSON decodes it with :func:`loads` / :func:`loads_object` and, when it takes an object
of known fields, states them as a :class:`Body` (a pydantic model) and reads it with :func:`parse`: one mechanism,
strict (a number is a number, not ``"5"`` or ``true``), with one kind of error (:class:`InvalidJSON`) whose message
each endpoint answers in its own format.

Python's ``json`` accepts what no database can store: a lone UTF-16 surrogate, written as an escape
(``"\\ud800"``) or as its raw UTF-8 bytes. Such a string went through preflight and failed only when the job row
was written, as a 500 seconds later. It is not text, so it is refused here, with every other malformed body.
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

# A \\uD800–\\uDFFF escape: the only way a lone surrogate reaches json.loads from strictly valid UTF-8.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class InvalidJSON(ValueError):
    """The body is not JSON the hub accepts; the message says why, in words for the API's answer."""


class InvalidBody(InvalidJSON):
    """JSON, but not the shape the endpoint takes; ``field`` names the first wrong field ("" for the whole body)."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class Body(BaseModel):
    """A request body's shape. Strict: no coercion (``"5"``, ``true`` and ``5.0`` are not the whole number 5).
    Keys it does not name are ignored: a newer client may send more. A field's ``description`` is the words for
    its error: ``"<name> must be <description>."``; a validator's ``ValueError`` speaks for itself."""

    model_config = ConfigDict(strict=True, frozen=True)


B = TypeVar("B", bound=Body)


def loads(raw: bytes) -> Any:
    """The body's value, or :class:`InvalidJSON` (not JSON, too deeply nested, not UTF-8, or a lone surrogate).
    Strict UTF-8 decoding refuses a surrogate's raw bytes; escaped ones are looked for only when the body has one."""
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidJSON("The request body is not UTF-8 text.") from None
    except RecursionError:
        raise InvalidJSON("The request body is nested too deeply.") from None
    except ValueError as exc:
        raise InvalidJSON(f"The request body is not valid JSON: {exc}") from None
    if _SURROGATE_ESCAPE.search(raw) and not _is_text(value):
        raise InvalidJSON("The request body holds a string with a lone UTF-16 surrogate (such as \\ud800).")
    return value


def loads_object(raw: bytes, *, empty: dict[str, Any] | None = None, hint: str = "") -> dict[str, Any]:
    """The body as a JSON object, or :class:`InvalidJSON`. ``empty``: what an empty body stands for (None: it
    is refused); ``hint``: an example for the message when the body is JSON but not an object."""
    example = f" such as {hint}" if hint else ""
    if not raw.strip():
        if empty is None:
            raise InvalidJSON(f"The request body is empty; send a JSON object{example}.")
        return empty
    value = loads(raw)
    if not isinstance(value, dict):
        raise InvalidJSON(f"The request body must be a JSON object{example}.")
    return value


def parse(raw: bytes, schema: type[B], *, empty: dict[str, Any] | None = None, hint: str = "") -> B:
    """The body as ``schema`` (see :func:`loads_object` for ``empty`` and ``hint``), or :class:`InvalidJSON`."""
    return validate(loads_object(raw, empty=empty, hint=hint), schema)


def validate(value: Any, schema: type[B]) -> B:
    """An already decoded value as ``schema``, or :class:`InvalidBody` naming the first wrong field."""
    try:
        return schema.model_validate(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        location = [str(part) for part in first["loc"]]
        name = location[0] if location else ""
        field = schema.model_fields.get(name)
        if first["type"] == "value_error":
            message = str(first["ctx"]["error"])
        elif field is not None and field.description:
            message = f"{name} must be {field.description}."
        else:
            message = f"{'.'.join(location) or 'The body'}: {first['msg']}."
        raise InvalidBody(message, name) from None


def _is_text(value: Any) -> bool:
    """Whether every string in the value (keys too) can be stored as UTF-8 (escaped pairs make one character)."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
