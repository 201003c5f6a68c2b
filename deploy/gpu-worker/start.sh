#!/usr/bin/env bash
# The GPU worker image's entrypoint: ComfyUI on 127.0.0.1 (never exposed) and the GPU worker next to it on
# 0.0.0.0:$COMFYUME_WORKER_PORT, the one port Verda routes to. When either process exits, the other is stopped
# and the container exits with the first one's status, so the platform replaces the replica instead of
# leaving half of it running. SIGTERM (scale-down, redeploy) stops both.
set -uo pipefail

COMFYUI_DIR="${COMFYUI_DIR:-/comfyui}"
COMFYUI_PYTHON="${COMFYUI_PYTHON:-python}"
COMFYUI_PORT="${COMFYUI_PORT:-8188}"
COMFYUI_ARGS="${COMFYUI_ARGS:-}"
WORKER_PYTHON="${WORKER_PYTHON:-/opt/comfyume-worker/venv/bin/python}"
WORKER_APP="${WORKER_APP:-/opt/comfyume-worker/app}"
# How long both get to exit after a stop before they are killed (Docker's own stop timeout is 10 s by default).
STOP_GRACE="${STOP_GRACE:-8}"
export COMFYUME_WORKER_HOST="${COMFYUME_WORKER_HOST:-0.0.0.0}"
export COMFYUME_WORKER_PORT="${COMFYUME_WORKER_PORT:-8189}"
export COMFYUME_WORKER_COMFYUI_URL="${COMFYUME_WORKER_COMFYUI_URL:-http://127.0.0.1:${COMFYUI_PORT}}"

log() { echo "start.sh: $*" >&2; }

if [ ! -f "$COMFYUI_DIR/main.py" ]; then
    log "no ComfyUI at COMFYUI_DIR=$COMFYUI_DIR (main.py missing); set COMFYUI_DIR for this base image"
    exit 2
fi

cd "$COMFYUI_DIR" || exit 2
# shellcheck disable=SC2086  # COMFYUI_ARGS is a list of extra flags, split on purpose
# --preview-method: live previews for a ComfyUI that does not read preview_method from the prompt; one that does
# follows the workshop's setting, which the hub sends with every prompt.
"$COMFYUI_PYTHON" main.py --listen 127.0.0.1 --port "$COMFYUI_PORT" --disable-auto-launch \
    --preview-method "${COMFYUI_PREVIEW_METHOD:-auto}" $COMFYUI_ARGS &
comfyui=$!
# -P: the worker imports only its own app folder, never a module of the same name in ComfyUI's folder (the
# working directory, which Python would search first).
PYTHONPATH="$WORKER_APP" "$WORKER_PYTHON" -P -m gpu_backends.worker &
worker=$!
log "ComfyUI (pid $comfyui) on 127.0.0.1:$COMFYUI_PORT, GPU worker (pid $worker) on $COMFYUME_WORKER_HOST:$COMFYUME_WORKER_PORT"

stopping=""
stop_both() {
    kill -TERM "$comfyui" "$worker" 2>/dev/null
    (sleep "$STOP_GRACE"; kill -KILL "$comfyui" "$worker" 2>/dev/null) &
    killer=$!
    wait "$comfyui" "$worker" 2>/dev/null
    kill "$killer" 2>/dev/null
}
trap 'stopping=signal' TERM INT

# Returns when the first of the two exits, or at once when a trapped signal arrives.
wait -n "$comfyui" "$worker"
status=$?
if [ -n "$stopping" ]; then
    log "stop requested: stopping ComfyUI and the GPU worker"
    status=0
elif ! kill -0 "$comfyui" 2>/dev/null; then
    log "ComfyUI exited (status $status): stopping the GPU worker"
else
    log "the GPU worker exited (status $status): stopping ComfyUI"
fi
stop_both
# A process that exited 0 by itself still means the replica is broken: never report success for that.
if [ -z "$stopping" ] && [ "$status" -eq 0 ]; then
    status=1
fi
exit "$status"
