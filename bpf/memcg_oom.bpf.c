/* memcg_oom: the kernel invoked the OOM killer for a memory cgroup. The entry probe on
 * mem_cgroup_out_of_memory() fires before the kernel prints its "invoked oom-killer"
 * report: this is the event that reaches users before the kernel log. */

/* What the OOM in progress in a task is about, for the oom_kill events it causes:
 * written on entry to mem_cgroup_out_of_memory() and oom_kill_process(). */
struct oom_context {
	__u64 memcg_id;		/* 0: global OOM (oc->memcg is NULL) */
	__u32 constraint;
	__u32 known;		/* KNOWN_MEMCG / KNOWN_CONSTRAINT */
};
BPF_HASH(oom_context, __u32, struct oom_context, 1024);

#if MEMCG_OOM_TIER == OOMTRACE_TIER_FENTRY || MEMCG_OOM_TIER == OOMTRACE_TIER_KPROBE
/* memcg: the OOMing cgroup, the one over its limit; often the pod, an ancestor of the
 * trigger's own memcg. */
static __always_inline int on_memcg_oom(void *memcg, __u32 gfp_mask, int order, __u32 tier)
{
	__u32 pid = (__u32)bpf_get_current_pid_tgid();
	struct oom_context oc = {};
	struct oomtrace_event *e;

	oc.memcg_id = memcg_id(memcg);
	oc.constraint = CONSTRAINT_MEMCG_VALUE;
	oc.known = KNOWN_MEMCG | KNOWN_CONSTRAINT;
	oom_context.update(&pid, &oc);

	e = reserve_event(OOMTRACE_MEMCG_OOM, tier);
	if (!e)
		return 0;
	fill_trigger(e);
	e->memcg_id = oc.memcg_id;
	memcg_counter(memcg, &e->usage_pages, &e->limit_pages, &e->failcnt);
	e->gfp_mask = gfp_mask;
	e->order = order;
	e->known |= KNOWN_MEMCG | KNOWN_USAGE_LIMIT | KNOWN_FAILCNT | KNOWN_GFP_ORDER;
	events.ringbuf_submit(e, 0);
	return 0;
}

static __always_inline int on_memcg_oom_return(void)
{
	__u32 pid = (__u32)bpf_get_current_pid_tgid();

	oom_context.delete(&pid);
	return 0;
}
#endif

#if MEMCG_OOM_TIER == OOMTRACE_TIER_FENTRY
KFUNC_PROBE(mem_cgroup_out_of_memory, void *memcg, unsigned int gfp_mask, int order)
{
	return on_memcg_oom(memcg, gfp_mask, order, OOMTRACE_TIER_FENTRY);
}

KRETFUNC_PROBE(mem_cgroup_out_of_memory, void *memcg)
{
	return on_memcg_oom_return();
}
#elif MEMCG_OOM_TIER == OOMTRACE_TIER_KPROBE
int memcg_oom_kprobe(struct pt_regs *ctx)
{
	return on_memcg_oom((void *)PT_REGS_PARM1(ctx), (__u32)PT_REGS_PARM2(ctx), (int)PT_REGS_PARM3(ctx),
			    OOMTRACE_TIER_KPROBE);
}

int memcg_oom_kretprobe(struct pt_regs *ctx)
{
	return on_memcg_oom_return();
}
#endif

/* oom_kill_process(oc, message): once per OOM that found a victim, memcg or global. Its
 * oom_control says which cgroup OOMed (NULL for a global OOM) and why (constraint). */
#if OOM_CONTEXT_TIER == OOMTRACE_TIER_FENTRY || OOM_CONTEXT_TIER == OOMTRACE_TIER_KPROBE
static __always_inline int on_oom_kill_process(void *oc)
{
	__u32 pid = (__u32)bpf_get_current_pid_tgid();
	struct oom_context ctx = {};

	ctx.memcg_id = memcg_id(read_ptr(oc, OFF_OC_MEMCG));
	ctx.constraint = read_u32(oc, OFF_OC_CONSTRAINT);
	ctx.known = KNOWN_CONSTRAINT | (ctx.memcg_id ? KNOWN_MEMCG : 0);
	oom_context.update(&pid, &ctx);
	return 0;
}
#endif

#if OOM_CONTEXT_TIER == OOMTRACE_TIER_FENTRY
KFUNC_PROBE(oom_kill_process, void *oc)
{
	return on_oom_kill_process(oc);
}

KRETFUNC_PROBE(oom_kill_process, void *oc)
{
	__u32 pid = (__u32)bpf_get_current_pid_tgid();

	oom_context.delete(&pid);
	return 0;
}
#elif OOM_CONTEXT_TIER == OOMTRACE_TIER_KPROBE
int oom_context_kprobe(struct pt_regs *ctx)
{
	return on_oom_kill_process((void *)PT_REGS_PARM1(ctx));
}

int oom_context_kretprobe(struct pt_regs *ctx)
{
	__u32 pid = (__u32)bpf_get_current_pid_tgid();

	oom_context.delete(&pid);
	return 0;
}
#endif
