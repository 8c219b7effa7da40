#!/usr/bin/env bash
# Chromium and its matching driver for the browser tests, from the system's packages: nothing is
# downloaded at test time. Without apt (or root/sudo) it says so and the browser tests are skipped.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null; then
    echo "setup-browser: not root and no sudo; install chromium and chromium-driver to run the browser tests" >&2
    exit 0
  fi
  SUDO="sudo"
fi
if ! command -v apt-get >/dev/null; then
  echo "setup-browser: no apt-get; install Chromium and its chromedriver to run the browser tests" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
install() { $SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null; }
install || { $SUDO apt-get update -q >/dev/null && install; }
