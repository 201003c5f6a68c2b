from django.contrib import admin
from django.urls import include, path

from comfyume import favicon, health
from jobs import api, callbacks, comfy_jobs, status
from storage import participant_views
from workshops import ratelimit, seat_api
from workshops import views as workshop_views

admin.site.site_header = "ComfyuME"
admin.site.site_title = "ComfyuME admin"
admin.site.index_title = "Run the workshop"
admin.site.login_form = ratelimit.AdminSignInForm

hub_api = [
    path("prompt", api.prompt, name="prompt"),
    path("queue", api.queue, name="queue"),
    path("interrupt", api.interrupt, name="interrupt"),
    path("history", api.history, name="history"),
    path("history/<str:prompt_id>", api.history, name="history-detail"),
    path("object_info", api.object_info, name="object-info"),
    path("view", api.view, name="view"),
    path("jobs", api.job_list, name="jobs"),
    path("jobs/<str:prompt_id>", api.job_detail, name="job"),
    path("jobs/<str:prompt_id>/cancel", api.job_cancel, name="job-cancel"),
    # ComfyUI's own Jobs API, as the seat frontend relays /api/jobs… (jobs/comfy_jobs.py).
    path("comfy/jobs", comfy_jobs.job_list, name="comfy-jobs"),
    path("comfy/jobs/cancel", comfy_jobs.jobs_cancel, name="comfy-jobs-cancel"),
    path("comfy/jobs/<str:job_id>", comfy_jobs.job_detail, name="comfy-job"),
    path("comfy/jobs/<str:job_id>/cancel", comfy_jobs.job_cancel, name="comfy-job-cancel"),
    path("seat", seat_api.seat_info, name="seat"),
    path("templates/<int:template_id>/thumbnail", seat_api.template_thumbnail, name="template-thumbnail"),
    path("status", seat_api.seat_status, name="status"),
    path("inputs", seat_api.upload_input, name="inputs"),
]

# GPU workers report one dispatch attempt of one job here (docs/GPU_WORKER.md).
gpu_callbacks = [
    path("events", callbacks.events, name="events"),
    path("result", callbacks.result, name="result"),
    path("preview", callbacks.preview, name="preview"),
    path("uploads", callbacks.uploads, name="uploads"),
    path("uploads/complete", callbacks.uploads_complete, name="uploads-complete"),
    path("files/<path:key>", callbacks.file_put, name="file"),
    path("inputs/<int:index>", callbacks.input_file, name="input"),
]

urlpatterns = [
    path("", workshop_views.home, name="home"),
    path("login/", workshop_views.SeatLoginView.as_view(), name="login"),
    path("logout/", workshop_views.logout_view, name="logout"),
    path("join/<str:token>/", workshop_views.join, name="join"),
    path("seat/comfyui", workshop_views.seat_comfyui, name="seat-comfyui"),
    path("auth/seat", workshop_views.seat_access, name="seat-access"),
    path("outputs/", participant_views.my_outputs, name="my-outputs"),
    path("outputs/all.zip", participant_views.my_outputs_zip, name="my-outputs-zip"),
    path("outputs/file/<int:artifact_id>", participant_views.my_output_file, name="my-output-file"),
    path("outputs/link", participant_views.my_take_home_link, name="my-take-home-link"),
    path("take-home/<str:token>/", participant_views.take_home, name="take-home"),
    path("take-home/<str:token>/all.zip", participant_views.take_home_zip, name="take-home-zip"),
    path("take-home/<str:token>/file/<int:artifact_id>", participant_views.take_home_file, name="take-home-file"),
    path("api/hub/", include((hub_api, "hub"))),
    path("api/gpu/jobs/<uuid:prompt_id>/<str:attempt>/", include((gpu_callbacks, "gpu"))),
    path("favicon.ico", favicon.favicon, name="favicon"),
    path("api/queue/status", status.queue_status_view, name="queue-status"),
    path("health", health.health, name="health"),
    path("metrics", health.metrics, name="metrics"),
    path("admin/rq/", include("django_rq.urls")),
    path("admin/outputs/", include("storage.urls")),
    path("admin/live/", include("workshops.instructor.urls")),
    path("admin/login/", ratelimit.answers_429_when_limited(admin.site.login)),
    path("admin/", admin.site.urls),
]
