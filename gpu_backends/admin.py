from django.contrib import admin, messages
from django.db import transaction

from jobs.instructor import backend_changed, do_scale_backend_to_zero, do_warm_backend
from jobs.scheduler import schedule
from workshops import audit
from workshops.instructor.admin_base import AuditedModelAdmin

from .client import BackendError
from .kinds import kind_of
from .models import GpuBackend
from .services import check_health, read_catalogue_soon, refresh_object_info


@admin.register(GpuBackend)
class GpuBackendAdmin(AuditedModelAdmin):
    list_display = ("name", "kind", "gpu_type", "state", "max_concurrency", "price_per_hour", "enabled", "order")
    list_filter = ("kind", "state", "enabled")
    list_editable = ("enabled", "order")
    readonly_fields = ("state", "state_changed_at", "last_error", "object_info_fetched_at", "applied_min_replicas")
    actions = ["test_connection", "warm_up_now", "scale_to_zero_now"]
    fieldsets = (
        (
            None,
            {"fields": ("name", "kind", "url", "gpu_type", "price_per_hour", "max_concurrency", "enabled", "order")},
        ),
        (
            "Verda serverless (only for the Verda kind)",
            {
                "fields": (
                    "deployment",
                    "api_key_env",
                    "inference_mode",
                    "warm_replicas",
                    "prewarm_minutes",
                    "warm_until",
                    "applied_min_replicas",
                ),
                "description": "Order the backends for failover: H200 spot first, then H200 on-demand, then "
                "B300. A failing backend's jobs go to the next one. Scaling needs COMFYUME_VERDA_CLIENT_ID and "
                "COMFYUME_VERDA_CLIENT_SECRET.",
            },
        ),
        ("State", {"fields": ("state", "state_changed_at", "last_error", "object_info_fetched_at")}),
    )

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        reread = {"kind", "url", "deployment", "api_key_env"} & set(form.changed_data)
        if kind_of(obj).cold_starts and obj.enabled and (not change or reread or obj.object_info_fetched_at is None):
            # Participants' ComfyUI and preflight need its node list; reading it starts a replica if none runs.
            read_catalogue_soon(obj)
            self.message_user(
                request,
                f"{obj.name}: reading its node list in the background; on a cold deployment this starts a replica "
                "and can take several minutes.",
                messages.INFO,
            )
        # Enabling a backend or raising its concurrency lets waiting jobs start now (list edits included).
        transaction.on_commit(schedule)
        if change and form.changed_data:  # every live dashboard using it redraws it, as after its own switch
            backend_changed(obj)

    # Saves through the list's editable columns (enabled, order) are recorded too: they go through save_related.
    audit_kind = "backend"

    @admin.action(description="Test connection and refresh the node list (starts a Verda replica if none runs)")
    def test_connection(self, request, queryset):
        for backend in queryset:
            check_health(backend, wake=True)  # asked on purpose: a replica may start
            try:
                info = refresh_object_info(backend)
            except BackendError as exc:
                self.message_user(request, f"{backend.name}: not reachable — {exc}", messages.ERROR)
                audit.record(
                    request.user,
                    "backend.test",
                    f"Tested GPU backend {backend.name}: not reachable — {exc}",
                    target=backend,
                    details={"reachable": False, "state": backend.state, "error": audit.clip(str(exc), 300)},
                )
                continue
            self.message_user(request, f"{backend.name}: ready, {len(info)} node types.", messages.SUCCESS)
            audit.record(
                request.user,
                "backend.test",
                f"Tested GPU backend {backend.name}: ready, {len(info)} node types",
                target=backend,
                details={"reachable": True, "state": backend.state, "node_types": len(info)},
            )

    def _scale(self, request, queryset, action, done: str) -> None:
        """Run a do_* scaling action (it writes the audit entry) on each selected backend that scales."""
        for backend in queryset:
            if not kind_of(backend).scales:
                self.message_user(request, f"{backend.name}: only Verda backends scale.", messages.WARNING)
                continue
            try:
                reported = action(backend, actor=request.user)
            except BackendError as exc:
                self.message_user(request, f"{backend.name}: {exc}", messages.ERROR)
                continue
            self.message_user(request, f"{backend.name}: {done}.{f' {reported}' if reported else ''}", messages.SUCCESS)

    @admin.action(description="Warm up now (keep its warm replicas running for an hour)")
    def warm_up_now(self, request, queryset):
        self._scale(request, queryset, do_warm_backend, "Warming up")

    @admin.action(description="Scale to zero now (the sessions under way do not warm it again)")
    def scale_to_zero_now(self, request, queryset):
        self._scale(
            request,
            queryset,
            do_scale_backend_to_zero,
            "Minimum replicas set to 0, held until the next session's pre-warm",
        )
