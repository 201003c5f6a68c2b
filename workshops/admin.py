from django.contrib import admin
from django.db.models import Count, Q

from jobs.models import Job

from .models import JoinLink, Seat, Workshop


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
    filter_horizontal = ("backends",)
    inlines = [SeatInline]

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


@admin.register(Seat)
class SeatAdmin(admin.ModelAdmin):
    list_display = ("label", "workshop", "participant", "display_name", "gpu_seconds_used")
    list_filter = ("workshop",)
    list_select_related = ("workshop", "participant")
    search_fields = ("label", "display_name", "participant__username")
    readonly_fields = ("gpu_seconds_used",)


@admin.register(JoinLink)
class JoinLinkAdmin(admin.ModelAdmin):
    list_display = ("seat", "expires_at", "used_at")
    list_select_related = ("seat__workshop",)
    readonly_fields = ("seat", "token_hash", "expires_at", "used_at")
