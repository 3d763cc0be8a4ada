#!/usr/bin/env bash
# Installs the system packages Outpost builds and tests with, when missing:
# cmake and a C/C++ toolchain for llama.cpp, clang/libclang for bindgen,
# python3 with venv and pip (model fetch, openai client tests), curl (demo),
# mosquitto and openssl (fleet-sync tests against an external TLS broker),
# chromium and chromedriver (the kiosk page's browser test).
# Debian/Ubuntu only; the Rust toolchain itself must already be installed.
set -euo pipefail

need=()
command -v cmake >/dev/null || need+=(cmake)
command -v c++ >/dev/null || need+=(g++)
command -v make >/dev/null || need+=(make)
command -v clang >/dev/null || need+=(clang)
command -v curl >/dev/null || need+=(curl)
command -v git >/dev/null || need+=(git)
# The fleet tests run an external broker next to the embedded one.
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
# ...with a TLS listener whose throwaway certificates openssl makes.
command -v openssl >/dev/null || need+=(openssl)
# The kiosk page's end-to-end test drives headless Chromium via chromedriver.
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
if ! ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 \
   && ! ldconfig -p 2>/dev/null | grep -q 'libclang.*\.so'; then
  need+=(libclang-dev)
fi
if ! command -v python3 >/dev/null; then
  need+=(python3 python3-venv python3-pip)
else
  python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
  python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
fi

if [ ${#need[@]} -gt 0 ]; then
  echo "installing system packages: ${need[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "error: cargo is not installed. Install the Rust toolchain (rustup, stable >= 1.85) and run again." >&2
  exit 1
fi
