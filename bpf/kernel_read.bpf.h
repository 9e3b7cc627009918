/* Reads of kernel structs at offsets taken from the running kernel's BTF (tracer/kernel/offsets.py
 * passes them in as OFF_* constants). bcc compiles against whatever headers are at hand;
 * the offsets never come from those headers. Without BTF nothing here is compiled and the
 * programs use tracepoint fields and helpers only. */
#ifndef OOMTRACE_KERNEL_READ_BPF_H
#define OOMTRACE_KERNEL_READ_BPF_H

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

/* memcg->css.cgroup->kn->id: equals the inode of the cgroup's directory since 5.5 (commit
 * 40430452fd5d "kernfs: use 64bit inos if ino_t is 64bit"). */
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
 * approximate count of a percpu_counter from 6.2 (commit f1a7941243c1 "mm: convert mm's rss
 * stats into percpu_counter"); RSS_STAT_* describe whichever it is. */
static __always_inline __u64 mm_counter(const void *mm, int member)
{
	__s64 v = (__s64)read_u64(mm, OFF_MM_RSS_STAT + member * RSS_STAT_STRIDE + RSS_STAT_INNER);

	return v < 0 ? 0 : v;
}

#endif /* OOMTRACE_HAVE_BTF */

#endif
