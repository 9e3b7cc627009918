#!/usr/bin/env bash
# The real container runtimes and hypervisor the kernel tests run (tests/kernel/test_runtimes.py,
# tests/kernel/test_libvirt_vm.py), from Debian 12, as root. Idempotent. Installs only: the
# tests start the daemons they need (dockerd, containerd, libvirtd) and stop the ones they started.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
# gcc and libc6-dev build the static allocator the images and the VM guest run; busybox-static
# and cpio make the guest's initramfs; qemu-system-x86 is the QEMU libvirt starts (TCG here).
apt-get install -y -qq --no-install-recommends \
  docker.io containerd runc podman conmon \
  libvirt-daemon-system libvirt-clients qemu-system-x86 \
  gcc libc6-dev busybox-static cpio >/dev/null
echo "runtimes installed: $(dockerd --version); $(podman --version); $(containerd --version | cut -d' ' -f1-3); $(libvirtd --version)"
