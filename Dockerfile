# The oomtrace node image: Debian 12's bcc, the tracer from this repository, and a kernel
# header tree for bcc to compile against. Struct offsets come from the node's BTF, so any
# header tree will do (docs/deploy.md, "Kernel headers"); the node's own headers win when
# its /lib/modules and /usr/src are mounted.
#
# scripts/build-rootfs.sh builds the same root filesystem without Docker by running the
# steps of this file in a chroot: keep to FROM, ENV, COPY, RUN, ENTRYPOINT, CMD (one stage),
# and tests/deploy/test_image.py checks that the two agree.
FROM debian:bookworm-slim

# Build-time only; not an ENV, so it does not leak into the running container.
ARG DEBIAN_FRONTEND=noninteractive

# bcc from the distribution (python3-bpfcc; the PyPI package named "bcc" is another
# project) and python3-venv for the package below. No compiler: bcc embeds its own clang.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-bpfcc python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# A kernel header tree: Debian's current linux-headers-<abi>-common and -<arch>, unpacked
# (not installed: their package pulls in gcc) and merged into one directory, keeping only
# what bcc reads (include/ and arch/<arch>/include/).
RUN apt-get update \
 && arch="$(dpkg --print-architecture)" \
 && karch="$(case "$arch" in amd64) echo x86;; arm64) echo arm64;; *) echo "$arch";; esac)" \
 && abi="$(apt-cache depends "linux-headers-$arch" | sed -n "s/^ *Depends: linux-headers-\(.*\)-$arch\$/\1/p" | head -n1)" \
 && test -n "$abi" \
 && mkdir -p /tmp/headers /opt/oomtrace/kernel-headers \
 && cd /tmp/headers \
 && apt-get download "linux-headers-$abi-common" "linux-headers-$abi-$arch" \
 && for half in common "$arch"; do \
      dpkg-deb --fsys-tarfile linux-headers-"$abi-$half"_*.deb \
      | tar -x -C /opt/oomtrace/kernel-headers --strip-components=4 \
            "./usr/src/linux-headers-$abi-$half/include" "./usr/src/linux-headers-$abi-$half/arch/$karch/include"; \
    done \
 && test -f /opt/oomtrace/kernel-headers/include/linux/kconfig.h \
 && cd / && rm -rf /tmp/headers /var/lib/apt/lists/*

ENV PATH=/opt/oomtrace/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    BCC_KERNEL_SOURCE=/opt/oomtrace/kernel-headers \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# The package from this repository, in a venv that sees the system's bcc; it ships the BPF
# programs it compiles at start (bpf/) as package data.
COPY pyproject.toml README.md /src/
COPY tracer /src/tracer
COPY bpf /src/bpf
RUN python3 -m venv --system-site-packages /opt/oomtrace \
 && /opt/oomtrace/bin/pip install --no-cache-dir --disable-pip-version-check /src \
 && /opt/oomtrace/bin/pip uninstall --yes --disable-pip-version-check pip setuptools \
 && rm -rf /src \
 && oomtrace --version

# Root inside the container, with every capability dropped but those the DaemonSet adds
# back (deploy/daemonset.yaml): uid 0 owns tracefs and cgroupfs, and oomtrace checks it.
ENTRYPOINT ["oomtrace"]
CMD ["run"]
