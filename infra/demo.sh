#!/usr/bin/env bash
# `make demo`: the encoder's property heads on the example molecules (`molm3d predict`, in process),
# then start the local stack (`molm3d serve`), caption and question the example molecules through its
# gRPC API, stop the stack (also on failure or Ctrl-C).
set -euo pipefail
BIN=${BIN:-.venv/bin}
LOG=${TMPDIR:-/tmp}/molm3d-demo-serve.log

echo "== property heads of the 3D encoder (molm3d predict, milliseconds per molecule) =="
"$BIN/molm3d" predict examples/molecules.smi --format csv --properties homo lumo gap mw logp tpsa

"$BIN/molm3d" serve > "$LOG" 2>&1 &
PID=$!
stop() { kill -TERM "$PID" 2>/dev/null && wait "$PID" || true; }
trap stop EXIT

echo "== starting the stack (log: $LOG) =="
until "$BIN/python" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v1/health/ready', timeout=2)" 2>/dev/null; do
    kill -0 "$PID" 2>/dev/null || { tail -n 40 "$LOG"; echo "molm3d serve exited" >&2; exit 1; }
    sleep 2
done
echo "== captions over gRPC (examples/molecules.smi) =="
"$BIN/molm3d" caption examples/molecules.smi --remote 127.0.0.1:9000
echo "== answers over gRPC (examples/molecules.sdf, 3D coordinates from the file) =="
"$BIN/molm3d" ask examples/molecules.sdf --remote 127.0.0.1:9000 \
    --question "What is the HOMO energy of this molecule?" --max-new-tokens 32
echo "== stopping the stack =="
