from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "jobs"
    verbose_name = "Jobs and queue"

    def ready(self) -> None:
        from gpu_backends.models import backend_state_changed

        from .events import backend_changed

        backend_state_changed.connect(backend_changed, dispatch_uid="jobs.backend_changed")
