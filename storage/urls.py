"""The instructor's views of workshop outputs, mounted under the admin (see comfyume/urls.py)."""

from django.urls import path

from . import views

app_name = "storage"

urlpatterns = [
    path("<slug:slug>/", views.gallery, name="gallery"),
    path("<slug:slug>/outputs.zip", views.download_zip, name="download-zip"),
    path("file/<int:artifact_id>", views.artifact_file, name="artifact-file"),
]
