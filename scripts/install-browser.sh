#!/usr/bin/env bash
# Debian's Chromium for the dashboard's browser tests (Playwright drives it; it never downloads
# a browser of its own). Needs root or sudo the first time; a no-op once installed.
set -euo pipefail
[ -x /usr/bin/chromium ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
echo "install-browser: $(/usr/bin/chromium --version)"
