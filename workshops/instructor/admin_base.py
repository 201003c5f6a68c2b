"""The admin's base class: every add, change and deletion made through the admin is written to the audit log.

Every app's admin builds on :class:`AuditedModelAdmin`; what an entry says and how it is written is
``workshops.audit``'s (floor), the admin only says when.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from django import forms
from django.contrib import admin
from django.db import models
from django.http import HttpRequest

from workshops.audit import Target, build, changes, describe_changes, inline_changes, record, record_all, workshop_of
from workshops.models import AuditEntry, Workshop


class AuditedModelAdmin(admin.ModelAdmin):
    """A ModelAdmin whose adds, changes and deletions are recorded in the audit log.

    ``<audit_kind>.add`` / ``.change`` / ``.delete``, one entry per object, with the changed fields (and the
    inline rows added, changed or deleted) in ``details``. A save that changed nothing is not recorded.
    """

    audit_kind: ClassVar[str] = ""
    # Related objects an entry's text and workshop need, fetched with the objects a bulk delete removes.
    audit_related: ClassVar[tuple[str, ...]] = ()

    def audit_name(self, obj: models.Model) -> str:
        """How the object is named in a summary (after its kind: "workshop ws1")."""
        return str(obj)

    def audit_save(
        self, request: HttpRequest, form: forms.ModelForm, formsets: Sequence[forms.BaseFormSet], change: bool
    ) -> AuditEntry | None:
        """Record an add or change made through the admin; subclasses may word it their own way."""
        obj = form.instance
        changed = changes(form)
        inlines = inline_changes(formsets)
        if change and not changed and not inlines:
            return None
        kind = obj._meta.verbose_name
        summary = f"{'Changed' if change else 'Added'} {kind} {self.audit_name(obj)}"
        if change and changed:
            summary += f": {describe_changes(changed, form)}"
        for plural, found in inlines.items():
            counts = ", ".join(f"{len(found[k])} {k}" for k in ("added", "changed", "deleted") if k in found)
            summary += f"; {plural}: {counts}"
        details: dict[str, Any] = {"changes": changed}
        if inlines:
            details["inlines"] = inlines
        extra_summary, extra_details = self.audit_extra(obj, change)
        return record(
            request.user,
            f"{self.audit_kind}.{'change' if change else 'add'}",
            summary + extra_summary,
            workshop=workshop_of(obj),
            target=obj,
            details={**details, **extra_details},
        )

    def audit_extra(self, obj: models.Model, change: bool) -> tuple[str, dict[str, Any]]:
        """Words to add to a save's summary and keys to add to its details (what else the save did)."""
        return "", {}

    def save_related(self, request, form, formsets, change):
        # Recorded here, not in save_model: many-to-many fields and inline rows are saved by now.
        super().save_related(request, form, formsets, change)
        self.audit_save(request, form, formsets, change)

    def _deletion_entry(self, request: HttpRequest, obj: models.Model) -> AuditEntry:
        """Built before the object is deleted (its id and name are gone afterwards), saved after."""
        workshop = workshop_of(obj)
        return build(
            request.user,
            f"{self.audit_kind}.delete",
            f"Deleted {obj._meta.verbose_name} {self.audit_name(obj)}",
            # A deleted workshop cannot be linked; the entry's text still names it.
            workshop=None if isinstance(obj, Workshop) else workshop,
            target=Target.of(obj),
        )

    def delete_model(self, request, obj):
        entry = self._deletion_entry(request, obj)
        super().delete_model(request, obj)
        entry.save()

    def delete_queryset(self, request, queryset):
        # select_related() without names would follow every foreign key; only ask for the named ones.
        objs = list(queryset.select_related(*self.audit_related) if self.audit_related else queryset)
        entries = [self._deletion_entry(request, obj) for obj in objs]
        super().delete_queryset(request, queryset)
        record_all(entries)
