#!/usr/bin/env bash
# Installs the system tools kube-netd drives and its tests use (Debian packages).
# Idempotent: does nothing when everything is already there.
set -euo pipefail

packages=(iptables ipset nftables conntrack dnsutils iproute2 iputils-ping procps)
tools=(iptables-restore ipset nft conntrack dig ip ping pgrep)

missing=0
for t in "${tools[@]}"; do
  command -v "$t" >/dev/null 2>&1 || missing=1
done
if [ "$missing" = 0 ]; then
  exit 0
fi

sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
