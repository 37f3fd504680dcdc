#!/usr/bin/env bash
# Install everything usertunnel, its lab and its tests need, on a fresh Debian machine, as root.
# Idempotent: what is already there is not installed again.
#   - Debian packages: iproute2 (ip netns, for inspection), iputils-ping (the lab and tests ping),
#     util-linux (setpriv, to test privilege errors), iperf3 and tshark (throughput and captures),
#     man-db (the man page's test reads it with man -l), systemd (systemd-analyze verifies our units),
#     chromium (headless: the explain/lab pages' browser test),
#     nftables (NAT labs), python3-venv; for the interop suite (tests/interop): user-mode-linux (a real
#     Linux kernel peer), busybox-static (its insmod), ethtool, openvswitch-switch (an OVS peer).
#   - A virtual environment in .venv with usertunnel installed (editable) and its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pair in ip:iproute2 ping:iputils-ping sysctl:procps setpriv:util-linux iperf3:iperf3 tshark:tshark nft:nftables \
    ethtool:ethtool man:man-db systemd-analyze:systemd chromium:chromium \
    busybox:busybox-static linux.uml:user-mode-linux ovs-vswitchd:openvswitch-switch; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    need+=(python3-venv)
fi
if ((${#need[@]})); then
    echo "install.sh: installing Debian packages: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections 2>/dev/null || true
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
if ! .venv/bin/python -c 'import usertunnel, pytun, uvloop, scapy, pyroute2, prometheus_client, shtab, cryptography, pytest, hypothesis, mypy' >/dev/null 2>&1 \
    || [ pyproject.toml -nt .venv/.installed ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[test]'
    touch .venv/.installed
fi
