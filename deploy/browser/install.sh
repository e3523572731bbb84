#!/usr/bin/env bash
# Install Debian's chromium for the browser test of `connectome view` (tests/export/test_view_browser.py).
# Idempotent: does nothing when it is already installed. Needs root (or sudo).
set -euo pipefail

packages=(chromium fonts-dejavu-core)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "browser: already installed"
    exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "browser: installed ${missing[*]}"
