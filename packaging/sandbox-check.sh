#!/bin/bash
# The real binary under the kernel side of the units' sandbox
# (packaging/sandbox-run.py: MemoryDenyWriteExecute, SystemCallFilter=
# @system-service ~@privileged, RestrictAddressFamilies, NoNewPrivileges,
# LockPersonality): a hub, and a device that decodes with llama.cpp and joins
# the hub as a fleet agent. Needs python3-seccomp, systemd-analyze, curl and
# a fetched model (default: the catalog's default generator).
#
# Run as root it drops to nobody first, as the units run as the unprivileged
# `outpost` user (SQLite, for one, fchown()s its files only when it is root,
# and ~@privileged forbids that).
#
# usage: packaging/sandbox-check.sh [BINARY] [MODEL.gguf]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
binary=${1:-$repo/target/release/outpost}
models_dir=${OUTPOST_MODELS_DIR:-$HOME/.cache/outpost/models}
default=$(sed -n 's/^default_generator *= *"\(.*\)"/\1/p' "$repo/models/catalog.toml")
model=${2:-$(find "$models_dir/$default" -maxdepth 1 -name '*.gguf' 2>/dev/null | head -n1)}

die() { echo "sandbox-check.sh: $*" >&2; exit 1; }
[ -x "$binary" ] || die "$binary: not an executable; build it or pass its path"
[ -f "$model" ] || die "no model: run \`outpost models fetch $default\` or pass MODEL.gguf"
/usr/bin/python3 -c 'import seccomp' 2>/dev/null || die "python3-seccomp is missing: apt-get install python3-seccomp"

work=$(mktemp -d)
chmod 0755 "$work"
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
as_user=()
if [ "$(id -u)" = 0 ]; then
	as_user=(setpriv --reuid=65534 --regid=65534 --clear-groups)
	# nobody must be able to read what it runs and write where it keeps data.
	install -m 0755 "$binary" "$work/outpost" && binary=$work/outpost
	install -m 0644 "$model" "$work/model.gguf" && model=$work/model.gguf
	install -d -o 65534 -g 65534 "$work/hub" "$work/agent"
fi
sandboxed() { "${as_user[@]}" /usr/bin/python3 "$here/sandbox-run.py" -- "$@"; }
pass() { echo "ok - $*"; }
fail() {
	echo "FAIL - $*" >&2
	tail -n 20 "$work"/*.log >&2 || true
	exit 1
}
wait_for() { # wait_for FILE PATTERN SECONDS
	for _ in $(seq "$3"); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 1; done
	return 1
}

# The hub, on free loopback ports.
sandboxed "$binary" hub --data-dir "$work/hub" --device-bind 127.0.0.1:0 --operator-bind 127.0.0.1:0 \
	--mqtt-listen 127.0.0.1:0 >"$work/hub.log" 2>&1 &
pids+=($!)
wait_for "$work/hub.log" "^outpost hub: admin on" 30 || fail "the sandboxed hub did not start"
admin=$(sed -n 's/^outpost hub: admin on \(http:[^,]*\),.*/\1/p' "$work/hub.log")
mqtt=$(sed -n 's/.* MQTT on \([^,]*\),.*/\1/p' "$work/hub.log")
curl -sf "$admin/health" >/dev/null || fail "the sandboxed hub does not answer /health"
pass "hub runs sandboxed (admin $admin, MQTT $mqtt)"

# The device: llama.cpp decoding, the HTTP API, and the agent over MQTT.
sandboxed "$binary" serve -m "$model" --port 0 --parallel 1 --agent --broker "mqtt://$mqtt" \
	--device sandbox-kiosk --hub-key "$work/hub/signing.pub" --agent-data-dir "$work/agent" \
	>"$work/device.log" 2>&1 &
pids+=($!)
wait_for "$work/device.log" "^outpost listening on" 60 || fail "the sandboxed device did not start"
api=$(sed -n 's/^outpost listening on \(http:.*\)/\1/p' "$work/device.log")
answer=$(curl -sf "$api/v1/chat/completions" -H 'content-type: application/json' \
	-d '{"messages":[{"role":"user","content":"What is the capital of France?"}],"max_tokens":16,"temperature":0}') ||
	fail "the sandboxed device did not answer a chat completion"
echo "$answer" | grep -q '"content"' || fail "the chat completion has no content: $answer"
pass "device decodes with llama.cpp sandboxed: $(echo "$answer" | sed -n 's/.*"content":"\([^"]*\)".*/\1/p' | head -c 60)"

for _ in $(seq 30); do
	curl -sf "$admin/admin/devices" | grep -q sandbox-kiosk && break
	sleep 1
done
curl -sf "$admin/admin/devices" | grep -q sandbox-kiosk || fail "the sandboxed agent never reached the hub"
pass "the sandboxed agent joined the sandboxed hub over MQTT"
