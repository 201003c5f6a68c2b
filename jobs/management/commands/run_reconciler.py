import logging
import signal
import threading

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import close_old_connections

from jobs.reconciler import sweep

log = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Run the reconciler: orphaned and timed-out jobs, backend health, the queue deadline (not the hot path)."

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="one sweep, then exit")
        parser.add_argument("--interval", type=float, default=None)

    def handle(self, *args, once, interval, **options):
        interval = interval or settings.COMFYUME["RECONCILE_INTERVAL"]
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *a: stop.set())
        signal.signal(signal.SIGINT, lambda *a: stop.set())
        while not stop.is_set():
            close_old_connections()
            try:
                report = sweep()
                if once:
                    self.stdout.write(str(report))
            except Exception:
                log.exception("Reconciler sweep failed")
            if once:
                return
            stop.wait(interval)
