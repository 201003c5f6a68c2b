"""ASGI entry point: Django for HTTP (its middleware and views in one hand-over to a thread, see
comfyume.handlers), Channels for the hub's WebSockets."""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "comfyume.settings")
django.setup(set_prefix=False)  # as django.core.asgi.get_asgi_application does

from comfyume.handlers import SyncChainASGIHandler  # noqa: E402  (needs Django set up)

django_asgi_app = SyncChainASGIHandler()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402  (needs Django set up)

from jobs.auth import SeatAuthStack  # noqa: E402
from jobs.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": SeatAuthStack(URLRouter(websocket_urlpatterns)),
    }
)
