"""``main.py`` of the test's stand-in ComfyUI image: the ComfyuME simulator in ComfyUI's place.

deploy/gpu-worker/start.sh starts ComfyUI as ``$COMFYUI_PYTHON main.py --listen 127.0.0.1 --port $COMFYUI_PORT
--disable-auto-launch $COMFYUI_ARGS`` in ``$COMFYUI_DIR``; this file takes those flags as ComfyUI does (an unknown
one is an error, as in ComfyUI) and serves the simulator there. Copied into the image as ``/comfyui/main.py`` by
tests/test_images.py.
"""

import argparse
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent / "comfyume_simulator"))
    from gpu_backends.simulator.server import main as simulator

    parser = argparse.ArgumentParser(description="ComfyUI (the ComfyuME simulator standing in for it)")
    parser.add_argument("--listen", default="127.0.0.1")
    parser.add_argument("--port", default="8188")
    parser.add_argument("--disable-auto-launch", action="store_true")
    parser.add_argument("--preview-method", default="none", choices=["none", "auto", "latent2rgb", "taesd"])
    args = parser.parse_args()
    simulator(
        ["--host", args.listen, "--port", args.port, "--output-dir", "output", "--preview-method", args.preview_method]
    )
