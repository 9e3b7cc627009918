# oomtrace developer entry points.
#
#   make test-kernels   the kernel matrix: every probe tier on Debian's 5.10, 6.1 and 6.12
#                       kernels under QEMU (virtme-ng), cgroup v1 and v2; needs root, installs
#                       its own tools (apt, PyPI), caches kernels in /opt/oomtrace-vm and
#                       rewrites docs/kernel-matrix.md. About 15 minutes on 2 cores.
#   make kernels        only download and unpack the kernels and headers

PYTHON ?= $(shell test -x .venv/bin/python && echo .venv/bin/python || echo python3)
KERNELS ?= 5.10,6.1,6.12

.PHONY: test-kernels kernels kernel-matrix-doc

test-kernels:
	$(PYTHON) tests/vm/matrix.py --kernels $(KERNELS)

kernels:
	python3 tests/vm/kernels.py $(subst $(comma), ,$(KERNELS))

# Rewrite docs/kernel-matrix.md from the last results, without booting anything.
kernel-matrix-doc:
	$(PYTHON) -m tools.kernel_matrix_report

comma := ,

# Benchmarks (bench/): needs root; prints the summary table, writes bench/results/*.json and
# rewrites docs/benchmarks.md. About 17 minutes on 2 cores, a third of it peers-vm: the peers
# benchmark in QEMU VMs on 6.1, 6.12 and 5.10 (bcc's oomkill-bpfcc needs kprobes).
# One section into the last record: bench/run.sh --only peers-vm --merge
.PHONY: bench
bench:
	bench/run.sh
