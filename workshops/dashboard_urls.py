"""The instructor's live dashboard, mounted under the admin (see comfyume/urls.py)."""

from django.urls import path

from . import dashboard_views

app_name = "dashboard"

urlpatterns = [
    path("<slug:slug>/", dashboard_views.dashboard, name="page"),
    path("<slug:slug>/snapshot", dashboard_views.snapshot, name="snapshot"),
    path("<slug:slug>/charts", dashboard_views.charts, name="charts"),
    path("<slug:slug>/act", dashboard_views.act, name="act"),
]
