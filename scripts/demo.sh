#!/usr/bin/env bash
# The demo: a fleet hub with its embedded MQTT broker, two kiosks with the
# default model joined to it, questions over the OpenAI-compatible API and
# through `outpost ask`, the sample knowledge base ingested and shipped with
# its prompt set to both kiosks, grounded and cited answers (and a
# hand-over) from POST /v1/answer, and the answer telemetry (counts, never
# text) arriving at the hub.
# DEMO_KEEP=1 keeps everything running until Ctrl-C.
set -euo pipefail

bin=${1:-./target/release/outpost}
work=$(mktemp -d "${TMPDIR:-/tmp}/outpost-demo.XXXXXX")
hub_http=127.0.0.1:${OUTPOST_DEMO_HUB_PORT:-18091}        # operator: admin API, metrics
hub_devices=127.0.0.1:${OUTPOST_DEMO_HUB_DEVICE_PORT:-18090} # devices: artifact downloads
mqtt_port=${OUTPOST_DEMO_MQTT_PORT:-11883}
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

wait_http() { # url pid what
  for _ in $(seq 1 1200); do
    curl -sf "$1" >/dev/null && return 0
    kill -0 "$2" 2>/dev/null || { echo "error: $3 exited; see its log above" >&2; exit 1; }
    sleep 0.1
  done
  echo "error: $3 never became ready" >&2
  exit 1
}

echo "== outpost hub (embedded MQTT broker on 127.0.0.1:$mqtt_port, admin API on http://$hub_http, downloads on http://$hub_devices)"
"$bin" hub --data-dir "$work/hub" --fleet demo --operator-bind "$hub_http" --device-bind "$hub_devices" \
  --mqtt-listen "127.0.0.1:$mqtt_port" &
pids+=($!)
wait_http "http://$hub_http/health" "${pids[-1]}" "the hub"
fleet() { "$bin" fleet --hub "http://$hub_http" "$@"; }

for n in 1 2; do
  port=$((18080 + n))
  "$bin" serve --port "$port" --agent --fleet demo --device "kiosk-$n" \
    --broker "mqtt://127.0.0.1:$mqtt_port" --hub-key "$work/hub/signing.pub" \
    --agent-data-dir "$work/kiosk-$n" &
  pids+=($!)
  wait_http "http://127.0.0.1:$port/health" "${pids[-1]}" "kiosk-$n"
done
base=http://127.0.0.1:18081

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
echo "== outpost kb ingest: the sample knowledge base (configs/kb/brewstation)"
"$bin" kb ingest configs/kb/brewstation --kb "$work/brewstation.sqlite"
"$bin" kb search --kb "$work/brewstation.sqlite" -k 3 "How often should I descale with very hard water?"
"$bin" prompts pack configs/prompts/brewstation -o "$work/brewstation-prompts.toml"

echo
echo "== publish the knowledge base and its prompt set; assign them to every kiosk tagged 'lobby'"
fleet tag kiosk-1 lobby >/dev/null
fleet tag kiosk-2 lobby >/dev/null
fleet publish --kind kb --name brewstation --version 1 "$work/brewstation.sqlite" >/dev/null
fleet publish --kind prompt-set --name brewstation --version 1 "$work/brewstation-prompts.toml" >/dev/null
fleet assign --tag lobby kb:brewstation:1 prompt-set:brewstation:1 >/dev/null
for n in 1 2; do
  for _ in $(seq 1 1200); do
    h=$(curl -s "http://127.0.0.1:$((18080 + n))/health")
    [[ $h == *'"brewstation-kiosk"'* && $h == *'"kb":{'* ]] && break
    sleep 0.1
  done
  echo "kiosk-$n serves: $(curl -s "http://127.0.0.1:$((18080 + n))/health")"
done
answer() {
  curl -s "$base/v1/answer" -H 'Content-Type: application/json' -d "{\"question\": \"$1\"}" |
    python3 -c 'import json,sys
r = json.load(sys.stdin)
if "error" in r: sys.exit("error: " + r["error"]["message"])
print(r["answer"])
print("  escalated:", r["escalated"], r["reason"] or "", "| route:", r["route"], "| versions:", r["versions"])
for c in r["citations"]: print("  [%d] %s - %s (cosine %.2f)" % (c["marker"], c["source"], c["section"], c["score"]))'
}
for q in "What does error E05 mean?" "How long is the warranty in the EU?" \
  "Will it rain in Paris tomorrow?" "I want to talk to a person"; do
  echo
  echo "== POST $base/v1/answer: $q"
  answer "$q"
done
echo
echo "kiosk page: $base/ (open it in a browser; DEMO_KEEP=1 keeps it running)"

echo
echo "== a customer question with personal data, answered with the fleet's prompt set"
curl -s "$base/v1/chat/completions" -H 'Content-Type: application/json' -d '{
  "messages": [{"role": "user", "content": "My card 4111 1111 1111 1111 was charged twice, how do I clean the filter?"}],
  "temperature": 0, "max_tokens": 48
}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["choices"][0]["message"]["content"])'
sleep 2
echo
echo "== what the hub received (counts and versions, no text)"
fleet telemetry --device kiosk-1 --limit 1
fleet devices | python3 -c '
import json, sys
for d in json.load(sys.stdin)["devices"]:
    print(d["device"], d["presence"], [(a["kind"], a["name"], a["version"]) for a in d["active"]])'

echo
if [ "${DEMO_KEEP:-0}" = 1 ]; then
  echo "running: hub http://$hub_http, kiosks $base and http://127.0.0.1:18082 (Ctrl-C to stop)"
  wait
else
  echo "done. Run it yourself: $bin hub, then $bin serve --agent --device NAME --hub-key <hub data>/signing.pub"
fi
