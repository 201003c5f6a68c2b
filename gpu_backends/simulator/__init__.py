"""ComfyuME's ComfyUI simulator: a real HTTP + WebSocket server that speaks ComfyUI 0.3.64's API.

It is the "GPU" of development and CI, and it says so everywhere it shows itself: ``/system_stats``
(``"simulator": true``, device "ComfyuME simulator (no GPU)"), its log lines, ``GET /`` and the text in and
on every picture it writes. No Django here; run it with ``python -m gpu_backends.simulator``.

What it reproduces, from the recordings in ``shared/fixtures/comfyui-0.3.64`` and ComfyUI a125cd84
(``server.py``, ``execution.py``, ``main.py``, ``comfy_execution/progress.py``, ``comfy_execution/graph.py``):

* the WebSocket message sequence of a run (status x2, execution_start, execution_cached, per node
  progress_state/executing[/progress_state+progress ticks][/executed]/progress_state, execution_success,
  status, executing null), of an error (execution_error with ComfyUI's field set) and of an interrupt
  (execution_interrupted, landing only at a node boundary or a progress tick), and of a cached run;
* who gets what: a prompt's events go to the sockets whose ``clientId`` is the prompt's ``client_id``;
  ``status`` goes to everyone; a prompt without ``client_id`` gets no execution_* / executing / executed
  events, while its progress / progress_state / execution_interrupted go to every socket (ComfyUI's quirk);
* the HTTP bodies: ``POST /prompt`` numbering (invalid prompts use up numbers too), caller-supplied
  prompt_id, ``front``, plain-text 500 for malformed JSON, 400 bodies from :mod:`jobs.preflight`, ``/queue``,
  ``/history`` (ComfyUI's entry shape), ``/view`` (ComfyUI's path checks), ``/upload/image``;
* output files: SaveImage (``<prefix>_00001_.png`` counters, subfolder from the prefix, ``%width%``-style
  variables), PreviewImage / MaskPreview (temp/), SaveAnimatedWEBP, SaveAnimatedPNG, PreviewAny (text), and
  real videos encoded with PyAV as ComfyUI does (comfy_extras/nodes_video.py): SaveVideo writes H.264 MP4
  (``video/ComfyUI_00001_.mp4``), SaveWEBM VP9 or AV1 WebM, both answered as ComfyUI's ui.PreviewVideo
  (``images`` + ``animated: [true]``), at the fps found on the node or upstream (CreateVideo's) and the frame
  count found upstream (length, batch_size...; capped at config.MAX_FRAMES, sides at MAX_FRAME_SIDE);
  ``/view`` answers byte ranges (aiohttp's FileResponse), which ``<video>`` needs to seek.

What it does not do (on purpose): run nodes (each takes ``node_delay``; a VIDEO or IMAGE link carries no
value, so a saver draws its own test pattern), other output nodes (SaveLatent, 3D, model savers:
``execution_error`` "cannot simulate"), audio tracks in videos, latent/binary preview frames, ``/upload/mask``,
``/view``'s ``preview``/``channel`` conversions, the web frontend, userdata/settings/models/internal routes, custom
VALIDATE_INPUTS (jobs.preflight skips those inputs, so any LoadImage file name validates; a missing one simply
renders 512x512), and ComfyUI's Python tracebacks (errors carry the simulator's own traceback).

Differences from ComfyUI, chosen for tests: several sockets may share a clientId and all receive the
events (ComfyUI keeps only the newest); ``concurrency`` > 1 runs prompts side by side like replicas, each
"replica slot" with its own cache; the node-output cache is off unless ``cache=True`` (then an identical
resubmission is served from cache, as ComfyUI does).

Model combos (``SimulatorConfig.models``): a combo input gets the extra names when its name is ``name`` or
ends in ``_name`` / ``_name<digit>`` (ckpt_name, unet_name, vae_name, clip_name2, lora_name, ...) and either
its node's category has a ``loaders`` segment or its option list is empty (CreateHookLora.lora_name);
``config_name`` is left alone. Image-upload combos (LoadImage.image, LoadImageMask.image) list the image
files under input/, subfolders included ("pasted/image.png"), as ComfyUI's LoadImage accepts them.
"""

from .config import SimulatorConfig
from .server import SimulatorThread, build_app, main, run

__all__ = ["SimulatorConfig", "SimulatorThread", "build_app", "main", "run"]
