#!/usr/bin/env bash
# kernel-vm.sh: run one command on Debian's stock kernel, inside a throwaway qemu VM.
#
# For the kernel features a machine's own kernel may lack (SCTP sockets, IPVS, br_netfilter
# as a module): the VM boots the newest /boot/vmlinuz-* (the `linux-image-amd64` package),
# mounts this machine's root file system read-only over 9p and puts a tmpfs overlay on top,
# so the command, the test binaries and the tools installed here run as they are, and what
# they write stays in the VM. The VM has no network card: its traffic never leaves it (tests
# build their network namespaces inside it).
#
#   scripts/kernel-vm.sh [--modules "sctp ip_vs"] [--mem MB] [--cpus N] [--timeout S] -- CMD [ARG...]
#
#   --modules   modules to load before the command runs (a failure is reported, not fatal:
#               the command decides whether it needs them)
#   --mem       memory in MB (default 1024)
#   --cpus      virtual CPUs (default 2)
#   --timeout   seconds before the VM is stopped (default 1200)
#
# The command runs as root (under bash) in the current directory, with this shell's PATH; its exit status
# is the script's. 125 means the VM could not run it (boot, mount or timeout).
# Software emulation (TCG) by default, which works everywhere; KERNEL_VM_ACCEL=kvm asks for
# KVM where /dev/kvm works (inside another VM it often does not: qemu aborts setting MSRs).
# Needs qemu-system-x86, linux-image-amd64 and busybox-static: scripts/install-deps.sh --vm.
set -euo pipefail

mem=1024
cpus=2
timeout_s=1200
modules=""
while [ $# -gt 0 ]; do
  case "$1" in
    --modules) modules=$2; shift 2 ;;
    --mem) mem=$2; shift 2 ;;
    --cpus) cpus=$2; shift 2 ;;
    --timeout) timeout_s=$2; shift 2 ;;
    --) shift; break ;;
    -*) echo "kernel-vm: unknown option $1" >&2; exit 125 ;;
    *) break ;;
  esac
done
if [ $# -eq 0 ]; then
  echo "usage: $0 [--modules LIST] [--mem MB] [--cpus N] [--timeout S] -- CMD [ARG...]" >&2
  exit 125
fi

fail() { echo "kernel-vm: $*" >&2; exit 125; }
command -v qemu-system-x86_64 >/dev/null || fail "qemu-system-x86_64 not found (scripts/install-deps.sh --vm)"
[ -x /bin/busybox ] || fail "/bin/busybox not found (scripts/install-deps.sh --vm)"
kernel=$(find /boot -maxdepth 1 -name 'vmlinuz-*' | sort -V | tail -n 1)
[ -n "$kernel" ] || fail "no /boot/vmlinuz-* (scripts/install-deps.sh --vm)"
release=${kernel#/boot/vmlinuz-}
[ -d "/lib/modules/$release" ] || fail "no /lib/modules/$release for $kernel"

run_dir=$(mktemp -d /tmp/kernel-vm.XXXXXX)
trap 'rm -rf "$run_dir"' EXIT
initrd_root=$run_dir/initrd
mkdir -p "$initrd_root"/{bin,dev,proc,sys,lib/boot,lower,upper,root} "$run_dir/result"
cp /bin/busybox "$initrd_root/bin/busybox"

# The modules the initrd needs to reach the host's files (virtio transport, 9p, overlayfs),
# with their dependencies, in the order modprobe would insert them.
boot_order=()
for wanted in virtio_pci 9pnet_virtio 9p overlay; do
  while read -r verb path _; do
    [ "$verb" = insmod ] || continue
    name=$(basename "$path")
    case " ${boot_order[*]-} " in *" $name "*) continue ;; esac
    cp "$path" "$initrd_root/lib/boot/$name"
    boot_order+=("$name")
  done < <(modprobe --set-version "$release" --show-depends "$wanted")
done

# What runs once the host's files are mounted: the command, quoted, in the caller's
# directory and PATH.
{
  printf 'cd %q 2>/dev/null || cd /\n' "$PWD"
  printf 'export PATH=%q HOME=/root TERM=dumb\n' "$PATH"
  printf 'export RUST_BACKTRACE=%q\n' "${RUST_BACKTRACE:-1}"
  printf '%q ' "$@"
  printf '\n'
} > "$initrd_root/command.sh"

cat > "$initrd_root/init" <<EOF
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# The VM's own loopback, as any booted system has it (tests bind 127.0.0.1).
ip link set lo up
give_up() { echo "kernel-vm: \$*"; poweroff -f; }
for m in ${boot_order[*]}; do insmod /lib/boot/\$m || give_up "insmod \$m failed"; done
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 result /root || give_up "no result share"
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 host /lower || give_up "no host share"
mount -t tmpfs upper /upper
mkdir -p /upper/data /upper/work /new
mount -t overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work overlay /new || give_up "overlay failed"
for fs in proc:proc sysfs:sys devtmpfs:dev tmpfs:tmp tmpfs:run; do
  mount -t \${fs%%:*} \${fs%%:*} /new/\${fs##*:}
done
mkdir -p /new/run/netns /new/dev/pts /new/dev/shm
mount -t devpts devpts /new/dev/pts
mount -t tmpfs shm /new/dev/shm
# Modules the kernel asks for itself (veth, bridge, nf_tables...) are loaded by the host's
# modprobe, which finds /lib/modules/$release inside /new.
printf '#!/bin/sh\nexec chroot /new /sbin/modprobe "\$@"\n' > /bin/kernel-modprobe
chmod +x /bin/kernel-modprobe
echo /bin/kernel-modprobe > /proc/sys/kernel/modprobe
# sctp checksums through the crypto API, which finds crc32c only once it is loaded.
for m in crc32c_generic $modules; do
  chroot /new /sbin/modprobe \$m || echo "kernel-vm: cannot load module \$m"
done
cp /command.sh /new/tmp/kernel-vm-command.sh
chroot /new /bin/bash /tmp/kernel-vm-command.sh
echo \$? > /root/status
sync
poweroff -f
EOF
chmod +x "$initrd_root/init"
(cd "$initrd_root" && find . | cpio --quiet -o -H newc | gzip -1) > "$run_dir/initrd.gz"

accel=${KERNEL_VM_ACCEL:-tcg}
status=0
timeout --foreground "$timeout_s" qemu-system-x86_64 \
  -accel "$accel" -cpu max -smp "$cpus" -m "$mem" \
  -display none -vga none -no-reboot -nic none -serial stdio -monitor none \
  -kernel "$kernel" -initrd "$run_dir/initrd.gz" \
  -append "console=ttyS0 quiet loglevel=3 panic=-1" \
  -virtfs local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap \
  -virtfs "local,path=$run_dir/result,mount_tag=result,security_model=none" \
  </dev/null | sed -u 's/\r$//' || status=$?
if [ ! -s "$run_dir/result/status" ]; then
  [ "$status" = 124 ] && fail "timed out after ${timeout_s}s"
  fail "the VM ended before the command did (qemu status $status)"
fi
exit "$(cat "$run_dir/result/status")"
