/* oom_kill: one record per victim. A memory.oom.group kill of three tasks is three records.
 * Runs in the trigger task's context: `current` is the task that invoked the OOM killer. */

static __always_inline void take_oom_context(struct oomtrace_event *e)
{
	__u32 pid = (__u32)bpf_get_current_pid_tgid();
	struct oom_context *ctx = oom_context.lookup(&pid);

	if (!ctx)
		return;
	e->memcg_id = ctx->memcg_id;
	e->constraint = ctx->constraint;
	e->known |= ctx->known;
}

#if OOMTRACE_HAVE_BTF
/* victim: the task_struct being killed, read with BTF offsets. */
static __always_inline int emit_victim(void *victim, __u32 tier)
{
	struct oomtrace_event *e = reserve_event(OOMTRACE_OOM_KILL, tier);
	void *mm, *signal, *cred;

	if (!e)
		return 0;
	fill_trigger(e);
	take_oom_context(e);
	e->victim_pid = read_u32(victim, OFF_TASK_PID);
	e->victim_tgid = read_u32(victim, OFF_TASK_TGID);
	bpf_probe_read_kernel(&e->victim_comm, sizeof(e->victim_comm), (char *)victim + OFF_TASK_COMM);
	e->known |= KNOWN_VICTIM_TGID | KNOWN_VICTIM_COMM;
	e->victim_memcg_id = memcg_id(task_memcg(victim));
	if (e->victim_memcg_id)
		e->known |= KNOWN_VICTIM_MEMCG;
	cred = read_ptr(victim, OFF_TASK_REAL_CRED);
	if (cred) {
		/* The kernel reports the uid in the initial user namespace: the raw kuid. */
		e->victim_uid = read_u32(cred, OFF_CRED_UID);
		e->known |= KNOWN_VICTIM_UID;
	}
	signal = read_ptr(victim, OFF_TASK_SIGNAL);
	if (signal) {
		__s16 adj = 0;

		bpf_probe_read_kernel(&adj, sizeof(adj), (char *)signal + OFF_SIGNAL_OOM_SCORE_ADJ);
		e->oom_score_adj = adj;
		e->known |= KNOWN_OOM_SCORE_ADJ;
	}
	/* NULL for a task that is already exiting: then its memory is unknown here. */
	mm = read_ptr(victim, OFF_TASK_MM);
	if (mm) {
		e->total_vm_pages = read_u64(mm, OFF_MM_TOTAL_VM);
		e->anon_rss_pages = mm_counter(mm, MM_ANONPAGES_IDX);
		e->file_rss_pages = mm_counter(mm, MM_FILEPAGES_IDX);
		e->shmem_rss_pages = mm_counter(mm, MM_SHMEMPAGES_IDX);
		e->pgtables_bytes = read_u64(mm, OFF_MM_PGTABLES_BYTES);
		e->known |= KNOWN_VICTIM_MM;
	}
	events.ringbuf_submit(e, 0);
	return 0;
}
#endif

#if OOM_KILL_TIER == OOMTRACE_TIER_FENTRY || OOM_KILL_TIER == OOMTRACE_TIER_KPROBE
/* A memory.oom.group kill runs __oom_kill_process() on the chosen victim, then again on
 * every task of the group, the chosen one included: the kernel logs that victim twice but
 * marks it once (mark_oom_victim() sets signal->oom_mm, and oom:mark_victim fires, only the
 * first time). A task already marked is not a new kill. */
static __always_inline int marked_victim(const void *victim)
{
#ifdef OFF_SIGNAL_OOM_MM
	void *signal = read_ptr(victim, OFF_TASK_SIGNAL);

	return signal && read_ptr(signal, OFF_SIGNAL_OOM_MM);
#else
	return 0;
#endif
}
#endif

#if OOM_KILL_TIER == OOMTRACE_TIER_FENTRY
/* __oom_kill_process(victim, message): once per task killed, group members included. */
KFUNC_PROBE(__oom_kill_process, void *victim)
{
	if (marked_victim(victim))
		return 0;
	return emit_victim(victim, OOMTRACE_TIER_FENTRY);
}
#elif OOM_KILL_TIER == OOMTRACE_TIER_KPROBE
int oom_kill_kprobe(struct pt_regs *ctx)
{
	void *victim = (void *)PT_REGS_PARM1(ctx);

	if (marked_victim(victim))
		return 0;
	return emit_victim(victim, OOMTRACE_TIER_KPROBE);
}
#elif OOM_KILL_TIER == OOMTRACE_TIER_TRACEPOINT && MARK_VICTIM_RAW
/* oom:mark_victim as a raw tracepoint: TP_PROTO(struct task_struct *task, uid_t uid) since
 * 6.9 (commit 72ba14deb40a "mm: update mark_victim tracepoints fields", backported to the 5.4,
 * 5.15, 6.1 and 6.6 stable series), which gives the victim's task_struct, hence its memcg.
 * Fires after the kernel printed its report. */
RAW_TRACEPOINT_PROBE(mark_victim)
{
	return emit_victim((void *)ctx->args[0], OOMTRACE_TIER_TRACEPOINT);
}
#elif OOM_KILL_TIER == OOMTRACE_TIER_TRACEPOINT
/* oom:mark_victim from its format file: the victim's pid always; comm, memory and uid on
 * kernels whose format has them (the same commit 72ba14deb40a). The victim's memcg is unknown
 * here. */
TRACEPOINT_PROBE(oom, mark_victim)
{
	struct oomtrace_event *e = reserve_event(OOMTRACE_OOM_KILL, OOMTRACE_TIER_TRACEPOINT);

	if (!e)
		return 0;
	fill_trigger(e);
	take_oom_context(e);
	e->victim_pid = args->pid;
#if MARK_VICTIM_HAS_RSS
	TP_DATA_LOC_READ_CONST(&e->victim_comm, comm, sizeof(e->victim_comm));
	/* The format reports kB; the event carries pages like every other tier. */
	e->total_vm_pages = args->total_vm >> (PAGE_SHIFT_VALUE - 10);
	e->anon_rss_pages = args->anon_rss >> (PAGE_SHIFT_VALUE - 10);
	e->file_rss_pages = args->file_rss >> (PAGE_SHIFT_VALUE - 10);
	e->shmem_rss_pages = args->shmem_rss >> (PAGE_SHIFT_VALUE - 10);
	e->pgtables_bytes = args->pgtables << 10;
	e->victim_uid = args->uid;
	e->oom_score_adj = args->oom_score_adj;
	e->known |= KNOWN_VICTIM_COMM | KNOWN_VICTIM_MM | KNOWN_VICTIM_UID | KNOWN_OOM_SCORE_ADJ;
#endif
	events.ringbuf_submit(e, 0);
	return 0;
}
#endif
