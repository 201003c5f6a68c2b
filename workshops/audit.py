"""The audit log of instructor actions: who did what, when, to which workshop and object.

Every instructor action calls :func:`record` (or :func:`build` and :func:`record_all` for one entry per selected
object), wherever it is asked for: the ``do_*`` actions of ``jobs/instructor.py``, the admin, the dashboard.
Admin saves and deletions go through ``workshops.instructor.admin_base.AuditedModelAdmin``, which records the
changed fields with their old and new values (:func:`changes`). Passwords, tokens and other secrets are never
written to the log: their fields show as changed, with both values hidden.

This module is floor (docs/ARCHITECTURE.md, "Layers"): it writes entries and knows no admin, so the actions
below the instructor's side can record what they did.
"""

from __future__ import annotations

import getpass
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from django import forms
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models.query import QuerySet

from .models import AuditEntry, Workshop


@dataclass(frozen=True)
class CommandLine:
    """The actor of a management command: no account, so an entry names the command and the system user."""

    command: str

    @property
    def name(self) -> str:
        try:
            user = getpass.getuser()
        except (OSError, KeyError):  # a container's uid without a passwd entry or USER
            user = f"uid {os.getuid()}"
        return f"manage.py {self.command} ({user})"

    def get_username(self) -> str:  # named like a user's, for what names whoever acted
        return self.name


Actor = AbstractBaseUser | AnonymousUser | CommandLine | None

HIDDEN = "(hidden)"
# Field names whose values must not reach the log (password hashes, seat and join tokens, API keys).
_SECRET_FIELD = re.compile(r"password|token|secret|api_?key|credential", re.IGNORECASE)
# A value longer than this (a workflow's JSON, a long description) is logged by its size: the log says
# what changed, it is not a version history.
_MAX_VALUE_CHARS = 300
_SUMMARY_VALUE_CHARS = 40


@dataclass(frozen=True)
class Target:
    """What an entry acted on, kept as text so it outlives the object."""

    model: str  # app_label.model, e.g. "jobs.job"
    pk: str
    text: str

    @classmethod
    def of(cls, obj: models.Model) -> Target:
        return cls(model=obj._meta.label_lower, pk="" if obj.pk is None else str(obj.pk), text=str(obj))


def build(
    actor: Actor,
    action: str,
    summary: str,
    *,
    workshop: Workshop | None = None,
    target: models.Model | Target | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEntry:
    """An unsaved entry; :func:`record` saves one, :func:`record_all` saves many in one query."""
    if isinstance(target, models.Model):
        target = Target.of(target)
    if isinstance(actor, CommandLine):
        actor_pk, actor_name = None, actor.name[:150]
    else:
        actor_pk = getattr(actor, "pk", None)
        actor_name = actor.get_username()[:150] if actor is not None and actor_pk is not None else ""
    return AuditEntry(
        actor_id=actor_pk,
        actor_name=actor_name,
        action=action,
        summary=clip(summary, 500),
        # By id: a workshop deleted a moment ago must not be linked (the entry keeps its name in the text).
        workshop_id=workshop.pk if workshop is not None else None,
        target_type=target.model if target else "",
        target_id=target.pk if target else "",
        target_repr=clip(target.text, 200) if target else "",
        details=details or {},
    )


def record(
    actor: Actor,
    action: str,
    summary: str,
    *,
    workshop: Workshop | None = None,
    target: models.Model | Target | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEntry:
    """Add one entry to the audit log.

    ``action`` is a short code (``job.cancel``, ``seat.restart``, ``workshop.change``…) for filtering;
    ``summary`` the sentence an instructor reads ("Cancelled job #12 of demo/user003"); ``target`` the model
    instance acted on (or a :class:`Target` taken before it was deleted); ``details`` JSON-ready extras.
    """
    entry = build(actor, action, summary, workshop=workshop, target=target, details=details)
    entry.save()
    return entry


def record_all(entries: Iterable[AuditEntry]) -> list[AuditEntry]:
    """Save entries made with :func:`build` in one query (one entry per selected seat, say)."""
    return AuditEntry.objects.bulk_create(list(entries))


# --- What a form changed -----------------------------------------------------------------------------


def changes(form: forms.BaseForm) -> dict[str, dict[str, Any]]:
    """The fields a submitted, valid form changed: ``{field: {"old": …, "new": …}}``, JSON-ready.

    The old value comes from the form's initial data (a ModelForm's instance is already overwritten with
    the new values by the time an admin saves it); secrets show as changed with both values hidden.
    """
    result: dict[str, dict[str, Any]] = {}
    for name in form.changed_data:
        if _SECRET_FIELD.search(name):
            result[name] = {"old": HIDDEN, "new": HIDDEN}
            continue
        field = form.fields[name]
        result[name] = {"old": _loggable(_old_value(form, field, name)), "new": _loggable(form.cleaned_data.get(name))}
    return result


def inline_changes(formsets: Sequence[forms.BaseFormSet]) -> dict[str, dict[str, Any]]:
    """What saved inline formsets (a workshop's seats) added, changed and deleted, by the inline's model."""
    result: dict[str, dict[str, Any]] = {}
    for formset in formsets:
        if not isinstance(formset, forms.BaseModelFormSet) or formset.model is None:
            continue
        found: dict[str, Any] = {}
        if formset.new_objects:
            found["added"] = [str(obj) for obj in formset.new_objects]
        changed = {}
        for obj, _fields in formset.changed_objects:
            form = next((f for f in formset.forms if f.instance is obj), None)
            changed[str(obj)] = changes(form) if form is not None else {}
        if changed:
            found["changed"] = changed
        if formset.deleted_objects:
            found["deleted"] = [str(obj) for obj in formset.deleted_objects]
        if found:
            result[str(formset.model._meta.verbose_name_plural)] = found
    return result


def describe_changes(changed: dict[str, dict[str, Any]], form: forms.BaseForm | None = None) -> str:
    """``paused: no → yes, max queued per seat: 5 → 3`` — for an entry's summary."""
    parts = []
    for name, values in changed.items():
        field = form.fields.get(name) if form is not None else None
        label = str(field.label) if field is not None and field.label else name.replace("_", " ")
        parts.append(f"{label.lower()}: {_shown(values['old'])} → {_shown(values['new'])}")
    return ", ".join(parts)


def _old_value(form: forms.BaseForm, field: forms.Field, name: str) -> Any:
    value = form.get_initial_for_field(field, name)
    # A ModelForm's initial foreign key is the raw id; the log wants the object's name, as for the new value.
    if (
        isinstance(field, forms.ModelChoiceField)
        and not isinstance(field, forms.ModelMultipleChoiceField)
        and value not in field.empty_values
        and not isinstance(value, models.Model)
    ):
        try:
            value = field.to_python(value)
        except ValidationError:  # no longer among the choices: keep the id
            pass
    return value


def _loggable(value: Any) -> Any:
    """A JSON value for ``details``: objects by name, big values by size, passwords out of URLs."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        value = _without_url_password(value)
        return value if len(value) <= _MAX_VALUE_CHARS else value[:_MAX_VALUE_CHARS] + "…"
    if isinstance(value, bytes | bytearray | memoryview):  # a file's content (a template's picture): its size
        return f"({len(value):,} bytes)"
    if isinstance(value, models.Model):
        return str(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, QuerySet | list | tuple | set | frozenset):
        values = list(value)
        items = [_loggable(v) for v in values]
        # A many-to-many field (a workshop's backends) is a set: its initial value is a list of objects, its
        # new value a queryset. Sorted, old and new read alike; a JSON list keeps its order.
        if isinstance(value, QuerySet | set | frozenset) or _all_objects(values):
            items = sorted(items, key=str)
        return _sized(items)
    if isinstance(value, dict):
        return _sized(value)
    return _loggable(str(value))


def _all_objects(values: list[Any]) -> bool:
    return bool(values) and all(isinstance(v, models.Model) for v in values)


def _sized(value: Any) -> Any:
    text = json.dumps(value, default=str)
    return value if len(text) <= _MAX_VALUE_CHARS else f"({len(text):,} characters of JSON)"


def _without_url_password(value: str) -> str:
    """``http://user:secret@host`` → ``http://user:***@host`` (a backend URL may carry credentials)."""
    if "://" not in value or "@" not in value:
        return value
    try:
        parts = urlsplit(value)
        if not parts.password:
            return value
    except ValueError:
        return value
    netloc = f"{parts.username}:***@{parts.netloc.rsplit('@', 1)[1]}"
    return urlunsplit(parts._replace(netloc=netloc))


def _shown(value: Any) -> str:
    if value is True:
        return "yes"
    if value is False:
        return "no"
    if value is None or value == "":
        return "empty"
    if isinstance(value, list):
        return ", ".join(_shown(v) for v in value) if value else "none"
    return clip(str(value), _SUMMARY_VALUE_CHARS)


def clip(text: str, length: int) -> str:
    """``text`` cut to ``length`` characters, an ellipsis marking the cut."""
    return text if len(text) <= length else text[: length - 1] + "…"


# --- Where an entry belongs --------------------------------------------------------------------------


def workshop_of(obj: models.Model) -> Workshop | None:
    """The workshop an object belongs to, for the log's workshop column and filter."""
    if isinstance(obj, Workshop):
        return obj
    workshop = getattr(obj, "workshop", None)
    if isinstance(workshop, Workshop):
        return workshop
    seat = getattr(obj, "seat", None)
    return getattr(seat, "workshop", None)
