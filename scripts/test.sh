#!/usr/bin/env bash
# The whole test suite, as root: unit tests, real-kernel tests on this machine, then the
# kernel matrix in VMs (tests/vm). Kernel tests never skip; a kernel that cannot run them fails.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh
.venv/bin/ruff check tracer tests bench tools
.venv/bin/mypy
.venv/bin/pytest tests/unit tests/kernel tests/deploy tests/reliability  # reliability: ~1 min
make test-kernels  # the kernel matrix in VMs (tests/vm): fentry and kprobe tiers on 5.10, 6.1, 6.12
