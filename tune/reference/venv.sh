#!/usr/bin/env bash
# Makes, or reuses, the Python reference environment (torch, transformers,
# PEFT, gguf from requirements.txt) and prints its python's path on stdout;
# pip's output goes to stderr. The venv lives at $OUTPOST_TUNE_VENV, by
# default ~/.cache/outpost/tune-reference, and is rebuilt when
# requirements.txt changes. A lock keeps two runs from building it at once.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
venv=${OUTPOST_TUNE_VENV:-$HOME/.cache/outpost/tune-reference}
python=${PYTHON:-python3}
want=$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)

mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9

if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" = "$want" ]; then
    echo "$venv/bin/python"
    exit 0
fi

echo "making the reference venv at $venv (torch is large: a few minutes)" >&2
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet -r "$here/requirements.txt" >&2
"$venv/bin/python" -c "import torch, transformers, peft, gguf, safetensors, numpy" >&2
echo "$want" >"$venv/.requirements.sha256"
echo "$venv/bin/python"
