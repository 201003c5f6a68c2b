"""Admin pages for the instructor's seats and cards: create a workshop with its seats in one form (a number of
seats, or a list of names pasted or uploaded as CSV), issue new credentials for every seat or for some (a lost
card), add seats to a running workshop, give some seats more budget. Whatever issues passwords ends on the
printable credential sheet, the only place the new passwords ever appear."""

from __future__ import annotations

import json
from dataclasses import asdict
from decimal import Decimal
from pathlib import Path
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.safestring import mark_safe

from gpu_backends.models import GpuBackend
from jobs import rehearsal
from storage import take_home
from storage.models import Artifact, SeatInput
from workshops import audit, estimate, frontends
from workshops.credentials import credential_sheet, qr_svg
from workshops.credentials_pdf import credential_pdf
from workshops.models import AuditEntry, QueuePolicy, Seat, WorkflowTemplate, Workshop
from workshops.services import (
    MAX_EXTRA_COST,
    MAX_SEATS,
    WorkshopError,
    add_seats_to_running,
    create_workshop,
    parse_names,
    raise_seat_budget,
    reissue_credentials,
    reissue_seat_cards,
)

MAX_CSV_BYTES = 512 * 1024


class NamesFields(forms.Form):
    """A number of seats, or the participants' names pasted or uploaded as CSV (one seat each)."""

    seats = forms.IntegerField(
        min_value=1, max_value=MAX_SEATS, required=False, help_text="How many seats — or give names below."
    )
    names = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 6, "cols": 60}),
        required=False,
        help_text="One participant per line (their name goes on their card and seat).",
    )
    names_file = forms.FileField(required=False, help_text="…or a CSV file with a 'name' column.")

    def clean(self) -> dict:
        data = super().clean() or {}
        text = data.get("names") or ""
        upload = data.get("names_file")
        if upload is not None:
            if upload.size > MAX_CSV_BYTES:
                self.add_error("names_file", "The file is larger than 512 KB; a list of names is much smaller.")
                return data
            try:
                text += "\n" + upload.read().decode("utf-8-sig")
            except UnicodeDecodeError:
                self.add_error("names_file", "The file is not UTF-8 text (save it from your spreadsheet as CSV UTF-8).")
                return data
        try:
            names = parse_names(text) if text.strip() else []
        except WorkshopError as exc:
            self.add_error("names", str(exc))
            return data
        seats = data.get("seats")
        if names and seats and seats != len(names):
            self.add_error("seats", f"{len(names)} names were given: leave the number empty or make it {len(names)}.")
        elif not names and not seats:
            self.add_error("seats", "Give the number of seats, or the participants' names.")
        data["name_list"] = names
        return data


class NewWorkshopForm(NamesFields):
    slug = forms.SlugField(help_text="Short name used in usernames and addresses, e.g. may-masterclass.")
    title = forms.CharField(max_length=200, required=False)
    queue_policy = forms.ChoiceField(choices=QueuePolicy.choices, initial=QueuePolicy.ROUND_ROBIN)
    backends = forms.ModelMultipleChoiceField(GpuBackend.objects.order_by("order", "name"), required=False)
    templates = forms.ModelMultipleChoiceField(WorkflowTemplate.objects.all(), required=False)
    default_template = forms.ModelChoiceField(WorkflowTemplate.objects.all(), required=False)
    starts_at = forms.DateTimeField(required=False, help_text="YYYY-MM-DD HH:MM")
    ends_at = forms.DateTimeField(required=False, help_text="YYYY-MM-DD HH:MM")

    field_order = ["slug", "title", "seats", "names", "names_file"]

    def clean_slug(self) -> str:
        slug = self.cleaned_data["slug"]
        if Workshop.objects.filter(slug=slug).exists():
            raise forms.ValidationError(f"A workshop called {slug!r} exists already.")
        return slug

    def clean(self) -> dict:
        data = super().clean()
        default = data.get("default_template")
        if default is not None and default not in (data.get("templates") or []):
            data["templates"] = [*(data.get("templates") or []), default]
        return data


def new_workshop(model_admin: admin.ModelAdmin, request: HttpRequest) -> HttpResponse:
    """Create a workshop, its seats and accounts, start its seats' ComfyUI, and print the cards."""
    if not model_admin.has_add_permission(request):
        raise PermissionDenied
    form = NewWorkshopForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        names = data["name_list"] or None
        try:
            with transaction.atomic():
                workshop, credentials = create_workshop(
                    data["slug"],
                    seats=len(names) if names else data["seats"],
                    title=data["title"],
                    policy=data["queue_policy"],
                    backends=list(data["backends"]),
                    names=names,
                )
                workshop.templates.set(data["templates"] or [])
                workshop.default_template = data["default_template"]
                workshop.starts_at, workshop.ends_at = data["starts_at"], data["ends_at"]
                workshop.save(update_fields=["default_template", "starts_at", "ends_at"])
                frontends.start_seats(workshop)
                audit.record(
                    request.user,
                    "workshop.create",
                    f"Created workshop {workshop.slug} with {len(credentials)} seats",
                    workshop=workshop,
                    target=workshop,
                    details={"seats": len(credentials), "named": bool(names)},
                )
        except WorkshopError as exc:
            form.add_error(None, str(exc))
        else:
            return _sheet_response(workshop, credentials)
    context = _page_context(model_admin, request, title="New workshop with seats", form=form)
    return TemplateResponse(request, "admin/workshops/workshop/new_with_seats.html", context)


def new_credentials(model_admin: admin.ModelAdmin, request: HttpRequest, object_id: str) -> HttpResponse:
    """Confirm, then give every seat a new password and join link and print the cards."""
    workshop = get_object_or_404(Workshop, pk=object_id)
    if not model_admin.has_change_permission(request, workshop):
        raise PermissionDenied
    if request.method == "POST" and request.POST.get("confirm") == "yes":
        credentials = reissue_credentials(workshop)
        audit.record(
            request.user,
            "workshop.new_credentials",
            f"Issued new passwords and join links for the {len(credentials)} seats of {workshop.slug}",
            workshop=workshop,
            target=workshop,
        )
        return _sheet_response(workshop, credentials)
    if request.method == "POST":
        messages.warning(request, "Nothing was changed.")
        return redirect(reverse("admin:workshops_workshop_change", args=[workshop.pk]))
    context = _page_context(
        model_admin,
        request,
        title=f"New credentials for {workshop}",
        workshop=workshop,
        seat_count=workshop.seats.exclude(participant=None).count(),
    )
    return TemplateResponse(request, "admin/workshops/workshop/new_credentials.html", context)


class AddSeatsForm(NamesFields):
    pass


def add_seats(model_admin: admin.ModelAdmin, request: HttpRequest, object_id: str) -> HttpResponse:
    """Seats for late participants of a workshop, running or not: their ComfyUI starts and only their cards are
    printed; every other seat and card stays as it was."""
    workshop = get_object_or_404(Workshop, pk=object_id)
    if not model_admin.has_change_permission(request, workshop):
        raise PermissionDenied
    if workshop.archived_at is not None:
        messages.error(request, f"{workshop.slug} is archived: seats cannot be added to it.")
        return redirect(reverse("admin:workshops_workshop_change", args=[workshop.pk]))
    form = AddSeatsForm(request.POST if request.method == "POST" else None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        names = form.cleaned_data["name_list"] or None
        count = len(names) if names else form.cleaned_data["seats"]
        try:
            credentials = add_seats_to_running(workshop, count, names=names, actor=request.user)
        except WorkshopError as exc:
            form.add_error(None, str(exc))
        else:
            return _sheet_response(workshop, credentials)
    context = _page_context(
        model_admin,
        request,
        title=f"Add seats to {workshop}",
        workshop=workshop,
        seat_count=workshop.seats.count(),
        form=form,
    )
    return TemplateResponse(request, "admin/workshops/workshop/add_seats.html", context)


def _one_workshop(model_admin: admin.ModelAdmin, request: HttpRequest, seats: list[Seat]) -> Workshop | None:
    workshops = {seat.workshop_id for seat in seats}
    if len(workshops) != 1:
        model_admin.message_user(
            request, "Choose seats of one workshop at a time (filter the list by workshop).", messages.ERROR
        )
        return None
    return seats[0].workshop


def new_cards(model_admin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Seat]) -> HttpResponse | None:
    """The seat list's action: confirm, then a new password and join link for the chosen seats only (a lost
    card) and their cards to print. Whoever signed in with the old password is signed out."""
    seats = list(queryset.select_related("workshop", "participant").order_by("label"))
    workshop = _one_workshop(model_admin, request, seats)
    if workshop is None:
        return None
    if request.POST.get("confirm") == "yes":
        try:
            credentials = reissue_seat_cards(workshop, seats, actor=request.user)
        except WorkshopError as exc:
            model_admin.message_user(request, str(exc), messages.ERROR)
            return None
        return _sheet_response(workshop, credentials)
    return _seat_action_page(
        model_admin,
        request,
        "admin/workshops/seat/new_cards.html",
        title="Issue new cards",
        workshop=workshop,
        seats=seats,
        action="new_cards",
    )


class MoreBudgetForm(forms.Form):
    gpu_minutes = forms.DecimalField(
        label="More GPU time (minutes)", min_value=0, max_digits=9, decimal_places=2, required=False, initial=0
    )
    cost = forms.DecimalField(
        label="More money", min_value=0, max_value=MAX_EXTRA_COST, max_digits=8, decimal_places=2, required=False,
        initial=0,
    )  # fmt: skip

    def clean(self) -> dict:
        data = super().clean() or {}
        if not self.errors and not (data.get("gpu_minutes") or data.get("cost")):
            raise forms.ValidationError("Give more GPU time, more money, or both.")
        return data


def more_budget(model_admin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Seat]) -> HttpResponse | None:
    """The seat list's action: more GPU time and/or money for the chosen seats, on top of the workshop's
    per-seat budget (everyone else's stays)."""
    seats = list(queryset.select_related("workshop", "participant").order_by("label"))
    workshop = _one_workshop(model_admin, request, seats)
    if workshop is None:
        return None
    form = MoreBudgetForm(request.POST if "apply" in request.POST else None)
    if form.is_valid():
        data = form.cleaned_data
        try:
            raised = raise_seat_budget(
                seats,
                gpu_seconds=round((data.get("gpu_minutes") or 0) * 60),
                cost=data.get("cost") or Decimal("0"),
                actor=request.user,
            )
        except WorkshopError as exc:
            form.add_error(None, str(exc))
        else:
            model_admin.message_user(
                request,
                f"Raised the budget of {', '.join(seat.label for seat in raised)} of {workshop.slug}: their "
                "participants may queue jobs up to the new limit at once. The other seats keep the workshop's budget.",
            )
            return None
    return _seat_action_page(
        model_admin,
        request,
        "admin/workshops/seat/more_budget.html",
        title="Give more budget",
        workshop=workshop,
        seats=seats,
        form=form,
        action="more_budget",
    )


def take_home_links(
    model_admin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Seat]
) -> HttpResponse | None:
    """The seat list's action: a personal link to their outputs for each chosen seat, on a page to print or
    send (the only time the links are shown)."""
    seats = list(queryset.select_related("workshop").order_by("label"))
    workshop = _one_workshop(model_admin, request, seats)
    if workshop is None:
        return None
    try:
        issued = take_home.issue_links(workshop, seats, actor=request.user)
    except WorkshopError as exc:
        model_admin.message_user(request, str(exc), messages.ERROR)
        return None
    links = [{"link": link, "qr": mark_safe(qr_svg(link.url))} for link in issued]  # segno's SVG of our URL
    context = _page_context(model_admin, request, title=f"Take-home links · {workshop}", workshop=workshop, links=links)
    response = TemplateResponse(request, "admin/workshops/seat/take_home_links.html", context)
    response["Cache-Control"] = "no-store"
    return response


def revoke_take_home_links(model_admin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Seat]) -> None:
    seats = list(queryset.select_related("workshop"))
    ended = take_home.revoke_links(seats, actor=request.user)
    model_admin.message_user(
        request, f"Revoked {ended} take-home link(s) of {len(seats)} seat(s): they no longer open."
    )


def delete_participant_data(
    model_admin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Seat]
) -> HttpResponse | None:
    """The seat list's action, on a participant's request: confirm, then delete their outputs, uploads,
    take-home links and their ComfyUI's saved workflows."""
    seats = list(queryset.select_related("workshop", "participant").order_by("label"))
    if request.POST.get("confirm") == "yes":
        for seat in seats:
            deleted = take_home.delete_participant_data(seat, actor=request.user)
            level = messages.WARNING if deleted.failed else messages.SUCCESS
            later = (
                f" {len(deleted.failed)} file(s) could not be deleted now: run it again later."
                if deleted.failed
                else ""
            )
            model_admin.message_user(
                request,
                f"{seat}: deleted {deleted.outputs} outputs, {deleted.uploads} uploads and {deleted.links} take-home "
                f"link(s); its ComfyUI's saved workflows are removed within seconds.{later}",
                level,
            )
        return None
    counts = {
        seat.pk: (Artifact.objects.filter(job__seat=seat).count(), SeatInput.objects.filter(seat=seat).count())
        for seat in seats
    }
    rows = [(seat, *counts[seat.pk]) for seat in seats]
    return _seat_action_page(
        model_admin,
        request,
        "admin/workshops/seat/delete_data.html",
        title="Delete participants' data",
        workshop=seats[0].workshop if len({s.workshop_id for s in seats}) == 1 else None,
        seats=seats,
        rows=rows,
        action="delete_participant_data",
    )


class EstimateForm(forms.Form):
    participants = forms.IntegerField(min_value=1, max_value=MAX_SEATS)
    jobs_per_hour = forms.FloatField(
        label="Jobs per participant per hour", min_value=0.01, max_value=600, help_text="6 = one every ten minutes."
    )
    job_seconds = forms.FloatField(label="GPU seconds per job", min_value=0.01, max_value=21600)
    session_hours = forms.FloatField(label="Session (hours)", min_value=0.01, max_value=168)
    prewarm_minutes = forms.FloatField(label="Pre-warm (minutes)", min_value=0, max_value=1440)
    price_per_hour = forms.DecimalField(label="Price per replica-hour", min_value=0, max_digits=8, decimal_places=2)
    jobs_per_replica = forms.IntegerField(
        label="Jobs per replica at once", min_value=1, max_value=64, help_text="Verda's concurrent requests."
    )


def estimate_page(model_admin: admin.ModelAdmin, request: HttpRequest, object_id: str) -> HttpResponse:
    """Before the day: the replicas, concurrency and cost the workshop needs, from figures the instructor can
    change (defaults from the workshop, its backend and the jobs that ran)."""
    workshop = get_object_or_404(Workshop, pk=object_id)
    if not model_admin.has_view_permission(request, workshop):
        raise PermissionDenied
    defaults, sources = estimate.inputs_for(workshop)
    initial = {**asdict(defaults)}
    form = EstimateForm(request.GET if "participants" in request.GET else None, initial=initial)
    inputs = defaults
    if form.is_bound and form.is_valid():
        inputs = estimate.Inputs(**form.cleaned_data)
    result = None
    if not form.is_bound or form.is_valid():
        try:
            result = estimate.estimate(inputs)
        except estimate.EstimateError as exc:
            form.add_error(None, str(exc))
    context = _page_context(
        model_admin,
        request,
        title=f"GPUs and cost for {workshop}",
        workshop=workshop,
        form=form,
        result=result,
        sources=sources,
        target=int(estimate.TARGET_UTILISATION * 100),
        backend=workshop.primary_backend(),
    )
    return TemplateResponse(request, "admin/workshops/workshop/estimate.html", context)


MAX_PROMPT_FILE_BYTES = 2 * 1024 * 1024


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class PromptFilesField(forms.FileField):
    """Several API-format prompt files in one input (Django's documented way for multiple files)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("widget", MultipleFileInput())
        super().__init__(*args, **kwargs)

    def clean(self, data: Any, initial: Any = None) -> list[Any]:
        files = data if isinstance(data, list | tuple) else [data]
        return [super(PromptFilesField, self).clean(one, initial) for one in files if one] or [super().clean(None)]


class RehearseForm(forms.Form):
    prompts = PromptFilesField(
        label="Templates (API format)",
        help_text="One JSON file per template, exported from ComfyUI with Workflow → Export (API).",
    )
    participants = forms.IntegerField(min_value=1, max_value=100, initial=3, help_text="Simulated participants.")
    timeout = forms.IntegerField(
        label="Time limit (seconds)", min_value=60, max_value=6 * 3600, initial=1800,
        help_text="Jobs still going then are cancelled.",
    )  # fmt: skip

    def clean_prompts(self) -> dict[str, dict[str, Any]]:
        prompts = {}
        for upload in self.cleaned_data["prompts"]:
            if upload.size > MAX_PROMPT_FILE_BYTES:
                raise forms.ValidationError(f"{upload.name} is over 2 MB: not a prompt.")
            try:
                data = json.loads(upload.read().decode("utf-8-sig"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise forms.ValidationError(f"{upload.name} is not JSON.") from None
            try:
                prompts[Path(upload.name).stem] = rehearsal.read_prompt(upload.name, data)
            except rehearsal.RehearsalError as exc:
                raise forms.ValidationError(str(exc)) from None
        return prompts


def rehearse_page(model_admin: admin.ModelAdmin, request: HttpRequest, object_id: str) -> HttpResponse:
    """Start a rehearsal (jobs.rehearsal) in the background and show the reports of the last ones."""
    workshop = get_object_or_404(Workshop, pk=object_id)
    if not model_admin.has_change_permission(request, workshop):
        raise PermissionDenied
    form = RehearseForm(request.POST if request.method == "POST" else None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            rehearsal.start_in_background(
                workshop, data["prompts"], participants=data["participants"], timeout=data["timeout"],
                actor=request.user,
            )  # fmt: skip
        except rehearsal.RehearsalError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(
                request,
                f"Rehearsal of {workshop.slug} started: {len(data['prompts'])} template(s) × {data['participants']} "
                "participant(s). Its report appears below when it is over (reload the page).",
            )
            return redirect(reverse("admin:workshops_workshop_rehearse", args=[workshop.pk]))
    past = AuditEntry.objects.filter(
        workshop=workshop, action__in=["workshop.rehearse", "workshop.rehearse_failed"]
    ).order_by("-created_at")[:5]
    context = _page_context(
        model_admin, request, title=f"Rehearse {workshop}", workshop=workshop, form=form, past=list(past)
    )
    return TemplateResponse(request, "admin/workshops/workshop/rehearse.html", context)


def _seat_action_page(
    model_admin: admin.ModelAdmin, request: HttpRequest, template: str, *, action: str, **extra: Any
) -> TemplateResponse:
    """The confirmation or form page of a seat-list action; it posts the action and the chosen seats again."""
    context = _page_context(
        model_admin, request, action=action, action_checkbox_name=helpers.ACTION_CHECKBOX_NAME, **extra
    )
    return TemplateResponse(request, template, context)


def _page_context(model_admin: admin.ModelAdmin, request: HttpRequest, **extra: Any) -> dict[str, Any]:
    """What an admin page of ours needs besides its own: the site's context and the model's options."""
    return {**model_admin.admin_site.each_context(request), "opts": model_admin.model._meta, **extra}


def _sheet_response(workshop: Workshop, credentials: list) -> HttpResponse:
    # The PDF is made in this same request and rides in the page (a data: URL): the passwords are never kept
    # server-side for a second request to fetch.
    pdf = credential_pdf(workshop, credentials)
    response = HttpResponse(credential_sheet(workshop, credentials, pdf=pdf))
    # Passwords: never kept by a proxy or the browser's cache.
    response["Cache-Control"] = "no-store"
    return response
