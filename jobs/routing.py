from django.urls import path

from .consumers import SeatEventsConsumer, WorkshopEventsConsumer

websocket_urlpatterns = [
    path("ws/hub/seat/", SeatEventsConsumer.as_asgi()),
    path("ws/hub/workshops/<slug:slug>/", WorkshopEventsConsumer.as_asgi()),
]
