#!/usr/bin/env bash
# The demo: starts the device API with the default model, asks it a question
# over the OpenAI-compatible API and through `outpost ask`, then stops it.
# DEMO_KEEP=1 keeps the server running until Ctrl-C.
set -euo pipefail

bin=${1:-./target/release/outpost}
port=${OUTPOST_PORT:-8080}
base="http://127.0.0.1:${port}"

"$bin" serve --port "$port" &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true' EXIT

for _ in $(seq 1 600); do
  curl -sf "$base/health" >/dev/null && break
  kill -0 "$server" 2>/dev/null || { echo "error: outpost serve exited" >&2; exit 1; }
  sleep 0.1
done
curl -sf "$base/health" >/dev/null || { echo "error: the server never became ready" >&2; exit 1; }

echo
echo "== POST $base/v1/chat/completions"
curl -s "$base/v1/chat/completions" -H 'Content-Type: application/json' -d '{
  "messages": [
    {"role": "system", "content": "You are a helpful, concise assistant."},
    {"role": "user", "content": "What is the capital of France?"}
  ],
  "temperature": 0, "max_tokens": 64
}' | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["choices"][0]["message"]["content"]); print("usage:", r["usage"])'

echo
echo "== outpost ask (streamed, offline, in-process)"
"$bin" ask --temperature 0 "Give me three tips for a long train journey."

echo
if [ "${DEMO_KEEP:-0}" = 1 ]; then
  echo "serving on $base (Ctrl-C to stop)"
  wait "$server"
else
  echo "done. Serve it yourself with: $bin serve   (API on $base, metrics on $base/metrics)"
fi
