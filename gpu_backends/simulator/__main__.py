"""``python -m gpu_backends.simulator --port P``: serve the ComfyUI simulator until Ctrl-C."""

from .server import main

if __name__ == "__main__":
    main()
