from django.contrib import admin, messages
from django.db.models import Count, Q
from django.utils.html import format_html

from jobs.models import Job

from . import frontends
from .models import Announcement, JoinLink, Seat, WorkflowTemplate, Workshop
from .services import announcement_changed, push_templates


class SeatInline(admin.TabularInline):
    model = Seat
    fields = ("label", "display_name", "participant", "gpu_seconds_used")
    readonly_fields = ("gpu_seconds_used",)
    raw_id_fields = ("participant",)
    extra = 0
    show_change_link = True


@admin.register(Workshop)
class WorkshopAdmin(admin.ModelAdmin):
    list_display = ("slug", "title", "queue_policy", "paused", "seat_count", "queued", "running", "starts_at")
    list_filter = ("queue_policy", "paused")
    search_fields = ("slug", "title")
    filter_horizontal = ("backends", "templates")
    inlines = [SeatInline]
    actions = ["start_comfyuis", "push_workflow_templates"]

    @admin.action(description="Start every seat's ComfyUI")
    def start_comfyuis(self, request, queryset):
        count = sum(frontends.start_seats(w) for w in queryset)
        self.message_user(request, f"Starting {count} seat ComfyUIs; the Seats page shows each one's state.")

    @admin.action(description="Put the workshop's templates in every seat's workflow list now")
    def push_workflow_templates(self, request, queryset):
        for workshop in queryset:
            push_templates(workshop)
        self.message_user(request, "Sent. Open seats get new templates within a second (edited copies are kept).")

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

    @admin.display(description="Seats", ordering="n_seats")
    def seat_count(self, obj):
        return obj.n_seats

    @admin.display(description="Queued", ordering="n_queued")
    def queued(self, obj):
        return obj.n_queued

    @admin.display(description="Running", ordering="n_running")
    def running(self, obj):
        return obj.n_running


def _frontend_action(service, verb: str, description: str):
    def action(modeladmin, request, queryset):
        count = service(list(queryset.select_related("workshop")))
        modeladmin.message_user(
            request,
            f"{verb} {count} seat ComfyUI{'s' if count != 1 else ''}. The seat supervisor carries it out within a "
            "second or two; the Frontend column shows the result.",
            messages.SUCCESS,
        )

    action.__name__ = f"frontend_{service.__name__}"
    return admin.action(description=description)(action)


@admin.register(Seat)
class SeatAdmin(admin.ModelAdmin):
    list_display = (
        "label",
        "workshop",
        "participant",
        "display_name",
        "frontend_state",
        "open_comfyui",
        "gpu_seconds_used",
    )
    list_filter = ("workshop", "frontend__state")
    list_select_related = ("workshop", "participant", "frontend")
    search_fields = ("label", "display_name", "participant__username")
    readonly_fields = ("gpu_seconds_used",)
    actions = [
        _frontend_action(frontends.start_seats, "Starting", "Start the selected seats' ComfyUI"),
        _frontend_action(frontends.stop_seats, "Stopping", "Stop the selected seats' ComfyUI (their files stay)"),
        _frontend_action(frontends.restart_seats, "Restarting", "Restart the selected seats' ComfyUI"),
        _frontend_action(
            frontends.reset_seats,
            "Resetting",
            "Reset the selected seats' ComfyUI: saved workflows, settings and uploads are set aside",
        ),
    ]

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
class JoinLinkAdmin(admin.ModelAdmin):
    list_display = ("seat", "expires_at", "used_at")
    list_select_related = ("seat__workshop",)
    readonly_fields = ("seat", "token_hash", "expires_at", "used_at")


@admin.register(Announcement)
class AnnouncementAdmin(admin.ModelAdmin):
    """Saving an announcement shows it at once in every participant's ComfyUI of the workshop."""

    list_display = ("message", "workshop", "active", "created_by", "created_at")
    list_filter = ("workshop", "active")
    list_select_related = ("workshop", "created_by")
    fields = ("workshop", "message", "active")

    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)
        announcement_changed(obj)


@admin.register(WorkflowTemplate)
class WorkflowTemplateAdmin(admin.ModelAdmin):
    list_display = ("name", "description", "updated_at")
    search_fields = ("name", "description")

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        for workshop in obj.workshops.all():
            push_templates(workshop)
