"""The event schema and its vocabulary, shared by every source (BPF tiers and the kernel-log
parser), every stage and every sink: the one home of event kinds, probe tiers, loss reasons and
constraint names. bpf/oomtrace.h numbers the kinds, tiers and kernel loss reasons; a test checks
that its constants equal the codes here (tests/unit/test_bpf_header.py).

An event is a plain dict with stable keys. Every key listed for a kind is always
present; a value the source cannot know is None, never a guess.
"""

from typing import Any, Final

NEAR_OOM: Final = "near_oom"
MEMCG_OOM: Final = "memcg_oom"
OOM_KILL: Final = "oom_kill"
KINDS: Final = (NEAR_OOM, MEMCG_OOM, OOM_KILL)
# enum oomtrace_kind in bpf/oomtrace.h.
KIND_CODES: Final = {NEAR_OOM: 1, MEMCG_OOM: 2, OOM_KILL: 3}

# Probe tiers, best first: BPF trampolines, kprobes, tracepoints. A probe the kernel allows
# none of is UNAVAILABLE; events from the kernel log (no BPF) carry the tier KMSG.
FENTRY: Final = "fentry"
KPROBE: Final = "kprobe"
TRACEPOINT: Final = "tracepoint"
PROBE_TIERS: Final = (FENTRY, KPROBE, TRACEPOINT)
UNAVAILABLE: Final = "unavailable"
KMSG: Final = "kmsg"
# OOMTRACE_TIER_* in bpf/oomtrace.h (0 there: not attached).
TIER_CODES: Final = {FENTRY: 1, KPROBE: 2, TRACEPOINT: 3}

# Why an event never reached the event stream. The kernel's own, in enum oomtrace_loss order
# (bpf/oomtrace.h: indexes of its `lost` array), then user space's.
KERNEL_LOSS_REASONS: Final = ("ringbuf_full", "map_full")
DECODE_ERROR: Final = "decode_error"  # a record that does not match bpf/oomtrace.h
KMSG_OVERWRITTEN: Final = "kmsg_overwritten"  # kernel-log records overwritten before they were read
LOSS_REASONS: Final = (*KERNEL_LOSS_REASONS, DECODE_ERROR, KMSG_OVERWRITTEN)

# The kernel's enum oom_constraint names → the `constraint` field's values.
CONSTRAINTS: Final = {
    "CONSTRAINT_NONE": "global",
    "CONSTRAINT_CPUSET": "cpuset",
    "CONSTRAINT_MEMORY_POLICY": "memory_policy",
    "CONSTRAINT_MEMCG": "memcg",
}

# near_oom `phase`: the first failure after a quiet period, or one interval's counts.
FIRST: Final = "first"
SUMMARY: Final = "summary"
NEAR_OOM_PHASES: Final = (FIRST, SUMMARY)

# Tags derived from a cgroup path (tracer.resolve.tags); present on every event.
TAG_FIELDS: Final = (
    "cgroup",
    "pod_uid",
    "qos",
    "container_id",
    "runtime",  # containerd, crio, docker, podman, libvirt, systemd-nspawn, proxmox
    "runtime_namespace",  # containerd's namespace (ctr -n / nerdctl --namespace)
    "machine",  # a machine outside Kubernetes: libvirt/machined name, nspawn container, Proxmox VM id
    "unit",
)

COMMON_FIELDS: Final = ("event", "ts", "ktime_ns", "node", "tier")

TRIGGER_FIELDS: Final = ("trigger_pid", "trigger_tgid", "trigger_comm", "trigger_memcg")

# Kubernetes and VM attribution (tracer.enrich: kube, vm, memsnap, overhead; see
# docs/attribution.md); present on every event, None when unknown or not applicable.
ATTRIBUTION_FIELDS: Final = (
    "namespace",
    "pod",
    "container",  # the container's name
    "labels",  # allow-listed pod labels, {key: value}
    "annotations",  # allow-listed pod annotations, {key: value}
    "owner",  # the controlling owner, {"kind": ..., "name": ...}
    "vm",  # "<namespace>/<vmi>" of a KubeVirt VM pod; a plain-host VM's own name (libvirt domain)
    "guest_memory_bytes",  # the VM's RAM, from QEMU's command line
    "vcpus",
    "trigger_role",  # qemu, vcpu, virt-launcher, virt-launcher-monitor, virtqemud, libvirtd, virtlogd, other
    "overhead",  # VM pods: limit vs guest memory, KubeVirt's formula, a Harvester recommendation
    "memory_snapshot",  # memcg_oom/oom_kill: the OOMing cgroup's memory.stat and top tasks
)

FIELDS: Final[dict[str, tuple[str, ...]]] = {
    # A cgroup whose charges fail at its limit and which reclaims to make room.
    NEAR_OOM: (
        "memcg",  # the cgroup counted (see README: charging task's memcg on the tracepoint tier)
        "memcg_id",
        "phase",  # "first": first failure after a quiet period; "summary": counts for one interval
        "interval_s",  # length of the summarised interval (None for "first")
        "reclaim_calls",
        "reclaim_time_ns",
        "reclaimed_bytes",
        "charge_failures",  # charges that failed for good (fentry/kprobe only)
        "usage_bytes",
        "limit_bytes",
        *TRIGGER_FIELDS,
    ),
    # The kernel invoked the OOM killer for a memory cgroup (entry probe: before its report).
    MEMCG_OOM: (
        "oom_memcg",
        "oom_memcg_id",
        "usage_bytes",
        "limit_bytes",
        "failcnt",
        "gfp_mask",  # hex string as the kernel prints it, e.g. "0xcc0"
        "order",
        *TRIGGER_FIELDS,
    ),
    # One task killed; one event per victim.
    OOM_KILL: (
        "victim_pid",
        "victim_tgid",
        "victim_comm",
        "victim_uid",
        "total_vm_bytes",
        "anon_rss_bytes",
        "file_rss_bytes",
        "shmem_rss_bytes",
        "pgtables_bytes",
        "oom_score_adj",
        "task_memcg",  # the victim's memory cgroup
        "task_memcg_id",
        "oom_memcg",  # the cgroup that hit its limit (None for a global OOM)
        "oom_memcg_id",
        "constraint",  # a CONSTRAINTS value ("memcg", "global", ...) or None
        *TRIGGER_FIELDS,
        "victim_role",  # as trigger_role, for the victim
    ),
}


def blank_event(kind: str) -> dict[str, Any]:
    """An event of `kind` with every field present and unknown."""
    if kind not in FIELDS:
        raise ValueError(f"unknown event kind {kind!r}")
    event: dict[str, Any] = dict.fromkeys(COMMON_FIELDS + FIELDS[kind] + TAG_FIELDS + ATTRIBUTION_FIELDS)
    event["event"] = kind
    return event
