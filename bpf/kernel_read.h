/* Reads of kernel structs at offsets taken from the running kernel's BTF (tracer/kernel/offsets.py
 * passes them in as OFF_* constants). bcc compiles against whatever headers are at hand;
 * the offsets never come from those headers. Without BTF nothing here is compiled and the
 * programs use tracepoint fields and helpers only. */
#ifndef OOMTRACE_KERNEL_READ_H
#define OOMTRACE_KERNEL_READ_H

#include <uapi/linux/ptrace.h> /* struct pt_regs, for the kprobe tier's PT_REGS_* */

#if OOMTRACE_HAVE_BTF

static __always_inline __u64 read_u64(const void *base, __u64 off)
{
	__u64 v = 0;
	bpf_probe_read_kernel(&v, sizeof(v), (const char *)base + off);
	return v;
}

static __always_inline __u32 read_u32(const void *base, __u64 off)
{
	__u32 v = 0;
	bpf_probe_read_kernel(&v, sizeof(v), (const char *)base + off);
	return v;
}

static __always_inline void *read_ptr(const void *base, __u64 off)
{
	return (void *)read_u64(base, off);
}

/* task->cgroups->subsys[memory_cgrp_id]: the task's memory cgroup, which on cgroup v1
 * and hybrid hosts is not the v2 cgroup bpf_get_current_cgroup_id() returns. */
static __always_inline void *task_memcg(const void *task)
{
	void *cset, *css;

	if (!task)
		return 0;
	cset = read_ptr(task, OFF_TASK_CGROUPS);
	if (!cset)
		return 0;
	css = read_ptr(cset, OFF_CSS_SET_SUBSYS + MEMORY_CGRP_ID * sizeof(void *));
	if (!css)
		return 0;
	return (char *)css - OFF_MEMCG_CSS;
}

/* memcg->css.cgroup->kn->id: equals the inode of the cgroup's directory (kernel >= 5.5). */
static __always_inline __u64 memcg_id(const void *memcg)
{
	void *cgrp, *kn;

	if (!memcg)
		return 0;
	cgrp = read_ptr(memcg, OFF_MEMCG_CSS + OFF_CSS_CGROUP);
	if (!cgrp)
		return 0;
	kn = read_ptr(cgrp, OFF_CGROUP_KN);
	if (!kn)
		return 0;
	return read_u64(kn, OFF_KERNFS_NODE_ID);
}

/* memcg->memory: the page counter the charge path checks against memory.max /
 * memory.limit_in_bytes. */
static __always_inline void memcg_counter(const void *memcg, __u64 *usage, __u64 *limit, __u64 *failcnt)
{
	const char *counter = (const char *)memcg + OFF_MEMCG_MEMORY;

	*usage = read_u64(counter, OFF_PAGE_COUNTER_USAGE);
	*limit = read_u64(counter, OFF_PAGE_COUNTER_MAX);
	*failcnt = read_u64(counter, OFF_PAGE_COUNTER_FAILCNT);
}

/* One mm counter as get_mm_counter() reads it: an atomic_long_t on older kernels, the
 * approximate count of a percpu_counter from 6.2; RSS_STAT_* describe whichever it is. */
static __always_inline __u64 mm_counter(const void *mm, int member)
{
	__s64 v = (__s64)read_u64(mm, OFF_MM_RSS_STAT + member * RSS_STAT_STRIDE + RSS_STAT_INNER);

	return v < 0 ? 0 : v;
}

#endif /* OOMTRACE_HAVE_BTF */

/* The trigger task: whoever is running when the probe fires. */
static __always_inline void fill_trigger(struct oomtrace_event *e)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();

	e->trigger_pid = (__u32)pid_tgid;
	e->trigger_tgid = pid_tgid >> 32;
	bpf_get_current_comm(&e->trigger_comm, sizeof(e->trigger_comm));
#if OOMTRACE_HAVE_BTF
	e->trigger_memcg_id = memcg_id(task_memcg((void *)bpf_get_current_task()));
	if (e->trigger_memcg_id)
		e->known |= KNOWN_TRIGGER_MEMCG;
#elif OOMTRACE_CGROUP2_MEMORY
	/* Pure cgroup v2 host: the v2 cgroup is the memory cgroup. */
	e->trigger_memcg_id = bpf_get_current_cgroup_id();
	e->known |= KNOWN_TRIGGER_MEMCG;
#endif
}

BPF_RINGBUF_OUTPUT(events, OOMTRACE_RINGBUF_PAGES);
BPF_PERCPU_ARRAY(lost, __u64, LOSS_MAX);

static __always_inline void count_loss(int reason)
{
	__u64 *n = lost.lookup(&reason);

	if (n)
		*n += 1;
}

static __always_inline struct oomtrace_event *reserve_event(__u32 kind, __u32 tier)
{
	struct oomtrace_event *e = events.ringbuf_reserve(sizeof(*e));

	if (!e) {
		count_loss(LOSS_RINGBUF_FULL);
		return 0;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->kind = kind;
	e->tier = tier;
	e->ktime_ns = bpf_ktime_get_ns();
	return e;
}

#endif
