"""Admin pages for the instructor's "before the workshop" work: create a workshop with its seats in one form
(a number of seats, or a list of names pasted or uploaded as CSV) and issue new credentials — both end on the
printable credential sheet, the only place the new passwords ever appear."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import reverse

from gpu_backends.models import GpuBackend
from workshops import audit, frontends
from workshops.credentials import credential_sheet
from workshops.credentials_pdf import credential_pdf
from workshops.models import QueuePolicy, WorkflowTemplate, Workshop
from workshops.services import MAX_SEATS, WorkshopError, create_workshop, parse_names, reissue_credentials

MAX_CSV_BYTES = 512 * 1024


class NewWorkshopForm(forms.Form):
    slug = forms.SlugField(help_text="Short name used in usernames and addresses, e.g. may-masterclass.")
    title = forms.CharField(max_length=200, required=False)
    seats = forms.IntegerField(
        min_value=1, max_value=MAX_SEATS, required=False, help_text="How many seats — or give names below."
    )
    names = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 6, "cols": 60}),
        required=False,
        help_text="One participant per line (their name goes on their card and seat).",
    )
    names_file = forms.FileField(required=False, help_text="…or a CSV file with a 'name' column.")
    queue_policy = forms.ChoiceField(choices=QueuePolicy.choices, initial=QueuePolicy.ROUND_ROBIN)
    backends = forms.ModelMultipleChoiceField(GpuBackend.objects.order_by("order", "name"), required=False)
    templates = forms.ModelMultipleChoiceField(WorkflowTemplate.objects.all(), required=False)
    default_template = forms.ModelChoiceField(WorkflowTemplate.objects.all(), required=False)
    starts_at = forms.DateTimeField(required=False, help_text="YYYY-MM-DD HH:MM")
    ends_at = forms.DateTimeField(required=False, help_text="YYYY-MM-DD HH:MM")

    def clean_slug(self) -> str:
        slug = self.cleaned_data["slug"]
        if Workshop.objects.filter(slug=slug).exists():
            raise forms.ValidationError(f"A workshop called {slug!r} exists already.")
        return slug

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
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.model._meta,
        "title": "New workshop with seats",
        "form": form,
    }
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
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.model._meta,
        "title": f"New credentials for {workshop}",
        "workshop": workshop,
        "seat_count": workshop.seats.exclude(participant=None).count(),
    }
    return TemplateResponse(request, "admin/workshops/workshop/new_credentials.html", context)


def _sheet_response(workshop: Workshop, credentials: list) -> HttpResponse:
    # The PDF is made in this same request and rides in the page (a data: URL): the passwords are never kept
    # server-side for a second request to fetch.
    pdf = credential_pdf(workshop, credentials)
    response = HttpResponse(credential_sheet(workshop, credentials, pdf=pdf))
    # Passwords: never kept by a proxy or the browser's cache.
    response["Cache-Control"] = "no-store"
    return response
