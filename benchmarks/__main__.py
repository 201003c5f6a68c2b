"""``make bench``: run the benchmarks and print figures, each also as ``BENCH <name> <value> <unit>``.

Runs on a private data dir with SQLite and an embedded Redis unless BENCH_DATABASE_URL / BENCH_REDIS_URL
name others (it never touches DATABASE_URL/REDIS_URL, which may be a real installation).
Usage: python -m benchmarks [fairness] [claims] [overhead] [seat] [serverless] [bodies] [crowd]
       python -m benchmarks realcomfy --comfyui-url URL [options]   (a real ComfyUI; see benchmarks/realcomfy.py)
With COMFYUI_URL set, ``make bench`` runs ``realcomfy`` against it as well.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

DATA_DIR = tempfile.mkdtemp(prefix="cfme-bench-")
os.environ["COMFYUME_DATA_DIR"] = DATA_DIR
os.environ["COMFYUME_REDIS_PREFIX"] = f"cfme-bench-{os.getpid()}"
os.environ.pop("DATABASE_URL", None)
os.environ.pop("REDIS_URL", None)
if os.environ.get("BENCH_DATABASE_URL"):
    os.environ["DATABASE_URL"] = os.environ["BENCH_DATABASE_URL"]
if os.environ.get("BENCH_REDIS_URL"):
    os.environ["REDIS_URL"] = os.environ["BENCH_REDIS_URL"]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "comfyume.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")
os.environ.setdefault("DEBUG", "false")  # measure what production runs


class Report:
    def line(self, text: str) -> None:
        print(text, flush=True)

    def bench(self, name: str, value: float, unit: str) -> None:
        print(f"BENCH {name} {value:.4g} {unit}", flush=True)


def main(argv: list[str]) -> None:
    import shutil

    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    from comfyume import embedded_redis

    redis_proc = embedded_redis.start(settings.EMBEDDED_REDIS_DIR) if settings.EMBEDDED_REDIS else None
    try:
        call_command("migrate", verbosity=0)
        call_command("flush", interactive=False, verbosity=0)  # BENCH_DATABASE_URL is the benchmark's own
        report = Report()
        engine = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
        report.line(
            f"# ComfyuME benchmarks — database: {engine}, redis: {'embedded' if redis_proc else 'external'}, "
            f"cpus: {os.cpu_count()}, {time.strftime('%Y-%m-%d %H:%M')}"
        )
        options = []
        if argv[:1] == ["realcomfy"]:
            selected, options = ["realcomfy"], argv[1:]
        else:
            selected = argv or ["fairness", "claims", "overhead", "seat", "serverless", "bodies", "crowd"]
            if not argv and os.environ.get("COMFYUI_URL"):
                selected.append("realcomfy")
        if "fairness" in selected:
            from benchmarks import fairness

            fairness.run(report)
        if "claims" in selected:
            from benchmarks import claims

            claims.run(report)
        if "overhead" in selected:
            from benchmarks import overhead

            overhead.run(report)
        if "seat" in selected:
            from benchmarks import seat_frontend

            seat_frontend.run(report)
        if "serverless" in selected:
            from benchmarks import serverless

            serverless.run(report)
        if "bodies" in selected:
            from benchmarks import bodies

            bodies.run(report)
        if "crowd" in selected:
            from benchmarks import crowd

            crowd.run(report)
        if "realcomfy" in selected:
            from benchmarks import realcomfy

            realcomfy.run(report, options)
    finally:
        embedded_redis.stop(redis_proc)
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(DATA_DIR, ignore_errors=True)
        else:
            print(f"kept {DATA_DIR}")


if __name__ == "__main__":
    main(sys.argv[1:])
