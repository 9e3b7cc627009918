#!/usr/bin/env bash
# Installs everything oomtrace and its tests need on Debian 12, as root. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# bcc (python3-bpfcc: Debian's bcc bindings; PyPI's "bcc" is another project), bpftool for
# the tests, and a kernel header tree for bcc to compile against: the running kernel's own
# if Debian has them, else the distribution's current ones (offsets come from BTF anyway).
# prometheus (with promtool) for the alerting-rule tests, which start their own on loopback.
apt-get install -y -qq python3-bpfcc python3-venv bpftool util-linux openssl prometheus make >/dev/null
# The image's root filesystem without Docker (scripts/build-rootfs.sh: mmdebstrap), and
# libseccomp's bindings to run it under containerd's default seccomp profile (tests/kernel/test_rootfs.py).
apt-get install -y -qq mmdebstrap python3-seccomp >/dev/null
apt-get install -y -qq "linux-headers-$(uname -r)" >/dev/null 2>&1 \
  || apt-get install -y -qq linux-headers-amd64 >/dev/null

# A venv on Debian's python3 that sees the system's bcc.
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import bcc' 2>/dev/null; then
  rm -rf .venv
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
./scripts/install-runtimes.sh
.venv/bin/pip install -q -e '.[test]'

# tracefs is where tracepoint formats live; some machines do not mount it at boot.
if [ ! -d /sys/kernel/tracing/events ]; then
  mount -t tracefs nodev /sys/kernel/tracing
fi
echo "oomtrace installed: $(.venv/bin/oomtrace --version)"
