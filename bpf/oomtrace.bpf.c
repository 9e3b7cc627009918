/* oomtrace's BPF programs: the one file bcc compiles. tracer/kernel/source.py puts this kernel's
 * #defines first (probe tiers, struct offsets from BTF, sizes, the charge function) and then
 * this file with each #include "..." below replaced by the part it names, in this order: bcc
 * rewrites map calls and places programs in sections only in the text it is given, never in
 * an included file. Each part uses what the ones above it define. */

#include <uapi/linux/ptrace.h>	/* struct pt_regs, for the kprobe tier's PT_REGS_* */

#include "oomtrace.h"		/* the event layout and codes user space mirrors */
#include "kernel_read.bpf.h"	/* kernel structs read at offsets from BTF */
#include "event_output.bpf.h"	/* the ring buffer, lost-event counters, trigger fields */
#include "near_oom.bpf.h"	/* charge failures and reclaim: the warning before an OOM */
#include "memcg_oom.bpf.h"	/* the OOM killer invoked for a memcg; notes oom_context */
#include "oom_kill.bpf.h"	/* one record per victim, with the oom_context above */
