#!/usr/bin/env bash
# Installs the system tools kube-netd drives and its tests use (Debian packages: ipvsadm for
# the IPVS golden files loaded into a kernel, `make` for jemalloc, the binary's allocator,
# which is built from source), and a current kubectl (the lab serves the Kubernetes API; its
# tests drive it with kubectl).
# Idempotent: does nothing when everything is already there.
#   --vm  also what scripts/kernel-vm.sh needs: qemu, Debian's stock kernel and a static busybox
#         (and kmod, whose modprobe the lab and the agent run to load modules).
#
# kubectl comes from the apt package `kubectl`. Debian's own `kubernetes-client` (v1.20) is
# too old to stand for what users run, so when no `kubectl` package is available this adds
# the Kubernetes project's apt repository (pkgs.k8s.io, v1.32) and its signing key, once.
set -euo pipefail

packages=(iptables ipset nftables conntrack dnsutils iproute2 iputils-ping procps kmod make ipvsadm)
tools=(iptables-restore ipset nft conntrack dig ip ping pgrep modprobe make ipvsadm)
# The oldest kubectl minor version the tests are known to work with.
kubectl_min_minor=28
k8s_minor=v1.32
keyring=/etc/apt/keyrings/kubernetes-apt-keyring.gpg
repo_list=/etc/apt/sources.list.d/kubernetes.list

# Whether a kubectl of at least 1.$kubectl_min_minor is on PATH.
kubectl_ok() {
  command -v kubectl >/dev/null 2>&1 || return 1
  local minor
  minor=$(kubectl version --client 2>/dev/null | sed -n 's/^Client Version: v1\.\([0-9]*\)\..*/\1/p')
  [ -n "$minor" ] && [ "$minor" -ge "$kubectl_min_minor" ]
}

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
if [ "$missing" = 0 ] && kubectl_ok; then
  exit 0
fi

sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
if [ "$missing" = 1 ]; then
  $sudo apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi
if kubectl_ok; then
  exit 0
fi

# A `kubectl` package with a real candidate (not only Debian's kubernetes-client).
if ! apt-cache policy kubectl 2>/dev/null | grep -q 'Candidate: [0-9]'; then
  $sudo apt-get install -y -qq --no-install-recommends ca-certificates curl gpg >/dev/null
  if [ ! -s "$keyring" ]; then
    $sudo install -d -m 0755 /etc/apt/keyrings
    curl -fsSL "https://pkgs.k8s.io/core:/stable:/${k8s_minor}/deb/Release.key" \
      | $sudo gpg --dearmor --yes -o "$keyring"
    $sudo chmod 0644 "$keyring"
  fi
  line="deb [signed-by=${keyring}] https://pkgs.k8s.io/core:/stable:/${k8s_minor}/deb/ /"
  if ! grep -qxF "$line" "$repo_list" 2>/dev/null; then
    echo "$line" | $sudo tee "$repo_list" >/dev/null
  fi
  $sudo apt-get update -qq
fi
$sudo apt-get install -y -qq --no-install-recommends kubectl >/dev/null
kubectl_ok || { echo "kubectl 1.${kubectl_min_minor}+ could not be installed" >&2; exit 1; }
