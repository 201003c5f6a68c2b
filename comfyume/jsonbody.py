"""Decoding a request's JSON body: the one place that decides what JSON the hub accepts.

Python's ``json`` accepts what no database can store: a lone UTF-16 surrogate, written as an escape
(``"\\ud800"``) or as its raw UTF-8 bytes. Such a string went through preflight and failed only when the job row
was written, as a 500 seconds later. It is not text, so it is refused here, with every other malformed body.
"""

from __future__ import annotations

import json
import re
from typing import Any

# A \\uD800–\\uDFFF escape: the only way a lone surrogate reaches json.loads from strictly valid UTF-8.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class InvalidJSON(ValueError):
    """The body is not JSON the hub accepts; the message says why, in words for the API's answer."""


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


def _is_text(value: Any) -> bool:
    """Whether every string in the value (keys too) can be stored as UTF-8 (escaped pairs make one character)."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
