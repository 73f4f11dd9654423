#!/usr/bin/env bash
# Installs the system tools kube-netd drives and its tests use (Debian packages).
# Idempotent: does nothing when everything is already there.
#   --vm  also what scripts/kernel-vm.sh needs: qemu, Debian's stock kernel and a static busybox
#         (and kmod, whose modprobe the lab and the agent run to load modules).
set -euo pipefail

packages=(iptables ipset nftables conntrack dnsutils iproute2 iputils-ping procps kmod)
tools=(iptables-restore ipset nft conntrack dig ip ping pgrep modprobe)

missing=0
for t in "${tools[@]}"; do
  command -v "$t" >/dev/null 2>&1 || missing=1
done
if [ "${1:-}" = --vm ]; then
  packages+=(qemu-system-x86 linux-image-amd64 busybox-static)
  command -v qemu-system-x86_64 >/dev/null 2>&1 || missing=1
  [ -x /bin/busybox ] || missing=1
  ls /boot/vmlinuz-* >/dev/null 2>&1 || missing=1
fi
if [ "$missing" = 0 ]; then
  exit 0
fi

sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
