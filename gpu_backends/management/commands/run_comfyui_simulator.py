from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand

from gpu_backends.simulator import SimulatorConfig, run


class Command(BaseCommand):
    help = "Run the ComfyUI simulator (not a GPU): ComfyUI's HTTP + WebSocket protocol with fake execution."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8188)
        parser.add_argument("--output-dir", type=Path, default=None)
        parser.add_argument("--node-delay", type=float, default=0.5, help="seconds each node takes")
        parser.add_argument("--progress-steps", type=int, default=8)
        parser.add_argument("--concurrency", type=int, default=1)
        parser.add_argument("--model", action="append", default=[], help="model file name the simulator 'has'")

    def handle(self, *args, host, port, output_dir, node_delay, progress_steps, concurrency, model, **options):
        config = SimulatorConfig(
            output_dir=output_dir or settings.DATA_DIR / "simulator",
            node_delay=node_delay,
            progress_steps=progress_steps,
            concurrency=concurrency,
            models=model,
        )
        run(host, port, config)
