from django.contrib import admin, messages

from workshops import audit
from workshops.instructor.admin_base import AuditedModelAdmin

from .instructor import cancel_outcome
from .models import Job, JobEvent
from .services import cancel_job


class JobEventInline(admin.TabularInline):
    model = JobEvent
    fields = ("at", "from_status", "to_status", "reason")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Job)
class JobAdmin(AuditedModelAdmin):
    list_display = ("id", "seat", "status", "backend", "attempts", "gpu_time", "created_at", "finished_at")
    list_filter = ("status", "workshop", "backend", "instructor_lane")
    list_select_related = ("seat__workshop", "backend")
    search_fields = ("prompt_id", "seat__label")
    readonly_fields = [f.name for f in Job._meta.fields]
    inlines = [JobEventInline]
    actions = ["cancel_selected"]
    audit_kind = "job"
    audit_related = ("seat__workshop",)

    def audit_name(self, obj):
        return f"#{obj.pk} of {obj.seat}"

    def has_add_permission(self, request):
        return False

    @admin.display(description="GPU time", ordering="gpu_seconds")
    def gpu_time(self, obj):
        return f"{obj.gpu_seconds:.1f} s"

    @admin.action(description="Cancel selected jobs")
    def cancel_selected(self, request, queryset):
        done = 0
        for job in queryset.select_related("seat__workshop", "backend"):
            accepted = cancel_job(job, by="instructor")
            done += accepted
            _record_cancel(request, job, accepted)
        self.message_user(request, f"Cancelled {done} job(s).", messages.SUCCESS)


def _record_cancel(request, job: Job, accepted: bool) -> None:
    """One audit entry per job the instructor cancelled, saying what came of it."""
    result, summary = cancel_outcome(job, accepted)
    audit.record(
        request.user,
        "job.cancel",
        summary,
        workshop=job.seat.workshop,
        target=job,
        details={"result": result, "status": job.status},
    )
