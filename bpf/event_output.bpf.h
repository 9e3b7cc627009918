/* How every event goes out: the ring buffer, the counters of events lost on the way, and
 * the trigger-task fields every event carries. */
#ifndef OOMTRACE_EVENT_OUTPUT_BPF_H
#define OOMTRACE_EVENT_OUTPUT_BPF_H

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
