from django.contrib import admin, messages
from django.db import transaction

from jobs.scheduler import schedule
from workshops import audit
from workshops.audit import AuditedModelAdmin

from .client import BackendError
from .models import GpuBackend
from .services import check_health, refresh_object_info


@admin.register(GpuBackend)
class GpuBackendAdmin(AuditedModelAdmin):
    list_display = ("name", "kind", "gpu_type", "state", "max_concurrency", "price_per_hour", "enabled", "order")
    list_filter = ("kind", "state", "enabled")
    list_editable = ("enabled", "order")
    readonly_fields = ("state", "state_changed_at", "last_error", "object_info_fetched_at")
    actions = ["test_connection"]

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        # Enabling a backend or raising its concurrency lets waiting jobs start now (list edits included).
        transaction.on_commit(schedule)

    # Saves through the list's editable columns (enabled, order) are recorded too: they go through save_related.
    audit_kind = "backend"

    @admin.action(description="Test connection (health and node list)")
    def test_connection(self, request, queryset):
        for backend in queryset:
            check_health(backend)
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
