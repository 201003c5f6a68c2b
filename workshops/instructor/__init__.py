"""The instructor's side, on top of everything: the live dashboard, the admin's own pages and the admin's base
class that writes the audit log.

The roof of the layers (docs/ARCHITECTURE.md, "Layers"): it may import any app, and nothing below it imports
it. The actions it offers are floor (``jobs/instructor.py``, ``workshops/services.py``); this package only
shows, asks and calls them, so the admin and the dashboard do the same thing the same way.
"""
