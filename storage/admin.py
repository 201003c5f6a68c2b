from django.contrib import admin

from .models import Artifact


@admin.register(Artifact)
class ArtifactAdmin(admin.ModelAdmin):
    list_display = ("key", "kind", "size", "content_type", "created_at")
    list_filter = ("kind",)
    list_select_related = ("job",)
    search_fields = ("key", "filename")
    readonly_fields = [f.name for f in Artifact._meta.fields]
