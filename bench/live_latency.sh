#!/usr/bin/env bash
# Live capture: delay from the end of a spoken phrase to its `final` message, streaming a corpus
# file at real time into a release server on SQLite with tiny.en (installed by bench/speech.sh).
#
#   bash bench/live_latency.sh [file.wav] [threads]
set -euo pipefail
cd "$(dirname "$0")/.."
file=${1:-../shared/corpus/audio/librivox_ss01_concat.wav}
threads=${2:-2}
work=${BENCH_DIR:-/tmp/agentdesk-speech-bench}
[ -f "$work/models/ggml-tiny.en.bin" ] || { echo "run bench/speech.sh first (it installs the models)"; exit 1; }
cargo build --release -q -p agentdesk -p agentdesk-tests --bin agentdesk --bin live_latency
data=$(mktemp -d)
port=$((20000 + RANDOM % 10000))
AGENTDESK_DATA_DIR=$data AGENTDESK_MODELS_DIR=$work/models AGENTDESK_AUDIO_MODEL=tiny.en \
  AGENTDESK_AUDIO_THREADS=$threads AGENTDESK_BIND=127.0.0.1:$port AGENTDESK_LOG=warn \
  AGENTDESK_ADMIN_EMAIL=bench@example.com AGENTDESK_ADMIN_PASSWORD=bench-password-42 \
  target/release/agentdesk serve >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
target/release/live_latency "http://127.0.0.1:$port" bench@example.com bench-password-42 "$file"
