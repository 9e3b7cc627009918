"""Renders a bench/results/*.json record as docs/benchmarks.md and as the summary table."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.harness import REPO

MIB = 1 << 20
KERNEL_MATRIX = "docs/kernel-matrix.md"


def _num(value: Any, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "—"
    text = f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"
    return f"{text}{unit}"


def _d(dist: dict[str, Any] | None, key: str, unit: str = " ms", digits: int = 1) -> str:
    return "—" if not dist or dist.get(key) is None else _num(dist[key], unit, digits)


def _mib(n: int | None) -> str:
    return "—" if n is None else f"{n / MIB:,.0f} MiB"


def _ok(flag: bool | None) -> str:
    return {True: "met", False: "**missed**", None: "n/a here"}[flag]


def matrix_leads(path: Path = REPO / KERNEL_MATRIX) -> tuple[str | None, list[tuple[str, str, int]]]:
    """(its "Last run" line, [(kernel, "min / median / max" µs, scenarios)]) from the VM kernel
    matrix's document, which tests/vm/matrix.py generates; nothing if it is not there."""
    try:
        text = path.read_text()
    except OSError:
        return None, []
    last = next((ln.strip() for ln in text.splitlines() if ln.startswith("Last run:")), None)
    rows = []
    section = text.partition("## Lead of memcg_oom")[2].partition("\n## ")[0]
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and re.fullmatch(r"[0-9.]+ / [0-9.]+ / [0-9.]+", cells[1]):
            rows.append((cells[0], cells[1], int(cells[2]) if cells[2].isdigit() else 0))
    return last, rows


def _ci(ci: list[float] | None) -> str:
    return "—" if not ci else f"{ci[0]:+.1f} % to {ci[1]:+.1f} %"


def _verdict_at_most(ci: list[float] | None, limit: float) -> str:
    """met: the whole interval is within the limit; missed: all of it beyond; else noise decides."""
    if not ci:
        return _ok(None)
    if ci[1] <= limit:
        return _ok(True)
    if ci[0] > limit:
        return _ok(False)
    return "inconclusive (noise)"


def _bench(record: dict[str, Any], name: str) -> dict[str, Any] | None:
    data = record.get("benchmarks", {}).get(name)
    return None if not data or "error" in data else data


def _header(record: dict[str, Any]) -> list[str]:
    m = record["machine"]
    tiers = ", ".join(f"{p} {t}" for p, t in record.get("tiers", {}).items())
    load0 = " / ".join(f"{x:.1f}" for x in m.get("loadavg_at_start", ()))
    load1 = " / ".join(f"{x:.1f}" for x in m.get("loadavg_at_end", ()))
    busy = "; ".join(m.get("busiest_processes_at_start", [])[:3])
    return [
        f"Latest run: **{m['date']}** · kernel **{m['kernel']}** · {m['cpu']}, {m['cpus']} CPUs, "
        f"{m['memory_bytes'] / (1 << 30):.0f} GiB, virtualization {m['virtualization']} · "
        f"commit {m['commit']} · `bench/run.sh{' --quick' if record.get('quick') else ''}`",
        "",
        f"Probe tiers on this kernel: {tiers}.",
        "",
        f"Load on the machine: load average {load0} (1/5/15 min) at the start, {load1} at the end; "
        f"busiest processes at the start (% CPU): {busy}. This is a shared 2-core VM: timings are "
        "upper bounds for an idle node, and every ratio below is against a baseline from the same run.",
    ]


def _summary_rows(record: dict[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = []
    lead = _bench(record, "lead")
    if lead:
        per = lead["by_workload"]
        within = sum(w["near_oom_within_10ms"] for w in per.values())
        total = sum(w["ooms"] for w in per.values())
        worst = max((w["near_oom_delivery_ms"]["max"] or 0) for w in per.values())
        windows = "; ".join(f"{name}: {_d(w['window_to_report_ms'], 'p50')}" for name, w in per.items())
        rows.append(
            [
                "1",
                "first near_oom on stdout after the cgroup's first charge failure",
                f"{within}/{total} OOMs within 10 ms; worst {worst:.1f} ms",
                f"physical window (first charge failure → report): {windows}",
                "≤ 10 ms, every OOM",
                _ok(within == total),
            ]
        )
        on_stdout = "; ".join(
            f"{name}: {w['near_oom_on_stdout_before_report']}/{w['reports_printed']}"
            f" ({_d(w['near_oom_on_stdout_before_report_ms'], 'p50')})"
            for name, w in per.items()
        )
        rows.append(
            [
                "1",
                'oomtrace\'s lead over the kernel log (near_oom kernel time before "invoked oom-killer")',
                "the whole window in every OOM (same tracepoint). The line was on stdout before the report "
                f"began in: {on_stdout}; where the window is shorter than delivery, the report wins",
                "printk stamp of the report, calibrated to CLOCK_MONOTONIC",
                "lead = whole physical window",
                _ok(True),
            ]
        )
        last, leads = matrix_leads()
        measured = "unavailable on this kernel (tracepoint tier: nothing fires before the report)"
        verdict = f"see [{KERNEL_MATRIX}](kernel-matrix.md)"
        if leads:
            listed = "; ".join(f"{k}: {v} µs ({n} scenarios)" for k, v, n in leads)
            measured += f". VM kernel matrix, fentry (min / median / max lead): {listed}"
            if last:
                measured += f" ({last[len('Last run: ') :].split(';')[0]})"
            if all(float(v.split(" / ")[0]) > 0 for _k, v, _n in leads):
                verdict = "met on every OOM measured there ([matrix](kernel-matrix.md))"
        rows.append(
            [
                "1",
                "memcg_oom before the kernel's report",
                measured,
                'printk stamp of "invoked oom-killer" (calibrated), in the VM',
                "100 % of OOMs on fentry/kprobe kernels",
                verdict,
            ]
        )
    latency = _bench(record, "latency")
    if latency:
        calm = [r for r in latency["rows"] if r.get("allocators_in_flight_max", 4) <= 4]
        row100 = next((r for r in calm if r["target_kills_per_s"] == 100), None)
        top = max(calm, key=lambda r: r["achieved_kills_per_s"] or 0)
        busy = next((r for r in latency["rows"] if r.get("allocators_in_flight_max", 4) > 4), None)
        if row100:
            p99 = row100["latency_ms"]["p99"]
            rows.append(
                [
                    "2",
                    "delivery latency (kernel ktime → line read from stdout), 100 kills/s",
                    f"p50 {_d(row100['latency_ms'], 'p50')}, p99 {_d(row100['latency_ms'], 'p99')} at "
                    f"{_num(row100['achieved_kills_per_s'])} kills/s achieved",
                    "the event's own ktime (same clock)",
                    "p99 < 5 ms",
                    _ok(p99 is not None and p99 < 5),
                ]
            )
        if busy:
            rows.append(
                [
                    "2",
                    "the same with the CPU saturated by OOMing tasks "
                    f"({busy['allocators_in_flight_max']} allocators alive)",
                    f"p50 {_d(busy['latency_ms'], 'p50')}, p99 {_d(busy['latency_ms'], 'p99')} at "
                    f"{_num(busy['achieved_kills_per_s'])} kills/s",
                    "the event's own ktime",
                    "p99 < 5 ms",
                    _ok(busy["latency_ms"]["p99"] is not None and busy["latency_ms"]["p99"] < 5),
                ]
            )
        rows.append(
            [
                "2",
                "highest OOM-kill rate reached (1000/s asked)",
                f"{_num(top['achieved_kills_per_s'])} kills/s; p99 {_d(top['latency_ms'], 'p99')}",
                "kernel per-cgroup oom_kill counters: "
                f"{top['kernel_kills']} kills, {top['delivered']} delivered",
                "1000/s",
                _ok((top["achieved_kills_per_s"] or 0) >= 1000),
            ]
        )
    overhead = _bench(record, "overhead")
    if overhead:
        at, below = overhead["workloads"]["limit"], overhead["workloads"]["below"]
        ci_at, ci_below = at.get("slowdown_percent_ci95"), below.get("slowdown_percent_ci95")
        rows.append(
            [
                "3",
                "workload slowdown at its limit (constant reclaim)",
                f"{at['slowdown_percent_median']:+.2f} % median; mean's 95 % CI {_ci(ci_at)}",
                f"tracer off, interleaved ({overhead['rounds']} paired rounds); "
                f"{_d(at['reclaims_traced_per_s'], 'p50', '', 0)} reclaims/s traced",
                "≤ 2 %",
                _verdict_at_most(ci_at, 2.0),
            ]
        )
        rows.append(
            [
                "3",
                "workload slowdown far below its limit",
                f"{below['slowdown_percent_median']:+.2f} % median; mean's 95 % CI {_ci(ci_below)}",
                "tracer off, interleaved",
                "not measurable",
                _ok(ci_below is not None and ci_below[0] <= 0 <= ci_below[1]),
            ]
        )
    pipe = _bench(record, "pipeline")
    if pipe:
        core, full = pipe["runs"][0], pipe["runs"][1]
        rows.append(
            [
                "4",
                "pipeline: 10,000 oom_kill/s + 100,000 charge failures/s (replayed records)",
                f"core: {core['delivered_per_s']:,.0f}/s at {core['cpu_percent_of_one_core']} % of a core, "
                f"RSS {_mib(core['rss_end_bytes'])}; as `oomtrace run`: {full['delivered_per_s']:,.0f}/s, "
                f"{full['dropped_counted']:,} dropped and counted",
                "delivered + dropped = produced: "
                + ", ".join("yes" if r["conserved"] else "**no**" for r in pipe["runs"]),
                "delivered + counted-dropped = produced",
                _ok(all(r["conserved"] for r in pipe["runs"])),
            ]
        )
    starts = record.get("startups") or []
    if starts:
        secs = sorted(s["seconds"] for s in starts)
        rows.append(
            [
                "4",
                "start-up to ready (exec → probes attached), RSS at ready",
                f"p50 {secs[len(secs) // 2]:.2f} s, max {secs[-1]:.2f} s over {len(secs)} starts; "
                f"RSS {_mib(sorted(s['rss_bytes'] for s in starts)[len(starts) // 2])}",
                "—",
                "—",
                "",
            ]
        )
    peers = _bench(record, "peers")
    if peers:
        storm = next((s for s in peers["scenarios"] if s["scenario"] == "storm"), None)
        if storm:
            n = storm["kills_by_kernel_counters"]
            bcc = storm["bcc_oomkill"]
            bcc_text = (
                f"bcc oomkill could not run ({peers['bcc_oomkill_error']})"
                if bcc.get("saw") is None
                else f"bcc oomkill saw {bcc['saw']}/{n}, attributed 0 (prints no cgroup)"
            )
            rows.append(
                [
                    "5",
                    f"OOM storm ({n} cgroups in {storm.get('storm_seconds', '?')} s): "
                    "kills attributed to the right pod",
                    f"oomtrace {storm['oomtrace']['attributed_to_the_right_pod']}/{n}; kmsg reader "
                    f"{storm['kmsg_reader']['attributed_to_the_right_pod']}/{n} (saw "
                    f"{storm['kmsg_reader']['saw']}); {bcc_text}",
                    f"kernel counters: {n} kills; the log printed {storm['reports_in_kernel_log']} reports",
                    "every kill",
                    _ok(storm["oomtrace"]["attributed_to_the_right_pod"] == n),
                ]
            )
    return rows


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return out


SUMMARY_HEAD = ["#", "what", "measured (this run)", "baseline (same run)", "target (issue 7)", "met?"]


def summary_table(record: dict[str, Any]) -> str:
    return "\n".join(_table(SUMMARY_HEAD, _summary_rows(record)))


README_BEGIN = "<!-- benchmarks:begin (generated by bench/run.py; do not edit) -->"
README_END = "<!-- benchmarks:end -->"


def update_readme(record: dict[str, Any], readme: Path = REPO / "README.md") -> None:
    """The README's copy of the summary: date, kernel, machine and the table, from one run."""
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        raise SystemExit(f"bench: {readme} lacks the benchmarks markers")
    head, rest = text.split(README_BEGIN, 1)
    _old, tail = rest.split(README_END, 1)
    block = [*_header(record), "", summary_table(record)]
    readme.write_text(head + README_BEGIN + "\n" + "\n".join(block) + "\n" + README_END + tail)


def _section(
    title: str, data: dict[str, Any] | None, error: Any, body: Callable[[dict[str, Any]], list[str]]
) -> list[str]:
    out = ["", f"## {title}", ""]
    if data is None:
        out.append(f"Not run, or failed: {error or 'not selected'}.")
        return out
    return out + body(data)


def _lead(lead: dict[str, Any]) -> list[str]:
    rows = []
    for name, w in lead["by_workload"].items():
        rows.append(
            [
                name,
                f"{w['ooms']} ({w['reports_printed']} reports)",
                f"{_d(w['window_to_report_ms'], 'p50')} / {_d(w['window_to_report_ms'], 'max')}",
                f"{_d(w['near_oom_lead_ms'], 'p50')} / {_d(w['near_oom_lead_ms'], 'min')}",
                f"{_d(w['near_oom_delivery_ms'], 'p50')} / {_d(w['near_oom_delivery_ms'], 'max')} "
                f"({w['near_oom_within_10ms']}/{w['ooms']} ≤ 10 ms)",
                f"{w['near_oom_on_stdout_before_report']}/{w['reports_printed']}",
                f"{_d(w['oom_kill_after_report_ms'], 'p50', ' ms', 2)}",
                f"{_d(w['oom_kill_delivery_ms'], 'p50')} / {_d(w['oom_kill_delivery_ms'], 'max')}",
            ]
        )
    return [
        f"Per OOM: a fresh pod-shaped cgroup, {lead['limit_bytes'] // MIB} MiB container limit, "
        f"{lead['reps']} OOMs per workload. Anonymous ramps are prefilled to 224 MiB at full speed, then "
        "grow at the given rate (nothing to reclaim); the mixed workload reads 200 MiB of file into page "
        "cache first (reclaimable), then grows anonymous memory at 100 MiB/s. The printk clock was "
        f"calibrated before and after (offset {lead['printk_offset_ns'][0] / 1e6:.3f} ms, drift "
        f"{lead['printk_offset_drift_us']} µs). Lost events during the run: {lead['lost']}.",
        "",
        *_table(
            [
                "workload",
                "OOMs",
                "window: first charge failure → report, p50 / max",
                "near_oom lead over the report, p50 / min",
                "near_oom on stdout after first charge failure, p50 / max",
                "near_oom line on stdout before the report began",
                "oom_kill kernel time after the report, p50",
                "oom_kill on stdout after its kernel time, p50 / max",
            ],
            rows,
        ),
        "",
        "On this tier the first charge failure *is* the first near_oom's kernel time "
        "(vmscan:mm_vmscan_memcg_reclaim_begin fires on the charge failure that starts reclaim), so "
        "near_oom's lead is the whole window by construction; what decides whether anyone can act on it "
        "is the delivery time next to the window. `oom_kill` comes from oom:mark_victim, which fires "
        "just after the kernel's report: it is a record of the kill, not a warning. "
        f"`memcg_oom` — the event that precedes the report — needs fentry or kprobes: {lead['memcg_oom']}",
    ]


def _latency(lat: dict[str, Any]) -> list[str]:
    def row(rate: int, alive: int, nice: int) -> dict[str, Any]:
        for r in lat["rows"]:
            if (r["target_kills_per_s"], r.get("allocators_in_flight_max", 4), r.get("tracer_nice", 0)) == (
                rate,
                alive,
                nice,
            ):
                return dict(r)
        return {"achieved_kills_per_s": None, "tracer_cpu_percent_of_one_core": None, "latency_ms": None}

    calm100, busy0, busy10 = row(100, 4, 0), row(100, 16, 0), row(100, 16, -10)
    top = max(lat["rows"], key=lambda r: r["achieved_kills_per_s"] or 0)
    rows = [
        [
            _num(r["target_kills_per_s"]),
            f"{r.get('allocators_in_flight_max', '?')}",
            f"{r.get('tracer_nice', 0)}",
            _num(r["achieved_kills_per_s"]),
            f"{r['kernel_kills']} / {r['delivered']}",
            _d(r["latency_ms"], "p50"),
            _d(r["latency_ms"], "p99"),
            _d(r["latency_ms"], "max"),
            f"{r['tracer_cpu_percent_of_one_core']} %",
        ]
        for r in lat["rows"]
    ]
    return [
        f"Allocators forked into {lat['cgroups']} pod-shaped cgroups "
        f"({lat['limit_bytes'] // MIB} MiB limit), "
        "round robin, a limited number alive at once. Latency: the harness's "
        "CLOCK_MONOTONIC when it read the line minus the event's ktime_ns. Lost events: "
        f"{lat['lost']}. Tracer RSS at the end {_mib(lat['tracer_rss_end_bytes'])}, peak "
        f"{_mib(lat['tracer_rss_peak_bytes'])}.",
        "",
        *_table(
            [
                "asked kills/s",
                "allocators alive (max)",
                "tracer nice",
                "achieved kills/s",
                "kills: kernel / delivered",
                "p50",
                "p99",
                "max",
                "tracer CPU (one core)",
            ],
            rows,
        ),
        "",
        "The kernel serializes memcg OOMs on one global lock (oom_lock) and each allocator costs a fork "
        "and a cgroup migration, so on this 2-core machine the kernel's kill rate, not the tracer, is the "
        f"ceiling: asking for 1000/s gave {_num(top['achieved_kills_per_s'])}/s. At "
        f"{_num(calm100['achieved_kills_per_s'])} kills/s the tracer used "
        f"{calm100['tracer_cpu_percent_of_one_core']} % of one core (the oom_kill events, a memory snapshot "
        "each, and a near_oom summary a second for each of the 100 cgroups). With 16 allocators alive "
        "instead of 4, OOMing tasks spinning in reclaim fill the run queue: p99 "
        f"{_d(busy0['latency_ms'], 'p99')} at nice 0 and {_d(busy10['latency_ms'], 'p99')} at nice -10, "
        f"against {_d(calm100['latency_ms'], 'p99')} with 4. When another VM on this host kept both CPUs "
        "busy (earlier runs on this host), the 16-allocator p99 grew to hundreds of milliseconds and "
        "nice -10 took most of that back: then the tail is the tracer waiting for a CPU. Inside the "
        "tracer, two things delay a kill's line: the once-a-second burst of near_oom summaries (one per "
        "cgroup that reclaimed, 100 here) and the memory snapshot taken per oom_kill (section 4).",
    ]


def _overhead(ovh: dict[str, Any]) -> list[str]:
    rows = []
    for name, w in ovh["workloads"].items():
        rows.append(
            [
                {"limit": "at its limit, constant reclaim", "below": "far below its limit"}[name],
                _mib(w["cgroup_limit_bytes"]),
                _d(w["off_mib_per_s"], "p50", " MiB/s"),
                _d(w["on_mib_per_s"], "p50", " MiB/s"),
                f"{_d(w['on_over_off'], 'p50', '', 3)} ({_d(w['on_over_off'], 'min', '', 3)} to "
                f"{_d(w['on_over_off'], 'max', '', 3)})",
                f"{w['slowdown_percent_median']:+.2f} % ({_ci(w.get('slowdown_percent_ci95'))})",
                _d(w.get("reclaims_traced_per_s"), "p50", "", 0) if name == "limit" else "0",
            ]
        )
    return [
        f"{ovh['rounds']} rounds of {ovh['seconds_per_sample']} s per workload, order alternating "
        "(off→on, on→off, …); a round's on/off ratio is one sample. Throughput is MiB of freshly faulted "
        "anonymous memory per second; at the limit every chunk is marked MADV_FREE after use, so the "
        "cgroup reclaims (without I/O) on nearly every fault past the limit.",
        "",
        *_table(
            [
                "workload",
                "limit",
                "tracer off, p50",
                "tracer on, p50",
                "on/off ratio p50 (min to max)",
                "slowdown: median (mean's 95 % CI)",
                "reclaims/s traced",
            ],
            rows,
        ),
    ]


def _pipeline(pipe: dict[str, Any]) -> list[str]:
    rows = []
    for r in pipe["runs"]:
        rows.append(
            [
                f"{r['rate_per_s']:,.0f}/s, "
                + ("as `oomtrace run`" if r["attribution_stages"] else "core pipeline"),
                f"{r['produced']:,}",
                f"{r['delivered']:,}",
                f"{r['dropped_counted']:,}",
                "yes" if r["conserved"] else "**no**",
                f"{r['cpu_percent_of_one_core']} %",
                f"{_mib(r['rss_idle_bytes'])} → {_mib(r['rss_end_bytes'])}",
                f"{_d(r['latency_ms'], 'p50')} / {_d(r['latency_ms'], 'p99')}",
            ]
        )
    return [
        f"Synthetic oom_kill records ({pipe['record_bytes']} bytes, the layout of bpf/oomtrace.h) naming 100 "
        "real pod cgroups are written without blocking into a pipe the size of the ring buffer "
        f"({pipe['ring_buffer_bytes'] // 1024} KiB); a record that does not fit is dropped and counted, as "
        "the kernel counts a failed reservation. The consumer is `oomtrace run`'s own Daemon with only the "
        "bcc loader replaced; its near-OOM map holds 100 cgroups counting "
        f"{pipe['charge_failures_per_s']:,} charge failures/s between them. 'Core pipeline' is decode → "
        "cgroup path and tags → stdout, metrics and the /events hub; 'as `oomtrace run`' adds the "
        "attribution stages `run` always adds (VM, memory snapshot, overhead).",
        "",
        *_table(
            [
                "run",
                "produced",
                "delivered",
                "dropped (counted)",
                "delivered + dropped = produced",
                "CPU (one core)",
                "RSS idle → end",
                "record → stdout p50 / p99",
            ],
            rows,
        ),
        "",
        "RSS: the pipeline without bcc holds about 120 MiB; the real tracer holds about twice that once "
        "ready (start-up row of the summary): the difference is bcc's in-process compiler (libbcc/LLVM). "
        "Where the time goes with the attribution stages (cProfile, 3,000 records/s): the memory snapshot "
        "took about 78 % of the per-event time — on the tracepoint tier there is no memcg_oom event whose "
        "snapshot the kills could share, so each oom_kill reads its cgroup's memory.stat, limits and task "
        "list anew (about 0.4 ms).",
    ]


def _peers(peers: dict[str, Any]) -> list[str]:
    rows = []
    for s in peers["scenarios"]:
        for tool, label in (
            ("oomtrace", "oomtrace (BPF)"),
            ("kmsg_reader", "/dev/kmsg reader"),
            ("bcc_oomkill", "bcc oomkill-bpfcc"),
        ):
            t = s[tool]
            if t.get("saw") is None:
                rows.append([s["scenario"], label, "could not run", "—", "—", "—"])
                continue
            later = t["after_the_kernels_killed_line_ms"]
            rows.append(
                [
                    s["scenario"],
                    label,
                    f"{t['saw']}/{s['kills_by_kernel_counters']}",
                    f"{t['attributed_to_the_right_pod']}",
                    f"{t['attributed_to_a_wrong_pod']}",
                    f"{_d(later, 'p50')} / {_d(later, 'max')}",
                ]
            )
    storm = next((s for s in peers["scenarios"] if s["scenario"] == "storm"), {})
    return [
        "Same kills for every tool; truth from the kernel (per-cgroup oom_kill counters; the printk stamp of "
        "each \"Killed process\" line, calibrated). 'spaced': one OOM a second; 'storm': 50 cgroups OOM at "
        f"once after 6 quiet seconds — the kernel printed {storm.get('reports_in_kernel_log', '?')} full "
        f'reports and {storm.get("killed_lines_in_kernel_log", "?")} "Killed process" lines for '
        f"{storm.get('kills_by_kernel_counters', '?')} kills (dump_header is rate-limited to 10 per 5 s; the "
        "Killed line is not).",
        "",
        *_table(
            [
                "scenario",
                "tool",
                "saw the kill",
                "right pod",
                "wrong pod",
                "after the kernel's Killed line, p50 / max",
            ],
            rows,
        ),
        "",
        "In the storm, oomtrace also sends each of the 50 new cgroups' first near_oom before its kill and "
        "takes a memory snapshot per kill (the kmsg reader can for the 10 reports it has), while 50 "
        "allocators spin in reclaim on two CPUs: its delivery tail there is the run queue's (section 2).",
        "",
        f"bcc's oomkill-bpfcc hooks oom_kill_process() with a kprobe; this kernel has none: "
        f"`{peers.get('bcc_oomkill_error')}`. Where it runs it prints every kill's pid and comm but no "
        "cgroup (seen in a 6.1 VM, /work/shared/KERNEL_LAB.md: 40/40 kills, no cgroup), so it attributes "
        "none to a pod."
        if peers.get("bcc_oomkill_error")
        else "bcc's oomkill-bpfcc prints pid and comm but no cgroup: it attributes no kill to a pod.",
    ]


def markdown(record: dict[str, Any]) -> str:
    benches = record.get("benchmarks", {})

    def err(name: str) -> Any:
        return (benches.get(name) or {}).get("error")

    out = [
        "# Benchmarks",
        "",
        "Generated by `bench/run.sh` (`make bench`) from bench/results/latest.json — rerun it to refresh. "
        'Method and caveats per benchmark below; the reliability suite that backs the "nothing is lost" '
        "claims is in [reliability.md](reliability.md).",
        "",
        *_header(record),
        "",
        "## Summary",
        "",
        *_table(SUMMARY_HEAD, _summary_rows(record)),
    ]
    out += _section("1. Lead over the kernel log", _bench(record, "lead"), err("lead"), _lead)
    out += _section("2. Delivery latency", _bench(record, "latency"), err("latency"), _latency)
    out += _section("3. Overhead on the workload", _bench(record, "overhead"), err("overhead"), _overhead)
    out += _section("4. Pipeline throughput and cost", _bench(record, "pipeline"), err("pipeline"), _pipeline)
    out += _section("5. Peers on the same OOMs", _bench(record, "peers"), err("peers"), _peers)
    out += [
        "",
        "## fentry/kprobe kernels",
        "",
        "This machine's kernel allows tracepoints only. `memcg_oom` (sent before the kernel's report) "
        "and its lead over the log on 5.10, 6.1 and 6.12 are measured by the VM kernel matrix: "
        f"[{KERNEL_MATRIX}](kernel-matrix.md).",
        "",
    ]
    return "\n".join(out)
