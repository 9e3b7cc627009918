/* The one contract between oomtrace's BPF programs and its user space (tracer/decode.py).
 * Fixed-width fields, explicit padding, kind first. A kernel test checks that the Python
 * mirror has the same size and offsets (tests/kernel/test_layout.py); a unit test, that the
 * codes and constants here are the ones user space uses (tests/unit/test_bpf_header.py). */
#ifndef OOMTRACE_H
#define OOMTRACE_H

#define OOMTRACE_COMM_LEN 16

enum oomtrace_kind {
	OOMTRACE_NEAR_OOM = 1,	/* first charge failure of a cgroup after a quiet period */
	OOMTRACE_MEMCG_OOM = 2,	/* the OOM killer was invoked for a memcg */
	OOMTRACE_OOM_KILL = 3,	/* one victim chosen and killed */
};

/* Tiers are macros, not an enum: the programs choose their probe bodies with #if, and the
 * preprocessor would read an enum constant as 0. 0 means the probe is not attached. */
#define OOMTRACE_TIER_FENTRY 1
#define OOMTRACE_TIER_KPROBE 2
#define OOMTRACE_TIER_TRACEPOINT 3

/* Bits of oomtrace_event.known: which optional fields were read from the kernel.
 * A field whose bit is clear is unknown (null in the JSON), not zero. */
#define KNOWN_TRIGGER_MEMCG	(1ULL << 0)
#define KNOWN_MEMCG		(1ULL << 1)	/* memcg_id */
#define KNOWN_USAGE_LIMIT	(1ULL << 2)
#define KNOWN_FAILCNT		(1ULL << 3)
#define KNOWN_GFP_ORDER		(1ULL << 4)
#define KNOWN_VICTIM_TGID	(1ULL << 5)
#define KNOWN_VICTIM_MEMCG	(1ULL << 6)
#define KNOWN_VICTIM_MM		(1ULL << 7)	/* total_vm, rss, pgtables */
#define KNOWN_VICTIM_UID	(1ULL << 8)
#define KNOWN_OOM_SCORE_ADJ	(1ULL << 9)
#define KNOWN_CONSTRAINT	(1ULL << 10)
#define KNOWN_VICTIM_COMM	(1ULL << 11)

struct oomtrace_event {
	__u32 kind;		/* enum oomtrace_kind */
	__u32 tier;		/* OOMTRACE_TIER_* of the probe that produced it */
	__u64 ktime_ns;		/* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u64 known;		/* KNOWN_* bits */
	/* The task running when the probe fired: the one whose charge failed or that
	 * invoked the OOM killer (not the victim). */
	__u32 trigger_pid;	/* kernel pid = thread id */
	__u32 trigger_tgid;
	char trigger_comm[OOMTRACE_COMM_LEN];
	__u64 trigger_memcg_id;	/* the trigger's own memory cgroup */
	/* near_oom: the cgroup counted; memcg_oom and oom_kill: the OOMing memcg, which is
	 * often an ancestor (the pod) of the victim's memcg (the container). */
	__u64 memcg_id;
	__u64 usage_pages;
	__u64 limit_pages;
	__u64 failcnt;
	__u32 gfp_mask;
	__s32 order;
	/* oom_kill only */
	__u32 victim_pid;
	__u32 victim_tgid;
	char victim_comm[OOMTRACE_COMM_LEN];
	__u64 victim_memcg_id;	/* task_memcg in the kernel's report */
	__u64 total_vm_pages;
	__u64 anon_rss_pages;
	__u64 file_rss_pages;
	__u64 shmem_rss_pages;
	__u64 pgtables_bytes;
	__u32 victim_uid;
	__s32 oom_score_adj;
	__u32 constraint;	/* enum oom_constraint, numbered as the running kernel's BTF says */
	__u32 _pad;
};

/* Per-cgroup near-OOM counters, aggregated in the kernel; user space reads them on an
 * interval, so a reclaim storm costs user space nothing per event. */
struct near_oom_stats {
	__u64 reclaim_calls;
	__u64 reclaim_ns;
	__u64 reclaimed_pages;
	__u64 charge_failures;	/* charges that failed for good (fentry/kprobe tiers) */
	__u64 last_ns;		/* last reclaim start, for the quiet-period rule */
	__u64 usage_pages;	/* at the last reclaim start, when known */
	__u64 limit_pages;
};

/* Why an event did not reach user space; indexes of the `lost` array. */
enum oomtrace_loss {
	LOSS_RINGBUF_FULL = 0,
	LOSS_MAP_FULL = 1,
	LOSS_MAX = 2,
};

#endif
