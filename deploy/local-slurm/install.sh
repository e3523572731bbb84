#!/usr/bin/env bash
# Install a single-node SLURM (with munge) and Slurm's PBS/Torque wrappers from Debian packages.
# Idempotent: does nothing when everything is already installed. Needs root (or sudo).
set -euo pipefail

packages=(slurmctld slurmd slurm-client munge slurm-wlm-torque)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "local-slurm: already installed"
    exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if dpkg-query -W -f='${Status}' gridengine-client 2>/dev/null | grep -q "install ok installed"; then
    echo "local-slurm: note: slurm-wlm-torque conflicts with gridengine-client; apt will remove it" >&2
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# Without systemd, Debian's maintainer scripts would try to start the daemons: a temporary
# policy-rc.d (exit 101) stops them; start.sh starts them our way.
if [ ! -e /usr/sbin/policy-rc.d ]; then
    $SUDO sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d'
    trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "local-slurm: installed ${missing[*]}"
