/* near_oom: a memory cgroup's charges fail at its limit and the charging task reclaims.
 * Counted per cgroup in near_oom_stats; only the first failure after a quiet period
 * becomes a ring-buffer record, so a reclaim storm costs one record per cgroup. */

BPF_HASH(near_oom_stats, __u64, struct near_oom_stats, NEAR_OOM_MAX_CGROUPS);

struct reclaim_start {
	__u64 start_ns;
	__u64 memcg_id;
};
BPF_HASH(reclaim_starts, __u32, struct reclaim_start, 10240);

/* memcg is the cgroup being reclaimed when the probe has it, else NULL (tracepoint tier:
 * the charging task's own memcg is counted instead). */
static __always_inline int near_oom_begin(void *memcg, __u32 tier)
{
	struct near_oom_stats zero = {}, *st;
	struct reclaim_start start = {};
	__u64 now = bpf_ktime_get_ns();
	__u64 usage = 0, limit = 0, failcnt = 0, last, id = 0;
	__u32 pid = (__u32)bpf_get_current_pid_tgid();
	int have_counter = 0;

#if OOMTRACE_HAVE_BTF
	if (!memcg)
		memcg = task_memcg((void *)bpf_get_current_task());
	if (memcg) {
		id = memcg_id(memcg);
		memcg_counter(memcg, &usage, &limit, &failcnt);
		have_counter = 1;
	}
#elif OOMTRACE_CGROUP2_MEMORY
	id = bpf_get_current_cgroup_id();
#endif
	st = near_oom_stats.lookup(&id);
	if (!st) {
		near_oom_stats.insert(&id, &zero);
		st = near_oom_stats.lookup(&id);
		if (!st) {
			count_loss(LOSS_MAP_FULL);
			return 0;
		}
	}
	last = st->last_ns;
	__sync_fetch_and_add(&st->reclaim_calls, 1);
	st->last_ns = now;
	if (have_counter) {
		st->usage_pages = usage;
		st->limit_pages = limit;
	}
	start.start_ns = now;
	start.memcg_id = id;
	reclaim_starts.update(&pid, &start);

	if (last && now - last < NEAR_OOM_QUIET_NS)
		return 0;
	struct oomtrace_event *e = reserve_event(OOMTRACE_NEAR_OOM, tier);
	if (!e)
		return 0;
	fill_trigger(e);
#if OOMTRACE_HAVE_BTF || OOMTRACE_CGROUP2_MEMORY
	e->memcg_id = id;
	e->known |= KNOWN_MEMCG;
#endif
	if (have_counter) {
		e->usage_pages = usage;
		e->limit_pages = limit;
		e->failcnt = failcnt;
		e->known |= KNOWN_USAGE_LIMIT | KNOWN_FAILCNT;
	}
	events.ringbuf_submit(e, 0);
	return 0;
}

static __always_inline int near_oom_end(__u64 nr_reclaimed)
{
	__u32 pid = (__u32)bpf_get_current_pid_tgid();
	struct reclaim_start *start = reclaim_starts.lookup(&pid);
	struct near_oom_stats *st;

	if (!start)
		return 0;
	st = near_oom_stats.lookup(&start->memcg_id);
	if (st) {
		__sync_fetch_and_add(&st->reclaim_ns, bpf_ktime_get_ns() - start->start_ns);
		__sync_fetch_and_add(&st->reclaimed_pages, nr_reclaimed);
	}
	reclaim_starts.delete(&pid);
	return 0;
}

#if NEAR_OOM_TIER == OOMTRACE_TIER_FENTRY
KFUNC_PROBE(try_to_free_mem_cgroup_pages, void *memcg)
{
	return near_oom_begin(memcg, OOMTRACE_TIER_FENTRY);
}

/* fexit finds the return value after the last parameter, so the parameter list must be the
 * running kernel's (NEAR_OOM_FN_ARGS, from BTF): 4 up to 6.10 (a bool may_swap, unsigned int
 * reclaim_options from 6.0: commit 73b73bac90d9 "mm: vmpressure: don't count proactive reclaim
 * in vmpressure"), 5 from 6.11 (int *swappiness added: commit 68cd9050d871 "mm: add
 * swappiness= arg to memory.reclaim"). Only `ret` is read. */
#ifndef NEAR_OOM_FN_ARGS
#define NEAR_OOM_FN_ARGS 4 /* BTF lacks the function: then fentry cannot attach to it anyway */
#endif
#if NEAR_OOM_FN_ARGS == 5
KRETFUNC_PROBE(try_to_free_mem_cgroup_pages, void *memcg, unsigned long nr_pages, unsigned int gfp_mask,
	       unsigned int options, void *swappiness, unsigned long ret)
#else
KRETFUNC_PROBE(try_to_free_mem_cgroup_pages, void *memcg, unsigned long nr_pages, unsigned int gfp_mask,
	       unsigned int options, unsigned long ret)
#endif
{
	return near_oom_end(ret);
}
#elif NEAR_OOM_TIER == OOMTRACE_TIER_KPROBE
int near_oom_kprobe(struct pt_regs *ctx)
{
	return near_oom_begin((void *)PT_REGS_PARM1(ctx), OOMTRACE_TIER_KPROBE);
}

int near_oom_kretprobe(struct pt_regs *ctx)
{
	return near_oom_end(PT_REGS_RC(ctx));
}
#elif NEAR_OOM_TIER == OOMTRACE_TIER_TRACEPOINT
/* Fires when a memcg charge fails and the charging task reclaims inside its cgroup
 * (also for memory.high reclaim). The record carries no memcg. */
TRACEPOINT_PROBE(vmscan, mm_vmscan_memcg_reclaim_begin)
{
	return near_oom_begin(0, OOMTRACE_TIER_TRACEPOINT);
}

TRACEPOINT_PROBE(vmscan, mm_vmscan_memcg_reclaim_end)
{
	return near_oom_end(args->nr_reclaimed);
}
#endif

/* A charge that fails for good (-ENOMEM after reclaim and OOM): counted against the memcg
 * being charged. The function is CHARGE_FAILURE_FN, the plan's choice: try_charge() up to
 * 5.13, try_charge_memcg() from 5.14 (commit c5c8b16b596e "mm: memcontrol: fix root_mem_cgroup
 * charging", which left try_charge() as an inline wrapper). */
#if CHARGE_FAILURE_TIER == OOMTRACE_TIER_FENTRY
/* KRETFUNC_PROBE pastes its first argument into the program name with ##, which does not
 * expand macros: one more macro level expands CHARGE_FAILURE_FN first. */
#define KRETFUNC_PROBE_EXPANDED(fn, args...) KRETFUNC_PROBE(fn, ##args)
KRETFUNC_PROBE_EXPANDED(CHARGE_FAILURE_FN, void *memcg, unsigned int gfp_mask, unsigned int nr_pages, int ret)
{
	if (ret != -ENOMEM)
		return 0;
	__u64 id = memcg_id(memcg);
	struct near_oom_stats *st = near_oom_stats.lookup(&id);
	if (st)
		__sync_fetch_and_add(&st->charge_failures, 1);
	return 0;
}
#elif CHARGE_FAILURE_TIER == OOMTRACE_TIER_KPROBE
BPF_HASH(charging_memcg, __u32, __u64, 10240);

int charge_kprobe(struct pt_regs *ctx)
{
	__u32 pid = (__u32)bpf_get_current_pid_tgid();
	__u64 id = memcg_id((void *)PT_REGS_PARM1(ctx));

	charging_memcg.update(&pid, &id);
	return 0;
}

int charge_kretprobe(struct pt_regs *ctx)
{
	__u32 pid = (__u32)bpf_get_current_pid_tgid();
	__u64 *id = charging_memcg.lookup(&pid);
	struct near_oom_stats *st;

	if (!id)
		return 0;
	if ((int)PT_REGS_RC(ctx) == -ENOMEM) {
		st = near_oom_stats.lookup(id);
		if (st)
			__sync_fetch_and_add(&st->charge_failures, 1);
	}
	charging_memcg.delete(&pid);
	return 0;
}
#endif
