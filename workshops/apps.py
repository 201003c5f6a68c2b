from django.apps import AppConfig


class WorkshopsConfig(AppConfig):
    name = "workshops"
    verbose_name = "Workshops"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_in

        from . import frontends

        # A participant's sign-in starts their seat's ComfyUI, whichever way they signed in.
        user_logged_in.connect(frontends.start_on_sign_in, dispatch_uid="workshops.start_on_sign_in")
