#!/usr/bin/env bash
# The benchmarks (bench/run.py; `make bench`). As root, from anywhere:
#   bench/run.sh [--quick] [--only lead,latency,overhead,pipeline,peers,peers-vm,cpu-request] [--merge] [--no-doc]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || { echo "bench: no .venv here; run scripts/install.sh first" >&2; exit 2; }
# The peers benchmark runs bcc's own oomkill tool beside oomtrace (here and in the VMs, which
# share this root file system).
[ -x /usr/sbin/oomkill-bpfcc ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -q bpfcc-tools >&2
# ... and bpftrace, the floor: a reader with no work per kill.
[ -x /usr/bin/bpftrace ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -q bpftrace >&2
exec "$PY" -m bench.run "$@"
