#!/usr/bin/env bash
# llama.cpp's own converter, convert_hf_to_gguf.py, as the reference that
# outpost-quant's output is compared with (quant/tests/llama.rs) and timed
# against (benches/peer/convert.sh).
#
# The script ships in llama-cpp-sys-2's source package without the
# `conversion` package and gguf-py it imports, so the whole Python side is
# taken from the llama.cpp tree vendored in the llama-cpp-python source
# package (the one benches/peer/build-llama-cpp.sh builds from; its
# convert_hf_to_gguf.py is byte-identical to llama-cpp-sys-2 0.1.161's). It
# runs in a virtualenv with the versions llama.cpp's
# requirements-convert_hf_to_gguf.txt pins (torch's wheel comes from the
# package registry, with its CUDA libraries: the CPU-only index is not
# reachable here; nothing runs on a GPU).
#
# Usage:
#   convert_reference.sh setup                   make the venv (once; needs the registry)
#   convert_reference.sh convert DIR OUT TYPE    DIR -> OUT, TYPE f32|f16|bf16|q8_0
#   convert_reference.sh version                 the llama.cpp tree's name
#
# Where: $OUTPOST_CONVERT_REFERENCE (default ${XDG_CACHE_HOME:-~/.cache}/outpost/convert-reference).
# Exit status 77: the reference cannot be made (no registry reachable, or a
# package failed to install); the test then skips and says why.
set -euo pipefail

readonly PKG_NAME=llama-cpp-python
readonly PKG_VERSION=0.3.36
# requirements-convert_hf_to_gguf.txt of that tree, less the extra index.
readonly PIP_PACKAGES=(
    "torch==2.11.0"
    "numpy~=2.2.6"
    "sentencepiece>=0.1.98,<0.3.0"
    "transformers==4.57.6"
    "protobuf>=4.21.0,<5.0.0"
    "tqdm>=4.27"
    "pyyaml>=5.1"
    "requests>=2.25"
)

root=${OUTPOST_CONVERT_REFERENCE:-${XDG_CACHE_HOME:-$HOME/.cache}/outpost/convert-reference}
venv="$root/venv"
tree="$root/llama.cpp-$PKG_VERSION"
ready="$root/ready-$PKG_VERSION"

unavailable() {
    echo "convert_reference.sh: reference unavailable: $*" >&2
    exit 77
}

setup() {
    [[ -f $ready ]] && return 0
    command -v python3 >/dev/null || unavailable "python3 is not installed"
    mkdir -p "$root"
    local log="$root/setup.log"
    echo "convert_reference.sh: making the reference converter in $root (once; torch is large)" >&2
    if [[ ! -x $venv/bin/python ]]; then
        python3 -m venv "$venv" >>"$log" 2>&1 || unavailable "python3 -m venv failed (see $log)"
    fi
    "$venv/bin/pip" install --disable-pip-version-check -q "${PIP_PACKAGES[@]}" >>"$log" 2>&1 \
        || unavailable "pip could not install ${PIP_PACKAGES[*]} (offline? see $log)"
    local dl="$root/download"
    mkdir -p "$dl"
    if [[ ! -d $tree ]]; then
        "$venv/bin/pip" download --disable-pip-version-check -q --no-deps --no-binary :all: \
            -d "$dl" "$PKG_NAME==$PKG_VERSION" >>"$log" 2>&1 \
            || unavailable "pip could not download the $PKG_NAME $PKG_VERSION source (offline? see $log)"
        local sdist="$dl/llama_cpp_python-$PKG_VERSION.tar.gz"
        local inner="llama_cpp_python-$PKG_VERSION/vendor/llama.cpp"
        local staging="$root/.staging"
        rm -rf "$staging" && mkdir -p "$staging"
        tar -xzf "$sdist" -C "$staging" "$inner/convert_hf_to_gguf.py" "$inner/conversion" "$inner/gguf-py" \
            || unavailable "$sdist lacks the converter"
        mv "$staging/$inner" "$tree"
        rm -rf "$staging" "$sdist"
    fi
    "$venv/bin/python" -c "import torch, transformers, numpy" >>"$log" 2>&1 \
        || unavailable "the venv cannot import torch/transformers (see $log)"
    touch "$ready"
}

case ${1:-} in
    setup)
        setup
        ;;
    convert)
        [[ $# -eq 4 ]] || { echo "usage: $0 convert DIR OUT TYPE" >&2; exit 64; }
        setup
        # The tree's own gguf-py sits beside the script, which puts it on sys.path.
        exec "$venv/bin/python" "$tree/convert_hf_to_gguf.py" "$2" --outfile "$3" --outtype "$4"
        ;;
    version)
        echo "llama.cpp vendored in $PKG_NAME $PKG_VERSION"
        ;;
    *)
        echo "usage: $0 setup | convert DIR OUT TYPE | version" >&2
        exit 64
        ;;
esac
