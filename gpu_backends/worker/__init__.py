"""The GPU worker: runs next to ComfyUI in a serverless GPU container, one job per request (docs/GPU_WORKER.md).

``python -m gpu_backends.worker --comfyui-url http://127.0.0.1:8188 --port 8189``. No Django here, and nothing
from the rest of the project: the container has only aiohttp (``gpu_backends/worker/requirements.txt``) and this
folder, whole. ``prompts`` (ComfyUI's messages and file references) is pure and shared with the hub, which
imports it from here.
"""

VERSION = "0.1.0"
