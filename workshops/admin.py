from functools import partial
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db import transaction
from django.db.models import Count, Q
from django.http import Http404
from django.urls import NoReverseMatch, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from gpu_backends.inventory import model_presence, required_models
from gpu_backends.models import GpuBackend
from gpu_backends.services import cached_object_info
from jobs.instructor import workshop_changed
from jobs.models import Job
from jobs.scheduler import schedule
from jobs.services import cancel_job

from . import audit, frontends
from .instructor import admin_views
from .instructor.admin_base import AuditedModelAdmin
from .models import MAX_THUMBNAIL_BYTES, Announcement, AuditEntry, JoinLink, Seat, WorkflowTemplate, Workshop
from .seat_api import picture_response
from .services import ThumbnailProblem, announcement_changed, push_templates, set_thumbnail, thumbnail_type


class WorkflowTemplateForm(forms.ModelForm):
    """The template, and its picture in ComfyUI's Templates browser (checked by content before anything is saved)."""

    picture = forms.FileField(
        required=False,
        help_text="PNG, JPEG or WebP, up to 2 MB: the template's card in ComfyUI's Templates browser. "
        "Without one the seats draw a card with its name.",
    )
    remove_picture = forms.BooleanField(required=False, help_text="Back to the drawn card.")

    class Meta:
        model = WorkflowTemplate
        fields = ("name", "description", "workflow")

    def clean_picture(self):
        upload = self.cleaned_data.get("picture")
        if upload is None:
            return None
        data = upload.read(MAX_THUMBNAIL_BYTES + 1)  # one byte past the limit is enough to refuse a larger one
        try:  # only checked here: the template changes when the whole form is valid (save_model)
            thumbnail_type(data)
        except ThumbnailProblem as exc:
            raise forms.ValidationError(str(exc)) from None
        return data


class SeatInline(admin.TabularInline):
    model = Seat
    fields = ("label", "display_name", "participant", "gpu_seconds_used")
    readonly_fields = ("gpu_seconds_used",)
    raw_id_fields = ("participant",)
    extra = 0
    show_change_link = True


@admin.register(Workshop)
class WorkshopAdmin(AuditedModelAdmin):
    list_display = (
        "slug",
        "title",
        "queue_policy",
        "paused",
        "seat_count",
        "queued",
        "running",
        "spent",
        "starts_at",
        "dashboard_link",
        "outputs_link",
    )
    list_filter = ("queue_policy", "paused")
    search_fields = ("slug", "title")
    readonly_fields = ("cost_used",)
    filter_horizontal = ("backends", "templates")
    inlines = [SeatInline]
    actions = ["start_comfyuis", "push_workflow_templates", "archive"]
    audit_kind = "workshop"

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        # Unpausing or raising a cap lets waiting jobs start now, not at the reconciler's next sweep.
        transaction.on_commit(schedule)
        if change:  # the live dashboards (and, for a pause, the seats) show it at once, as for the dashboard's own
            workshop_changed(obj, form.changed_data)

    def get_urls(self):
        extra = [
            path(
                "new-with-seats/",
                self.admin_site.admin_view(partial(admin_views.new_workshop, self)),
                name="workshops_workshop_new_with_seats",
            ),
            path(
                "<path:object_id>/new-credentials/",
                self.admin_site.admin_view(partial(admin_views.new_credentials, self)),
                name="workshops_workshop_new_credentials",
            ),
            path(
                "<path:object_id>/rehearse/",
                self.admin_site.admin_view(partial(admin_views.rehearse_page, self)),
                name="workshops_workshop_rehearse",
            ),
            path(
                "<path:object_id>/estimate/",
                self.admin_site.admin_view(partial(admin_views.estimate_page, self)),
                name="workshops_workshop_estimate",
            ),
            path(
                "<path:object_id>/add-seats/",
                self.admin_site.admin_view(partial(admin_views.add_seats, self)),
                name="workshops_workshop_add_seats",
            ),
        ]
        return extra + super().get_urls()

    def audit_name(self, obj):
        return obj.slug

    @admin.display(description="GPU cost", ordering="cost_used")
    def spent(self, obj):
        """What the workshop's jobs cost so far, against its spending cap (in red once reached)."""
        text = f"{obj.cost_used:.2f}"
        if obj.spending_cap is None:
            return text
        if obj.spending_capped:
            return format_html('<strong style="color:#b91c1c">{} of {} (cap reached)</strong>', text, obj.spending_cap)
        return f"{text} of {obj.spending_cap}"

    @admin.action(description="Start every seat's ComfyUI")
    def start_comfyuis(self, request, queryset):
        count = 0
        for workshop in queryset:
            started = frontends.start_seats(workshop)
            count += started
            audit.record(
                request.user,
                "workshop.start_comfyuis",
                f"Started the ComfyUI of every seat of {workshop.slug} ({started} seat{'s' if started != 1 else ''})",
                workshop=workshop,
                target=workshop,
                details={"seats": started},
            )
        self.message_user(request, f"Starting {count} seat ComfyUIs; the Seats page shows each one's state.")

    @admin.action(description="Put the workshop's templates in every seat's workflow list now")
    def push_workflow_templates(self, request, queryset):
        for workshop in queryset:
            push_templates(workshop)
            names = list(workshop.templates.values_list("name", flat=True))
            audit.record(
                request.user,
                "template.push",
                f"Sent the workflow templates of {workshop.slug} to every seat ({len(names)} template"
                f"{'s' if len(names) != 1 else ''})",
                workshop=workshop,
                target=workshop,
                details={"templates": names},
            )
        self.message_user(request, "Sent. Open seats get new templates within a second (edited copies are kept).")

    @admin.action(description="Archive: close the queue, cancel waiting jobs, stop the seats' ComfyUI (outputs stay)")
    def archive(self, request, queryset):
        for workshop in queryset.filter(archived_at__isnull=True):
            with transaction.atomic():
                Workshop.objects.filter(pk=workshop.pk).update(archived_at=timezone.now())
                waiting = list(workshop.jobs.filter(status__in=(*Job.WAITING, *Job.ACTIVE)))
                for job in waiting:
                    cancel_job(job, by="instructor (workshop archived)")
                stopped = frontends.stop_seats(workshop)
                audit.record(
                    request.user,
                    "workshop.archive",
                    f"Archived {workshop.slug}: {len(waiting)} unfinished job(s) cancelled, {stopped} seat(s) stopped",
                    workshop=workshop,
                    target=workshop,
                    details={"cancelled_jobs": len(waiting), "stopped_seats": stopped},
                )
            self.message_user(
                request,
                f"{workshop.slug} archived: its queue is closed and its seats' ComfyUI stop within seconds. "
                "Outputs, the gallery and the audit log stay.",
            )

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                n_seats=Count("seats", distinct=True),
                n_queued=Count("jobs", filter=Q(jobs__status=Job.Status.QUEUED), distinct=True),
                n_running=Count("jobs", filter=Q(jobs__status__in=Job.ACTIVE), distinct=True),
            )
        )

    @admin.display(description="Live")
    def dashboard_link(self, obj):
        return format_html('<a href="{}">Dashboard</a>', reverse("dashboard:page", args=[obj.slug]))

    @admin.display(description="Outputs")
    def outputs_link(self, obj):
        gallery = reverse("storage:gallery", args=[obj.slug])
        return format_html(
            '<a href="{}">Gallery</a> · <a href="{}?projector=1">Projector</a> · <a href="{}">ZIP</a>',
            gallery,
            gallery,
            reverse("storage:download-zip", args=[obj.slug]),
        )

    @admin.display(description="Seats", ordering="n_seats")
    def seat_count(self, obj):
        return obj.n_seats

    @admin.display(description="Queued", ordering="n_queued")
    def queued(self, obj):
        return obj.n_queued

    @admin.display(description="Running", ordering="n_running")
    def running(self, obj):
        return obj.n_running


def _frontend_action(service, verb: str, description: str, *, code: str, summary: str):
    """An admin action running ``service`` on the selected seats; ``summary`` ("Restarted the ComfyUI of
    {seat}") words the audit entry each seat gets."""

    def action(modeladmin, request, queryset):
        seats = list(queryset.select_related("workshop"))
        count = service(seats)
        audit.record_all(
            audit.build(request.user, code, summary.format(seat=seat), workshop=seat.workshop, target=seat)
            for seat in seats
        )
        modeladmin.message_user(
            request,
            f"{verb} {count} seat ComfyUI{'s' if count != 1 else ''}. The seat supervisor carries it out within a "
            "second or two; the Frontend column shows the result.",
            messages.SUCCESS,
        )

    action.__name__ = f"frontend_{service.__name__}"
    return admin.action(description=description)(action)


@admin.register(Seat)
class SeatAdmin(AuditedModelAdmin):
    list_display = (
        "label",
        "workshop",
        "participant",
        "display_name",
        "frontend_state",
        "open_comfyui",
        "budget",
    )
    list_filter = ("workshop", "frontend__state")
    list_select_related = ("workshop", "participant", "frontend")
    search_fields = ("label", "display_name", "participant__username")
    readonly_fields = ("gpu_seconds_used", "cost_used")
    audit_kind = "seat"
    audit_related = ("workshop",)
    actions = [
        _frontend_action(
            frontends.start_seats,
            "Starting",
            "Start the selected seats' ComfyUI",
            code="seat.start",
            summary="Started the ComfyUI of {seat}",
        ),
        _frontend_action(
            frontends.stop_seats,
            "Stopping",
            "Stop the selected seats' ComfyUI (their files stay)",
            code="seat.stop",
            summary="Stopped the ComfyUI of {seat}",
        ),
        _frontend_action(
            frontends.restart_seats,
            "Restarting",
            "Restart the selected seats' ComfyUI",
            code="seat.restart",
            summary="Restarted the ComfyUI of {seat}",
        ),
        _frontend_action(
            frontends.reset_seats,
            "Resetting",
            "Reset the selected seats' ComfyUI: saved workflows, settings and uploads are set aside",
            code="seat.reset",
            summary="Reset the ComfyUI of {seat} (saved workflows, settings and uploads set aside)",
        ),
        "new_cards",
        "more_budget",
        "take_home_links",
        "revoke_take_home_links",
        "delete_participant_data",
    ]

    @admin.action(description="Issue take-home links to the selected seats' outputs (for after the workshop)")
    def take_home_links(self, request, queryset):
        return admin_views.take_home_links(self, request, queryset)

    @admin.action(description="Revoke the selected seats' take-home links")
    def revoke_take_home_links(self, request, queryset):
        return admin_views.revoke_take_home_links(self, request, queryset)

    @admin.action(description="Delete the selected participants' outputs, uploads and saved workflows (on request)")
    def delete_participant_data(self, request, queryset):
        return admin_views.delete_participant_data(self, request, queryset)

    @admin.action(description="Issue new cards for the selected seats (a lost card; the other seats keep theirs)")
    def new_cards(self, request, queryset):
        return admin_views.new_cards(self, request, queryset)

    @admin.action(description="Give the selected seats more GPU time or money than the workshop's per-seat budget")
    def more_budget(self, request, queryset):
        return admin_views.more_budget(self, request, queryset)

    @admin.display(description="GPU time used", ordering="gpu_seconds_used")
    def budget(self, obj):
        """Usage against the seat's budget (the workshop's per-seat one plus the seat's extra); seats at 80 % or
        more stand out."""
        text = f"{obj.gpu_seconds_used:.0f} s"
        if obj.gpu_seconds_limit is not None:
            text += f" of {obj.gpu_seconds_limit} s"
        if obj.cost_limit is not None:
            text += f" · {obj.cost_used:.2f} of {obj.cost_limit:.2f}"
        if obj.extra_gpu_seconds or obj.extra_cost:
            text += " (raised)"
        used = obj.budget_used()
        if used is None:
            return text
        if used >= 0.8:
            return format_html('<strong style="color:#b91c1c">{} ({}%)</strong>', text, round(used * 100))
        return f"{text} ({round(used * 100)}%)"

    @admin.display(description="Frontend", ordering="frontend__state")
    def frontend_state(self, obj):
        frontend = getattr(obj, "frontend", None)
        if frontend is None:
            return "not set up"
        text = frontend.get_state_display()
        if frontend.restarts:
            text += f" ({frontend.restarts} restart{'s' if frontend.restarts != 1 else ''})"
        if frontend.last_error:
            text += f" — {frontend.last_error[:80]}"
        return text

    @admin.display(description="ComfyUI")
    def open_comfyui(self, obj):
        # Built from COMFYUME_PUBLIC_URL: admin instances are shared between requests, so no per-request host.
        url = frontends.url_for(obj, getattr(obj, "frontend", None), None)
        return format_html('<a href="{}" target="_blank" rel="noopener">open</a>', url) if url else "—"


@admin.register(JoinLink)
class JoinLinkAdmin(AuditedModelAdmin):
    list_display = ("seat", "expires_at", "used_at")
    list_select_related = ("seat__workshop",)
    readonly_fields = ("seat", "token_hash", "expires_at", "used_at")
    audit_kind = "join_link"
    audit_related = ("seat__workshop",)


@admin.register(Announcement)
class AnnouncementAdmin(AuditedModelAdmin):
    """Saving an announcement shows it at once in every participant's ComfyUI of the workshop."""

    list_display = ("message", "workshop", "active", "created_by", "created_at")
    list_filter = ("workshop", "active")
    list_select_related = ("workshop", "created_by")
    fields = ("workshop", "message", "active")
    audit_kind = "announcement"
    audit_related = ("workshop",)

    def audit_name(self, obj):
        return f"“{audit.clip(obj.message, 80)}”"

    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)
        announcement_changed(obj)

    def audit_save(self, request, form, formsets, change):
        """Posted, withdrawn or edited: what participants saw change, in the instructor's words."""
        note = form.instance
        changed = audit.changes(form)
        if change and not changed:
            return None
        quoted = self.audit_name(note)
        if not change:
            action = "announcement.post"
            summary = (
                f"Posted an announcement to {note.workshop.slug}: {quoted}"
                if note.active
                else f"Saved an announcement for {note.workshop.slug} without showing it: {quoted}"
            )
        elif "active" in changed and not note.active:
            action, summary = "announcement.withdraw", f"Withdrew the announcement {quoted} from {note.workshop.slug}"
        elif "active" in changed:
            action, summary = "announcement.post", f"Posted the announcement {quoted} to {note.workshop.slug} again"
        else:
            action = "announcement.edit"
            summary = f"Edited an announcement of {note.workshop.slug}: {audit.describe_changes(changed, form)}"
        return audit.record(
            request.user, action, summary, workshop=note.workshop, target=note, details={"changes": changed}
        )


@admin.register(WorkflowTemplate)
class WorkflowTemplateAdmin(AuditedModelAdmin):
    form = WorkflowTemplateForm
    list_display = ("name", "description", "models_ready", "has_picture", "updated_at")
    search_fields = ("name", "description")
    readonly_fields = ("current_picture", "model_inventory")
    fields = ("name", "description", "workflow", "current_picture", "picture", "remove_picture", "model_inventory")

    @admin.display(description="Picture", boolean=True)
    def has_picture(self, obj: WorkflowTemplate) -> bool:
        return bool(obj.thumbnail_type)

    @admin.display(description="Current picture")
    def current_picture(self, obj: WorkflowTemplate) -> str:
        if not obj.pk or not obj.thumbnail_type:
            return "None: the seats draw a card with the template's name."
        # The version in the address: a new picture is never shown from the browser's cache of the old one.
        url = f"{reverse('admin:workshops_workflowtemplate_picture', args=[obj.pk])}?v={obj.updated_at.timestamp():.0f}"
        return format_html('<img src="{}" alt="" style="max-width: 256px; max-height: 256px">', url)

    def get_urls(self):
        picture = self.admin_site.admin_view(self.picture_view)
        return [path("<int:pk>/picture/", picture, name="workshops_workflowtemplate_picture"), *super().get_urls()]

    def picture_view(self, request, pk: int):
        template = WorkflowTemplate.objects.filter(pk=pk).exclude(thumbnail_type="").first()
        if template is None or not self.has_view_permission(request, template):
            raise Http404("No such picture.")
        return picture_response(template)

    audit_kind = "template"

    def _inventory(self, obj: WorkflowTemplate) -> tuple[list, list[tuple[GpuBackend, dict | None]]]:
        backends = list(GpuBackend.objects.filter(enabled=True))
        return required_models(obj.workflow), [(b, cached_object_info(b)) for b in backends]

    @admin.display(description="Models on the GPUs")
    def models_ready(self, obj: WorkflowTemplate) -> str:
        needs, catalogues = self._inventory(obj)
        if not needs:
            return "needs no model files"
        parts = []
        for backend, info in catalogues:
            if info is None:
                parts.append(f"{backend.name}: not read yet")
                continue
            have = sum(model_presence(need, info) == "present" for need in needs)
            parts.append(f"{backend.name}: {have}/{len(needs)}")
        return "; ".join(parts) or "no GPU backend enabled"

    @admin.display(description="Models on each GPU backend")
    def model_inventory(self, obj: WorkflowTemplate) -> str:
        needs, catalogues = self._inventory(obj)
        if not needs:
            return "This workflow names no model files."
        words = {
            "present": "✔ has it",
            "missing": "✘ missing",
            "no-node": "✘ node type missing",
            "unknown": "? not read yet (Test connection)",
        }
        header = format_html_join("", "<th>{}</th>", ((b.name,) for b, _ in catalogues))
        rows = format_html_join(
            "",
            "<tr><td><code>{}</code></td><td>{}</td>{}</tr>",
            (
                (
                    need.name,
                    need.folder or "",
                    format_html_join(
                        "",
                        '<td class="inventory-{}">{}</td>',
                        ((p, words[p]) for p in (model_presence(need, info) for _, info in catalogues)),
                    ),
                )
                for need in needs
            ),
        )
        return format_html(
            "<table><thead><tr><th>Model file</th><th>Folder</th>{}</tr></thead><tbody>{}</tbody></table>",
            header,
            rows,
        )

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if form.cleaned_data.get("picture"):
            set_thumbnail(obj, form.cleaned_data["picture"])
        elif form.cleaned_data.get("remove_picture"):
            set_thumbnail(obj, None)
        for workshop in obj.workshops.all():
            push_templates(workshop)

    def audit_extra(self, obj, change):
        # save_model sent the template to these workshops' seats; a template is shared, so the entry names
        # them rather than belonging to one.
        slugs = sorted(obj.workshops.values_list("slug", flat=True))
        if not slugs:
            return "", {"sent_to": []}
        return f"; sent to the seats of {', '.join(slugs)}", {"sent_to": slugs}


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    """The audit log, read-only for everyone (superusers included): it is a record, not a document."""

    list_display = ("created_at", "who", "action", "summary", "workshop")
    # Only the people and workshops that appear in the log, not every participant account.
    list_filter = (
        "action",
        ("workshop", admin.RelatedOnlyFieldListFilter),
        ("actor", admin.RelatedOnlyFieldListFilter),
    )
    list_select_related = ("workshop",)
    search_fields = ("summary", "actor_name", "target_repr")
    date_hierarchy = "created_at"
    fields = (
        "created_at",
        "actor",
        "actor_name",
        "action",
        "summary",
        "workshop",
        "target",
        "target_type",
        "target_id",
        "target_repr",
        "details",
    )
    readonly_fields = fields

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="Who", ordering="actor_name")
    def who(self, obj):
        return obj.actor_name or "—"

    @admin.display(description="Target")
    def target(self, obj: AuditEntry) -> Any:
        """A link to the object's admin page while it exists; its name as it was otherwise."""
        if not obj.target_type or not obj.target_id:
            return obj.target_repr or "—"
        try:
            url = reverse(f"admin:{obj.target_type.replace('.', '_')}_change", args=[obj.target_id])
        except NoReverseMatch:
            return obj.target_repr
        return format_html('<a href="{}">{}</a>', url, obj.target_repr)
