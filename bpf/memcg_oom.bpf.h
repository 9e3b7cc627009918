/* memcg_oom: the kernel invoked the OOM killer for a memory cgroup. Sent on entry to
 * oom_kill_process(), before the kernel prints its "invoked oom-killer" report: this is
 * the event that reaches users before the kernel log.
 *
 * mem_cgroup_out_of_memory() is where a memcg OOM starts, but it may still call the OOM
 * off: under oom_lock it returns early when the cgroup has room again (other CPUs' charge
 * stock drained meanwhile: seen on 5.10, 13 pages below the limit) or the task is dying,
 * and then nothing is killed and nothing printed. So its entry only notes the OOM (pending)
 * and the event goes out when oom_kill_process() shows the kernel going ahead, or when the
 * OOM ends with no victim to kill (the kernel reports that too). Without an oom_kill_process
 * probe (OOM_CONTEXT_TIER 0) the entry sends it at once, as the best available.
 *
 * The page counter is read on entry, right after the charge failed: usage = limit for an
 * order-0 charge. By the time the kernel prints its report, usage may have dropped by
 * other CPUs' charge stock, drained asynchronously (seen on 5.10 and 6.1). */

/* What the OOM in progress in a task is about, for the oom_kill events it causes:
 * written on entry to mem_cgroup_out_of_memory() and oom_kill_process(). */
struct oom_context {
	__u64 memcg_id;		/* 0: global OOM (oc->memcg is NULL) */
	__u32 constraint;
	__u32 known;		/* KNOWN_MEMCG / KNOWN_CONSTRAINT */
	__u64 memcg;		/* struct mem_cgroup * of a pending memcg OOM */
	__u64 usage;		/* its page counter on entry to mem_cgroup_out_of_memory() */
	__u64 limit;
	__u64 failcnt;
	__u32 gfp_mask;
	__s32 order;
	__u32 pending;		/* 1: memcg_oom event not sent yet */
	__u32 tier;		/* tier of the memcg_oom probe */
};
BPF_HASH(oom_context, __u32, struct oom_context, 1024);

#if (MEMCG_OOM_TIER == OOMTRACE_TIER_FENTRY || MEMCG_OOM_TIER == OOMTRACE_TIER_KPROBE) && \
	(OOM_CONTEXT_TIER == OOMTRACE_TIER_FENTRY || OOM_CONTEXT_TIER == OOMTRACE_TIER_KPROBE)
#define MEMCG_OOM_DEFERRED 1
#else
#define MEMCG_OOM_DEFERRED 0
#endif

#if MEMCG_OOM_TIER == OOMTRACE_TIER_FENTRY || MEMCG_OOM_TIER == OOMTRACE_TIER_KPROBE
/* oc describes the OOMing cgroup, the one over its limit: often the pod, an ancestor of
 * the trigger's own memcg. */
static __always_inline int emit_memcg_oom(const struct oom_context *oc)
{
	struct oomtrace_event *e = reserve_event(OOMTRACE_MEMCG_OOM, oc->tier);

	if (!e)
		return 0;
	fill_trigger(e);
	e->memcg_id = oc->memcg_id;
	e->usage_pages = oc->usage;
	e->limit_pages = oc->limit;
	e->failcnt = oc->failcnt;
	e->gfp_mask = oc->gfp_mask;
	e->order = oc->order;
	e->known |= KNOWN_MEMCG | KNOWN_USAGE_LIMIT | KNOWN_FAILCNT | KNOWN_GFP_ORDER;
	events.ringbuf_submit(e, 0);
	return 0;
}

static __always_inline int on_memcg_oom(void *memcg, __u32 gfp_mask, int order, __u32 tier)
{
	__u32 pid = (__u32)bpf_get_current_pid_tgid();
	struct oom_context oc = {};

	oc.memcg_id = memcg_id(memcg);
	oc.constraint = CONSTRAINT_MEMCG_VALUE;
	oc.known = KNOWN_MEMCG | KNOWN_CONSTRAINT;
	oc.memcg = (__u64)memcg;
	memcg_counter(memcg, &oc.usage, &oc.limit, &oc.failcnt);
	oc.gfp_mask = gfp_mask;
	oc.order = order;
	oc.pending = MEMCG_OOM_DEFERRED;
	oc.tier = tier;
	oom_context.update(&pid, &oc);
	if (!oc.pending)
		return emit_memcg_oom(&oc);
	return 0;
}

/* handled: what mem_cgroup_out_of_memory() returned; false: no victim could be found. */
static __always_inline int on_memcg_oom_return(__u8 handled)
{
	__u32 pid = (__u32)bpf_get_current_pid_tgid();
	struct oom_context *oc = oom_context.lookup(&pid);

	/* Still pending: oom_kill_process() never ran. Called off (true), or no victim
	 * (false, after the kernel's report of it): only the latter was an OOM. */
	if (oc && oc->pending && !handled)
		emit_memcg_oom(oc);
	oom_context.delete(&pid);
	return 0;
}
#endif

#if MEMCG_OOM_TIER == OOMTRACE_TIER_FENTRY
KFUNC_PROBE(mem_cgroup_out_of_memory, void *memcg, unsigned int gfp_mask, int order)
{
	return on_memcg_oom(memcg, gfp_mask, order, OOMTRACE_TIER_FENTRY);
}

KRETFUNC_PROBE(mem_cgroup_out_of_memory, void *memcg, unsigned int gfp_mask, int order, unsigned long ret)
{
	return on_memcg_oom_return((__u8)ret); /* bool: only the low byte is defined */
}
#elif MEMCG_OOM_TIER == OOMTRACE_TIER_KPROBE
int memcg_oom_kprobe(struct pt_regs *ctx)
{
	return on_memcg_oom((void *)PT_REGS_PARM1(ctx), (__u32)PT_REGS_PARM2(ctx), (int)PT_REGS_PARM3(ctx),
			    OOMTRACE_TIER_KPROBE);
}

int memcg_oom_kretprobe(struct pt_regs *ctx)
{
	return on_memcg_oom_return((__u8)PT_REGS_RC(ctx));
}
#endif

/* oom_kill_process(oc, message): once per OOM that found a victim, memcg or global. Its
 * oom_control says which cgroup OOMed (NULL for a global OOM) and why (constraint). */
#if OOM_CONTEXT_TIER == OOMTRACE_TIER_FENTRY || OOM_CONTEXT_TIER == OOMTRACE_TIER_KPROBE
static __always_inline int on_oom_kill_process(void *oc)
{
	__u32 pid = (__u32)bpf_get_current_pid_tgid();
	struct oom_context ctx = {};
	void *memcg = read_ptr(oc, OFF_OC_MEMCG);

#if MEMCG_OOM_DEFERRED
	struct oom_context *pending = oom_context.lookup(&pid);

	/* The kernel goes ahead with the memcg OOM noted on entry: send it now, before
	 * dump_header() prints the report. */
	if (pending && pending->pending && memcg && pending->memcg == (__u64)memcg)
		emit_memcg_oom(pending);
#endif
	ctx.memcg_id = memcg_id(memcg);
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
