"""The instructor's live dashboard, mounted under the admin (see comfyume/urls.py)."""

from django.urls import path

from . import views

app_name = "dashboard"

urlpatterns = [
    path("<slug:slug>/", views.dashboard, name="page"),
    path("<slug:slug>/snapshot", views.snapshot, name="snapshot"),
    path("<slug:slug>/charts", views.charts, name="charts"),
    path("<slug:slug>/act", views.act, name="act"),
]
