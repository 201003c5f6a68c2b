from django.contrib import admin, messages

from workshops.instructor.admin_base import AuditedModelAdmin

from .instructor import do_cancel_jobs
from .models import Job, JobEvent


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
        # The live dashboard cancels through the same operation: both record a cancel in the same words.
        outcomes = do_cancel_jobs(queryset.select_related("seat__workshop", "backend"), actor=request.user)
        done = sum(result != "already_finished" for _, result in outcomes)
        self.message_user(request, f"Cancelled {done} job(s).", messages.SUCCESS)
