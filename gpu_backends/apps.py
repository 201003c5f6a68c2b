from django.apps import AppConfig


class GpuBackendsConfig(AppConfig):
    name = "gpu_backends"
    verbose_name = "GPU backends"
