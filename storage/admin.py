from django.contrib import admin
from django.http import HttpRequest

from .backup_manifest import human_size
from .models import Artifact, BackupRun


@admin.register(Artifact)
class ArtifactAdmin(admin.ModelAdmin):
    list_display = ("key", "kind", "size", "content_type", "created_at")
    list_filter = ("kind",)
    list_select_related = ("job",)
    search_fields = ("key", "filename")
    readonly_fields = [f.name for f in Artifact._meta.fields]


@admin.register(BackupRun)
class BackupRunAdmin(admin.ModelAdmin):
    """Every backup (by hand or scheduled) and how it ended; read-only, so a failed or empty one stays visible."""

    list_display = ("started_at", "status", "trigger", "backup_id", "destination", "object_count", "size", "problem")
    list_filter = ("status", "trigger")
    search_fields = ("backup_id", "destination", "error")
    date_hierarchy = "started_at"
    readonly_fields = [f.name for f in BackupRun._meta.fields]

    @admin.display(description="size", ordering="byte_count")
    def size(self, run: BackupRun) -> str:
        return human_size(run.byte_count)

    @admin.display(description="error or warnings")
    def problem(self, run: BackupRun) -> str:
        text = run.error or run.warnings
        return text if len(text) <= 120 else f"{text[:117]}…"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: BackupRun | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: BackupRun | None = None) -> bool:
        return False
