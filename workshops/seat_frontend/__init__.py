"""The seat frontend: one light server per seat serving the pinned ComfyUI web frontend.

It implements, for one seat, the part of ComfyUI's server API that the web frontend uses: userdata and
settings live in the seat's own directory, uploads in its ``input/``; prompts, the queue, history, outputs
and live events go through the hub with the seat's token. It imports no Django (it starts in well under a
second and holds a few tens of MB) and trusts nothing a browser says about who it is: every request's
session is checked with the hub (briefly cached), whether or not nginx checked it already.

Run it with ``python -m workshops.seat_frontend``; its configuration comes from the environment
(see :mod:`workshops.seat_frontend.config`), normally set by a provisioning driver.
"""
