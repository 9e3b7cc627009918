"""`make bench`: every oomtrace benchmark on this machine, as JSON and as a Markdown table.

    bench/run.sh                        # everything, several minutes; needs root
    bench/run.sh --quick                # fewer repetitions, for a smoke run
    bench/run.sh --only lead,peers      # a subset: lead, latency, overhead, pipeline, peers, peers-vm
    bench/run.sh --only peers-vm --merge   # rerun one section into latest.json, re-render from it

Writes bench/results/<UTC time>-<kernel>.json (and latest.json), rewrites docs/benchmarks.md
from it (unless --no-doc) and prints the summary table. Every figure is measured in the same
run as its baseline; the kernel, the probe tiers, the machine and its load are recorded with it.
peers-vm runs the peers benchmark in QEMU VMs on Debian kernels that have kprobes (bcc's
oomkill-bpfcc needs one), about 2 minutes per kernel.

With --merge the run's own record still goes to its stamped file; latest.json keeps its other
sections and gets this run's (a failed section is not merged), with the merge noted in it.
latest.json is versioned, committed with the docs it rendered; the stamped files are not.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench import harness, report, vm_peers

RESULTS = harness.REPO / "bench" / "results"
DOC = harness.REPO / "docs" / "benchmarks.md"
BENCHMARKS = ("lead", "latency", "overhead", "pipeline", "peers", "peers-vm", "cpu-request")


def _pipeline(quick: bool) -> dict[str, Any]:
    from bench import pipeline
    from bench.workload import MIB, Pool

    seconds = 5.0 if quick else 10.0
    with Pool(100, 16 * MIB) as pool:
        # Real cgroups, so the records resolve to real pod paths and tags.
        ids = [os.stat(p.dir(p.container_path)).st_ino for p in pool]
        harness.say("pipeline: 10,000 oom_kill records/s, core pipeline (no attribution stages)")
        core = pipeline.run(10_000, seconds, ids, attribution=False)
        harness.say("pipeline: 10,000 oom_kill records/s, as `oomtrace run` (attribution stages on)")
        full = pipeline.run(10_000, seconds, ids, attribution=True)
        harness.say("pipeline: 2,000 oom_kill records/s, as `oomtrace run`")
        moderate = pipeline.run(2_000, seconds, ids, attribution=True)
    return {
        "record_bytes": pipeline.RECORD,
        "ring_buffer_bytes": pipeline.RINGBUF_BYTES,
        "charge_failures_per_s": pipeline.CHARGE_FAILURES_PER_S,
        "runs": [core, full, moderate],
    }


def _run_one(name: str, quick: bool, vm_kernels: tuple[str, ...]) -> dict[str, Any]:
    if name == "lead":
        from bench import lead

        return lead.run(reps=2 if quick else 5)
    if name == "latency":
        from bench import latency

        return latency.run(scale=0.4 if quick else 1.0)
    if name == "overhead":
        from bench import overhead

        return overhead.run(rounds=2 if quick else 8, seconds=3.0 if quick else 4.0)
    if name == "pipeline":
        return _pipeline(quick)
    if name == "peers":
        from bench import peers

        return peers.run(spaced=5 if quick else 10, storm=50, storms=1 if quick else 4)
    if name == "peers-vm":
        return vm_peers.run(vm_kernels, spaced=5 if quick else 10, storm=50)
    if name == "cpu-request":
        from bench import cpu_request

        return cpu_request.run(rounds=1 if quick else cpu_request.ROUNDS)
    raise ValueError(name)


def _preflight() -> None:
    if os.geteuid() != 0:
        sys.exit("bench: needs root (BPF, cgroups, /dev/kmsg)")
    tracing = Path("/sys/kernel/tracing")
    if not (tracing / "events").is_dir():
        subprocess.run(["mount", "-t", "tracefs", "nodev", str(tracing)], check=True)


def merge(base: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """`base` (the last full record) with the sections `run` measured in place of its own. A
    section that failed as a whole keeps base's; the merge is noted, as the header says
    where every number came from."""
    merged = copy.deepcopy(base)
    taken = [name for name, data in run["benchmarks"].items() if "error" not in data]
    for name in taken:
        merged.setdefault("benchmarks", {})[name] = run["benchmarks"][name]
    if taken:
        merged.setdefault("merged", []).append(
            {
                "benchmarks": taken,
                "date": run["machine"]["date"],
                "kernel": run["machine"]["kernel"],
                "commit": run["machine"]["commit"],
                "quick": run["quick"],
            }
        )
    return merged


def _write(record: dict[str, Any], merge_into_latest: bool) -> dict[str, Any]:
    """Writes the run's stamped file and latest.json; returns the record to render."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = record["machine"]["date"].replace(":", "").replace("-", "")
    out = RESULTS / f"{stamp}-{record['machine']['kernel']}.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    harness.say(f"results: {out.relative_to(harness.REPO)}")
    latest = RESULTS / "latest.json"
    if merge_into_latest:
        if not latest.exists():
            sys.exit(f"bench: --merge needs {latest.relative_to(harness.REPO)} to merge into")
        failed = [n for n, d in record["benchmarks"].items() if "error" in d]
        record = merge(json.loads(latest.read_text()), record)
        harness.say(
            f"merged into {latest.relative_to(harness.REPO)}; not merged (failed): {failed or 'none'}"
        )
    latest.write_text(json.dumps(record, indent=1) + "\n")
    return record


def exit_on_sigterm() -> None:
    """SIGTERM (a timeout, `kill`) unwinds like Ctrl-C: every Pool on the way out removes its
    cgroups and their allocators, instead of leaving a hundred test cgroups behind."""
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))


def main(argv: list[str] | None = None) -> int:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(prog="bench/run.sh", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated subset")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    parser.add_argument("--from-json", type=Path, help="only render the Markdown from a results file")
    parser.add_argument(
        "--merge", action="store_true", help="merge the sections run into latest.json instead of replacing it"
    )
    parser.add_argument(
        "--vm-kernels",
        default=",".join(vm_peers.SERIES),
        help=f"kernel series peers-vm boots (comma-separated; default {','.join(vm_peers.SERIES)})",
    )
    args = parser.parse_args(argv)
    if args.from_json:
        record = json.loads(args.from_json.read_text())
    else:
        chosen = [b.strip() for b in args.only.split(",") if b.strip()]
        unknown = set(chosen) - set(BENCHMARKS)
        if unknown:
            parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
        vm_kernels = tuple(k.strip() for k in args.vm_kernels.split(",") if k.strip())
        if set(vm_kernels) - set(vm_peers.SERIES):
            parser.error(f"--vm-kernels: unknown series in {args.vm_kernels!r}")
        _preflight()
        record = {"machine": harness.machine(), "tiers": harness.probe_tiers(), "quick": args.quick}
        record["benchmarks"] = {}
        for name in chosen:
            started = time.monotonic()
            harness.say(f"--- {name}")
            try:
                record["benchmarks"][name] = _run_one(name, args.quick, vm_kernels)
            except Exception as err:  # one broken benchmark must not cost the others their numbers
                traceback.print_exc()
                record["benchmarks"][name] = {"error": f"{type(err).__name__}: {err}"}
            record["benchmarks"][name]["wall_s"] = round(time.monotonic() - started, 1)
        record["startups"] = [{"seconds": round(s, 3), "rss_bytes": r} for s, r in harness.STARTUPS]
        harness.summarize_load(record["machine"])
        record = _write(record, args.merge)
    text = report.markdown(record)
    if not args.no_doc:
        DOC.write_text(text)
        report.update_readme(record)
        harness.say(f"table: {DOC.relative_to(harness.REPO)} and README.md")
    print(report.summary_table(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
