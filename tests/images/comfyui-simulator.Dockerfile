# A stand-in for a ComfyUI image (deploy/gpu-worker/Dockerfile's COMFYUI_IMAGE), for tests/test_images.py only: no
# ComfyUI image can be had here. As in RunPod's base, ComfyUI's folder is /comfyui, its Python is the one first on
# PATH (`python`), and it runs as root; ComfyUI there is the simulator (its main.py: tests/images/comfyui_main.py).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# ComfyUI's own dependencies, as far as the simulator needs them (aiohttp, Pillow, PyAV), with the project's pins.
COPY requirements.txt /tmp/comfyui-requirements.txt
RUN pip install --no-cache-dir -r /tmp/comfyui-requirements.txt && rm /tmp/comfyui-requirements.txt

# The simulator's packages in a folder of their own: ComfyUI's folder holds no package the worker's names could meet.
COPY main.py /comfyui/main.py
COPY gpu_backends /comfyui/comfyume_simulator/gpu_backends
COPY jobs /comfyui/comfyume_simulator/jobs
# A package named like the worker's, in ComfyUI's folder (a custom node could be called anything): the worker must
# import its own (start.sh and the worker Dockerfile run Python with -P), never this one.
RUN mkdir /comfyui/gpu_backends \
    && echo 'raise ImportError("the worker imported a gpu_backends from the ComfyUI folder")' > /comfyui/gpu_backends/__init__.py
WORKDIR /comfyui
CMD ["python", "main.py", "--listen", "127.0.0.1", "--port", "8188"]
